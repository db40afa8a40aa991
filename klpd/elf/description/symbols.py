"""The symbol table of a module, as the description reader needs it: a few symbols by index (the targets of the
pointers followed), symbols by name through the string table, and which symbol covers a given section offset.
Decoding is lazy: a kpatch or klp-build description touches only the symbols its relocations name.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass

from klpd.elf._raw import ElfFile, cstring

SHN_LORESERVE = 0xFF00
STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE = 1, 2, 3, 4


@dataclass(frozen=True, slots=True)
class Sym:
    name: str
    type: int
    shndx: int
    value: int
    size: int


class Symbols:
    """The ``.symtab`` of one module file, decoded on demand."""

    def __init__(self, elf: ElfFile) -> None:
        self.elf = elf
        self._rows: list[tuple[int, int, int, int, int]] | None = None  # (st_name, st_info, st_shndx, value, size)
        self._strtab = b""
        self._by_section: dict[int, tuple[list[int], list[Sym]]] | None = None
        self._symtab = elf.symtab_section()
        self._decoded: dict[int, Sym] = {}
        self._nsyms = elf.symbol_count(self._symtab) if self._symtab is not None else 0

    def rows(self) -> list[tuple[int, int, int, int, int]]:
        """The raw symbol table, decoded once; names are looked up only for the symbols that matter."""
        if self._rows is None:
            self._rows = self._read_rows()
        return self._rows

    def _read_rows(self) -> list[tuple[int, int, int, int, int]]:
        elf = self.elf
        symtab = self._symtab
        if symtab is None:
            return []
        self._strtab = elf.symbol_string_table(symtab)
        data = elf.section_data(symtab)
        data = data[: len(data) - len(data) % elf.sym_size]
        if elf.elf_class == 64:
            return list(struct.iter_unpack(elf.endian + "IBxHQQ", data))
        return [(n, i, sh, v, sz) for n, v, sz, i, sh in struct.iter_unpack(elf.endian + "IIIBxH", data)]

    @property
    def count(self) -> int:
        return self._nsyms

    def get(self, index: int) -> Sym:
        """Symbol ``index`` (in range: see count), decoded alone: a description needs a handful."""
        known = self._decoded.get(index)
        if known is not None:
            return known
        elf = self.elf
        assert self._symtab is not None
        if not self._strtab:
            self._strtab = elf.symbol_string_table(self._symtab)
        at = self._symtab.offset + index * elf.sym_size
        if elf.elf_class == 64:
            name, info, shndx, value, size = struct.unpack_from(elf.endian + "IBxHQQ", elf.data, at)
        else:
            name, value, size, info, shndx = struct.unpack_from(elf.endian + "IIIBxH", elf.data, at)
        sym = self._decoded[index] = Sym(cstring(self._strtab, name), info & 0xF, shndx, value, size)
        return sym

    def index(self, name: str) -> list[int]:
        """Indexes of the symbols called ``name`` (found through the string table, not by decoding every name)."""
        rows = self.rows()
        wanted = name.encode() + b"\0"
        offsets = set()
        at = self._strtab.find(wanted)
        while at >= 0:
            offsets.add(at)
            at = self._strtab.find(wanted, at + 1)
        return [i for i, row in enumerate(rows) if row[0] in offsets] if offsets else []

    def name_at(self, sec: int, offset: int) -> str | None:
        """The name of the symbol covering (section, offset), functions first; None if none does."""
        starts, syms = self._section_symbols(sec)
        best: Sym | None = None
        best_rank = -1
        i = bisect.bisect_right(starts, offset)
        # Symbols of a relocatable object do not nest, so the nearest few starting at or before offset suffice;
        # look back a bounded distance to stay linear on a file with thousands of symbols at one address.
        for sym in reversed(syms[max(0, i - 8) : i]):
            inside = sym.value <= offset < sym.value + sym.size
            if not (inside or sym.value == offset):
                continue
            # A function first, then a symbol whose size covers the offset (the array "patch" rather than a
            # zero-sized linker marker such as 6.12's __start_alloc_tags at the same address).
            rank = 2 * (sym.type == STT_FUNC) + inside
            if rank > best_rank:
                best, best_rank = sym, rank
        return best.name if best is not None else None

    def symbols_at(self, sec: int, offset: int) -> list[Sym]:
        """The named data symbols starting exactly at (section, offset)."""
        starts, syms = self._section_symbols(sec)
        lo, hi = bisect.bisect_left(starts, offset), bisect.bisect_right(starts, offset)
        return [s for s in syms[lo:hi] if s.type == STT_OBJECT]

    def _section_symbols(self, sec: int) -> tuple[list[int], list[Sym]]:
        if self._by_section is None:
            rows = self.rows()
            keep: dict[int, list[Sym]] = {}
            for i, (name, info, shndx, _value, _size) in enumerate(rows):
                if name and 0 < shndx < SHN_LORESERVE and info & 0xF not in (STT_SECTION, STT_FILE):
                    keep.setdefault(shndx, []).append(self.get(i))
            self._by_section = {}
            for shndx, syms in keep.items():
                syms.sort(key=lambda s: (s.value, s.type == STT_FUNC))
                self._by_section[shndx] = ([s.value for s in syms], syms)
        return self._by_section.get(sec, ([], []))
