"""What the kernel (or the patched code) will trip over in a patch module, knowable from the file alone.

The checks follow klp_write_section_relocs() and klp_resolve_symbols() (kernel/livepatch/core.c) and the module
loader's apply_relocations(); each quotes the kernel's message from :mod:`klpd.kernel_messages`. Symbol problems
use the codes of :class:`~klpd.model.SymbolStatus`, the vocabulary the prediction reports them in. Names are read
with the newest kernels' grammar: the host's width is applied at prediction time (:mod:`klpd.predict.symbols`).
"""

from __future__ import annotations

from klpd import kernel_messages as msg
from klpd.elf._raw import SHF_ALLOC, SHT_RELA
from klpd.model import ElfSymbol, Problem, RelaSection, Severity, SymbolStatus
from klpd.names import KLP_RELA_PREFIX, canonical_klp_sym_name, parse_klp_rela_name, rela_object_truncated


class Problems:
    """One Problem per (code, subject), in first-found order."""

    def __init__(self) -> None:
        self._found: dict[tuple[str, str | None], Problem] = {}

    def add(self, code: str, message: str, subject: str | None, kernel_message: str | None = None,
            severity: Severity = Severity.ERROR) -> None:  # fmt: skip
        key = (code, subject)
        if key not in self._found:
            self._found[key] = Problem(code, severity, message, kernel_message, subject)

    def result(self) -> tuple[Problem, ...]:
        return tuple(self._found.values())


def check_section(problems: Problems, sec: RelaSection) -> None:
    name = sec.name
    if not sec.is_livepatch:
        problems.add(
            "klp_section_not_flagged",
            f"section {name} is named like a livepatch relocation section but lacks SHF_RELA_LIVEPATCH, so "
            "livepatch never applies it: the module loader either applies it at load time like an ordinary "
            "relocation section, with its livepatch symbols still at address 0, or ignores it; either way the "
            "patched code runs with wrong addresses (NULL dereference)",
            name,
        )
        return
    if sec.object is None:
        problems.add(
            "malformed_section_name",
            f"section {name} is flagged SHF_RELA_LIVEPATCH but its name does not read as "
            f"{KLP_RELA_PREFIX}<object>.<section>: the patch module fails to load",
            name,
            msg.MALFORMED_SECTION_NAME.format(section=name),
        )
    if sec.sh_type != SHT_RELA:
        problems.add(
            "klp_section_not_rela",
            f"section {name} is flagged SHF_RELA_LIVEPATCH but is not SHT_RELA (type {sec.sh_type}): the kernel "
            "reads it as Elf_Rela entries all the same",
            name,
        )
    if not sec.sh_flags & SHF_ALLOC:
        # The loader keeps only SHF_ALLOC sections; the others stay in the load image, freed once the patch module
        # is loaded. A vmlinux section is applied while that image still exists (since 5.8), a module one later.
        later = sec.object not in (None, "vmlinux")
        problems.add(
            "klp_section_not_alloc",
            f"section {name} is flagged SHF_RELA_LIVEPATCH but not SHF_ALLOC: its relocations are left in the "
            "module's load image, which is freed once the patch module has loaded"
            + (", so applying them when the module loads reads freed memory" if later else ""),
            name,
            severity=Severity.ERROR if later else Severity.WARNING,
        )


def check_section_name_width(problems: Problems, name: str) -> None:
    if rela_object_truncated(name):
        obj = parse_klp_rela_name(name)
        problems.add(
            "section_object_truncated",
            f"section {name}: the object name is longer than the kernel reads (55 characters), so the kernel "
            f"applies it to object '{obj}', which no loadable module can be named",
            name,
        )


def check_symbol(problems: Problems, sec: RelaSection, sym: ElfSymbol) -> None:
    """The checks klp_resolve_symbols() makes of each symbol a livepatch relocation uses, in its order."""
    if not sym.is_livepatch:
        problems.add(
            SymbolStatus.NOT_LIVEPATCH_SYMBOL.value,
            f"symbol {sym.name} (index {sym.index}) is used by livepatch relocation section {sec.name} but its "
            f"st_shndx is {sym.shndx:#x}, not SHN_LIVEPATCH",
            sym.name,
            msg.NOT_LIVEPATCH_SYMBOL.format(symbol=sym.name),  # the host's variant is the prediction's to quote
        )
        return
    parsed = sym.parsed
    if parsed is None:
        problems.add(
            SymbolStatus.MALFORMED_NAME.value,
            f"livepatch symbol {sym.name} (used by {sec.name}) does not read as .klp.sym.<object>.<name>,<sympos>",
            sym.name,
            msg.MALFORMED_SYMBOL_NAME.format(symbol=sym.name),
        )
        return
    if sec.object is not None and sec.object != "vmlinux" and parsed.object == "vmlinux":
        problems.add(
            SymbolStatus.VMLINUX_FROM_MODULE_SECTION.value,
            f"livepatch symbol {sym.name} names vmlinux but is used by the module-specific section {sec.name}",
            sym.name,
            msg.VMLINUX_FROM_MODULE_SECTION.format(name=parsed.name),
        )
    if sym.name != canonical_klp_sym_name(parsed):
        problems.add(
            "sympos_not_canonical",
            f"livepatch symbol {sym.name} is accepted by the kernel's sscanf but is not in canonical form "
            f"({canonical_klp_sym_name(parsed)}): it reads as sympos {parsed.sympos}",
            sym.name,
            severity=Severity.WARNING,
        )
