"""Relocation type names (``R_X86_64_PC32``...) for the architectures that have livepatch.

The numbers come from each psABI; pyelftools already carries the tables (``elftools.elf.enums``), so this module
only maps a machine name to the right table and inverts it. Covered: x86_64, arm64, powerpc (64 and 32-bit),
s390x and LoongArch, the architectures with HAVE_LIVEPATCH in recent kernels, plus i386 and 32-bit ARM so that
``klpctl inspect`` can name the relocations of any module it is shown.
"""

from __future__ import annotations

from collections.abc import Mapping

from elftools.elf import enums


def _invert(table: Mapping[str, object]) -> dict[int, str]:
    out: dict[int, str] = {}
    for name, value in table.items():
        if isinstance(value, int):
            out.setdefault(value, name)  # first name wins over later aliases
    return out


_X86_64 = _invert(enums.ENUM_RELOC_TYPE_x64)
_I386 = _invert(enums.ENUM_RELOC_TYPE_i386)
_AARCH64 = _invert(enums.ENUM_RELOC_TYPE_AARCH64)
_ARM = _invert(enums.ENUM_RELOC_TYPE_ARM)
_PPC64 = _invert(enums.ENUM_RELOC_TYPE_PPC64)
_PPC = _invert(enums.ENUM_RELOC_TYPE_PPC)
_S390X = _invert(enums.ENUM_RELOC_TYPE_S390X)
_LOONGARCH = _invert(enums.ENUM_RELOC_TYPE_LOONGARCH)

# Both spellings are accepted: the e_machine name PatchModule.machine carries ("EM_X86_64") and the
# `uname -m` / Debian architecture name an operator types ("x86_64", "ppc64le", "arm64").
_TABLES: dict[str, dict[int, str]] = {
    "em_x86_64": _X86_64,
    "x86_64": _X86_64,
    "amd64": _X86_64,
    "em_386": _I386,
    "i386": _I386,
    "i686": _I386,
    "x86": _I386,
    "em_aarch64": _AARCH64,
    "aarch64": _AARCH64,
    "arm64": _AARCH64,
    "em_arm": _ARM,
    "arm": _ARM,
    "armhf": _ARM,
    "em_ppc64": _PPC64,
    "ppc64": _PPC64,
    "ppc64le": _PPC64,
    "ppc64el": _PPC64,
    "em_ppc": _PPC,
    "ppc": _PPC,
    "powerpc": _PPC,
    "em_s390": _S390X,
    "s390x": _S390X,
    "s390": _S390X,
    "em_loongarch": _LOONGARCH,
    "loongarch64": _LOONGARCH,
}


def reloc_type_name(machine: str, rtype: int) -> str:
    """The psABI name of relocation type ``rtype`` on ``machine``; ``R_<number>`` when not known."""
    table = _TABLES.get(machine.lower())
    if table is not None:
        name = table.get(rtype)
        if name is not None:
            return name
    return f"R_{rtype}"
