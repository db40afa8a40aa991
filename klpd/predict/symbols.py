"""One ``.klp.sym`` symbol as the kernel will resolve it on this host (klp_resolve_symbols()).

In the kernel's order: the symbol must be SHN_LIVEPATCH, its name must read with the running kernel's sscanf
(``.klp.sym.%55[^.].%<KSYM_NAME_LEN-1>[^,],%lu``), a module-specific section may not use a vmlinux symbol, and then
klp_find_object_symbol() searches the object (:mod:`klpd.predict.lookup`):

- ``vmlinux``: /proc/kallsyms order;
- a loaded module: its core symtab, what /proc/kallsyms shows;
- the module that klp_module_coming() is loading: the FULL ELF symtab of its ``.ko``;
- any other module that is not loaded: not found (the kernel searches loaded modules only).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from klpd import kernel_messages as msg
from klpd.model import (
    SHN_LIVEPATCH,
    VMLINUX,
    ElfSymbol,
    KlpSymbolName,
    ModuleSymtab,
    Problem,
    SymbolResult,
    SymbolStatus,
)
from klpd.predict.inputs import SystemState
from klpd.predict.lookup import Found, find_in_object, lookup_message

# Where the kernel stops at a symbol that is not SHN_LIVEPATCH: (.symtab section index, relocation index).
Position = Callable[[int], tuple[int, int]]

# How bad a status is, worst first: when one symbol is used from sections of several objects, the worst use counts.
SEVERITY_ORDER: tuple[SymbolStatus | None, ...] = (
    SymbolStatus.NOT_LIVEPATCH_SYMBOL,
    SymbolStatus.MALFORMED_NAME,
    SymbolStatus.VMLINUX_FROM_MODULE_SECTION,
    SymbolStatus.NOT_FOUND,
    SymbolStatus.AMBIGUOUS,
    SymbolStatus.SYMPOS_NOT_FOUND,
    None,
    SymbolStatus.OK,
)


def is_failure(status: SymbolStatus | None) -> bool:
    return status is not None and status is not SymbolStatus.OK


def host_parse(sym: ElfSymbol, ksym_name_max: int) -> KlpSymbolName | None:
    """The fields the running kernel's sscanf reads from the symbol's name. ``sym.parsed`` is the newest kernels'
    reading; a kernel with a narrower ``%<n>[^,]`` stops before the ',' of a longer name, so the name fails."""
    parsed = sym.parsed
    if parsed is not None and len(parsed.name) > ksym_name_max:
        return None
    return parsed


def symbol_status(
    system: SystemState,
    sym: ElfSymbol,
    section_object: str | None,
    flagged_use: bool,
    symtabs: Mapping[str, ModuleSymtab | Problem],
    *,
    position: Position | None = None,
) -> SymbolResult:
    """Status of one symbol used by a section of ``section_object`` (None: not used by any klp section)."""
    semantics = system.semantics
    parsed = host_parse(sym, semantics.ksym_name_max)
    if flagged_use and sym.shndx != SHN_LIVEPATCH:
        symtab_section, relocation = position(sym.index) if position else (0, 0)
        return SymbolResult(
            object=parsed.object if parsed else None,
            name=parsed.name if parsed else sym.name,
            sympos=parsed.sympos if parsed else None,
            status=SymbolStatus.NOT_LIVEPATCH_SYMBOL,
            elf_name=sym.name,
            kernel_message=msg.not_livepatch_symbol(semantics, sym.name, symtab_section, relocation),
        )
    if parsed is None:
        return SymbolResult(
            object=None,
            name=sym.name,
            sympos=None,
            status=SymbolStatus.MALFORMED_NAME,
            elf_name=sym.name,
            kernel_message=msg.MALFORMED_SYMBOL_NAME.format(symbol=sym.name),
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
            kernel_message=msg.VMLINUX_FROM_MODULE_SECTION.format(name=name),
        )
    if obj != sec_obj and not system.is_loaded(obj):
        # Another module that is not loaded: the kernel only searches loaded modules.
        found = Found(SymbolStatus.NOT_FOUND, 0)
    else:
        # The section's own object: its .ko's full symtab also tells whether the answer depends on the load order.
        found = find_in_object(
            system.kallsyms,
            system.is_loaded(obj),
            obj,
            name,
            sympos,
            symtab=symtabs.get(obj) if obj == sec_obj else None,
        )
    if found.status is None:
        return SymbolResult(obj, name, sympos, None, sym.name)
    status, occurrences, load_order_dependent = found.status, found.occurrences, found.load_order_dependent
    return SymbolResult(
        object=obj,
        name=name,
        sympos=sympos,
        status=status,
        elf_name=sym.name,
        occurrences=occurrences,
        load_order_dependent=load_order_dependent,
        kernel_message=lookup_message(status, obj, name, sympos),
    )
