"""klpctl as a user runs it: exit codes, messages that name the thing at fault, the JSON documents."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from elfwriter import R_X86_64_PC32, KlpModule
from entry_points import entry_point
from fixtures import RELEASE, FixtureRoot, one_symbol_root

from klpd.cli import ExitCode, main
from klpd.outputs.json import INSPECT_SCHEMA, STATUS_SCHEMA
from klpd.sources import modules_dep, patch_files


def good_patch() -> bytes:
    m = KlpModule("lp_good", vermagic=f"{RELEASE} SMP")
    text = m.function("fn")
    m.klp_rela("vmlinux", text, [(0, m.klp_sym("vmlinux", "foo", 0), R_X86_64_PC32, -4)])
    return m.build()


@pytest.fixture
def fx(tmp_path: Path) -> FixtureRoot:
    return one_symbol_root(tmp_path / "root")


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == ExitCode.USAGE
    assert main(["frobnicate"]) == ExitCode.USAGE
    assert main(["check"]) == ExitCode.USAGE  # FILE is required
    assert main(["status", "--root", "/nonexistent/dir", "--direct"]) == ExitCode.USAGE
    assert "--root /nonexistent/dir: not a directory" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "inspect" in capsys.readouterr().out


def test_inspect_good_and_corrupt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "lp_good.ko"
    good.write_bytes(good_patch())
    bad = tmp_path / "bad.ko"
    bad.write_bytes(good_patch()[:200])
    assert main(["inspect", str(good)]) == 0
    out = capsys.readouterr().out
    assert ".klp.rela.vmlinux.text.fn" in out and ".klp.sym.vmlinux.foo,0" in out and "R_X86_64_PC32" in out
    assert main(["inspect", "--json", str(good), str(bad)]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == INSPECT_SCHEMA
    assert [f["name"] for f in doc["files"]] == ["lp_good"]
    assert doc["files"][0]["sections"][0]["relocations"][0]["type_name"] == "R_X86_64_PC32"
    assert str(bad) in doc["problems"][0]["message"]


def test_check_json_schema(fx: FixtureRoot, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ko = tmp_path / "lp_good.ko"
    ko.write_bytes(good_patch())
    assert main(["check", "--json", "--root", str(fx.path), str(ko)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == STATUS_SCHEMA and doc["source"] == "check"
    (patch,) = doc["patches"]
    assert patch["name"] == "lp_good" and patch["will_load"] is True
    (obj,) = patch["objects"]
    assert obj["name"] == "vmlinux" and obj["loaded"] is True and obj["module_load"] is None
    (sym,) = obj["symbols"]
    assert {k: sym[k] for k in ("object", "name", "sympos", "status")} == {
        "object": "vmlinux",
        "name": "foo",
        "sympos": 0,
        "status": "ok",
    }


def test_check_missing_file_names_it(fx: FixtureRoot, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--root", str(fx.path), "/nonexistent/lp.ko"]) == 1
    out = capsys.readouterr().out
    assert "/nonexistent/lp.ko" in out and "will NOT load" in out


def test_unreadable_kallsyms_cannot_determine(
    fx: FixtureRoot, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fx.root.kallsyms.local.unlink()
    ko = tmp_path / "lp_good.ko"
    ko.write_bytes(good_patch())
    assert main(["check", "--root", str(fx.path), str(ko)]) == ExitCode.UNDETERMINED
    err = capsys.readouterr().err
    assert "proc/kallsyms" in err and "Traceback" not in err


def test_status_without_daemon_says_so_and_falls_back(fx: FixtureRoot, tmp_path: Path, capsys) -> None:
    code = main(["status", "--root", str(fx.path), "--socket", str(tmp_path / "none.sock"), "--json"])
    captured = capsys.readouterr()
    assert code == 0
    assert f"no klpd daemon answers on {tmp_path / 'none.sock'}" in captured.err
    assert json.loads(captured.out)["source"] == "direct"


def test_status_with_a_root_never_asks_the_daemon(fx: FixtureRoot, monkeypatch, capsys) -> None:
    """`klpctl status --root DIR` on a host whose klpd answers on the default socket: the daemon speaks for the
    live host, not DIR, so it is not asked, and nothing says it was missing."""
    import klpd.api_client

    def daemon_asked(path: str) -> object:
        raise AssertionError(f"asked the daemon on {path}")

    monkeypatch.setattr(klpd.api_client, "fetch_status", daemon_asked)
    assert main(["status", "--root", str(fx.path), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["source"] == "direct" and captured.err == ""
    assert main(["status", "--root", str(fx.path)]) == 0
    assert f"kernel {RELEASE}" in capsys.readouterr().out


def test_console_script_runs(fx: FixtureRoot) -> None:
    """The installed entry point, as a user types it (no Python traceback on a bad root either)."""
    klpctl = entry_point("klpctl")
    ok = subprocess.run(
        [klpctl, "status", "--direct", "--root", str(fx.path)], capture_output=True, text=True, check=False
    )
    assert ok.returncode == 0, ok.stderr
    assert f"kernel {RELEASE}" in ok.stdout
    bad = subprocess.run(
        [klpctl, "status", "--direct", "--root", "/nonexistent"], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr



def test_status_direct_when_a_patch_dir_cannot_be_searched(tmp_path, monkeypatch, capsys):
    """A non-root klpctl where /var/lib/kpatch is 0700 (simulated: root searches anything): an answer, not a
    traceback."""
    fx = FixtureRoot(tmp_path)
    fx.kernel(RELEASE, tainted=0)
    fx.kallsyms(vmlinux=[(0xFFFFFFFF81000000, "T", "_text")])
    fx.proc_modules([])
    fx.modules_dep(RELEASE, {})
    fx.mkdir("/var/lib/kpatch")
    real_stat = Path.stat

    def stat(self, *args, **kwargs):
        if "kpatch" in self.parts and self.name != "kpatch":
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    code = main(["status", "--direct", "--json", "--root", str(fx.path)])
    assert code in (0, 1)
    assert json.loads(capsys.readouterr().out)["schema"] == "klpd.status/1"


# -- truth in exit codes: a source that is empty, garbage or unreadable is "could not determine", never a verdict


@pytest.mark.parametrize("content", ["", "garbage\n" * 50, "\0\0\0"])
def test_empty_or_garbage_kallsyms_cannot_determine(fx: FixtureRoot, tmp_path: Path, capsys, content: str) -> None:
    """An empty /proc/kallsyms is what tar stores: not "will NOT load" (1), which would send someone to rebuild a
    good patch."""
    fx.write("/proc/kallsyms", content)
    ko = tmp_path / "lp_good.ko"
    ko.write_bytes(good_patch())
    assert main(["check", "--root", str(fx.path), str(ko)]) == ExitCode.UNDETERMINED
    assert "no vmlinux symbols" in capsys.readouterr().err
    assert main(["status", "--direct", "--root", str(fx.path)]) == ExitCode.UNDETERMINED


def test_empty_proc_modules_with_loaded_livepatches_cannot_determine(fx: FixtureRoot, capsys) -> None:
    fx.livepatch("lp_good")
    fx.sys_module("lp_good")
    assert main(["status", "--direct", "--root", str(fx.path)]) == ExitCode.UNDETERMINED
    out = capsys.readouterr().out
    assert "does not list the livepatch module(s) lp_good that /sys/kernel/livepatch shows loaded" in out
    fx.proc_modules(["lp_good 16384 1 - Live 0xffffffffc0000000 (OEK)"])
    assert main(["status", "--direct", "--root", str(fx.path)]) == ExitCode.OK


def test_a_patch_directory_that_cannot_be_read_cannot_determine(fx: FixtureRoot, capsys, monkeypatch) -> None:
    """A non-root klpctl and /var/lib/kpatch 0700: the installed patches are unknown (root reads anything, so
    the refusal is simulated at the reader's call)."""
    top = fx.mkdir(f"/var/lib/kpatch/{RELEASE}")
    real_scandir = os.scandir

    def scandir(path):
        if Path(path) == top:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(patch_files.os, "scandir", scandir)
    assert main(["status", "--direct", "--root", str(fx.path)]) == ExitCode.UNDETERMINED
    assert f"/var/lib/kpatch/{RELEASE}: cannot read: Permission denied" in capsys.readouterr().out


def test_modules_dep_that_cannot_be_read_cannot_determine(fx: FixtureRoot, capsys, monkeypatch) -> None:
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(modules_dep, "read_regular_text", denied)
    assert main(["status", "--direct", "--root", str(fx.path)]) == ExitCode.UNDETERMINED
    assert "modules.dep: cannot read: Permission denied" in capsys.readouterr().out


def _klpctl_entry(args: list[str], **popen: object) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout block-buffered, as in a pipe
    code = "from klpd.cli import main_entry; main_entry()"
    return subprocess.run([sys.executable, "-c", code, *args], env=env, check=False, **popen)  # type: ignore[call-overload]


def test_output_that_cannot_be_written_is_an_error_not_silence(tmp_path):
    def no_file_growth() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # every write to a file fails (EFBIG)

    with (tmp_path / "out").open("wb") as out:
        done = _klpctl_entry(["--version"], stdout=out, stderr=subprocess.PIPE, preexec_fn=no_file_growth)
    assert done.returncode == 3
    assert b"klpctl: cannot write the output" in done.stderr


def test_a_reader_that_went_away_is_no_error():
    with subprocess.Popen(["head", "-c", "1"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL) as head:
        done = _klpctl_entry(["--help"], stdout=head.stdin, stderr=subprocess.PIPE)
    assert done.returncode == 0 and b"Traceback" not in done.stderr
