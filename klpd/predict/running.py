"""A loaded patch whose file is not installed, as the running kernel shows it.

/sys/module/<patch>/sections lists its ``.klp.rela.*`` sections (SHF_ALLOC, kept for klp_module_coming()), and
/proc/kallsyms every symbol of a livepatch module, its ``.klp.sym.*`` ones included (type ``?``; seen on 6.1).
Neither shows which section uses which symbol, nor how many relocations a section holds.
"""

from __future__ import annotations

from klpd.model import SHN_LIVEPATCH, ElfSymbol, RunningPatch
from klpd.names import KLP_RELA_PREFIX, parse_klp_rela_name, parse_klp_sym_name
from klpd.predict.sections import KlpSection


def running_sections(running: RunningPatch) -> tuple[list[KlpSection], dict[int, ElfSymbol]]:
    """The sections and symbols of a loaded patch. A symbol is taken as used by the sections of its own object,
    as kpatch-build, klp-build and klp-convert generate them."""
    symbols = {
        index: ElfSymbol(index, name, SHN_LIVEPATCH, 0, parse_klp_sym_name(name))
        for index, name in enumerate(running.symbols, start=1)
    }
    by_object: dict[str, list[int]] = {}
    for index, sym in symbols.items():
        if sym.parsed is not None:
            by_object.setdefault(sym.parsed.object, []).append(index)
    sections = []
    for name in running.sections:
        obj = parse_klp_rela_name(name)
        if obj is None:
            continue  # the kernel loaded the patch, so it parsed every flagged section's name: not a klp section
        target = name[len(KLP_RELA_PREFIX) + len(obj) + 1 :] or None
        sections.append(KlpSection(name, obj, target, None, tuple(by_object.get(obj, ()))))
    return sections, symbols
