"""``klpctl list``: the patch modules of every installed kernel release, the running and the next boot's marked,
files built for another kernel than their directory's and unreadable files flagged (exit 1)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from elfwriter import patch_using
from fixtures import FixtureRoot

from klpd.cli import ExitCode, main
from klpd.installed import read_installed

RUNNING = "6.1.0-18-amd64"
NEXT = "6.1.0-20-amd64"
OLD = "6.1.0-9-amd64"


def patch(name: str, release: str) -> bytes:
    return patch_using(name, f"{release} SMP preempt mod_unload modversions ", ("vmlinux", "foo", 0)).build()


def fleet_host(tmp_path: Path, next_patched: bool = True) -> FixtureRoot:
    fx = FixtureRoot(tmp_path)
    fx.kernel(RUNNING)
    fx.proc_modules(["kpatch_fix 16384 1 - Live 0xffffffffc0000000 (K)"])
    fx.write(f"/var/lib/kpatch/{RUNNING}/kpatch-fix.ko", patch("kpatch_fix", RUNNING))
    fx.write(f"/lib/modules/{RUNNING}/livepatch/lp-other.ko", patch("lp_other", RUNNING))
    if next_patched:
        fx.write(f"/var/lib/kpatch/{NEXT}/kpatch-fix.ko", patch("kpatch_fix", NEXT))
    else:
        fx.write(f"/lib/modules/{NEXT}/modules.dep", "")
    # built for the running kernel, installed for the old one: that kernel's loader refuses it
    fx.write(f"/usr/lib/kpatch/{OLD}/kpatch-fix.ko", patch("kpatch_fix", RUNNING))
    fx.write(f"/usr/lib/kpatch/{OLD}/broken.ko", b"\x7fELF garbage")
    fx.write(f"/boot/vmlinuz-{NEXT}", b"")
    os.symlink(f"boot/vmlinuz-{NEXT}", fx.root.path("/vmlinuz"))
    return fx


def test_every_release_with_its_patches(tmp_path: Path) -> None:
    installed = read_installed(fleet_host(tmp_path).root)
    assert installed.running == RUNNING and installed.next_boot == NEXT
    assert installed.releases == (OLD, RUNNING, NEXT)  # by version, not by text ("9" < "18")
    rows = [(p.release, p.name, p.loaded, p.built_for, p.release_mismatch) for p in installed.patches]
    assert rows == [
        (OLD, None, False, None, False),
        (OLD, "kpatch_fix", False, RUNNING, True),
        (RUNNING, "lp_other", False, RUNNING, False),  # within a release, by path: /lib before /var
        (RUNNING, "kpatch_fix", True, RUNNING, False),
        (NEXT, "kpatch_fix", False, NEXT, False),
    ]
    assert installed.patches[0].path == f"/usr/lib/kpatch/{OLD}/broken.ko" and installed.patches[0].problem


def test_text_marks_running_and_next_and_flags_what_will_not_load(tmp_path, capsys) -> None:
    assert main(["list", "--root", str(fleet_host(tmp_path).root.root)]) == ExitCode.PROBLEMS
    out = capsys.readouterr().out
    assert out.startswith(f"running kernel {RUNNING}   next boot {NEXT}\n")
    line = next(x for x in out.splitlines() if x.startswith(f"{RUNNING} (running)") and "kpatch_fix" in x)
    assert " yes " in line
    assert any(x.startswith(f"{NEXT} (next boot)") for x in out.splitlines())
    assert f"{RUNNING} (not {OLD}: that kernel's loader refuses it)" in out
    assert "unreadable:" in out


def test_a_next_kernel_without_patches_is_said(tmp_path, capsys) -> None:
    main(["list", "--root", str(fleet_host(tmp_path, next_patched=False).root.root)])
    assert f"note: the next kernel, {NEXT}, has no livepatch module installed" in capsys.readouterr().out


def test_json(tmp_path, capsys) -> None:
    main(["list", "--json", "--root", str(fleet_host(tmp_path).root.root)])
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "klpd.installed/1"
    assert [(r["release"], r["running"], r["next_boot"]) for r in doc["releases"]] == [
        (OLD, False, False), (RUNNING, True, False), (NEXT, False, True)]  # fmt: skip
    old = doc["releases"][0]["patches"]
    assert [p["release_mismatch"] for p in old] == [False, True]


def test_without_a_default_kernel_link_the_next_kernel_is_unknown(tmp_path, capsys) -> None:
    fx = fleet_host(tmp_path)
    fx.root.path("/vmlinuz").unlink()
    assert read_installed(fx.root).next_boot is None
    main(["list", "--root", str(fx.root.root)])
    assert "next boot not known (no /vmlinuz or /boot/vmlinuz link)" in capsys.readouterr().out


def test_nothing_installed(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    fx = FixtureRoot(tmp_path)
    fx.kernel(RUNNING)
    fx.proc_modules([])
    assert main(["list", "--root", str(tmp_path)]) == ExitCode.OK
    assert "no livepatch module installed for any kernel release" in capsys.readouterr().out


# --- inspect and check by name, as kpatch takes names --------------------------------------------------------------


def test_inspect_takes_an_installed_patchs_name(tmp_path, capsys) -> None:
    fx = fleet_host(tmp_path)
    fx.write(f"/var/lib/kpatch/{NEXT}/only-next.ko", patch("only_next", NEXT))
    root = str(fx.root.root)
    assert main(["inspect", "--json", "--root", root, "lp-other"]) == ExitCode.OK  # '-' read as '_'
    (module,) = json.loads(capsys.readouterr().out)["files"]
    assert module["name"] == "lp_other" and module["path"].endswith(f"/lib/modules/{RUNNING}/livepatch/lp-other.ko")
    # not installed for the running kernel: inspect looks at every release
    assert main(["inspect", "--json", "--root", root, "only_next"]) == ExitCode.OK
    assert json.loads(capsys.readouterr().out)["files"][0]["name"] == "only_next"


def test_check_takes_a_name_installed_for_the_running_kernel_only(tmp_path, capsys) -> None:
    from test_collect_descriptions import host

    fx = host(tmp_path, "cmdline_proc_show\n")
    root = str(fx.root.root)
    assert main(["check", "--json", "--root", root, "lp_old"]) in (ExitCode.OK, ExitCode.PROBLEMS)
    (patch_doc,) = json.loads(capsys.readouterr().out)["patches"]
    assert patch_doc["name"] == "lp_old" and patch_doc["path"].endswith("/var/lib/kpatch/6.1.0-test/lp_old.ko")
    assert main(["check", "--root", root, "no_such_patch"]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "no_such_patch: no such file, and no patch module of that name is installed for the running kernel" in err
