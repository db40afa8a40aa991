"""The functions a patch replaces, and the description they come in, as klp_enable_patch() and
klp_module_coming() will judge them (kernel/livepatch/core.c, patch.c; kernel-checks.md rows E1, E7-E12, E16, G1, G4).

In the kernel's order, for insmod of the patch:

1. the description itself (:func:`description_faults`): an object with a NULL function list (E1), an object name of
   56 characters or more (E8), a function with a NULL ``old_name`` or ``new_func`` or a name the kernel's
   KSYM_NAME_LEN does not hold (E9) are refused with -EINVAL and nothing logged; two objects, or two functions of
   one object, with one sysfs name fail kobject_add() with -EEXIST (E7);
2. for each object whose target is there now (vmlinux, a loaded module), each function is looked up with
   klp_find_object_symbol() (E11, :func:`klpd.predict.lookup.find_in_object`), and later given an ftrace location
   (E16, tracefs available_filter_functions; "not checked" where it cannot be read).

A module object that is not loaded is judged when the module loads (klp_module_coming(): its .ko's full symtab);
a failure there refuses that module's load. An object whose name no module can carry ("x.ko", "a-b", the string
"vmlinux") and a ``.klp.rela.<obj>`` section whose ``<obj>`` names no object are accepted and never applied (G4):
errors, since the patch does not do what it says.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from klpd import kernel_messages as msg
from klpd.kernel_version import KernelSemantics
from klpd.model import MODULE_NAME_MAX, VMLINUX, ModuleSymtab, PatchModule, Problem, Severity, SymbolStatus
from klpd.model_description import (
    FunctionDescription,
    FunctionResult,
    FunctionStatus,
    ObjectDescription,
    PatchDescription,
)
from klpd.predict.inputs import SystemState
from klpd.predict.lookup import Found, find_in_object, lookup_message


@dataclass(frozen=True)
class DescriptionFaults:
    """What klp_enable_patch() refuses in the description itself, and what it accepts but never applies."""

    refusals: tuple[str, ...]  # why insmod fails (E1, E7-E9), quoting the kernel where it logs
    problems: tuple[Problem, ...]  # one per fault, refusals and never-applied objects or sections alike
    first_refusal: Problem | None = None  # the fault the kernel stops at


def never_matches(name: str) -> str | None:
    """Why no module can be named ``name`` (module names are KBUILD_MODNAME: no '.', '-' becomes '_'), else None."""
    if name == VMLINUX:
        return "the string 'vmlinux' names no module (the core kernel's object has a NULL name)"
    if "." in name:
        return "module names never contain '.' (a file name such as 'x.ko' is not a module name)"
    if "-" in name:
        return "module names never contain '-' (kbuild turns it into '_')"
    return None


def description_faults(module: PatchModule, desc: PatchDescription, semantics: KernelSemantics) -> DescriptionFaults:
    refusals: list[str] = []
    problems: list[Problem] = []
    refusing: list[Problem] = []

    def fault(code: str, message: str, subject: str, refusal: str | None = None, never: bool = False) -> None:
        problems.append(Problem(code, Severity.ERROR, message, refusal, subject))
        if not never:
            refusals.append(refusal or message)
            refusing.append(problems[-1])

    ksym_name_max = semantics.ksym_name_max
    silent = "klp_enable_patch() refuses it with EINVAL and logs nothing"
    if not desc.objects:
        # klp_enable_patch() walks no object and enables a patch that changes nothing (klp-build's init refuses
        # this itself, "nothing to patch!", but then its sections are not there to read).
        message = "the patch describes no object: it loads and patches nothing"
        problems.append(Problem("description_no_objects", Severity.WARNING, message, subject=module.name))
    seen = Counter(o.kernel_name for o in desc.objects)
    for obj in desc.objects:
        name = obj.kernel_name
        if obj.functions is None:
            fault("object_without_functions", f"object '{name}' has a NULL function list: {silent}", name)
        if obj.name is not None and len(obj.name) > MODULE_NAME_MAX:
            fault("object_name_too_long", f"object name '{name}' is longer than {MODULE_NAME_MAX}: {silent}", name)
        elif obj.name is not None and (why := never_matches(obj.name)) is not None:
            message = f"object '{name}' is never patched: {why}; the kernel accepts it and logs nothing"
            fault("object_never_patched", message, name, never=True)
        for func in obj.functions or ():
            subject = f"{name}:{func.old_name}"
            if func.old_name is None or not func.new_func_set:
                what = "old_name" if func.old_name is None else "new_func"
                fault("function_invalid", f"a function of object '{name}' has a NULL {what}: {silent}", subject)
            elif len(func.old_name) > ksym_name_max:
                message = f"function name '{func.old_name[:40]}...' is longer than {ksym_name_max}: {silent}"
                fault("function_invalid", message, subject)
        dirs = Counter(f.sysfs_name for f in obj.functions or () if f.old_name is not None)
        for dup, n in dirs.items():
            if n > 1:
                message = f"object '{name}' lists function '{dup}' {n} times: kobject_add() fails with EEXIST"
                fault("function_duplicated", message, f"{name}:{dup}", msg.kobject_exists(semantics, dup))
    for dup, n in seen.items():
        if n > 1:
            message = f"the patch has {n} objects named '{dup}': kobject_add() fails with EEXIST"
            fault("object_duplicated", message, dup, msg.kobject_exists(semantics, dup))
    names = set(seen)
    for section in module.sections:
        obj_name = section.object
        if section.is_livepatch and obj_name is not None and obj_name != VMLINUX and obj_name not in names:
            message = (
                f"section {section.name} is for object '{obj_name}', which the patch does not describe: the kernel"
                " never writes its relocations, and the patched code will use 0 where they point"
            )
            fault("section_without_object", message, section.name, never=True)
    return DescriptionFaults(tuple(dict.fromkeys(refusals)), tuple(problems), refusing[0] if refusing else None)


def judge_functions(
    system: SystemState, patch: str, obj: ObjectDescription, symtab: ModuleSymtab | Problem | None, ksym_name_max: int
) -> tuple[FunctionResult, ...]:
    """Each function of ``obj``: resolved where the kernel will look, traceable, and who owns it now."""
    name = obj.kernel_name
    never = obj.name is not None and (never_matches(obj.name) is not None or len(obj.name) > MODULE_NAME_MAX)
    loaded = system.is_loaded(name)
    out = []
    for func in obj.functions or ():
        if func.old_name is None or not func.new_func_set or len(func.old_name) > ksym_name_max:
            out.append(_result(func, FunctionStatus.INVALID))
            continue
        owner = system.function_owners.get((name, func.old_name, func.old_sympos or 1))
        if never:
            out.append(_result(func, None, owner=owner))
            continue
        found = find_in_object(
            system.kallsyms, loaded, name, func.old_name, func.old_sympos, symtab=symtab if name != VMLINUX else None
        )
        if found.status is None:
            out.append(_result(func, None, owner=owner))
            continue
        status = FunctionStatus(found.status.value)
        message = lookup_message(found.status, name, func.old_name, func.old_sympos)
        traceable = None
        if found.status is SymbolStatus.OK:
            traceable = _traceable(system, name, func.old_name, found, symtab, loaded=loaded)
            if traceable is False:
                status = FunctionStatus.NOT_TRACEABLE
                message = msg.NO_FTRACE_LOCATION.format(name=func.old_name)
        out.append(
            FunctionResult(
                name=func.old_name,
                sympos=func.old_sympos,
                status=status,
                new_func=func.new_func,
                occurrences=found.occurrences,
                load_order_dependent=found.load_order_dependent,
                kernel_message=message,
                traceable=traceable,
                owner=owner,
            )
        )
    return tuple(out)


def _traceable(
    system: SystemState, obj: str, name: str, found: Found, symtab: ModuleSymtab | Problem | None, *, loaded: bool
) -> bool | None:
    """Whether klp_patch_func() will find an ftrace location: tracefs for what is loaded (where root can read it),
    else the ``__mcount_loc`` call sites of the module's .ko for the entry the lookup resolves to."""
    if loaded and system.ftrace is not None:
        records = system.ftrace.count(obj, name)
        if records == 0:
            return False
        return True if records >= (found.occurrences or 0) else None  # some copies untraced: which one is unknown
    if isinstance(symtab, ModuleSymtab) and symtab.mcount and found.entry is not None:
        return bool(symtab.flags[found.entry] & ModuleSymtab.TRACEABLE)
    return None


def _result(func: FunctionDescription, status: FunctionStatus | None, owner: str | None = None) -> FunctionResult:
    return FunctionResult(func.old_name or "", func.old_sympos, status, func.new_func, owner=owner)


def failing(functions: Sequence[FunctionResult]) -> list[FunctionResult]:
    return [f for f in functions if f.status is not None and f.status is not FunctionStatus.OK]


def enable_refusals(patch: str, obj: str, functions: Sequence[FunctionResult]) -> list[str]:
    """What klp_enable_patch() logs for the functions of an object that is there now, in its order: the lookups
    (klp_init_object_loaded()), then the ftrace locations (__klp_enable_patch())."""
    bad = failing(functions)
    lookups = [f.kernel_message or "" for f in bad if f.status is not FunctionStatus.NOT_TRACEABLE and f.kernel_message]
    if lookups:
        return lookups
    ftrace = [f.kernel_message or "" for f in bad if f.status is FunctionStatus.NOT_TRACEABLE]
    if ftrace:
        return [ftrace[0], msg.PATCH_OBJECT_FAILED.format(object=obj), msg.ENABLE_FAILED.format(patch=patch)]
    return []
