"""One patch on this host: its objects (sections, symbols, the module loads they decide) and whether it loads."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from klpd.model import (
    VMLINUX,
    HostStatus,
    ModuleLoad,
    ModuleSymtab,
    ObjectStatus,
    PatchStatus,
    Problem,
    SectionResult,
    Severity,
    SymbolResult,
    SysfsPatch,
)
from klpd.model_description import FunctionResult
from klpd.predict.functions import DescriptionFaults, description_faults, failing, judge_functions
from klpd.predict.inputs import PatchInput, SystemState
from klpd.predict.loader import load_checks, load_reasons
from klpd.predict.module_load import module_load
from klpd.predict.running import running_sections
from klpd.predict.sections import PatchEvaluation, file_sections, section_result
from klpd.predict.states import replaced_by


def compute_status(
    system: SystemState, patches: Iterable[PatchInput], candidates: Iterable[PatchInput] = ()
) -> HostStatus:
    """The livepatch status of the host: one PatchStatus per input, in input order; ``candidates`` (the staging
    directories' files, each judged as insmod of it now) apart, in :attr:`HostStatus.candidates`."""
    return HostStatus(
        kernel_release=system.kernel.release,
        tainted=system.kernel.tainted,
        livepatch_tainted=system.kernel.livepatch_tainted,
        livepatch_supported=system.kernel.livepatch_supported,
        kallsyms_addresses_visible=system.kallsyms.addresses_visible,
        patches=tuple(patch_status(system, p) for p in patches),
        problems=system.problems + system.semantics.problems,
        candidates=tuple(patch_status(system, p) for p in candidates),
    )


def _evaluate(
    system: SystemState, p: PatchInput, sysfs: SysfsPatch | None
) -> tuple[dict[str, list[SectionResult]], dict[str, list[SymbolResult]]]:
    """Section and symbol results by object, from the file, else from what the kernel shows of a loaded patch."""
    sections: dict[str, list[SectionResult]] = {}
    symbols: dict[str, list[SymbolResult]] = {}
    running = system.running_patches.get(p.name)
    if p.module is not None:
        flagged, elf_symbols = file_sections(p.module), p.module.symbols
        evaluation = PatchEvaluation(system, elf_symbols, p.target_symtabs, p.module.symtab_index)
    elif running is not None:
        flagged, elf_symbols = running_sections(running)  # a loaded patch whose file was not found
        evaluation = PatchEvaluation(system, elf_symbols, p.target_symtabs)
    else:
        return sections, symbols
    patched = {o.name: o.patched for o in sysfs.objects} if sysfs else {}
    # Before 6.1 sysfs has no <object>/patched: the kernel's resolved .klp.sym.<object>.* addresses in kallsyms
    # say instead that it applied the object's sections (seen on 5.10).
    resolved = (running.resolved_objects or frozenset()) if running is not None else frozenset()
    for section in flagged:
        shown = patched.get(section.object)
        applied = shown if shown is not None else (section.object in resolved or None)
        sections.setdefault(section.object, []).append(section_result(evaluation, system, section, applied))
    for symbol, first_use in evaluation.symbol_results(flagged):
        home = symbol.object or first_use
        if home is not None:
            symbols.setdefault(home, []).append(symbol)
    return sections, symbols


def _functions(system: SystemState, p: PatchInput, sysfs: SysfsPatch | None) -> dict[str, tuple[FunctionResult, ...]]:
    """Each object's replaced functions: judged from the file's description, else as sysfs lists them."""
    desc = p.module.description if p.module else None
    out: dict[str, tuple[FunctionResult, ...]] = {}
    if desc is not None:
        width = system.semantics.ksym_name_max
        for obj in desc.objects:
            judged = judge_functions(system, p.name, obj, p.target_symtabs.get(obj.kernel_name), width)
            out[obj.kernel_name] = out.get(obj.kernel_name, ()) + judged
    elif sysfs is not None:
        for sysfs_obj in sysfs.objects:
            out[sysfs_obj.name] = tuple(
                FunctionResult(
                    f.name, f.sympos, None, owner=system.function_owners.get((sysfs_obj.name, f.name, f.sympos))
                )
                for f in sysfs_obj.functions
            )
    return out


def _objects(system: SystemState, p: PatchInput, sysfs: SysfsPatch | None) -> tuple[ObjectStatus, ...]:
    sysfs_objects = {o.name: o for o in sysfs.objects} if sysfs else {}
    sections, symbols = _evaluate(system, p, sysfs)
    functions = _functions(system, p, sysfs)
    names = set(sections) | set(symbols) | set(sysfs_objects) | set(functions)
    out = []
    for name in sorted(names, key=lambda n: (n != VMLINUX, n)):
        loaded = system.is_loaded(name)
        obj_sections = tuple(sections.get(name, ()))
        load: ModuleLoad | None = None
        reasons: tuple[str, ...] = ()
        target_path = None
        if not loaded:
            symtab = p.target_symtabs.get(name)
            target_path = symtab.path if isinstance(symtab, ModuleSymtab) else None
            load, reasons = module_load(p.name, name, obj_sections, system, symtab, functions=functions.get(name, ()))
        sysfs_obj = sysfs_objects.get(name)
        out.append(
            ObjectStatus(
                name=name,
                loaded=loaded,
                patched=sysfs_obj.patched if sysfs_obj else None,
                module_load=load,
                target_path=target_path,
                reasons=reasons,
                sections=obj_sections,
                symbols=tuple(symbols.get(name, ())),
                functions=functions.get(name, ()),
            )
        )
    return tuple(out)


def _file_problems(system: SystemState, p: PatchInput, loaded: bool) -> list[Problem]:
    """What differs between the file and the loaded patch, or that the file is missing."""
    module = p.module
    if loaded and module is not None:
        loaded_src = system.loaded_srcversions.get(p.name)
        if loaded_src and module.modinfo.srcversion and loaded_src != module.modinfo.srcversion:
            message = (
                f"the loaded module '{p.name}' (srcversion {loaded_src}) is not the file {module.path}"
                f" (srcversion {module.modinfo.srcversion})"
            )
            return [Problem("loaded_differs_from_file", Severity.WARNING, message, subject=module.path)]
    if loaded and module is None:
        if p.name in system.running_patches:
            message = (
                f"no installed file found for loaded patch '{p.name}': its sections and symbols are those the running"
                f" kernel shows (/sys/module/{p.name}/sections, /proc/kallsyms), without relocation counts, each"
                " symbol taken as used by the sections of its own object"
            )
        else:
            message = f"no installed file found for loaded patch '{p.name}': its sections and symbols were not checked"
        return [Problem("no_patch_file", Severity.WARNING, message, subject=p.name)]
    return []


def patch_status(system: SystemState, p: PatchInput) -> PatchStatus:
    sysfs = next((lp for lp in system.livepatches if lp.name == p.name), None)
    loaded = sysfs is not None or p.name in system.modules
    module = p.module
    problems = list(module.problems) if module else []
    if p.file_problem is not None:
        problems.append(p.file_problem)
    objects = _objects(system, p, sysfs)
    faults: DescriptionFaults | None = None
    if module is not None and module.description is not None:
        faults = description_faults(module, module.description, system.semantics)
        problems.extend(faults.problems)
    release = system.kernel.release
    for obj in objects:
        if obj.module_load is ModuleLoad.UNKNOWN and system.modules_dep_read and obj.name not in system.known_modules:
            problems.append(
                Problem(
                    "object_module_unknown",
                    Severity.WARNING,
                    f"object '{obj.name}' names a module that modules.dep of {release} does not know:"
                    " the kernel will never apply its sections",
                    subject=obj.name,
                )
            )
    verdict = load_checks(system, p, loaded and not p.candidate, objects, faults)
    reasons, load_problems = load_reasons(system, p, loaded and not p.candidate, objects, verdict)
    problems.extend(load_problems)
    problems.extend(_file_problems(system, p, loaded))
    desc = module.description if module else None
    replace = sysfs.replace if sysfs else (desc.replace if desc else None)
    if not loaded and not reasons:
        objects = _owned_after(objects, p.name)
    return PatchStatus(
        name=p.name,
        path=p.path or (module.path if module else None),
        loaded=loaded,
        enabled=sysfs.enabled if sysfs else None,
        transition=sysfs.transition if sysfs else None,
        replace=replace,
        stack_order=sysfs.stack_order if sysfs else None,
        vermagic=module.modinfo.vermagic if module else None,
        srcversion=module.modinfo.srcversion if module else system.loaded_srcversions.get(p.name),
        will_load=not reasons,
        reasons=tuple(reasons),
        objects=objects,
        problems=tuple(problems),
        load_checks=verdict.checks,
        signature=module.signature if module else None,
        replaces=replaced_by(system, p.name, replace) if not loaded else (),
    )


def _owned_after(objects: tuple[ObjectStatus, ...], patch: str) -> tuple[ObjectStatus, ...]:
    """A patch that will load owns each of its functions that resolves, once its transition completes."""
    out = []
    for obj in objects:
        funcs = tuple(
            dataclasses.replace(f, owner_after=patch if f.status is not None and not failing([f]) else f.owner)
            for f in obj.functions
        )
        out.append(dataclasses.replace(obj, functions=funcs))
    return tuple(out)
