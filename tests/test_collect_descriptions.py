"""The description end to end through collect: files on a fixture host, tracefs, and the loaded patches' files
(whose states klpctl check compares against), as ``klpctl check`` and ``klpctl status --direct`` read them."""

from __future__ import annotations

from pathlib import Path

from descriptions import X86_64, build, static_patch
from fixtures import RELEASE, FixtureRoot, LivepatchObject

from klpd.collect import evaluate_files, evaluate_host
from klpd.model_description import FunctionStatus
from klpd.model_loader import CheckResult, LoadCheckName


def patch_bytes(name: str, funcs: list[tuple[str, str, int]], states: list[tuple[int, int]]) -> bytes:
    m = static_patch(X86_64, [(None, list(funcs), [])], states=states)
    assert m.modinfo is not None
    m.modinfo = [(k, name if k == "name" else v) for k, v in m.modinfo]
    return build(m)


def host(tmp_path: Path, tracefs: str | None) -> FixtureRoot:
    fx = FixtureRoot(tmp_path)
    fx.kernel(RELEASE)
    fx.kallsyms(vmlinux=[(0xFFFFFFFF81000000, "T", "_text"), (0xFFFFFFFF81001000, "t", "cmdline_proc_show"),
                         (0xFFFFFFFF81002000, "t", "notrace_fn")])  # fmt: skip
    fx.proc_modules(["lp_old 16384 1 - Live 0xffffffffc0000000 (K)"])
    fx.modules_dep(RELEASE, {})
    fx.livepatch("lp_old", objects=[LivepatchObject("vmlinux", patched=True, functions=[("cmdline_proc_show", 0)])])
    fx.sys_module("lp_old")
    fx.write(f"/var/lib/kpatch/{RELEASE}/lp_old.ko", patch_bytes("lp_old", [("cmdline_proc_show", "lp_a", 0)],
                                                                [(7, 2)]))  # fmt: skip
    if tracefs is not None:
        fx.write("/sys/kernel/tracing/available_filter_functions", tracefs)
    return fx


def test_check_judges_functions_ftrace_states_and_owners(tmp_path: Path) -> None:
    fx = host(tmp_path, "cmdline_proc_show\nother_fn\n")
    candidate = fx.write("/tmp/lp_new.ko", patch_bytes(
        "lp_new", [("cmdline_proc_show", "lp_b", 0), ("notrace_fn", "lp_c", 0)], [(7, 1)]))  # fmt: skip
    status = evaluate_files(fx.root, [candidate])
    p = status.patches[0]
    vmlinux = next(o for o in p.objects if o.name == "vmlinux")
    assert [(f.name, f.status, f.traceable, f.owner) for f in vmlinux.functions] == [
        ("cmdline_proc_show", FunctionStatus.OK, True, "lp_old"),
        ("notrace_fn", FunctionStatus.NOT_TRACEABLE, False, None),
    ]
    checks = {c.check: c for c in p.load_checks}
    # lp_old's state 7 is at version 2 in its installed file; this patch brings version 1
    assert checks[LoadCheckName.STATES].result is CheckResult.FAILS
    assert not p.will_load
    assert (
        p.reasons[0] == "livepatch: Livepatch patch (lp_new) is not compatible with the already installed livepatches."
    )


def test_without_tracefs_ftrace_is_unknown_and_status_lists_the_loaded_patchs_functions(tmp_path: Path) -> None:
    fx = host(tmp_path, None)
    status = evaluate_host(fx.root)
    old = next(p for p in status.patches if p.name == "lp_old")
    vmlinux = next(o for o in old.objects if o.name == "vmlinux")
    assert [(f.name, f.sympos, f.status, f.traceable, f.owner) for f in vmlinux.functions] == [
        ("cmdline_proc_show", 0, FunctionStatus.OK, None, "lp_old")
    ]
    checks = {c.check: c for c in old.load_checks}
    assert checks[LoadCheckName.FUNCTIONS].result is CheckResult.UNKNOWN
    assert checks[LoadCheckName.STATES].result is CheckResult.OK  # no other patch loaded


def test_the_ftrace_index_is_read_again_only_when_modules_come_or_go(tmp_path: Path) -> None:
    from klpd.sources.ftrace import FtraceCache

    fx = FixtureRoot(tmp_path)
    fx.write("/sys/kernel/tracing/available_filter_functions", "f\n")
    cache = FtraceCache()
    first = cache.read(fx.root, {"f"}, ("ext4",))
    assert first is not None and first.count("vmlinux", "f") == 1
    fx.write("/sys/kernel/tracing/available_filter_functions", "f\nf [xfs]\n")
    assert cache.read(fx.root, {"f"}, ("ext4",)) is first  # same modules: the records cannot have changed
    again = cache.read(fx.root, {"f"}, ("ext4", "xfs"))
    assert again is not None and again.count("xfs", "f") == 1


def test_a_module_named_only_by_the_description_has_its_ko_read(tmp_path: Path) -> None:
    """No .klp.rela section for the target: its .ko is still read, for klp_module_coming()'s lookups."""
    from elfwriter import target_module

    from klpd.model import ModuleLoad

    fx = host(tmp_path, None)
    fx.file(f"/lib/modules/{RELEASE}/extra/target_mod.ko", target_module(("target_fn", ".text")))
    fx.modules_dep(RELEASE, {"extra/target_mod.ko": []})
    m = static_patch(X86_64, [("target_mod", [("target_fn", "lp_t", 0), ("gone_fn", "lp_g", 0)], [])])
    candidate = fx.write("/tmp/lp_mod.ko", build(m))
    [p] = evaluate_files(fx.root, [candidate]).patches
    target = next(o for o in p.objects if o.name == "target_mod")
    assert [(f.name, f.status) for f in target.functions] == [
        ("target_fn", FunctionStatus.OK),
        ("gone_fn", FunctionStatus.NOT_FOUND),
    ]
    assert target.module_load is ModuleLoad.REFUSED
    assert target.reasons[0] == "livepatch: symbol 'gone_fn' not found in symbol table"
