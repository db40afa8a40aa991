"""Whole-host scenarios: a fixture root per situation, ``klpctl`` run on it, golden JSON beside it.

Each scenario asserts the facts an operator would look for, then compares the whole document with
``tests/golden/status/<scenario>.json`` (regenerate with KLPD_UPDATE_GOLDEN=1 after a deliberate change).
"""

from __future__ import annotations

import gzip
import json
import lzma
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard
from elfwriter import KlpModule, patch_using, target_module
from fixtures import RELEASE, FixtureRoot, LivepatchObject, SymversEntry

from klpd.cli import main

GOLDEN = Path(__file__).parent / "golden" / "status"
VMLINUX = [
    (0xFFFFFFFF81000000, "T", "_text"),
    (0xFFFFFFFF81001000, "t", "unique_fn"),
    (0xFFFFFFFF81002000, "t", "dup_fn"),
    (0xFFFFFFFF81003000, "t", "dup_fn"),
    (0xFFFFFFFF81004000, "D", "saved_command_line"),
]
KPATCH_DIR = f"/var/lib/kpatch/{RELEASE}"


def patch(name: str, *uses: tuple[str, str, int]) -> KlpModule:
    m = patch_using(name, f"{RELEASE} SMP preempt mod_unload modversions ", *uses)
    m.modinfo.append(("srcversion", f"SRC{name.upper()}"))  # type: ignore[union-attr]
    return m


target_ko = target_module


INTREE = "kernel/arch/x86/crypto/intree.ko"


def host(tmp_path: Path, hide: bool = False, modules: tuple[str, ...] = ()) -> FixtureRoot:
    fx = FixtureRoot(tmp_path)
    fx.kernel(RELEASE, tainted=0)
    fx.kallsyms(vmlinux=VMLINUX, hide_addresses=hide)
    fx.proc_modules([f"{m} 16384 0 - Live 0xffffffffc0000000" for m in modules])
    loader_side(fx)
    fx.modules_dep(RELEASE, {INTREE: [], "kernel/drivers/target_mod.ko.xz": []})
    return fx


def loader_side(fx: FixtureRoot) -> None:
    """What a Debian host with its kernel's headers shows the module loader's checks: an in-tree module (the
    kernel's vermagic and struct module size), Module.symvers, and the signing policy of a host without Secure
    Boot."""
    fx.in_tree_module(RELEASE, INTREE)
    fx.module_symvers(
        RELEASE,
        [
            SymversEntry("module_layout", 0x9060323F),
            SymversEntry("klp_enable_patch", 0x5D6A4B21, gpl=True),
            SymversEntry("_printk", 0x92997ED8),
            SymversEntry("tgt_fn_export", 0x1, "drivers/target_mod"),
        ],
    )
    fx.sig_enforce(False)
    fx.lockdown("none")
    fx.modules_disabled(False)


def run(fx: FixtureRoot, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = main([*args, "--json", "--root", str(fx.path)])
    out = capsys.readouterr().out
    return code, json.loads(out)


def golden(name: str, doc: dict[str, Any]) -> None:
    path = GOLDEN / f"{name}.json"
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if os.environ.get("KLPD_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path}: run with KLPD_UPDATE_GOLDEN=1"
    assert json.loads(path.read_text()) == doc


def one(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in doc["patches"] if p["name"] == name)


def obj(p: dict[str, Any], name: str) -> dict[str, Any]:
    return next(o for o in p["objects"] if o["name"] == name)


def sym(p: dict[str, Any], object_name: str, name: str) -> dict[str, Any]:
    return next(s for s in obj(p, object_name)["symbols"] if s["name"] == name)


def scenario_loaded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    fx = host(tmp_path, modules=("lp_loaded",))
    fx.file(f"{KPATCH_DIR}/lp-loaded.ko", patch("lp_loaded", ("vmlinux", "unique_fn", 0)).build())
    fx.livepatch("lp_loaded", objects=[LivepatchObject("vmlinux", patched=True, functions=[("unique_fn", 0)])])
    fx.sys_module("lp_loaded", srcversion="SRCLP_LOADED", taint="OEK")
    fx.kernel(RELEASE, tainted=32768 | 4096)
    code, doc = run(fx, "status", "--direct", capsys=capsys)
    p = one(doc, "lp_loaded")
    assert code == 0
    assert p["loaded"] and p["enabled"] is True and p["will_load"]
    assert obj(p, "vmlinux")["patched"] is True
    # Seen through sysfs only (the fixture's file has no description): listed, not judged, owned by the patch.
    assert [(f["name"], f["sympos"], f["status"], f["owner"]) for f in obj(p, "vmlinux")["functions"]] == [
        ("unique_fn", 1, None, "lp_loaded")
    ]
    assert obj(p, "vmlinux")["sections"][0]["state"] == "applied"
    assert doc["host"]["livepatch_tainted"] is True
    return code, doc


def scenario_pending(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    fx = host(tmp_path, modules=("lp_pending",))
    fx.file(f"/lib/modules/{RELEASE}/kernel/drivers/target_mod.ko.xz", lzma.compress(target_ko(("tgt_fn", ".text"))))
    fx.file(f"{KPATCH_DIR}/lp_pending.ko", patch("lp_pending", ("target_mod", "tgt_fn", 0)).build())
    fx.livepatch("lp_pending", objects=[LivepatchObject("target_mod", patched=False)])
    code, doc = run(fx, "status", "--direct", capsys=capsys)
    p = one(doc, "lp_pending")
    target = obj(p, "target_mod")
    assert code == 0
    assert not target["loaded"] and target["patched"] is False
    assert target["module_load"] == "ok"
    assert target["sections"][0]["state"] == "pending"
    assert target["target_path"] == f"/lib/modules/{RELEASE}/kernel/drivers/target_mod.ko.xz"
    return code, doc


def scenario_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    fx = host(tmp_path, modules=("lp_refused",))
    fx.file(f"/lib/modules/{RELEASE}/kernel/drivers/target_mod.ko.xz", lzma.compress(target_ko(("tgt_fn", ".text"))))
    fx.file(f"{KPATCH_DIR}/lp_refused.ko", patch("lp_refused", ("target_mod", "tgt_fn", 2)).build())
    fx.livepatch("lp_refused", objects=[LivepatchObject("target_mod", patched=False)])
    code, doc = run(fx, "status", "--direct", capsys=capsys)
    p = one(doc, "lp_refused")
    target = obj(p, "target_mod")
    assert code == 1
    assert target["module_load"] == "refused"
    assert sym(p, "target_mod", "tgt_fn")["status"] == "sympos_not_found"
    assert (
        "livepatch: patch 'lp_refused' failed for module 'target_mod', refusing to load module 'target_mod'"
        in target["reasons"]
    )
    return code, doc


def scenario_ambiguous(tmp_path: Path, capsys: pytest.CaptureFixture[str], hide: bool = False):
    fx = host(tmp_path, hide=hide)
    fx.file(
        f"/lib/modules/{RELEASE}/livepatch/lp_ambiguous.ko", patch("lp_ambiguous", ("vmlinux", "dup_fn", 0)).build()
    )
    code, doc = run(fx, "status", "--direct", capsys=capsys)
    p = one(doc, "lp_ambiguous")
    assert code == 1
    assert not p["loaded"] and not p["will_load"]
    assert sym(p, "vmlinux", "dup_fn")["status"] == "ambiguous"
    assert p["reasons"] == ["livepatch: unresolvable ambiguity for symbol 'dup_fn' in object '(null)'"]
    return code, doc


def scenario_hidden_addresses(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    code, doc = scenario_ambiguous(tmp_path, capsys, hide=True)
    assert doc["host"]["kallsyms_addresses_visible"] is False
    return code, doc


def scenario_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    fx = host(tmp_path / "host")
    # klpctl check takes an ordinary path (here relative to the working directory); the host comes from --root.
    (tmp_path / "lp_missing.ko").write_bytes(
        patch("lp_missing", ("vmlinux", "gone_fn", 0), ("vmlinux", "dup_fn", 2)).build()
    )
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        code, doc = run(fx, "check", "lp_missing.ko", capsys=capsys)
    finally:
        os.chdir(cwd)
    assert one(doc, "lp_missing")["path"] == "lp_missing.ko"
    p = one(doc, "lp_missing")
    assert code == 1 and doc["source"] == "check"
    assert sym(p, "vmlinux", "gone_fn")["status"] == "not_found"
    assert sym(p, "vmlinux", "dup_fn")["status"] == "ok"
    return code, doc


def scenario_pre_6_1_sysfs(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    fx = host(tmp_path, modules=("lp_old",))
    fx.file(f"{KPATCH_DIR}/lp_old.ko", patch("lp_old", ("vmlinux", "unique_fn", 0)).build())
    # 4.12-6.0: enabled, transition, force; no <object>/patched
    fx.livepatch("lp_old", objects=[LivepatchObject("vmlinux", patched=None)])
    code, doc = run(fx, "status", "--direct", capsys=capsys)
    p = one(doc, "lp_old")
    assert code == 0
    assert obj(p, "vmlinux")["patched"] is None
    assert p["replace"] is None and p["stack_order"] is None
    return code, doc


def scenario_stacked_6_14(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    fx = host(tmp_path, modules=("lp_a", "lp_b"))
    for name, order, replace in (("lp_a", 1, False), ("lp_b", 2, True)):
        fx.file(f"{KPATCH_DIR}/{name}.ko", patch(name, ("vmlinux", "unique_fn", 0)).build())
        fx.livepatch(name, replace=replace, stack_order=order, objects=[LivepatchObject("vmlinux")])
    code, doc = run(fx, "status", "--direct", capsys=capsys)
    assert code == 0
    assert [(p["name"], p["stack_order"], p["replace"]) for p in doc["patches"]] == [
        ("lp_a", 1, False),
        ("lp_b", 2, True),
    ]
    return code, doc


def scenario_compressed(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    fx = host(tmp_path)
    suse = f"/lib/modules/{RELEASE}/livepatch"
    fx.file(
        f"{suse}/lp_zst.ko.zst",
        zstandard.ZstdCompressor().compress(patch("lp_zst", ("vmlinux", "unique_fn", 0)).build()),
    )
    fx.file(f"{suse}/lp_gz.ko.gz", gzip.compress(patch("lp_gz", ("vmlinux", "dup_fn", 1)).build()))
    fx.file(f"{suse}/lp_xz.ko.xz", lzma.compress(patch("lp_xz", ("vmlinux", "dup_fn", 2)).build()))
    fx.file(f"{suse}/broken.ko.xz", b"\xfd7zXZ\x00garbage")
    fx.file(f"/lib/modules/{RELEASE}/extra/not_a_patch.ko", target_ko(("x", ".text")))
    code, doc = run(fx, "status", "--direct", capsys=capsys)
    names = [p["name"] for p in doc["patches"]]
    assert names == ["broken", "lp_gz", "lp_xz", "lp_zst"]  # the ordinary module in extra/ is not a patch
    assert all(one(doc, n)["will_load"] for n in ("lp_gz", "lp_xz", "lp_zst"))
    broken = one(doc, "broken")
    assert not broken["will_load"]
    assert broken["problems"][0]["code"] == "unreadable_file"
    assert f"{suse}/broken.ko.xz" in broken["problems"][0]["message"]
    assert code == 1
    return code, doc


def scenario_load_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    fx = host(tmp_path)
    ko = target_ko(("dup_init", ".text"), ("dup_init", ".init.text"))
    fx.file(f"/lib/modules/{RELEASE}/kernel/drivers/target_mod.ko.xz", lzma.compress(ko))
    fx.file(f"{KPATCH_DIR}/lp_order.ko", patch("lp_order", ("target_mod", "dup_init", 1)).build())
    code, doc = run(fx, "status", "--direct", capsys=capsys)
    s = sym(one(doc, "lp_order"), "target_mod", "dup_init")
    assert s["status"] == "ok" and s["occurrences"] == 2 and s["load_order_dependent"] is False
    return code, doc


def scenario_transition(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    fx = host(tmp_path, modules=("lp_busy",))
    fx.file(f"{KPATCH_DIR}/lp_busy.ko", patch("lp_busy", ("vmlinux", "unique_fn", 0)).build())
    fx.file(f"{KPATCH_DIR}/lp_next.ko", patch("lp_next", ("vmlinux", "unique_fn", 0)).build())
    fx.livepatch("lp_busy", enabled=True, transition=True, objects=[LivepatchObject("vmlinux", patched=True)])
    code, doc = run(fx, "status", "--direct", capsys=capsys)
    assert one(doc, "lp_busy")["transition"] is True
    nxt = one(doc, "lp_next")
    assert not nxt["will_load"]
    assert nxt["reasons"] == ["patch 'lp_busy' is in transition: loading another patch now fails with EBUSY"]
    return code, doc


def scenario_loaded_without_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """``kpatch load /tmp/fix.ko`` or ``insmod``, never installed: klpd reads the patch's sections from
    /sys/module/<patch>/sections and its .klp.sym symbols from /proc/kallsyms (type ``?``, as a 6.1 guest lists
    them), and still predicts that loading target_mod will be refused."""
    fx = FixtureRoot(tmp_path)
    fx.kernel(RELEASE, tainted=0)
    fx.kallsyms(
        vmlinux=VMLINUX,
        objects=[
            (0xFFFFFFFFC0356000, "t", "livepatch_unique_fn", "lp_nofile"),
            (0xFFFFFFFF81001000, "?", ".klp.sym.vmlinux.unique_fn,0", "lp_nofile"),
            (0, "?", ".klp.sym.target_mod.tgt_fn,2", "lp_nofile"),  # never resolved: target_mod is not loaded
        ],
    )
    fx.proc_modules(["lp_nofile 16384 1 - Live 0xffffffffc0356000 (OEK)"])
    loader_side(fx)
    fx.modules_dep(RELEASE, {INTREE: [], "kernel/drivers/target_mod.ko.xz": []})
    fx.file(f"/lib/modules/{RELEASE}/kernel/drivers/target_mod.ko.xz", lzma.compress(target_ko(("tgt_fn", ".text"))))
    fx.livepatch(
        "lp_nofile",
        objects=[LivepatchObject("vmlinux", patched=True), LivepatchObject("target_mod", patched=False)],
    )
    fx.sys_module(
        "lp_nofile",
        srcversion="SRCNOFILE",
        taint="OEK",
        sections=[".text", ".klp.rela.vmlinux..text", ".klp.rela.target_mod..text", ".gnu.linkonce.this_module"],
    )
    code, doc = run(fx, "status", "--direct", capsys=capsys)
    p = one(doc, "lp_nofile")
    assert code == 1
    assert p["loaded"] and p["path"] is None and p["srcversion"] == "SRCNOFILE"
    vmlinux = obj(p, "vmlinux")
    assert [(s["name"], s["target_section"], s["state"], s["relocations"]) for s in vmlinux["sections"]] == [
        (".klp.rela.vmlinux..text", ".text", "applied", None)  # how many relocations: only the file says
    ]
    assert sym(p, "vmlinux", "unique_fn")["status"] == "ok"
    target = obj(p, "target_mod")
    assert [(s["name"], s["state"]) for s in target["sections"]] == [(".klp.rela.target_mod..text", "fails")]
    assert sym(p, "target_mod", "tgt_fn")["status"] == "sympos_not_found"
    assert target["module_load"] == "refused"
    assert (
        "livepatch: patch 'lp_nofile' failed for module 'target_mod', refusing to load module 'target_mod'"
        in target["reasons"]
    )
    [warning] = [w for w in p["problems"] if w["code"] == "no_patch_file"]
    assert "/sys/module/lp_nofile/sections" in warning["message"] and "/proc/kallsyms" in warning["message"]
    return code, doc


SCENARIOS: dict[str, Callable[..., tuple[int, dict[str, Any]]]] = {
    "loaded_without_file": scenario_loaded_without_file,
    "loaded": scenario_loaded,
    "pending": scenario_pending,
    "refused": scenario_refused,
    "ambiguous": scenario_ambiguous,
    "hidden_addresses": scenario_hidden_addresses,
    "missing": scenario_missing,
    "pre_6_1_sysfs": scenario_pre_6_1_sysfs,
    "stacked_6_14": scenario_stacked_6_14,
    "compressed": scenario_compressed,
    "load_order": scenario_load_order,
    "transition": scenario_transition,
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, doc = SCENARIOS[name](tmp_path, capsys)
    golden(name, doc)


def test_text_output_names_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario_refused(tmp_path, capsys)
    code = main(["status", "--direct", "--root", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    assert "lp_refused" in out and "target_mod(load REFUSED)" in out
    assert "refusing to load module 'target_mod'" in out


def test_loader_checks_are_unknown_on_a_root_without_their_sources(tmp_path: Path, capsys) -> None:
    """A copied host without the kernel's headers, its signing policy or an in-tree module (what `tar` of /proc
    and /sys alone gives): the checks that need them say unknown, the others still decide, the exit code stays."""
    fx = FixtureRoot(tmp_path)
    fx.kernel(RELEASE, tainted=0)
    fx.kallsyms(vmlinux=VMLINUX)
    fx.proc_modules([])
    fx.modules_dep(RELEASE, {"kernel/drivers/target_mod.ko.xz": []})
    lp = patch("lp_new", ("vmlinux", "unique_fn", 0))
    lp.symbol("_printk")  # an import: whether anything exports it needs Module.symvers
    path = fx.file(f"{KPATCH_DIR}/lp-new.ko", lp.build())
    code, doc = run(fx, "check", str(path), capsys=capsys)
    results = {c["check"]: c["result"] for c in one(doc, "lp_new")["load_checks"]}
    assert results == {
        "modules_disabled": "unknown", "signature": "unknown", "module_layout": "ok", "vermagic": "unknown",
        "livepatch_support": "ok", "name": "ok", "symbols": "unknown", "livepatch_tag": "ok", "transition": "ok",
    }  # fmt: skip
    assert one(doc, "lp_new")["will_load"] and code == 0
    loader_side(fx)  # the same host with its headers and policy: every check decides
    fx.modules_dep(RELEASE, {INTREE: [], "kernel/drivers/target_mod.ko.xz": []})
    code, doc = run(fx, "check", str(path), capsys=capsys)
    assert {c["result"] for c in one(doc, "lp_new")["load_checks"]} == {"ok"}
