"""Relocation type names (``R_X86_64_PC32``...) for the architectures that have livepatch.

The numbers come from each psABI; pyelftools carries most tables (``elftools.elf.enums``), klpd.elf.reloc_tables
the ones pyelftools 0.29 (Debian 12) lacks, so this module only maps a machine name to the right table. Covered:
x86_64, arm64, powerpc (64 and 32-bit), s390x and LoongArch, the architectures with HAVE_LIVEPATCH in recent
kernels, plus i386 and 32-bit ARM so that ``klpctl inspect`` can name the relocations of any module it is shown.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from klpd.elf import reloc_tables

# The x86_64 types livepatch modules are made of, named as pyelftools names them: naming them needs no import of
# pyelftools' enums (about 9 ms of a klpctl run). Tests check that these agree with pyelftools.
COMMON_X86_64: dict[int, str] = {1: "R_X86_64_64", 2: "R_X86_64_PC32", 4: "R_X86_64_PLT32", 9: "R_X86_64_GOTPCREL",
                                 10: "R_X86_64_32", 11: "R_X86_64_32S", 24: "R_X86_64_PC64"}  # fmt: skip
_X86_64_NAMES = frozenset({"em_x86_64", "x86_64", "amd64"})


def _invert(table: Mapping[str, object]) -> dict[int, str]:
    out: dict[int, str] = {}
    for name, value in table.items():
        if isinstance(value, int):
            out.setdefault(value, name)  # first name wins over later aliases
    return out


@functools.cache
def _tables() -> dict[str, dict[int, str]]:
    """Every table, by the machine spellings accepted: the e_machine name PatchModule.machine carries
    ("EM_X86_64") and the `uname -m` / Debian architecture name an operator types ("x86_64", "ppc64le")."""
    from elftools.elf import enums  # noqa: PLC0415  (loaded on first need: see COMMON_X86_64)

    x86_64 = _invert(enums.ENUM_RELOC_TYPE_x64)
    i386 = _invert(enums.ENUM_RELOC_TYPE_i386)
    aarch64 = _invert(enums.ENUM_RELOC_TYPE_AARCH64)
    arm = _invert(enums.ENUM_RELOC_TYPE_ARM)
    ppc64 = _invert(enums.ENUM_RELOC_TYPE_PPC64)
    # Not in pyelftools 0.29 (Debian 12): klpd's own copies.
    ppc, s390x, loongarch = reloc_tables.PPC, reloc_tables.S390X, reloc_tables.LOONGARCH
    return {
        **dict.fromkeys(_X86_64_NAMES, x86_64),
        **dict.fromkeys(("em_386", "i386", "i686", "x86"), i386),
        **dict.fromkeys(("em_aarch64", "aarch64", "arm64"), aarch64),
        **dict.fromkeys(("em_arm", "arm", "armhf"), arm),
        **dict.fromkeys(("em_ppc64", "ppc64", "ppc64le", "ppc64el"), ppc64),
        **dict.fromkeys(("em_ppc", "ppc", "powerpc"), ppc),
        **dict.fromkeys(("em_s390", "s390x", "s390"), s390x),
        **dict.fromkeys(("em_loongarch", "loongarch64"), loongarch),
    }


def reloc_type_name(machine: str, rtype: int) -> str:
    """The psABI name of relocation type ``rtype`` on ``machine``; ``R_<number>`` when not known."""
    machine = machine.lower()
    if machine in _X86_64_NAMES and rtype in COMMON_X86_64:
        return COMMON_X86_64[rtype]
    table = _tables().get(machine)
    if table is not None:
        name = table.get(rtype)
        if name is not None:
            return name
    return f"R_{rtype}"
