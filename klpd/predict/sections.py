"""Each ``.klp.rela.<object>.<section>`` section: applied, pending, or failing, on this host.

When the kernel applies a section decides where its symbols are looked up (kernel/livepatch/core.c, 5.8+):
``.klp.rela.vmlinux.*`` while the patch module itself loads (a failure fails the patch's insmod);
``.klp.rela.<mod>.*`` when the patch is enabled if ``<mod>`` is loaded (a failure fails the patch load), else by
klp_module_coming() when ``<mod>`` loads (a failure refuses that module's load).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from klpd.model import (
    SHN_LIVEPATCH,
    ElfSymbol,
    ModuleSymtab,
    PatchModule,
    Problem,
    RelaSection,
    SectionResult,
    SectionState,
    SymbolResult,
)
from klpd.predict.inputs import SystemState
from klpd.predict.symbols import SEVERITY_ORDER, is_failure, symbol_status


@dataclass(frozen=True)
class KlpSection:
    """A ``.klp.rela`` section the kernel will apply, and the symbols (by index) its relocations use."""

    name: str
    object: str
    target_name: str | None
    relocations: int | None  # None: not known
    symbol_indexes: tuple[int, ...]
    elf: RelaSection | None = None  # the section as read from the file; None when only the kernel shows it


def file_sections(module: PatchModule) -> list[KlpSection]:
    """The flagged, well-named livepatch sections of a patch file: the ones the kernel applies."""
    return [
        KlpSection(s.name, s.object, s.target_name, len(s.relocations), s.symbol_indexes(), s)
        for s in module.sections
        if s.is_livepatch and s.object is not None
    ]


class PatchEvaluation:
    """Symbol results of one patch module, computed once per (symbol, section object) use."""

    def __init__(
        self,
        system: SystemState,
        symbols: Mapping[int, ElfSymbol],
        symtabs: Mapping[str, ModuleSymtab | Problem],
        symtab_index: int = 0,
    ) -> None:
        self.system = system
        self.symbols = symbols
        self.symtabs = symtabs
        self.symtab_index = symtab_index
        self._cache: dict[tuple[int, str | None, bool, str | None], SymbolResult] = {}

    def symbol(self, index: int, section: KlpSection | None, flagged_use: bool) -> SymbolResult:
        section_object = section.object if section is not None else None
        sym = self.symbols.get(index) or ElfSymbol(index, f"<symbol #{index}>", 0, 0, None)
        # A symbol's result depends on its section only through the section's object, but for a symbol that is not
        # SHN_LIVEPATCH: the 6.19+ message names the relocation where the kernel stops, in that very section.
        where = section.name if section is not None and sym.shndx != SHN_LIVEPATCH else None
        key = (index, section_object, flagged_use, where)
        result = self._cache.get(key)
        if result is None:
            elf = section.elf if section is not None else None

            def position(symbol_index: int) -> tuple[int, int]:
                # klp_resolve_symbols() stops at the first relocation of the section that uses the symbol.
                rows = elf.relocations if elf is not None else ()
                first = next((i for i, r in enumerate(rows) if r.symbol_index == symbol_index), 0)
                return self.symtab_index, first

            result = symbol_status(self.system, sym, section_object, flagged_use, self.symtabs, position=position)
            self._cache[key] = result
        return result

    def section_symbols(self, section: KlpSection) -> list[SymbolResult]:
        return [self.symbol(i, section, True) for i in section.symbol_indexes]

    def symbol_results(self, sections: Sequence[KlpSection]) -> list[tuple[SymbolResult, str | None]]:
        """Every livepatch symbol once, with its worst status over its uses and the object of its first use."""
        uses: dict[int, list[KlpSection]] = {}
        for section in sections:
            for index in section.symbol_indexes:
                found = uses.setdefault(index, [])
                if all(s.object != section.object for s in found):
                    found.append(section)
        for index, sym in self.symbols.items():
            if sym.shndx == SHN_LIVEPATCH and index not in uses:
                uses[index] = []
        out = []
        for index, using in sorted(uses.items()):
            results = [self.symbol(index, s, True) for s in using] or [self.symbol(index, None, False)]
            worst = min(results, key=lambda r: SEVERITY_ORDER.index(r.status))
            out.append((worst, using[0].object if using else None))
        return out


def section_result(
    evaluation: PatchEvaluation, system: SystemState, section: KlpSection, patched: bool | None
) -> SectionResult:
    """State of one section; ``patched`` is what sysfs says of its object for a loaded patch (None: unknown)."""
    bad = [r for r in evaluation.section_symbols(section) if is_failure(r.status)]
    if bad and patched and system.is_loaded(section.object):
        # The kernel did apply it: the module loaded after the patch and klp_module_coming() resolved against
        # its full symtab. What the kernel did beats the prediction; the symbols keep their hazard.
        state = SectionState.APPLIED
        reasons = tuple(
            f"applied when '{section.object}' loaded after the patch; loading the patch again now would fail: "
            + (r.kernel_message or str(r.status))
            for r in bad
        )
    elif bad:
        state = SectionState.FAILS
        reasons = tuple(r.kernel_message or f"{r.elf_name}: {r.status}" for r in bad)
    else:
        state = SectionState.APPLIED if system.is_loaded(section.object) else SectionState.PENDING
        reasons = ()
    return SectionResult(
        name=section.name,
        object=section.object,
        target_section=section.target_name,
        relocations=section.relocations,
        state=state,
        reasons=reasons,
    )
