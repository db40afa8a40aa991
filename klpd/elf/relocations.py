"""Relocation sections of a module, decoded fast: livepatch ones whole, ordinary ones for the symbols they use.

A cumulative patch can carry 50,000 relocations; decoding them is most of a parse, so the columns are unpacked with
strided memoryviews where the byte order allows and the frozen :class:`~klpd.model.Relocation` objects are filled in
C (benchmarks/bench_parse.py).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import struct
import sys
import types
from collections.abc import Sequence

from klpd.elf._raw import SHF_ALLOC, SHT_NOBITS, SHT_REL, SHT_RELA, ElfFile, Shdr
from klpd.elf.reloc_types import reloc_type_name
from klpd.model import SHF_RELA_LIVEPATCH, Relocation


class TypeNames(dict[int, str]):
    """reloc_type_name() of one machine, memoised: a module uses a handful of types thousands of times."""

    def __init__(self, machine: str) -> None:
        super().__init__()
        self.machine = machine

    def __missing__(self, rtype: int) -> str:
        name = self[rtype] = reloc_type_name(self.machine, rtype)
        return name


# Relocation is a frozen slots dataclass. Its generated __init__ (five object.__setattr__ calls) was more than half
# the parse time of a 50,000-relocation cumulative patch (benchmarks/bench_parse.py), so relocations are built column
# by column instead: allocate the objects, then fill each slot with map() over its member descriptor, all in C.
# Falls back to the constructor if the model ever stops being a plain slots dataclass; tests compare the two.
_RELOCATION_SLOTS = tuple(f.name for f in dataclasses.fields(Relocation))
_FAST_RELOCATIONS = not hasattr(Relocation, "__post_init__") and all(
    isinstance(Relocation.__dict__.get(name), types.MemberDescriptorType) for name in _RELOCATION_SLOTS
)
_NATIVE_ORDER = "<" if sys.byteorder == "little" else ">"


def _build_relocations(columns: dict[str, Sequence[object]]) -> tuple[Relocation, ...]:
    count = len(columns["offset"])
    if not _FAST_RELOCATIONS:
        return tuple(map(Relocation, *(columns[name] for name in _RELOCATION_SLOTS)))
    objs = list(map(object.__new__, itertools.repeat(Relocation, count)))
    consume = collections.deque[object](maxlen=0).extend
    for name in _RELOCATION_SLOTS:
        consume(map(Relocation.__dict__[name].__set__, objs, columns[name]))
    return tuple(objs)


def relocation_columns(elf: ElfFile, data: memoryview, as_rela: bool) -> tuple[list[int], list[int], list[int]]:
    """r_offset, r_info and r_addend (0 for REL) of every entry of a relocation section's bytes."""
    word = "Q" if elf.elf_class == 64 else "I"
    fields = 3 if as_rela else 2
    data = data[: len(data) - len(data) % (fields * struct.calcsize(word))]
    if elf.endian == _NATIVE_ORDER:
        # Same byte order as this host: strided views of the words, no per-entry unpacking at all.
        words, signed = (data.cast("Q"), data.cast("q")) if word == "Q" else (data.cast("I"), data.cast("i"))
        addends = signed[2::3].tolist() if as_rela else [0] * (len(words) // 2)
        return words[0::fields].tolist(), words[1::fields].tolist(), addends
    rows = list(struct.iter_unpack(elf.endian + word * 2 + (word.lower() if as_rela else ""), data))
    offsets = [r[0] for r in rows]
    infos = [r[1] for r in rows]
    return offsets, infos, [r[2] for r in rows] if as_rela else [0] * len(rows)


def relocations(elf: ElfFile, sec: Shdr, as_rela: bool, names: TypeNames) -> tuple[Relocation, ...]:
    """Decode a relocation section; the count is sh_size / sizeof(Elf_Rel[a]), as in the kernel (sh_entsize unused)."""
    if sec.type == SHT_NOBITS:
        return ()
    offsets, infos, addends = relocation_columns(elf, elf.section_data(sec), as_rela)
    shift, mask = (32, 0xFFFFFFFF) if elf.elf_class == 64 else (8, 0xFF)
    rtypes = [info & mask for info in infos]
    return _build_relocations(
        {
            "offset": offsets,
            "type": rtypes,
            "type_name": list(map(names.__getitem__, rtypes)),
            "symbol_index": [info >> shift for info in infos],
            "addend": addends,
        }
    )


def symbol_indexes(elf: ElfFile, sec: Shdr) -> set[int]:
    """The distinct symbol indexes an ordinary REL/RELA section uses (r_info only, for speed)."""
    if sec.type == SHT_NOBITS:
        return set()
    if elf.elf_class == 64:
        fmt, shift = ("8xQ8x" if sec.type == SHT_RELA else "8xQ"), 32
    else:
        fmt, shift = ("4xI4x" if sec.type == SHT_RELA else "4xI"), 8
    fmt = elf.endian + fmt
    size = struct.calcsize(fmt)
    data = elf.section_data(sec)
    data = data[: len(data) - len(data) % size]
    return {info >> shift for (info,) in struct.iter_unpack(fmt, data)}


def applied_by_loader(elf: ElfFile, sec: Shdr) -> bool:
    """An unflagged REL/RELA section that apply_relocations() (kernel/module/main.c) applies at load time.

    The loader skips relocation sections whose target (sh_info) is out of range or not SHF_ALLOC (debug info).
    """
    if sec.type not in (SHT_REL, SHT_RELA) or sec.flags & SHF_RELA_LIVEPATCH:
        return False
    return 0 < sec.info < len(elf.sections) and bool(elf.sections[sec.info].flags & SHF_ALLOC)
