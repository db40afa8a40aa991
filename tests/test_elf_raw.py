"""The ELF primitives' own tables."""

from __future__ import annotations


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
