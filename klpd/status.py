"""The pure status computation: a system state and some patch modules in, a :class:`HostStatus` out.

No I/O happens here: the daemon and ``klpctl`` gather their inputs (``klpd/collect.py``) and call
:func:`compute_status`, so both always give the same answer for the same inputs.

When each ``.klp.rela`` section is applied, and therefore where each livepatch symbol is looked up, follows
kernel/livepatch/core.c (since 5.8):

- ``.klp.rela.vmlinux.*`` sections are applied by the module loader while the patch module itself loads; a failure
  fails the patch's insmod.
- ``.klp.rela.<mod>.*`` sections are applied when the patch is enabled if ``<mod>`` is loaded (failure: the patch
  load fails), else by klp_module_coming() when ``<mod>`` loads (failure: that module's load is refused).
- a symbol of object ``vmlinux`` is searched in vmlinux, in /proc/kallsyms order; a symbol of a loaded module in its
  core symbol table (what /proc/kallsyms shows); a symbol of the module being loaded by klp_module_coming() in the
  module's FULL ELF symbol table; a symbol of any other module that is not loaded is not found.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from klpd.model import (
    SHN_LIVEPATCH,
    VMLINUX,
    ElfSymbol,
    HostStatus,
    KernelInfo,
    LoadedModule,
    ModuleLoad,
    ModuleSymtab,
    ObjectStatus,
    PatchModule,
    PatchStatus,
    Problem,
    RunningPatch,
    SectionResult,
    SectionState,
    Severity,
    SymbolResult,
    SymbolStatus,
    SysfsPatch,
)
from klpd.names import KLP_RELA_PREFIX, parse_klp_rela_name, parse_klp_sym_name
from klpd.resolve import Occurrences, lookup, lookup_occurrences

_EINVAL = -22
KP = "livepatch: "  # every livepatch kernel message starts with this


class SymbolIndex(Protocol):
    """What the computation needs of /proc/kallsyms (klpd.sources.kallsyms.Kallsyms provides it)."""

    @property
    def addresses_visible(self) -> bool: ...

    @property
    def kallsyms_all(self) -> bool: ...

    def find(self, obj: str, name: str) -> Occurrences:
        """How often ``name`` occurs in object ``obj`` as klp_find_object_symbol() searches it."""
        ...


@dataclass(frozen=True)
class SystemState:
    """Everything read from the running system (or a fixture root) that the computation needs."""

    kernel: KernelInfo
    kallsyms: SymbolIndex
    modules: Mapping[str, LoadedModule]  # /proc/modules
    livepatches: tuple[SysfsPatch, ...]  # /sys/kernel/livepatch
    known_modules: frozenset[str]  # module names that modules.dep of the running release knows
    modules_dep_read: bool = True  # False: modules.dep is missing or unreadable, so known_modules says nothing
    loaded_srcversions: Mapping[str, str | None] = field(default_factory=dict)  # /sys/module/<patch>/srcversion
    running_patches: Mapping[str, RunningPatch] = field(default_factory=dict)  # loaded patches, as the kernel shows
    problems: tuple[Problem, ...] = ()  # sources that could not be read (or only partly)


@dataclass(frozen=True)
class PatchInput:
    """One patch to evaluate: an installed or checked file, a loaded patch, or both (same module name)."""

    name: str
    module: PatchModule | None  # None: a loaded patch whose file was not found, or a file that did not parse
    # symbol tables of the target modules that are not loaded, by module name; a Problem where the .ko is unusable
    target_symtabs: Mapping[str, ModuleSymtab | Problem] = field(default_factory=dict)
    file_problem: Problem | None = None  # the file could not be read or parsed
    path: str | None = None


def compute_status(system: SystemState, patches: Iterable[PatchInput]) -> HostStatus:
    """The livepatch status of the host: one PatchStatus per input, in input order."""
    return HostStatus(
        kernel_release=system.kernel.release,
        tainted=system.kernel.tainted,
        livepatch_tainted=system.kernel.livepatch_tainted,
        livepatch_supported=system.kernel.livepatch_supported,
        kallsyms_addresses_visible=system.kallsyms.addresses_visible,
        patches=tuple(_patch_status(system, p) for p in patches),
        problems=system.problems,
    )


# ----------------------------------------------------------------------------------------------------------------
# symbols


def _is_loaded(system: SystemState, obj: str) -> bool:
    return obj == VMLINUX or obj in system.modules


def _symbol_status(
    system: SystemState,
    sym: ElfSymbol,
    section_object: str | None,
    flagged_use: bool,
    symtabs: Mapping[str, ModuleSymtab | Problem],
) -> SymbolResult:
    """Status of one symbol used by a section of ``section_object`` (None: not used by any klp section)."""
    parsed = sym.parsed
    if flagged_use and sym.shndx != SHN_LIVEPATCH:
        return SymbolResult(
            object=parsed.object if parsed else None,
            name=parsed.name if parsed else sym.name,
            sympos=parsed.sympos if parsed else None,
            status=SymbolStatus.NOT_LIVEPATCH_SYMBOL,
            elf_name=sym.name,
            kernel_message=f"{KP}symbol {sym.name} is not marked as a livepatch symbol",
        )
    if parsed is None:
        return SymbolResult(
            object=None,
            name=sym.name,
            sympos=None,
            status=SymbolStatus.MALFORMED_NAME,
            elf_name=sym.name,
            kernel_message=f"{KP}symbol {sym.name} has an incorrectly formatted name",
        )
    obj, name, sympos = parsed.object, parsed.name, parsed.sympos
    sec_obj = section_object if section_object is not None else obj
    if sec_obj != VMLINUX and obj == VMLINUX and section_object is not None:
        return SymbolResult(
            object=obj,
            name=name,
            sympos=sympos,
            status=SymbolStatus.VMLINUX_FROM_MODULE_SECTION,
            elf_name=sym.name,
            kernel_message=(
                f"{KP}invalid access to vmlinux symbol '{name}' from module-specific livepatch relocation section"
            ),
        )
    kallsyms = system.kallsyms
    load_order_dependent = False
    if _is_loaded(system, obj):
        found = kallsyms.find(obj, name)
        occurrences = found.matches
        status = lookup_occurrences(found, sympos, kallsyms.addresses_visible)
        symtab = symtabs.get(obj)
        if obj != VMLINUX and obj == sec_obj and isinstance(symtab, ModuleSymtab):
            # Had the module loaded after the patch, klp_module_coming() would have searched its full symtab.
            full = _symtab_pick(symtab, name, sympos, None)
            core = _symtab_pick(symtab, name, sympos, _core_bit(kallsyms))
            # The answer now is the core symtab's (what kallsyms shows): compare the status and the entry chosen.
            load_order_dependent = full.status is not status or full.entry != core.entry
    elif obj == sec_obj:
        # klp_module_coming(): the module being loaded, its full ELF symtab.
        symtab = symtabs.get(obj)
        if not isinstance(symtab, ModuleSymtab):
            # No readable .ko: what klp_module_coming() will see cannot be known.
            return SymbolResult(obj, name, sympos, None, sym.name)
        full = _symtab_pick(symtab, name, sympos, None)
        core = _symtab_pick(symtab, name, sympos, _core_bit(kallsyms))
        occurrences, status = full.count, full.status
        # Different answers, or the same answer naming different entries (e.g. an .init.text copy, freed after the
        # module's init, when the patch loads first; the .text one when the module was there first).
        load_order_dependent = full.status is not core.status or full.entry != core.entry
    else:
        # Another module that is not loaded: the kernel only searches loaded modules.
        occurrences = 0
        status = SymbolStatus.NOT_FOUND
    return SymbolResult(
        object=obj,
        name=name,
        sympos=sympos,
        status=status,
        elf_name=sym.name,
        occurrences=occurrences,
        load_order_dependent=load_order_dependent,
        kernel_message=_lookup_message(status, obj, name, sympos),
    )


@dataclass(frozen=True)
class _Pick:
    """What a lookup in a .ko symtab answers, and which entry (index in ModuleSymtab.names) it resolves to."""

    status: SymbolStatus
    count: int
    entry: int | None


def _core_bit(kallsyms: SymbolIndex) -> int:
    return ModuleSymtab.CORE_WITH_KALLSYMS_ALL if kallsyms.kallsyms_all else ModuleSymtab.CORE_TEXT_ONLY


def _symtab_pick(symtab: ModuleSymtab, name: str, sympos: int, core_bit: int | None) -> _Pick:
    """klp_find_object_symbol() over a .ko symtab: the full one (``core_bit`` None) or its core part."""
    entries = [i for i in symtab.entries(name) if core_bit is None or symtab.flags[i] & core_bit]
    addresses = tuple(0 if symtab.flags[i] & ModuleSymtab.ZERO_ADDRESS else 1 for i in entries)
    status = lookup(addresses, sympos, True)
    entry = entries[max(sympos, 1) - 1] if status is SymbolStatus.OK else None
    return _Pick(status, len(entries), entry)


def _lookup_message(status: SymbolStatus, obj: str, name: str, sympos: int) -> str | None:
    match status:
        case SymbolStatus.NOT_FOUND:
            return f"{KP}symbol '{name}' not found in symbol table"
        case SymbolStatus.AMBIGUOUS:
            # The kernel passes objname NULL for vmlinux here (only the sympos message maps it to "vmlinux"), and
            # printk prints "(null)": seen on 6.1.
            shown = "(null)" if obj == VMLINUX else obj
            return f"{KP}unresolvable ambiguity for symbol '{name}' in object '{shown}'"
        case SymbolStatus.SYMPOS_NOT_FOUND:
            return f"{KP}symbol position {sympos} for symbol '{name}' in object '{obj}' not found"
    return None


# How bad a status is, worst first: when one symbol is used from sections of several objects, the worst use counts.
_SEVERITY_ORDER: tuple[SymbolStatus | None, ...] = (
    SymbolStatus.NOT_LIVEPATCH_SYMBOL,
    SymbolStatus.MALFORMED_NAME,
    SymbolStatus.VMLINUX_FROM_MODULE_SECTION,
    SymbolStatus.NOT_FOUND,
    SymbolStatus.AMBIGUOUS,
    SymbolStatus.SYMPOS_NOT_FOUND,
    None,
    SymbolStatus.OK,
)


def _is_failure(status: SymbolStatus | None) -> bool:
    return status is not None and status is not SymbolStatus.OK


# ----------------------------------------------------------------------------------------------------------------
# one patch


@dataclass(frozen=True)
class _Section:
    """A ``.klp.rela`` section the kernel will apply, and the symbols (by index) its relocations use."""

    name: str
    object: str
    target_name: str | None
    relocations: int | None  # None: not known
    symbol_indexes: tuple[int, ...]


def _file_sections(module: PatchModule) -> tuple[list[_Section], Mapping[int, ElfSymbol]]:
    sections = [
        _Section(s.name, s.object, s.target_name, len(s.relocations), s.symbol_indexes())
        for s in module.sections
        if s.is_livepatch and s.object is not None
    ]
    return sections, module.symbols


def _running_sections(running: RunningPatch) -> tuple[list[_Section], Mapping[int, ElfSymbol]]:
    """A loaded patch's sections and symbols as the kernel shows them. Which section uses which symbol is not
    shown: a symbol is taken as used by the sections of its own object, as kpatch-build, klp-build and
    klp-convert generate them."""
    symbols = {
        index: ElfSymbol(index, name, SHN_LIVEPATCH, 0, parse_klp_sym_name(name))
        for index, name in enumerate(running.symbols, start=1)
    }
    by_object: dict[str, list[int]] = {}
    for index, sym in symbols.items():
        if sym.parsed is not None:
            by_object.setdefault(sym.parsed.object, []).append(index)
    sections = []
    for name in running.sections:
        obj = parse_klp_rela_name(name)
        if obj is None:
            continue  # the kernel loaded the patch, so it parsed every flagged section's name: not a klp section
        target = name[len(KLP_RELA_PREFIX) + len(obj) + 1 :] or None
        sections.append(_Section(name, obj, target, None, tuple(by_object.get(obj, ()))))
    return sections, symbols


class _PatchEvaluation:
    """Symbol results of one patch module, computed once per (symbol, section object) use."""

    def __init__(
        self, system: SystemState, symbols: Mapping[int, ElfSymbol], symtabs: Mapping[str, ModuleSymtab | Problem]
    ):
        self.system = system
        self.symbols = symbols
        self.symtabs = symtabs
        self._cache: dict[tuple[int, str | None, bool], SymbolResult] = {}

    def symbol(self, index: int, section_object: str | None, flagged_use: bool) -> SymbolResult:
        key = (index, section_object, flagged_use)
        result = self._cache.get(key)
        if result is None:
            sym = self.symbols.get(index) or ElfSymbol(index, f"<symbol #{index}>", 0, 0, None)
            result = _symbol_status(self.system, sym, section_object, flagged_use, self.symtabs)
            self._cache[key] = result
        return result

    def section_symbols(self, section: _Section) -> list[SymbolResult]:
        return [self.symbol(i, section.object, True) for i in section.symbol_indexes]

    def symbol_results(self, sections: Sequence[_Section]) -> list[tuple[SymbolResult, str | None]]:
        """Every livepatch symbol once, with its worst status over its uses and the object of its first use."""
        uses: dict[int, list[str | None]] = {}
        for section in sections:
            for index in section.symbol_indexes:
                uses.setdefault(index, [])
                if section.object not in uses[index]:
                    uses[index].append(section.object)
        for index, sym in self.symbols.items():
            if sym.shndx == SHN_LIVEPATCH and index not in uses:
                uses[index] = []
        out = []
        for index, section_objects in sorted(uses.items()):
            results = [self.symbol(index, o, True) for o in section_objects] or [self.symbol(index, None, False)]
            worst = min(results, key=lambda r: _SEVERITY_ORDER.index(r.status))
            out.append((worst, section_objects[0] if section_objects else None))
        return out


def _section_result(
    evaluation: _PatchEvaluation, system: SystemState, section: _Section, patched: bool | None
) -> SectionResult:
    """State of one section; ``patched`` is what sysfs says of its object for a loaded patch (None: unknown)."""
    bad = [r for r in evaluation.section_symbols(section) if _is_failure(r.status)]
    if bad and patched and _is_loaded(system, section.object):
        # The kernel did apply it: the module loaded after the patch and klp_module_coming() resolved against
        # its full symtab. What the kernel did beats the prediction; the symbols keep their hazard.
        state = SectionState.APPLIED
        reasons = tuple(
            f"applied when '{section.object}' loaded after the patch; loading the patch again now would fail: "
            + (r.kernel_message or str(r.status))
            for r in bad
        )
    elif bad:
        state = SectionState.FAILS
        reasons = tuple(r.kernel_message or f"{r.elf_name}: {r.status}" for r in bad)
    else:
        state = SectionState.APPLIED if _is_loaded(system, section.object) else SectionState.PENDING
        reasons = ()
    return SectionResult(
        name=section.name,
        object=section.object,
        target_section=section.target_name,
        relocations=section.relocations,
        state=state,
        reasons=reasons,
    )


def _module_load(
    patch: str, obj: str, sections: Sequence[SectionResult], system: SystemState, symtab: ModuleSymtab | Problem | None
) -> tuple[ModuleLoad, tuple[str, ...]]:
    """Verdict for loading module ``obj`` later, when klp_module_coming() applies the sections of ``obj``."""
    if not system.modules_dep_read:
        return ModuleLoad.UNKNOWN, (
            f"modules.dep of {system.kernel.release} could not be read: the .ko of module '{obj}' cannot be located",
        )
    if obj not in system.known_modules:
        return ModuleLoad.UNKNOWN, (
            f"no module '{obj}' in modules.dep of {system.kernel.release}: the kernel will never apply these sections",
        )
    if isinstance(symtab, Problem):
        return ModuleLoad.UNKNOWN, (symtab.message,)
    if symtab is None:
        return ModuleLoad.UNKNOWN, (f"the .ko of module '{obj}' was not read",)
    failing = [s for s in sections if s.state is SectionState.FAILS]
    if not failing:
        return ModuleLoad.OK, ()
    reasons = [reason for s in failing for reason in s.reasons]
    reasons.append(f"{KP}failed to initialize patch '{patch}' for module '{obj}' ({_EINVAL})")
    reasons.append(f"{KP}patch '{patch}' failed for module '{obj}', refusing to load module '{obj}'")
    return ModuleLoad.REFUSED, tuple(dict.fromkeys(reasons))


def _objects(system: SystemState, p: PatchInput, sysfs: SysfsPatch | None) -> tuple[ObjectStatus, ...]:
    module = p.module
    sysfs_objects = {o.name: o for o in sysfs.objects} if sysfs else {}
    sections: dict[str, list[SectionResult]] = {}
    symbols: dict[str, list[SymbolResult]] = {}
    running = system.running_patches.get(p.name)
    if module is not None:
        source = _file_sections(module)
    elif running is not None:
        source = _running_sections(running)  # a loaded patch whose file was not found
    else:
        source = None
    if source is not None:
        flagged, elf_symbols = source
        evaluation = _PatchEvaluation(system, elf_symbols, p.target_symtabs)
        for section in flagged:
            sysfs_obj = sysfs_objects.get(section.object)
            section_result = _section_result(evaluation, system, section, sysfs_obj.patched if sysfs_obj else None)
            sections.setdefault(section.object, []).append(section_result)
        for result, first_use in evaluation.symbol_results(flagged):
            home = result.object or first_use
            if home is not None:
                symbols.setdefault(home, []).append(result)
    names = set(sections) | set(symbols) | set(sysfs_objects)
    ordered = sorted(names, key=lambda n: (n != VMLINUX, n))
    out = []
    for name in ordered:
        loaded = _is_loaded(system, name)
        obj_sections = tuple(sections.get(name, ()))
        module_load: ModuleLoad | None = None
        reasons: tuple[str, ...] = ()
        target_path = None
        if not loaded:
            symtab = p.target_symtabs.get(name)
            target_path = symtab.path if isinstance(symtab, ModuleSymtab) else None
            module_load, reasons = _module_load(p.name, name, obj_sections, system, symtab)
        sysfs_obj = sysfs_objects.get(name)
        out.append(
            ObjectStatus(
                name=name,
                loaded=loaded,
                patched=sysfs_obj.patched if sysfs_obj else None,
                module_load=module_load,
                target_path=target_path,
                reasons=reasons,
                sections=obj_sections,
                symbols=tuple(symbols.get(name, ())),
                functions=sysfs_obj.functions if sysfs_obj else (),
            )
        )
    return tuple(out)


def _load_reasons(
    system: SystemState, p: PatchInput, loaded: bool, objects: Sequence[ObjectStatus]
) -> tuple[list[str], list[Problem]]:
    """Why insmod of the patch file would fail now (the module loader's and klp_enable_patch()'s checks)."""
    module = p.module
    reasons: list[str] = []
    problems: list[Problem] = []
    if module is None:
        if not loaded:
            reasons.append(p.file_problem.message if p.file_problem else "no patch module file")
        return reasons, problems
    if not module.modinfo.livepatch:
        reasons.append(f"{KP}module {module.name} is not marked as a livepatch module")
    elif not system.kernel.livepatch_supported:
        reasons.append(f"{module.name}: module is marked as a livepatch module, but livepatch support is disabled")
    release = module.modinfo.release
    if release is None:
        reasons.append(f"{module.name}: no version magic: the module loader refuses it unless forced")
    elif release != system.kernel.release:
        message = f"built for kernel {release} (vermagic '{module.modinfo.vermagic}'), running {system.kernel.release}"
        problems.append(Problem("release_mismatch", Severity.ERROR, message, subject=module.path))
        # same_magic() skips the release word when the module has __versions (CONFIG_MODVERSIONS): then only
        # symbol CRCs decide, and those klpd does not check.
        if not module.has_versions:
            reasons.append(
                f"{module.name}: version magic '{module.modinfo.vermagic}' should begin with '{system.kernel.release}'"
            )
    for section in module.sections:
        if section.is_livepatch and section.object is None:
            reasons.append(f"{KP}section {section.name} has an incorrectly formatted name")
    for obj in objects:
        if obj.loaded:
            for result in obj.sections:
                if result.state is SectionState.FAILS:
                    reasons.extend(result.reasons)
    if not loaded:
        if p.name in system.modules:
            reasons.append(f"a module named '{p.name}' is already loaded")
        busy = [lp.name for lp in system.livepatches if lp.transition]
        if busy:
            reasons.append(f"patch '{busy[0]}' is in transition: loading another patch now fails with EBUSY")
    return list(dict.fromkeys(reasons)), problems


def _patch_status(system: SystemState, p: PatchInput) -> PatchStatus:
    sysfs = next((lp for lp in system.livepatches if lp.name == p.name), None)
    loaded = sysfs is not None or p.name in system.modules
    module = p.module
    problems = list(module.problems) if module else []
    if p.file_problem is not None:
        problems.append(p.file_problem)
    objects = _objects(system, p, sysfs)
    for obj in objects:
        if obj.module_load is ModuleLoad.UNKNOWN and system.modules_dep_read and obj.name not in system.known_modules:
            problems.append(
                Problem(
                    "object_module_unknown",
                    Severity.WARNING,
                    f"object '{obj.name}' names a module that modules.dep of {system.kernel.release} does not know:"
                    " the kernel will never apply its sections",
                    subject=obj.name,
                )
            )
    reasons, load_problems = _load_reasons(system, p, loaded, objects)
    problems.extend(load_problems)
    if loaded and module is not None:
        loaded_src = system.loaded_srcversions.get(p.name)
        if loaded_src and module.modinfo.srcversion and loaded_src != module.modinfo.srcversion:
            problems.append(
                Problem(
                    "loaded_differs_from_file",
                    Severity.WARNING,
                    f"the loaded module '{p.name}' (srcversion {loaded_src}) is not the file {module.path}"
                    f" (srcversion {module.modinfo.srcversion})",
                    subject=module.path,
                )
            )
    if loaded and module is None:
        if p.name in system.running_patches:
            message = (
                f"no installed file found for loaded patch '{p.name}': its sections and symbols are those the running"
                f" kernel shows (/sys/module/{p.name}/sections, /proc/kallsyms), without relocation counts, each"
                " symbol taken as used by the sections of its own object"
            )
        else:
            message = f"no installed file found for loaded patch '{p.name}': its sections and symbols were not checked"
        problems.append(Problem("no_patch_file", Severity.WARNING, message, subject=p.name))
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
    )


# ----------------------------------------------------------------------------------------------------------------
# verdicts over a whole status


def patch_has_problems(patch: PatchStatus) -> bool:
    """True when a user must act: the patch will not load, a module load will be refused, a symbol fails..."""
    if not patch.will_load or any(p.severity is Severity.ERROR for p in patch.problems):
        return True
    for obj in patch.objects:
        if obj.module_load is ModuleLoad.REFUSED:
            return True
        if any(s.state is SectionState.FAILS for s in obj.sections):
            return True
        if any(_is_failure(s.status) for s in obj.symbols):
            return True
    return False


def has_problems(status: HostStatus) -> bool:
    return any(patch_has_problems(p) for p in status.patches)


def undetermined(status: HostStatus) -> bool:
    """True when a source klpd needs could not be read, so the answer may be incomplete."""
    return any(p.severity is Severity.ERROR for p in status.problems)
