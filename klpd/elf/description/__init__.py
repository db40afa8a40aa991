"""A livepatch module's own patch description: the klp_patch it hands to klp_enable_patch(), read from its ELF.

Three producers, looked for in this order (``patch-formats.md`` §7): upstream klp-build's klp_object_ext arrays
(:mod:`.klp_build`, 6.19+), kpatch-build's ``.kpatch.funcs`` (:mod:`.kpatch`), then a static ``struct klp_patch``
found by its shape (:mod:`.static`: samples, selftests, SUSE kernel-livepatch, hand-written). What is read is
represented as the kernel will see it, malformed or not (NULL names, duplicate objects, "dummy.ko"): judging it is
:mod:`klpd.predict`'s job. A description that cannot be read at all (pointers out of range, arrays without their
terminator) is reported as ``description_corrupt``; none at all as ``description_not_found``. Never raises.
"""

from __future__ import annotations

from klpd.elf._raw import PARSE_ERRORS, ElfFile
from klpd.elf.description.klp_build import OBJECT_SECTIONS, read_klp_build
from klpd.elf.description.kpatch import FUNCS_SECTION, read_kpatch
from klpd.elf.description.layout import layout_for
from klpd.elf.description.pointers import Corrupt, Image
from klpd.elf.description.static import read_static
from klpd.elf.klp_checks import Problems
from klpd.errors import ElfFormatError
from klpd.model import Severity
from klpd.model_description import PatchDescription

__all__ = ["describe"]

_LOOKED_FOR = (f"klp-build's {' or '.join(OBJECT_SECTIONS)}, kpatch-build's {FUNCS_SECTION}, or a static "
               "struct klp_patch (a pointer to __this_module in a data section leading to klp_object and klp_func "
               "arrays)")  # fmt: skip


def describe(elf: ElfFile, problems: Problems, livepatch: bool) -> PatchDescription | None:
    """The patch description of the module ``elf``; what goes wrong is added to ``problems``.

    ``livepatch``: the module says livepatch=Y, so finding no description is worth a warning.
    """
    path = elf.path
    layout = layout_for(elf.e_machine, elf.machine, elf.elf_class, elf.little_endian)
    if layout is None:
        if livepatch:
            reason = f"no patch description reader for {elf.machine} ELF{elf.elf_class}: not a livepatch architecture"
            problems.add("description_not_found", f"{path}: {reason}", path, severity=Severity.WARNING)
        return None
    image = Image(elf, layout)
    try:
        for reader in (read_klp_build, read_kpatch):
            description = reader(image)
            if description is not None:
                return description
        found = read_static(image)
    except Corrupt as exc:
        problems.add("description_corrupt",
                     f"{path}: the patch description is corrupt at {exc.where}: {exc.reason}", exc.where)  # fmt: skip
        return None
    except (ElfFormatError, *PARSE_ERRORS) as exc:
        problems.add("description_corrupt", f"{path}: the patch description cannot be read: {exc}", path)
        return None
    if found.description is not None:
        if found.note:
            problems.add("description_ambiguous", f"{path}: {found.note}", path, severity=Severity.WARNING)
        return found.description
    if livepatch:
        why = f"; {found.note}" if found.note else ""
        problems.add("description_not_found",
                     f"{path}: no patch description found: looked for {_LOOKED_FOR}{why}. klpd cannot tell which "
                     "functions it replaces", path, severity=Severity.WARNING)  # fmt: skip
    return None
