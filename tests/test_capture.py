"""``klpctl capture``: a copy of what status reads, whose ``status --root`` answer is the source's."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest
from fixtures import RELEASE, LivepatchObject
from test_scenarios import KPATCH_DIR, SCENARIOS, host, one, patch

from klpd.capture import compute_status, record, write_tree
from klpd.cli import ExitCode, main


def status_of(root: Path | str, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = main(["status", "--json", "--root", str(root)])
    return code, json.loads(capsys.readouterr().out)


def captured_names(out: Path) -> set[str]:
    if out.is_dir():
        return {"/" + str(p.relative_to(out)) for p in out.rglob("*")}
    with tarfile.open(out) as tar:
        return {"/" + name for name in tar.getnames()}


@pytest.mark.parametrize("out_name", ["capture", "capture.tar.gz"])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_status_of_a_capture_is_the_status_of_its_source(
    scenario: str, out_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    SCENARIOS[scenario](tmp_path / "host", capsys)  # builds the fixture root, runs status or check on it
    [source] = [p.parent for p in (tmp_path / "host").rglob("proc")]
    code, doc = status_of(source, capsys)
    out = tmp_path / out_name
    assert main(["capture", "--root", str(source), str(out)]) == ExitCode.OK
    assert "skipped" not in capsys.readouterr().err
    assert status_of(out, capsys) == (code, doc)  # a directory, or the archive itself as --root


def test_only_what_status_reads_is_copied(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fx = host(tmp_path / "host", modules=("lp_busy",))
    fx.file(f"{KPATCH_DIR}/lp_busy.ko", patch("lp_busy", ("vmlinux", "unique_fn", 0)).build())
    fx.livepatch("lp_busy", enabled=True, transition=True, objects=[LivepatchObject("vmlinux", patched=True)])
    fx.sys_module("lp_busy", srcversion="SRCLP_BUSY", taint="OEK")
    for pid, state in ((100, 0), (200, 1)):  # 100 still runs the old code: it blocks the transition
        fx.write(f"/proc/{pid}/task/{pid}/patch_state", f"{state}\n")
        fx.write(f"/proc/{pid}/task/{pid}/comm", f"task{pid}\n")
        fx.write(f"/proc/{pid}/environ", "AWS_SECRET_ACCESS_KEY=hunter2\0")
        fx.write(f"/proc/{pid}/cmdline", "mysql\0--password=hunter2\0")
    fx.write("/etc/shadow", "root:hunter2:19000::::::\n")
    fx.write(f"/lib/modules/{RELEASE}/kernel/unrelated.ko", b"not read by status")
    code, doc = status_of(fx.path, capsys)
    assert [(t["pid"], t["comm"]) for t in one(doc, "lp_busy")["tasks"]["tasks"]] == [(100, "task100")]

    out = tmp_path / "capture"
    assert main(["capture", "--root", str(fx.path), str(out)]) == ExitCode.OK
    names = captured_names(out)
    assert {"/proc/100/task/100/patch_state", "/proc/100/task/100/comm", "/proc/200/task/200/patch_state"} <= names
    assert not {n for n in names if n.endswith(("environ", "cmdline", "shadow", "unrelated.ko"))}
    assert not any(b"hunter2" in p.read_bytes() for p in out.rglob("*") if p.is_file())
    assert status_of(out, capsys) == (code, doc)


def test_a_file_reached_twice_stays_one_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """/lib/modules/<release>/extra a symlink to kpatch's directory: klpd lists the patch once; so must the copy."""
    fx = host(tmp_path / "host")
    fx.file(f"{KPATCH_DIR}/lp_one.ko", patch("lp_one", ("vmlinux", "unique_fn", 0)).build())
    fx.mkdir(f"/lib/modules/{RELEASE}")
    os.symlink(fx.root.path(KPATCH_DIR), fx.root.path(f"/lib/modules/{RELEASE}/extra"))
    code, doc = status_of(fx.path, capsys)
    assert not doc["problems"]  # no duplicate_patch_file
    assert main(["capture", "--root", str(fx.path), str(tmp_path / "c.tar")]) == ExitCode.OK
    assert status_of(tmp_path / "c.tar", capsys) == (code, doc)


def test_a_file_gone_before_it_is_copied_is_named_and_left_out(tmp_path: Path) -> None:
    fx = host(tmp_path / "host", modules=("lp_x",))
    fx.livepatch("lp_x", objects=[LivepatchObject("vmlinux", patched=True)])
    fx.sys_module("lp_x", srcversion="SRCX", taint="OEK")
    with record(fx.root) as reads:
        compute_status(fx.root)
    fx.root.path("/sys/module/lp_x/taint").unlink()  # the module unloads meanwhile
    skipped = write_tree(fx.root, reads, tmp_path / "out")
    assert [(s.host, s.reason) for s in skipped] == [("/sys/module/lp_x/taint", "gone since status read it")]
    assert (tmp_path / "out/sys/module/lp_x/srcversion").read_text() == "SRCX\n"


def test_a_file_that_cannot_be_read_is_named_and_the_difference_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A FIFO where an attribute should be: status reports it unreadable, the copy cannot hold it; capture says
    which file it skipped and that the copy's answer differs (exit 3), and keeps the copy."""
    fx = host(tmp_path / "host", modules=("lp_x",))
    fx.livepatch("lp_x", objects=[LivepatchObject("vmlinux", patched=True)])
    fx.sys_module("lp_x", srcversion="SRCX", taint="OEK")
    fx.root.path("/sys/module/lp_x/taint").unlink()
    os.mkfifo(fx.root.path("/sys/module/lp_x/taint"))
    out = tmp_path / "capture"
    assert main(["capture", "--root", str(fx.path), str(out)]) == ExitCode.UNDETERMINED
    err = capsys.readouterr().err
    assert "skipped /sys/module/lp_x/taint: not a regular file" in err
    assert "copying again" in err and "differs from this host's at problems" in err
    assert (out / "sys/module/lp_x/srcversion").exists()


def test_capture_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fx = host(tmp_path / "host")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    (tmp_path / "old.tar").write_text("keep me")
    assert main(["capture", "--root", str(fx.path), str(tmp_path / "full")]) == ExitCode.USAGE
    assert main(["capture", "--root", str(fx.path), str(tmp_path / "old.tar")]) == ExitCode.USAGE
    assert main(["capture", "--root", str(fx.path), str(tmp_path / "no" / "such" / "dir")]) == ExitCode.USAGE
    assert "exists and is not an empty directory" in capsys.readouterr().err
    assert (tmp_path / "old.tar").read_text() == "keep me"
    assert main(["capture", "--root", str(fx.path), str(tmp_path / "empty")]) == ExitCode.OK
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".klpctl")] == []  # no staging left


def test_hidden_addresses_and_non_root_are_warned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fx = host(tmp_path / "host", hide=True)
    assert main(["capture", "--root", str(fx.path), str(tmp_path / "c")]) == ExitCode.OK
    err = capsys.readouterr().err
    assert "captured /proc/kallsyms shows no addresses" in err and "not root" not in err
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    main(["capture", str(tmp_path / "live.tar")])  # this machine, as a user
    assert "warning: not root: /proc/kallsyms shows every address as 0" in capsys.readouterr().err
    # Under / the code klpd imports while it computes is under the root too: none of it is taken for a system file.
    names = captured_names(tmp_path / "live.tar")
    assert "/proc/kallsyms" in names and not [n for n in names if n.endswith((".py", ".pyc", ".so"))]
    assert {n.split("/")[1] for n in names} <= {"proc", "sys", "lib", "boot", "var", "usr"}, names


def test_a_root_archive_that_is_not_one_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.tar.gz").write_bytes(b"not gzip")
    assert main(["status", "--root", str(tmp_path / "x.tar.gz")]) == ExitCode.USAGE
    assert "not a readable capture archive" in capsys.readouterr().err


def test_a_capture_answers_as_the_daemon_but_for_what_only_a_daemon_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`klpctl status` on a host with klpd running is the daemon's answer. The capture's equals it but for what
    only a daemon says: `source`, its `daemon` object, the host's identity (hostname, machine-id, boot id: not
    read by status, so not captured) and each patch's `tasks` (the daemon keeps its own account)."""
    from test_daemon_main import Daemon, klpctl

    daemon = Daemon(tmp_path)
    try:
        asked = klpctl("status", "--socket", str(daemon.socket), "--json")
    finally:
        daemon.stop()
    via_daemon = json.loads(asked.stdout)
    assert via_daemon["source"] == "daemon"
    assert main(["capture", "--root", str(daemon.host.path), str(tmp_path / "c.tar.gz")]) == ExitCode.OK
    code, captured = status_of(tmp_path / "c.tar.gz", capsys)
    assert code == asked.returncode
    only_daemon = {"hostname", "machine_id", "boot_id"}
    assert only_daemon <= set(via_daemon["host"]) and not only_daemon & set(captured["host"])
    for doc in (via_daemon, captured):
        del doc["source"]
        doc.pop("daemon", None)
        doc["host"] = {k: v for k, v in doc["host"].items() if k not in only_daemon}
        for p in doc["patches"]:
            del p["tasks"]
    assert captured == via_daemon


@pytest.mark.parametrize("kind", ["parent", "absolute", "symlink"])
def test_an_archive_leading_out_of_its_directory_is_refused(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        member = tarfile.TarInfo({"parent": "../escaped", "absolute": "/tmp/escaped", "symlink": "proc"}[kind])
        if kind == "symlink":  # proc -> / would have status read this machine's files for the archive's
            member.type, member.linkname = tarfile.SYMTYPE, "/"
        tar.addfile(member, None if kind == "symlink" else io.BytesIO(b""))
    assert main(["status", "--root", str(archive)]) == ExitCode.USAGE
    assert "not a readable capture archive" in capsys.readouterr().err
    assert not (tmp_path / "escaped").exists()


def test_a_capture_that_cannot_be_written_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fx = host(tmp_path / "host")
    real_write = Path.write_bytes

    def disk_full(self: Path, data: bytes) -> int:
        if "proc" in self.parts:
            raise OSError(28, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    assert main(["capture", "--root", str(fx.path), str(tmp_path / "c.tar.gz")]) == ExitCode.UNDETERMINED
    assert f"klpctl: cannot write {tmp_path / 'c.tar.gz'}: No space left on device" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["host"]  # no staging directory, no half archive
