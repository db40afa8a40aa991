"""One patch on this host: its objects (sections, symbols, the module loads they decide) and whether it loads."""

from __future__ import annotations

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
from klpd.predict.inputs import PatchInput, SystemState
from klpd.predict.loader import load_checks, load_reasons
from klpd.predict.module_load import module_load
from klpd.predict.running import running_sections
from klpd.predict.sections import PatchEvaluation, file_sections, section_result


def compute_status(system: SystemState, patches: Iterable[PatchInput]) -> HostStatus:
    """The livepatch status of the host: one PatchStatus per input, in input order."""
    return HostStatus(
        kernel_release=system.kernel.release,
        tainted=system.kernel.tainted,
        livepatch_tainted=system.kernel.livepatch_tainted,
        livepatch_supported=system.kernel.livepatch_supported,
        kallsyms_addresses_visible=system.kallsyms.addresses_visible,
        patches=tuple(patch_status(system, p) for p in patches),
        problems=system.problems + system.semantics.problems,
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


def _objects(system: SystemState, p: PatchInput, sysfs: SysfsPatch | None) -> tuple[ObjectStatus, ...]:
    sysfs_objects = {o.name: o for o in sysfs.objects} if sysfs else {}
    sections, symbols = _evaluate(system, p, sysfs)
    names = set(sections) | set(symbols) | set(sysfs_objects)
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
            load, reasons = module_load(p.name, name, obj_sections, system, symtab)
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
                functions=sysfs_obj.functions if sysfs_obj else (),
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
    verdict = load_checks(system, p, loaded and not p.candidate)
    reasons, load_problems = load_reasons(system, p, loaded and not p.candidate, objects, verdict)
    problems.extend(load_problems)
    problems.extend(_file_problems(system, p, loaded))
    return PatchStatus(
        name=p.name,
        path=p.path or (module.path if module else None),
        loaded=loaded,
        enabled=sysfs.enabled if sysfs else None,
        transition=sysfs.transition if sysfs else None,
        replace=sysfs.replace if sysfs else None,
        stack_order=sysfs.stack_order if sysfs else None,
        vermagic=module.modinfo.vermagic if module else None,
        srcversion=module.modinfo.srcversion if module else system.loaded_srcversions.get(p.name),
        will_load=not reasons,
        reasons=tuple(reasons),
        objects=objects,
        problems=tuple(problems),
        load_checks=verdict.checks,
        signature=module.signature if module else None,
    )
