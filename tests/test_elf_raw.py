"""The ELF primitives the patch-description reader builds on: bytes at a symbol, and what relocated pointers hold."""

from __future__ import annotations

import struct

import pytest

from klpd.elf._raw import ElfFile, Target
from klpd.errors import ElfFormatError
from tests.elfwriter import (
    EM_PPC64,
    EM_X86_64,
    R_X86_64_64,
    SHF_ALLOC,
    SHF_WRITE,
    SHT_PROGBITS,
    SHT_REL,
    STT_OBJECT,
    KlpModule,
    create_elf_file,
)


def _patch_like(*, big_endian: bool = False, rel: bool = False) -> tuple[ElfFile, int]:
    """A 'struct' of two pointers in .data at symbol 'patch' (the second relocated to new_func + 4), and the
    .data section index."""
    m = KlpModule()
    m.function("new_func")
    endian = ">" if big_endian else "<"
    data = struct.pack(endian + "QQ", 0x1122, 4 if rel else 0)
    m.section(".data", type=SHT_PROGBITS, flags=SHF_ALLOC | SHF_WRITE, data=data, addralign=8)
    m.symbol("patch", shndx=".data", value=0, size=16, type=STT_OBJECT)
    if rel:
        m.rela(".data", [(8, "new_func", R_X86_64_64)], type=SHT_REL)
    else:
        m.rela(".data", [(8, "new_func", R_X86_64_64, 4)])
    raw = create_elf_file(m.sections, m.symbols, little_endian=not big_endian,
                          machine=EM_PPC64 if big_endian else EM_X86_64)  # fmt: skip
    elf = ElfFile(raw, "patch.ko")
    data_index = next(s.num for s in elf.sections if s.name == ".data")
    return elf, data_index


def _symbol_index(elf: ElfFile, name: str) -> int:
    symtab = elf.symtab_section()
    assert symtab is not None
    strtab = elf.symbol_string_table(symtab)
    for i, (name_off, _info, _shndx, _value) in enumerate(elf.raw_symbols(symtab)):
        if strtab[name_off:].split(b"\0", 1)[0] == name.encode():
            return i
    raise AssertionError(name)


@pytest.mark.parametrize("big_endian", [False, True])
def test_bytes_at_a_symbol_and_the_pointer_a_relocation_writes(big_endian: bool) -> None:
    elf, data_index = _patch_like(big_endian=big_endian)
    symtab = elf.symtab_section()
    assert symtab is not None
    shndx, offset, raw = elf.symbol_bytes(symtab, _symbol_index(elf, "patch"), 16)
    assert (shndx, offset) == (data_index, 0)
    assert struct.unpack((">" if big_endian else "<") + "Q", raw[:8]) == (0x1122,)
    assert elf.pointer_targets(data_index) == {8: Target(_symbol_index(elf, "new_func"), 4, R_X86_64_64)}


def test_a_rel_entry_takes_its_addend_from_the_field() -> None:
    elf, data_index = _patch_like(rel=True)
    assert elf.pointer_targets(data_index)[8].addend == 4


def test_reads_outside_a_section_or_the_symbol_table_are_format_errors() -> None:
    elf, data_index = _patch_like()
    symtab = elf.symtab_section()
    assert symtab is not None
    with pytest.raises(ElfFormatError, match="outside it"):
        elf.bytes_at(data_index, 8, 16)
    with pytest.raises(ElfFormatError, match="out of range"):
        elf.bytes_at(len(elf.sections), 0, 1)
    with pytest.raises(ElfFormatError, match="symbol index"):
        elf.symbol_bytes(symtab, 10_000, 8)


def test_the_built_in_names_are_pyelftools_names() -> None:
    """klpd names the common machines and x86_64 relocation types without importing pyelftools' enums (a klpctl
    start-up cost); the names must be the ones pyelftools would give."""
    from elftools.elf import enums

    from klpd.elf._raw import COMMON_MACHINES
    from klpd.elf.reloc_types import COMMON_X86_64

    machines = {v: k for k, v in reversed(enums.ENUM_E_MACHINE.items()) if isinstance(v, int)}
    assert {number: machines[number] for number in COMMON_MACHINES} == COMMON_MACHINES
    types = {v: k for k, v in reversed(enums.ENUM_RELOC_TYPE_x64.items()) if isinstance(v, int)}
    assert {number: types[number] for number in COMMON_X86_64} == COMMON_X86_64


def test_a_relocation_outside_its_section_is_a_format_error() -> None:
    m = KlpModule()
    m.function("new_func")
    m.section(".data", type=SHT_PROGBITS, flags=SHF_ALLOC | SHF_WRITE, data=b"\0" * 16, addralign=8)
    m.rela(".data", [(12, "new_func", R_X86_64_64)])  # 8 bytes at 12 reach past the 16-byte section
    elf = ElfFile(create_elf_file(m.sections, m.symbols), "patch.ko")
    data_index = next(s.num for s in elf.sections if s.name == ".data")
    with pytest.raises(ElfFormatError, match="outside it"):
        elf.pointer_targets(data_index)


def test_a_rel_addend_is_signed_like_a_rela_one() -> None:
    m = KlpModule()
    m.function("new_func")
    m.section(".data", type=SHT_PROGBITS, flags=SHF_ALLOC | SHF_WRITE, data=struct.pack("<q", -8), addralign=8)
    m.rela(".data", [(0, "new_func", R_X86_64_64)], type=SHT_REL)
    elf = ElfFile(create_elf_file(m.sections, m.symbols), "patch.ko")
    data_index = next(s.num for s in elf.sections if s.name == ".data")
    assert elf.pointer_targets(data_index)[0].addend == -8
