"""Reading a module's data the way the kernel sees it after the loader relocated it: pointers, strings, scalars.

In a relocatable module a pointer is a word with one absolute relocation against a symbol (usually a section
symbol, with the offset in the addend); it resolves to (section, symbol value + addend). A word without a
relocation is a plain value: 0 is NULL. Everything is bounds-checked, and anything that does not add up raises
:class:`Corrupt`, naming the section and offset at fault. Relocations and symbols are decoded once, on first need,
so a module without a description pays nothing beyond a few section-name lookups.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass

from klpd.elf._raw import SHT_NOBITS, SHT_REL, SHT_RELA, ElfFile, Shdr
from klpd.elf.description.layout import MAX_ENTRIES, MAX_STRING, Layout
from klpd.elf.description.symbols import STT_FILE, STT_SECTION, Symbols
from klpd.elf.relocations import relocation_columns
from klpd.model import SHF_RELA_LIVEPATCH

_SHN_LORESERVE = 0xFF00


class Corrupt(Exception):
    """A description that cannot be read as the kernel would: ``where`` is "<section>+0x<offset>"."""

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True, slots=True)
class Target:
    """Where a pointer points: ``section`` None for a symbol outside the file (undefined, absolute)."""

    section: int | None
    offset: int
    symbol: str  # the relocation's symbol name ("" for an unnamed one)
    exact: bool = False  # the pointer is that symbol itself (not a section symbol, addend 0): it names the target


class Image:
    """One module file's sections, symbols and relocations, read for pointer following."""

    def __init__(self, elf: ElfFile, layout: Layout) -> None:
        self.elf = elf
        self.layout = layout
        self._rela_for: dict[int, list[Shdr]] | None = None  # target section -> its ordinary relocation sections
        self._relocs: dict[int, dict[int, tuple[int, int, int]]] = {}
        self._sorted: dict[int, list[int]] = {}
        self.symbols = Symbols(elf)

    # -- naming ---------------------------------------------------------------------------------------------------
    def where(self, sec: int, offset: int) -> str:
        name = self.elf.section_name(sec) or f"section {sec}"
        return f"{name}+{offset:#x}"

    def section_size(self, sec: int) -> int:
        return self.elf.sections[sec].size

    # -- relocations ----------------------------------------------------------------------------------------------
    def relocations(self, sec: int) -> dict[int, tuple[int, int, int]]:
        """offset -> (type, symbol index, addend) of the ordinary relocations applying to section ``sec``."""
        table = self._relocs.get(sec)
        if table is None:
            table = self._relocs[sec] = self._read_relocations(sec)
        return table

    def _read_relocations(self, sec: int) -> dict[int, tuple[int, int, int]]:
        elf = self.elf
        if self._rela_for is None:
            self._rela_for = {}
            for sh in elf.sections[1:]:
                if sh.type in (SHT_RELA, SHT_REL) and not sh.flags & SHF_RELA_LIVEPATCH:
                    self._rela_for.setdefault(sh.info, []).append(sh)
        shift, mask = (32, 0xFFFFFFFF) if elf.elf_class == 64 else (8, 0xFF)
        table: dict[int, tuple[int, int, int]] = {}
        for sh in self._rela_for.get(sec, ()):
            offsets, infos, addends = relocation_columns(elf, elf.section_data(sh), sh.type == SHT_RELA)
            if sh.type == SHT_REL:
                addends = [self._implicit_addend(sec, off) for off in offsets]
            for off, info, addend in zip(offsets, infos, addends, strict=True):
                table.setdefault(off, (info & mask, info >> shift, addend))  # the first one wins, as applied
        return table

    def _implicit_addend(self, sec: int, offset: int) -> int:
        try:
            return self.word(sec, offset)
        except Corrupt:
            return 0

    # -- reading --------------------------------------------------------------------------------------------------
    def read(self, sec: int, offset: int, size: int) -> bytes:
        if offset < 0 or offset + size > self.section_size(sec):
            raise Corrupt(self.where(sec, offset), f"reading {size} bytes runs past the section's end")
        shdr = self.elf.sections[sec]
        if shdr.type == SHT_NOBITS:
            # .bss: an all-zero array such as the samples' "static struct klp_func no_funcs[] = { {} };" lands
            # here, and the kernel reads zeros, whatever the file size says (sh_size is not backed by bytes).
            return bytes(size)
        start = shdr.offset + offset
        return self.elf.data[start : start + size]

    def word(self, sec: int, offset: int) -> int:
        value: int = struct.unpack(self.layout.word, self.read(sec, offset, self.layout.pointer))[0]
        return value

    def u32(self, sec: int, offset: int) -> int:
        value: int = struct.unpack(self.layout.endian + "I", self.read(sec, offset, 4))[0]
        return value

    def has_relocation(self, sec: int, start: int, end: int) -> bool:
        """Whether any relocation applies inside [start, end) of section ``sec``."""
        offsets = self._sorted.get(sec)
        if offsets is None:
            offsets = self._sorted[sec] = sorted(self.relocations(sec))
        i = bisect.bisect_left(offsets, start)
        return i < len(offsets) and offsets[i] < end

    def pointer(self, sec: int, offset: int) -> Target | None:
        """The pointer stored at (section, offset); None for NULL."""
        raw = self.word(sec, offset)  # also checks the slot lies in the section
        reloc = self.relocations(sec).get(offset)
        if reloc is None:
            if raw:
                raise Corrupt(self.where(sec, offset),
                              f"pointer {raw:#x} has no relocation: the kernel would use it as an address")  # fmt: skip
            return None
        where = self.where(sec, offset)
        rtype, sym_index, addend = reloc
        if rtype != self.layout.absolute:
            raise Corrupt(where, f"pointer has relocation type {rtype}, not the absolute type {self.layout.absolute}")
        nsyms = self.symbols.count
        if not 0 <= sym_index < nsyms:
            raise Corrupt(where, f"relocation names symbol {sym_index}, past the symbol table ({nsyms} entries)")
        sym = self.symbols.get(sym_index)
        exact = addend == 0 and bool(sym.name) and sym.type not in (STT_SECTION, STT_FILE)
        if sym.shndx == 0 or sym.shndx >= _SHN_LORESERVE:
            return Target(None, sym.value + addend, sym.name, exact)
        if sym.shndx >= len(self.elf.sections):
            raise Corrupt(where, f"relocation symbol {sym.name or sym_index} is in section {sym.shndx}, out of range")
        return Target(sym.shndx, sym.value + addend, sym.name, exact)

    def string(self, target: Target, sec: int, slot: int) -> str:
        """The NUL-terminated string a pointer (stored at ``slot`` of ``sec``) points at, at most MAX_STRING bytes."""
        where = f"{self.elf.sections[sec].name}+{slot:#x}"
        if target.section is None:
            raise Corrupt(where, f"string pointer points at symbol {target.symbol!r}, outside the module")
        size = self.section_size(target.section)
        if not 0 <= target.offset < size:
            raise Corrupt(where, f"string pointer {self.where(target.section, target.offset)} is past the section")
        chunk = self.read(target.section, target.offset, min(MAX_STRING, size - target.offset))  # .bss: ""
        end = chunk.find(b"\0")
        if end < 0 and len(chunk) < MAX_STRING:
            raise Corrupt(where, f"string at {self.where(target.section, target.offset)} has no terminating NUL")
        return chunk[: end if end >= 0 else len(chunk)].decode("utf-8", errors="replace")

    def function_name(self, target: Target, sec: int, slot: int) -> str:
        """The name of what a function pointer (at ``slot`` of ``sec``) points at: the covering symbol, else
        "<section>+0x<offset>"."""
        if target.section is None:
            return target.symbol or f"<symbol at {target.offset:#x}>"
        if not 0 <= target.offset <= self.section_size(target.section):
            past = self.where(target.section, target.offset)
            raise Corrupt(self.where(sec, slot), f"function pointer {past} is past the section")
        if target.exact:
            return target.symbol
        return self.symbols.name_at(target.section, target.offset) or self.where(target.section, target.offset)


def entry_count(image: Image, sec: int, entry: int, what: str) -> int:
    """How many ``entry``-byte records of ``what`` fill section ``sec``: Corrupt when the size is not a whole number
    of them, or when there are more than MAX_ENTRIES."""
    size = image.section_size(sec)
    if size % entry:
        reason = f"section size {size:#x} is not a whole number of {entry}-byte {what} entries"
        raise Corrupt(image.where(sec, size - size % entry), reason)
    if size // entry > MAX_ENTRIES:
        raise Corrupt(image.where(sec, 0), f"{size // entry} {what} entries, more than {MAX_ENTRIES}")
    return size // entry
