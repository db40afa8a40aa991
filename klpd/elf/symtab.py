"""The symbol table of a target module file, as klp_find_object_symbol() will walk it.

A livepatch symbol ``.klp.sym.<module>.<name>,<sympos>`` is looked up in the module's own symbol table
(module_kallsyms_on_each_symbol(), kernel/module/kallsyms.c): every ELF ``.symtab`` entry in file order, SHN_UNDEF
ones skipped. Which entries that table holds depends on when the lookup runs: while the module is coming (the patch
was there first) it is the full ELF symtab; once the module's init has run it is the cut-down "core" copy that
layout_symtab()/add_kallsyms() kept, the one /proc/kallsyms shows. is_core_symbol() decides what is kept, the same
in 6.1 and in current kernels (before 6.4 the init test read INIT_OFFSET_MASK of sh_entsize, since then the
mod_mem_type bits; both mark the sections module_init_layout_section() puts in init memory).
"""

from __future__ import annotations

import bisect

from klpd.decompress import read_module_bytes
from klpd.elf._raw import SHF_ALLOC, SHF_EXECINSTR, SHT_RELA, ElfFile, Shdr, cstring, parse_guarded
from klpd.elf.relocations import relocation_columns
from klpd.model import SHN_ABS, SHN_UNDEF, ModuleSymtab
from klpd.root import HostPath

_PERCPU_SECTION = ".data..percpu"


def _percpu_index(elf: ElfFile) -> int | None:
    # find_sec() only sees SHF_ALLOC sections. Without CONFIG_SMP there is no per-cpu index at all; klpd assumes SMP,
    # which every livepatch-capable distribution kernel enables.
    for sec in elf.sections:
        if sec.flags & SHF_ALLOC and sec.name == _PERCPU_SECTION:
            return sec.num
    return None


def _section_core_flags(sec: Shdr, percpu: int | None) -> int:
    """The CORE_* bits is_core_symbol() gives a named symbol defined in ``sec``."""
    if sec.num == percpu:
        # layout_and_allocate() clears SHF_ALLOC of the per-cpu section before layout_symtab() runs, so only the
        # CONFIG_KALLSYMS_ALL special case keeps its symbols.
        return ModuleSymtab.CORE_WITH_KALLSYMS_ALL
    # module_init_section(): ".init*" (arm also treats .ARM.{extab,exidx}.init* as init, and without
    # CONFIG_MODULE_UNLOAD ".exit*" too; neither matters for livepatch targets on the supported architectures).
    if not sec.flags & SHF_ALLOC or sec.name.startswith(".init"):
        return 0
    if sec.flags & SHF_EXECINSTR:
        return ModuleSymtab.CORE_WITH_KALLSYMS_ALL | ModuleSymtab.CORE_TEXT_ONLY
    return ModuleSymtab.CORE_WITH_KALLSYMS_ALL


_STT_FUNC = 2


def _mcount_records(elf: ElfFile, raw_syms: list[tuple[int, int, int, int]]) -> dict[int, list[int]] | None:
    """ftrace's call sites in the module, by section index, sorted: ``__mcount_loc`` holds one address per
    ``__fentry__``/``_mcount`` call (recordmcount, or objtool --mcount), each a relocation against the section.
    ftrace_module_init() makes a record of each; None when the file has none (then nothing is known)."""
    loc = elf.section_by_name("__mcount_loc")
    if loc is None:
        return None
    rela = next((s for s in elf.sections if s.type == SHT_RELA and s.info == loc.num), None)
    if rela is None:
        return None
    _offsets, infos, addends = relocation_columns(elf, elf.section_data(rela), True)
    shift = 32 if elf.elf_class == 64 else 8
    records: dict[int, list[int]] = {}
    for info, addend in zip(infos, addends, strict=True):
        index = info >> shift
        if index < len(raw_syms):
            _name, _info, shndx, value = raw_syms[index]
            records.setdefault(shndx, []).append(value + addend)
    for offsets in records.values():
        offsets.sort()
    return records


def _traced(records: dict[int, list[int]], shndx: int, value: int, size: int) -> bool:
    """A call site inside [value, value + size): ftrace_location() finds one for the function (6.1+: the first
    record inside it; before, the one at its first byte, the same on x86_64 without IBT)."""
    sites = records.get(shndx)
    if not sites:
        return False
    i = bisect.bisect_left(sites, value)
    return i < len(sites) and sites[i] < value + max(size, 1)


def _parse_module_symtab(data: bytes, path: str) -> ModuleSymtab:
    elf = ElfFile(data, path)
    symtab = elf.symtab_section()
    if symtab is None:
        raise elf.error("no symbol table (stripped?): the module loader refuses such a module")
    strtab = elf.symbol_string_table(symtab)
    percpu = _percpu_index(elf)
    by_section = [_section_core_flags(sec, percpu) for sec in elf.sections]
    shnum = len(by_section)
    names: list[str] = []
    flags = bytearray()
    raw = elf.raw_symbols(symtab)
    records = _mcount_records(elf, raw)
    sizes = elf.symbol_sizes_and_types(symtab) if records is not None else []
    for i, (name_off, info, shndx, value) in enumerate(raw):
        if shndx == SHN_UNDEF:
            continue
        names.append(cstring(strtab, name_off))
        # is_core_symbol(): st_name == 0 and st_shndx >= e_shnum (SHN_ABS and the other reserved indexes) never
        # make the core symtab.
        bits = by_section[shndx] if shndx < shnum and name_off else 0
        if shndx == SHN_ABS and value == 0:
            bits |= ModuleSymtab.ZERO_ADDRESS
        if records is not None and info & 0xF == _STT_FUNC and _traced(records, shndx, value, sizes[i][0]):
            bits |= ModuleSymtab.TRACEABLE
        flags.append(bits)
    return ModuleSymtab(path, tuple(names), bytes(flags), mcount=records is not None)


def parse_module_symtab(data: bytes, path: str) -> ModuleSymtab:
    """The symbol table of a module file's ELF bytes as the kernel iterates it; see :class:`ModuleSymtab`."""
    return parse_guarded(_parse_module_symtab, data, path)


def read_module_symtab(where: HostPath) -> ModuleSymtab:
    """:func:`parse_module_symtab` of a (possibly compressed) module file; ``path`` is ``where.host``."""
    return parse_module_symtab(read_module_bytes(where), where.host)
