"""The functions a patch replaces, judged as klp_enable_patch() and klp_module_coming() will (kernel-checks.md E1,
E5, E7-E12, E16, G1, G4), on hand-made hosts. The description is set on the parsed module here; reading it from
real files is tests/test_elf_description*.py's job, and the real kernel's verdicts are tests/test_vm_descriptions.py.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from status_fixture import patch_with, system, target_symtab

from klpd import kernel_messages as msg
from klpd.elf import parse_patch_module
from klpd.model import ModuleLoad, ObjectStatus, PatchStatus, SysfsFunction, SysfsObject, SysfsPatch
from klpd.model_description import (
    FoundBy,
    FunctionDescription,
    FunctionResult,
    FunctionStatus,
    ObjectDescription,
    PatchDescription,
    StateDescription,
)
from klpd.model_loader import CheckResult, LoadCheckName
from klpd.outputs.json import status_document, status_from_document
from klpd.predict import PatchInput, SystemState, compute_status, patch_has_problems
from klpd.sources.ftrace import FtraceIndex, parse_filter_functions

NAME = "livepatch_test"


def fn(name: str | None, sympos: int = 0, new: str | None = "lp_fn") -> FunctionDescription:
    return FunctionDescription(name, sympos, new, new is not None)


def desc(*objects: ObjectDescription, states: tuple[StateDescription, ...] = (), replace: bool | None = False):  # type: ignore[no-untyped-def]
    return PatchDescription(FoundBy.STATIC, "symbol 'patch' in .data", replace, states, objects)


def vmlinux(*funcs: FunctionDescription) -> ObjectDescription:
    return ObjectDescription(None, funcs)


def judge(
    description: PatchDescription,
    state: SystemState | None = None,
    uses: tuple[tuple[str, str, int], ...] = (("vmlinux", "unique_fn", 0),),
    symtabs: dict[str, object] | None = None,
) -> PatchStatus:
    module = parse_patch_module(patch_with(*uses).build(), f"/x/{NAME}.ko")
    module = dataclasses.replace(module, description=description)
    state = state or traced(system())
    return compute_status(state, [PatchInput(NAME, module, symtabs or {}, candidate=True)]).patches[0]  # type: ignore[arg-type]


def traced(state: SystemState, text: str = "unique_fn\ndup_fn\ndup_fn\nmod_fn [loaded_mod]\nmod_dup [loaded_mod]\n"):  # type: ignore[no-untyped-def]
    wanted = {"unique_fn", "dup_fn", "mod_fn", "mod_dup", "notrace_fn"}
    return dataclasses.replace(state, ftrace=parse_filter_functions(text, "/sys/kernel/tracing/x", wanted))


def obj(p: PatchStatus, name: str) -> ObjectStatus:
    return next(o for o in p.objects if o.name == name)


def funcs(p: PatchStatus, name: str) -> list[tuple[str, int, FunctionStatus | None]]:
    return [(f.name, f.sympos, f.status) for f in obj(p, name).functions]


def check(p: PatchStatus, which: LoadCheckName):  # type: ignore[no-untyped-def]
    return next(c for c in p.load_checks if c.check is which)


def test_vmlinux_functions_resolve_with_the_kernels_sympos_rules() -> None:
    p = judge(desc(vmlinux(fn("unique_fn"), fn("dup_fn", 1), fn("dup_fn", 2))))
    assert funcs(p, "vmlinux") == [
        ("unique_fn", 0, FunctionStatus.OK),
        ("dup_fn", 1, FunctionStatus.OK),
        ("dup_fn", 2, FunctionStatus.OK),
    ]
    assert p.will_load and check(p, LoadCheckName.FUNCTIONS).result is CheckResult.OK
    assert all(f.traceable for f in obj(p, "vmlinux").functions)
    assert not patch_has_problems(p)


def test_a_function_that_does_not_resolve_in_vmlinux_refuses_the_patch_with_the_kernels_message() -> None:
    p = judge(desc(vmlinux(fn("dup_fn"), fn("dup_fn", 3), fn("gone_fn"))))
    assert funcs(p, "vmlinux") == [
        ("dup_fn", 0, FunctionStatus.AMBIGUOUS),
        ("dup_fn", 3, FunctionStatus.SYMPOS_NOT_FOUND),
        ("gone_fn", 0, FunctionStatus.NOT_FOUND),
    ]
    ambiguous = "livepatch: unresolvable ambiguity for symbol 'dup_fn' in object '(null)'"
    assert obj(p, "vmlinux").functions[0].kernel_message == ambiguous
    assert not p.will_load
    assert p.reasons[0] == ambiguous  # the kernel stops at the first; all are listed in its order
    assert "livepatch: symbol 'gone_fn' not found in symbol table" in p.reasons
    functions = check(p, LoadCheckName.FUNCTIONS)
    assert (functions.result, functions.errno, functions.kernel_message) == (CheckResult.FAILS, "EINVAL", ambiguous)


def test_a_loaded_modules_functions_are_looked_up_in_its_kallsyms() -> None:
    p = judge(desc(ObjectDescription("loaded_mod", (fn("mod_fn"), fn("mod_dup")))))
    assert funcs(p, "loaded_mod") == [("mod_fn", 0, FunctionStatus.OK), ("mod_dup", 0, FunctionStatus.AMBIGUOUS)]
    assert not p.will_load
    assert "livepatch: unresolvable ambiguity for symbol 'mod_dup' in object 'loaded_mod'" in p.reasons


def test_a_module_loaded_later_is_judged_in_its_ko_and_its_load_is_refused() -> None:
    symtab = target_symtab(("target_fn", ".text"))
    good = judge(desc(ObjectDescription("target_mod", (fn("target_fn"),))), symtabs={"target_mod": symtab})
    assert funcs(good, "target_mod") == [("target_fn", 0, FunctionStatus.OK)]
    assert obj(good, "target_mod").module_load is ModuleLoad.OK and good.will_load
    assert obj(good, "target_mod").functions[0].traceable is None  # not loaded: tracefs cannot say

    bad = judge(desc(ObjectDescription("target_mod", (fn("missing_fn"),))), symtabs={"target_mod": symtab})
    assert bad.will_load  # the patch loads: the module is judged when it comes
    target = obj(bad, "target_mod")
    assert target.module_load is ModuleLoad.REFUSED
    assert target.reasons == (
        "livepatch: symbol 'missing_fn' not found in symbol table",
        msg.PATCH_INIT_FAILED.format(patch=NAME, module="target_mod", errno=-22),
        msg.MODULE_LOAD_REFUSED.format(patch=NAME, module="target_mod"),
    )
    assert patch_has_problems(bad)


def test_a_module_without_a_readable_ko_leaves_its_functions_undetermined() -> None:
    p = judge(desc(ObjectDescription("target_mod", (fn("target_fn"),))))
    assert funcs(p, "target_mod") == [("target_fn", 0, None)]
    assert obj(p, "target_mod").module_load is ModuleLoad.UNKNOWN


def test_a_function_ftrace_has_no_record_of_is_refused_after_it_resolves() -> None:
    state = traced(system(kallsyms="ffffffff81000000 T _text\nffffffff81001000 t notrace_fn\n"), text="other\n")
    p = judge(desc(vmlinux(fn("notrace_fn"))), state, uses=(("vmlinux", "notrace_fn", 0),))
    f = obj(p, "vmlinux").functions[0]
    assert (f.status, f.traceable) == (FunctionStatus.NOT_TRACEABLE, False)
    assert p.reasons == (
        "livepatch: failed to find location for function 'notrace_fn'",
        "livepatch: failed to patch object 'vmlinux'",
        f"livepatch: failed to enable patch '{NAME}'",
    )


def test_without_tracefs_the_ftrace_check_is_unknown_and_the_function_still_resolves() -> None:
    p = judge(desc(vmlinux(fn("unique_fn"))), system())
    f = obj(p, "vmlinux").functions[0]
    assert (f.status, f.traceable) == (FunctionStatus.OK, None)
    functions = check(p, LoadCheckName.FUNCTIONS)
    assert functions.result is CheckResult.UNKNOWN and "not readable" in functions.detail
    assert p.will_load


def test_a_null_function_list_or_name_is_refused_silently() -> None:
    for bad in (ObjectDescription(None, None), vmlinux(fn(None, new="lp_fn")), vmlinux(fn("unique_fn", new=None))):
        p = judge(desc(bad))
        described = check(p, LoadCheckName.DESCRIPTION)
        assert (described.result, described.errno, described.kernel_message) == (CheckResult.FAILS, "EINVAL", None)
        assert not p.will_load and "logs nothing" in p.reasons[0]


def test_objects_or_functions_with_one_sysfs_name_fail_with_eexist() -> None:
    p = judge(desc(vmlinux(fn("unique_fn")), vmlinux(fn("dup_fn", 1))))
    described = check(p, LoadCheckName.DESCRIPTION)
    assert (described.result, described.errno) == (CheckResult.FAILS, "EEXIST")
    assert described.kernel_message == msg.KOBJECT_EXISTS.format(name="vmlinux")
    # sympos 0 and 1 make the same directory "unique_fn,1"
    p = judge(desc(vmlinux(fn("unique_fn"), fn("unique_fn", 1))))
    assert check(p, LoadCheckName.DESCRIPTION).kernel_message == msg.KOBJECT_EXISTS.format(name="unique_fn,1")


def test_a_duplicate_reaches_insmod_as_ebusy_since_7_1_and_kobject_prefixes_its_line_since_6_4() -> None:
    """do_init_module() turns init's -EEXIST into -EBUSY since 7.1, and lib/kobject.c has pr_fmt "kobject: " since
    6.4 (VM: 7.2 refuses a klp-build patch with two vmlinux objects with "Device or resource busy" and a prefixed
    line, 6.1 a static one with "File exists" and a bare line)."""
    duplicate = desc(vmlinux(fn("unique_fn")), vmlinux(fn("dup_fn", 1)))
    seen = []
    for release in ("6.1.0-57-amd64", "6.4.0-1-amd64", "7.1.0-1-amd64", "7.2.13+deb14-amd64"):
        described = check(judge(duplicate, traced(system(release=release))), LoadCheckName.DESCRIPTION)
        seen.append((described.errno, described.kernel_message.split("kobject_add_internal")[0]))
    assert seen == [("EEXIST", ""), ("EEXIST", "kobject: "), ("EBUSY", "kobject: "), ("EBUSY", "kobject: ")]


def test_an_object_no_module_can_carry_loads_and_is_an_error() -> None:
    for name in ("dummy.ko", "my-mod", "vmlinux"):  # a NULL-named object beside "vmlinux" would be a duplicate
        p = judge(desc(ObjectDescription(name, (fn("f"),))))
        assert p.will_load, name  # accepted by klp_init_object(): never matched, nothing logged
        assert [q.code for q in p.problems if q.severity == "error"] == ["object_never_patched"], name
        assert funcs(p, name) == [("f", 0, None)]
        assert patch_has_problems(p)
    p = judge(desc(ObjectDescription("m" * 56, (fn("f"),))))
    assert not p.will_load and check(p, LoadCheckName.DESCRIPTION).errno == "EINVAL"


def test_a_module_section_without_an_object_is_an_error_the_kernel_never_applies() -> None:
    p = judge(desc(vmlinux(fn("unique_fn"))), uses=(("target_mod", "target_fn", 0),))
    problem = next(q for q in p.problems if q.code == "section_without_object")
    assert problem.severity == "error" and "target_mod" in problem.message
    assert p.will_load and patch_has_problems(p)


def loaded_patch(name: str, *functions: SysfsFunction, order: int | None = None) -> SysfsPatch:
    return SysfsPatch(name, True, False, True, None, order, (SysfsObject("vmlinux", True, functions),))


def with_loaded(state: SystemState, *descriptions: tuple[SysfsPatch, PatchDescription | None]) -> SystemState:
    patches = tuple(lp for lp, _ in descriptions)
    base = system(livepatches=patches)
    known = {lp.name: d for lp, d in descriptions if d is not None}
    return dataclasses.replace(base, ftrace=state.ftrace, loaded_descriptions=known)


def test_states_must_be_kept_by_a_newer_patch() -> None:
    old = desc(vmlinux(fn("dup_fn", 1)), states=(StateDescription(1, 2),))
    host = with_loaded(traced(system()), (loaded_patch("lp_old", SysfsFunction("dup_fn", 1)), old))
    cases = [
        (desc(vmlinux(fn("unique_fn")), states=(StateDescription(1, 1),)), CheckResult.FAILS),
        (desc(vmlinux(fn("unique_fn")), states=(StateDescription(1, 2),)), CheckResult.OK),
        (desc(vmlinux(fn("unique_fn")), replace=True), CheckResult.FAILS),
        (desc(vmlinux(fn("unique_fn")), replace=False), CheckResult.OK),
        (desc(vmlinux(fn("unique_fn")), replace=None), CheckResult.UNKNOWN),
    ]
    for new, result in cases:
        p = judge(new, host)
        states = check(p, LoadCheckName.STATES)
        assert states.result is result, (new, states)
        if result is CheckResult.FAILS:
            message = f"livepatch: Livepatch patch ({NAME}) is not compatible with the already installed livepatches."
            assert states.kernel_message == message and message in p.reasons and not p.will_load


def test_owners_on_the_func_stack_and_what_a_replace_patch_replaces() -> None:
    host = with_loaded(
        traced(system()),
        (loaded_patch("lp_a", SysfsFunction("unique_fn", 1), order=1), None),
        (loaded_patch("lp_b", SysfsFunction("unique_fn", 1), order=2), None),
    )
    p = judge(desc(vmlinux(fn("unique_fn"), fn("dup_fn", 2)), replace=True), host)
    owners = [(f.name, f.owner, f.owner_after) for f in obj(p, "vmlinux").functions]
    assert owners == [("unique_fn", "lp_b", NAME), ("dup_fn", None, NAME)]
    assert p.replaces == ("lp_a", "lp_b") and p.replace is True
    assert check(p, LoadCheckName.STATES).result is CheckResult.UNKNOWN  # lp_a, lp_b: no files, states unknown


def test_without_stack_order_the_newest_module_is_the_top_of_the_stack() -> None:
    state = system(livepatches=(loaded_patch("lp_a", SysfsFunction("unique_fn", 1)),
                                loaded_patch("lp_b", SysfsFunction("unique_fn", 1))))  # fmt: skip
    # /proc/modules lists the newest module first: here lp_a, so lp_a was enabled last and is on top
    assert list(state.modules) == ["loaded_mod", "lp_a", "lp_b"]
    assert state.patch_stack == ("lp_b", "lp_a")
    assert state.function_owners[("vmlinux", "unique_fn", 1)] == "lp_a"
    newest_b = dataclasses.replace(state, modules=dict(reversed(list(state.modules.items()))))
    assert newest_b.patch_stack == ("lp_a", "lp_b")
    assert newest_b.function_owners[("vmlinux", "unique_fn", 1)] == "lp_b"


def test_function_verdicts_survive_the_daemons_json() -> None:
    p = judge(desc(vmlinux(fn("dup_fn"), fn("unique_fn"))))
    status = compute_status(traced(system()), [])
    status = dataclasses.replace(status, patches=(p,))
    again = status_from_document(status_document(status, "daemon"))
    assert again.patches[0].objects == p.objects
    assert isinstance(again.patches[0].objects[0].functions[0], FunctionResult)


def test_ftrace_index_counts_records_per_object_and_ignores_other_names() -> None:
    index = parse_filter_functions("a\na\nb [m]\na [m]\nc\n", "/t", {"a", "b"})
    assert isinstance(index, FtraceIndex)
    assert index.records == Counter({("vmlinux", "a"): 2, ("m", "b"): 1, ("m", "a"): 1})
    assert index.count("vmlinux", "c") == 0


def test_the_human_view_names_each_refused_function_with_the_kernels_words() -> None:
    from klpd.outputs.text import render_patch_details

    p = judge(desc(vmlinux(fn("unique_fn"), fn("gone_fn", new="lp_gone"))))
    text = "\n".join(render_patch_details(p))
    assert "functions: 1 ok, 1 not_found" in text
    assert "function not_found           gone_fn,0 -> lp_gone" in text
    assert "kernel: livepatch: symbol 'gone_fn' not found in symbol table" in text
    assert "unique_fn" not in text.split("functions:")[1]  # an ok function only with -v
    assert "function ok                  unique_fn,0 -> lp_fn" in "\n".join(render_patch_details(p, verbose=True))
