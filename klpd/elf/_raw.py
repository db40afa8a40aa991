"""Bounds-checked reading of an ELF relocatable object (a kernel module) straight from its bytes.

This is the part of the module loader's elf_validity_check() (kernel/module/main.c) that klpd needs: the ELF
header, the section header table, section names, one section's bytes, the symbol table and its strings. Every
offset and size is checked against the file before it is used, counts are bounded by the bytes present, and every
fault becomes :class:`~klpd.errors.ElfFormatError` naming the file and what is wrong with it. pyelftools is not used
here: its construct-based parsing is an order of magnitude slower over large symbol and relocation tables, and it
leaks KeyError/StreamError on hostile input.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import NamedTuple, TypeVar

from klpd.errors import ElfFormatError

T = TypeVar("T")

# What a malformed file can make parsing code raise before a check catches it; turned into ElfFormatError at the
# API boundary (parse_guarded) so that no caller ever sees a traceback for a bad file.
PARSE_ERRORS = (struct.error, ValueError, IndexError, KeyError, UnicodeError, OverflowError)


def parse_guarded(parse: Callable[[bytes, str], T], data: bytes, path: str) -> T:
    """``parse(data, path)``, any error a malformed file provokes reported as ElfFormatError naming ``path``."""
    try:
        return parse(data, path)
    except ElfFormatError:
        raise
    except PARSE_ERRORS as exc:
        raise ElfFormatError(path, f"malformed ELF: {exc}") from None

ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
ELFDATA2MSB = 2
ET_REL = 1

SHT_NULL = 0
SHT_PROGBITS = 1
SHT_SYMTAB = 2
SHT_STRTAB = 3
SHT_RELA = 4
SHT_NOBITS = 8
SHT_REL = 9

SHF_WRITE = 0x1
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4

SHN_XINDEX = 0xFFFF

_MAGIC = b"\x7fELF"
_ET_NAMES = {0: "ET_NONE", 1: "ET_REL", 2: "ET_EXEC", 3: "ET_DYN", 4: "ET_CORE"}
# e_machine of the architectures with livepatch (and their 32-bit kin), named as pyelftools names them: every
# parse needs one, and pyelftools' enums module costs a klpctl run ~9 ms of imports (tests check both agree).
COMMON_MACHINES: dict[int, str] = {3: "EM_386", 20: "EM_PPC", 21: "EM_PPC64", 22: "EM_S390", 40: "EM_ARM",
                                   62: "EM_X86_64", 183: "EM_AARCH64", 258: "EM_LOONGARCH"}  # fmt: skip


def machine_name(e_machine: int) -> str:
    """e_machine as pyelftools spells it ("EM_X86_64"); ``EM_<number>`` when unknown."""
    known = COMMON_MACHINES.get(e_machine)
    if known is not None:
        return known
    from elftools.elf.enums import ENUM_E_MACHINE  # noqa: PLC0415  (rare machines only: see COMMON_MACHINES)

    return next((n for n, v in ENUM_E_MACHINE.items() if v == e_machine), f"EM_{e_machine}")


class Shdr(NamedTuple):
    """One section header, with its name already looked up."""

    num: int  # the section's index ("index" would shadow tuple.index)
    name: str
    type: int
    flags: int
    offset: int
    size: int
    link: int
    info: int
    entsize: int


def cstring(table: bytes, offset: int) -> str:
    """The NUL-terminated string at ``offset`` of a string table, bounded by the table; never raises."""
    if offset >= len(table):
        return f"<invalid string offset {offset:#x}>"
    end = table.find(b"\0", offset)
    if end < 0:
        end = len(table)
    return table[offset:end].decode("utf-8", errors="replace")


class ElfFile:
    """An ELF relocatable object, validated as far as klpd reads it.

    Construction checks the header, the section header table and that every section's bytes lie inside the file
    (the module loader refuses a module otherwise: "Module len %lu truncated").
    """

    def __init__(self, data: bytes, path: str) -> None:
        self.data = data
        self.path = path
        self._parse_header()
        self.sections = self._parse_section_headers()
        self._check_section_extents()

    # -- errors -------------------------------------------------------------------------------------------------
    def error(self, reason: str) -> ElfFormatError:
        return ElfFormatError(self.path, reason)

    # -- header -------------------------------------------------------------------------------------------------
    def _parse_header(self) -> None:
        data = self.data
        if len(data) < 16:
            raise self.error(f"not an ELF file: only {len(data)} bytes")
        if data[:4] != _MAGIC:
            raise self.error(f"not an ELF file (magic {data[:4].hex()})")
        ei_class, ei_data = data[4], data[5]
        if ei_class not in (ELFCLASS32, ELFCLASS64):
            raise self.error(f"invalid ELF class {ei_class}")
        if ei_data not in (ELFDATA2LSB, ELFDATA2MSB):
            raise self.error(f"invalid ELF data encoding {ei_data}")
        self.elf_class = 64 if ei_class == ELFCLASS64 else 32
        self.little_endian = ei_data == ELFDATA2LSB
        self.endian = "<" if self.little_endian else ">"
        word = "Q" if self.elf_class == 64 else "I"
        fmt = f"{self.endian}HHI{word}{word}{word}IHHHHHH"
        hsize = struct.calcsize(fmt) + 16
        if len(data) < hsize:
            raise self.error(f"truncated: ELF header needs {hsize:#x} bytes, file has {len(data):#x}")
        (e_type, e_machine, _version, _entry, _phoff, shoff, _flags, _ehsize, _phentsize, _phnum, shentsize,
         shnum, shstrndx) = struct.unpack_from(fmt, data, 16)  # fmt: skip
        if e_type != ET_REL:
            kind = _ET_NAMES.get(e_type, f"type {e_type:#x}")
            raise self.error(f"not a kernel module: ELF {kind}, a module is a relocatable object (ET_REL)")
        self.e_machine = e_machine
        self.machine = machine_name(e_machine)
        # The loader requires the native Elf_Shdr size (elf_validity_check: "Invalid ELF section header size").
        self.shentsize = 64 if self.elf_class == 64 else 40
        if shentsize != self.shentsize:
            raise self.error(f"invalid section header size {shentsize} (ELF{self.elf_class} needs {self.shentsize})")
        if shoff == 0:
            raise self.error("no section header table (e_shoff is 0)")
        self.shoff = shoff
        self._shdr_fmt = f"{self.endian}II{word}{word}{word}{word}II{word}{word}"
        self.shnum = shnum
        self.shstrndx = shstrndx
        if shnum == 0 or shstrndx == SHN_XINDEX:
            # ELF extended numbering: the real counts live in section 0 (sh_size, sh_link). The kernel's loader does
            # not implement this, but readelf does; reading it lets klpd name the file's real contents.
            sec0 = self._raw_shdr(0)
            if shnum == 0:
                self.shnum = sec0[5]
            if shstrndx == SHN_XINDEX:
                self.shstrndx = sec0[6]
        if self.shnum == 0:
            raise self.error("no sections (e_shnum is 0)")

    def _raw_shdr(self, index: int) -> tuple[int, ...]:
        start = self.shoff + index * self.shentsize
        if start + self.shentsize > len(self.data):
            raise self.error(
                f"truncated: section header {index} at offset {start:#x} extends past end of file ({len(self.data):#x})"
            )
        fields: tuple[int, ...] = struct.unpack_from(self._shdr_fmt, self.data, start)
        return fields

    # -- sections -----------------------------------------------------------------------------------------------
    def _parse_section_headers(self) -> tuple[Shdr, ...]:
        size = self.shnum * self.shentsize
        end = self.shoff + size
        if end > len(self.data):
            raise self.error(
                f"truncated: section header table (offset {self.shoff:#x}, {self.shnum} entries, size {size:#x}) "
                f"extends past end of file ({len(self.data):#x})"
            )
        raw = list(struct.iter_unpack(self._shdr_fmt, memoryview(self.data)[self.shoff : end]))
        if not 0 < self.shstrndx < self.shnum:
            raise self.error(f"section name string table index {self.shstrndx} out of range (0..{self.shnum - 1})")
        str_hdr = raw[self.shstrndx]
        names = self._extent(str_hdr[4], str_hdr[5], f"section name string table (section {self.shstrndx})")
        out = []
        for i, (name, typ, flags, _addr, off, sz, link, info, _align, entsize) in enumerate(raw):
            out.append(Shdr(i, cstring(names, name), typ, flags, off, sz, link, info, entsize))
        return tuple(out)

    def _extent(self, offset: int, size: int, what: str) -> bytes:
        if offset + size > len(self.data):
            raise self.error(
                f"truncated: {what} extends past end of file "
                f"(offset {offset:#x}, size {size:#x}, file {len(self.data):#x})"
            )
        return self.data[offset : offset + size]

    def _check_section_extents(self) -> None:
        size = len(self.data)
        for sec in self.sections[1:]:
            if sec.type != SHT_NOBITS and sec.offset + sec.size > size:
                raise self.error(
                    f"truncated: section {sec.name} extends past end of file "
                    f"(offset {sec.offset:#x}, size {sec.size:#x}, file {size:#x})"
                )

    def section_data(self, sec: Shdr) -> memoryview:
        """The section's bytes (empty for SHT_NOBITS); extents were checked at construction."""
        if sec.type == SHT_NOBITS:
            return memoryview(b"")
        return memoryview(self.data)[sec.offset : sec.offset + sec.size]

    def section_by_name(self, name: str) -> Shdr | None:
        for sec in self.sections:
            if sec.name == name:
                return sec
        return None

    def section_name(self, index: int) -> str | None:
        return self.sections[index].name if 0 <= index < len(self.sections) else None

    # -- symbols ------------------------------------------------------------------------------------------------
    def symtab_section(self) -> Shdr | None:
        """The first SHT_SYMTAB section, the one the module loader uses (setup_load_info())."""
        for sec in self.sections:
            if sec.type == SHT_SYMTAB:
                return sec
        return None

    @property
    def sym_size(self) -> int:
        return 24 if self.elf_class == 64 else 16

    def symbol_string_table(self, symtab: Shdr) -> bytes:
        if not 0 < symtab.link < self.shnum:
            raise self.error(f"symbol table {symtab.name} links to string table {symtab.link}, out of range")
        return bytes(self.section_data(self.sections[symtab.link]))

    def raw_symbols(self, symtab: Shdr) -> list[tuple[int, int, int, int]]:
        """(st_name, st_info, st_shndx, st_value) per entry; count = sh_size / sizeof(Elf_Sym) as in the loader."""
        data = self.section_data(symtab)
        data = data[: len(data) - len(data) % self.sym_size]
        if self.elf_class == 64:
            # Pad bytes skip st_other and st_size, so struct yields the wanted tuple without a Python-level loop.
            return list(struct.iter_unpack(self.endian + "IBxHQ8x", data))
        return [(name, info, shndx, value)
                for name, value, info, shndx in struct.iter_unpack(self.endian + "II4xBxH", data)]  # fmt: skip

    def symbol_sizes_and_types(self, symtab: Shdr) -> list[tuple[int, int]]:
        """(st_size, st_info) per entry, in the order of :meth:`raw_symbols`."""
        data = self.section_data(symtab)
        data = data[: len(data) - len(data) % self.sym_size]
        if self.elf_class == 64:
            return [(size, info) for info, size in struct.iter_unpack(self.endian + "4xB11xQ", data)]
        return list(struct.iter_unpack(self.endian + "8xIB3x", data))

    def symbol_count(self, symtab: Shdr) -> int:
        return symtab.size // self.sym_size if symtab.type != SHT_NOBITS else 0
