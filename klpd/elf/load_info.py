"""What load_module() (kernel/module/main.c, version.c) reads from a module file before livepatch sees it.

- the symbol CRCs: ``__versions`` (``struct modversion_info``: an ``unsigned long`` CRC, then the name NUL-padded to
  64 bytes; the 8-byte CRC of a 64-bit file or the 4-byte one of a 32-bit file, in the file's byte order), or, since
  6.14, the extended ``__version_ext_crcs`` (u32 each) and ``__version_ext_names`` (NUL-terminated names, same order)
  that check_version() relies on alone when present (CONFIG_EXTENDED_MODVERSIONS);
- the imports: what simplify_symbols() hands to resolve_symbol_wait();
- the size of ``.gnu.linkonce.this_module``, which 6.12+ requires to equal the running kernel's sizeof(struct module)
  (elf_validity_cache_index_mod()).
"""

from __future__ import annotations

import struct

from klpd.elf._raw import SHF_ALLOC, ElfFile, Shdr, cstring, parse_guarded
from klpd.elf.modinfo import modinfo_from
from klpd.model import SHN_UNDEF
from klpd.model_loader import SymbolVersion

_MODVERSION_INFO_SIZE = 64  # sizeof(struct modversion_info) on 32- and 64-bit alike
_STB_WEAK = 2
_EM_386, _EM_X86_64 = 3, 62
_THIS_MODULE = ".gnu.linkonce.this_module"


def _find_sec(elf: ElfFile, name: str) -> Shdr | None:
    """find_sec(): the first SHF_ALLOC section of that name; the loader does not see the others."""
    for sec in elf.sections[1:]:
        if sec.flags & SHF_ALLOC and sec.name == name:
            return sec
    return None


def _name(field: bytes) -> str:
    end = field.find(b"\0")
    return (field if end < 0 else field[:end]).decode("utf-8", errors="replace")


def modversions(elf: ElfFile) -> tuple[SymbolVersion, ...]:
    """The CRCs check_version() compares, in file order: the extended tables when there are both (6.14+), else
    ``__versions``. Entry counts follow the loader: sh_size / 64 (sh_size / 4 for the extended CRCs)."""
    ext = _extended_versions(elf)
    if ext is not None:
        return ext
    sec = _find_sec(elf, "__versions")
    if sec is None:
        return ()
    data = elf.section_data(sec)
    fmt = elf.endian + ("Q56s" if elf.elf_class == 64 else "I60s")
    data = data[: len(data) - len(data) % _MODVERSION_INFO_SIZE]
    return tuple(SymbolVersion(_name(name), crc) for crc, name in struct.iter_unpack(fmt, data))


def _extended_versions(elf: ElfFile) -> tuple[SymbolVersion, ...] | None:
    crcs_sec = _find_sec(elf, "__version_ext_crcs")
    names_sec = _find_sec(elf, "__version_ext_names")
    if crcs_sec is None or names_sec is None:
        # One without the other is refused (elf_validity_cache_index_versions(): "extended version crc+name
        # presence does not match"); klpd then reads __versions, as kernels before 6.14 do.
        return None
    crcs = elf.section_data(crcs_sec)
    names = bytes(elf.section_data(names_sec)).split(b"\0")[:-1]  # the last piece follows the last NUL
    crcs = crcs[: len(crcs) - len(crcs) % 4]
    # More CRCs than names is refused ("more extended version crcs than names"); the pairs there are are read.
    return tuple(SymbolVersion(name.decode("utf-8", errors="replace"), crc)
                 for (crc,), name in zip(struct.iter_unpack(elf.endian + "I", crcs), names, strict=False))  # fmt: skip


def imports(elf: ElfFile, raw_syms: list[tuple[int, int, int, int]], strtab: bytes) -> tuple[str, ...]:
    """The names simplify_symbols() resolves, in symtab order, each once: every entry after the null symbol with
    st_shndx SHN_UNDEF, a name, and a binding other than STB_WEAK (an unresolved weak symbol is left at 0).
    SHN_LIVEPATCH symbols are livepatch's (case SHN_LIVEPATCH: break), so their st_shndx already leaves them out.
    No name is skipped for being special but the one below: ``__this_module`` is defined by the module itself."""
    names = dict.fromkeys(
        cstring(strtab, name)
        for name, info, shndx, _value in raw_syms[1:]
        if shndx == SHN_UNDEF and name and info >> 4 != _STB_WEAK
    )
    if elf.e_machine in (_EM_386, _EM_X86_64):
        # ignore_undef_symbol() (5.11+): GNU as before 2.37 leaves an unreferenced _GLOBAL_OFFSET_TABLE_ in x86
        # objects; the loader accepts it unresolved.
        names.pop("_GLOBAL_OFFSET_TABLE_", None)
    return tuple(names)


def this_module_size(elf: ElfFile) -> int | None:
    """sh_size of ``.gnu.linkonce.this_module`` as the file gives it (the first such section); None without one.

    6.12+ refuses a module whose section is missing, duplicated, SHT_NOBITS or not SHF_ALLOC before it compares
    the size; earlier kernels take the first SHF_ALLOC one without a size check. Either way the size is the
    sizeof(struct module) of the kernel the module was built for."""
    for sec in elf.sections[1:]:
        if sec.name == _THIS_MODULE:
            return sec.size
    return None


def build_facts(data: bytes, path: str) -> tuple[str | None, int | None]:
    """vermagic= and the this_module size of a module's ELF bytes (an in-tree module: what the running kernel was
    built with), from the section headers and .modinfo alone, by the same readers as a patch's."""
    def read(d: bytes, p: str) -> tuple[str | None, int | None]:
        elf = ElfFile(d, p)
        return modinfo_from(elf).vermagic, this_module_size(elf)

    return parse_guarded(read, data, path)
