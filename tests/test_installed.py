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
