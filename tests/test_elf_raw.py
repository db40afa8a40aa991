"""The ELF primitives' own tables."""

from __future__ import annotations

import pytest


def test_the_built_in_names_are_pyelftools_names() -> None:
    """klpd names the common machines and x86_64 relocation types without importing pyelftools' enums (a klpctl
    start-up cost); the names must be the ones pyelftools would give."""
    from elftools.elf import enums

    from klpd.elf._raw import COMMON_MACHINES
    from klpd.elf.reloc_types import COMMON_X86_64

    machines = {v: k for k, v in reversed(enums.ENUM_E_MACHINE.items()) if isinstance(v, int)}
    # pyelftools 0.29 (Debian 12) has no EM_LOONGARCH: compare what the installed one names.
    named = {number: machines[number] for number in COMMON_MACHINES if number in machines}
    assert named == {number: name for number, name in COMMON_MACHINES.items() if number in machines}
    assert len(named) >= len(COMMON_MACHINES) - 1
    types = {v: k for k, v in reversed(enums.ENUM_RELOC_TYPE_x64.items()) if isinstance(v, int)}
    assert {number: types[number] for number in COMMON_X86_64} == COMMON_X86_64


@pytest.mark.parametrize("table", ["PPC", "S390X", "LOONGARCH"])
def test_klpd_own_relocation_tables_are_pyelftools_names(table: str) -> None:
    """The tables klpd carries because pyelftools 0.29 (Debian 12) lacks them name every type as a pyelftools that
    has them does, and neither copy is missing a type the other names."""
    from elftools.elf import enums

    from klpd.elf import reloc_tables

    theirs = getattr(enums, f"ENUM_RELOC_TYPE_{table}", None)
    if theirs is None:
        pytest.skip(f"the installed pyelftools has no ENUM_RELOC_TYPE_{table}: nothing to compare against")
    expected = {v: k for k, v in reversed(theirs.items()) if isinstance(v, int)}
    assert getattr(reloc_tables, table) == expected
