"""Time klpd's livepatch-module parser against plain pyelftools iteration over the same data.

The module is a large cumulative patch built with tests/elfwriter.py: 10,000 livepatch symbols and 50,000
relocations spread over 500 ``.klp.rela.*`` sections for 5 objects, and kpatch-build's description of its 500
functions (``.kpatch.funcs``). pyelftools only iterates (symbol name/shndx/value, relocation offset/info/addend);
klpd does all of parse_patch_module() (sections, relocations with type names, symbols with their parsed names,
every problem check, the patch description). Target: klpd <= 0.2x pyelftools.

    .venv/bin/python benchmarks/bench_parse.py [--repeat N]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elfwriter import (
    R_X86_64_64,
    R_X86_64_PC32,
    R_X86_64_PLT32,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_INFO_LINK,
    SHF_RELA_LIVEPATCH,
    SHN_LIVEPATCH,
    SHT_PROGBITS,
    SHT_RELA,
    STB_LOCAL,
    STT_FUNC,
    STT_SECTION,
    Reloc,
    Section,
    Symbol,
    create_elf_file,
    modinfo_data,
)

from klpd.elf import parse_patch_module

OBJECTS = ("vmlinux", "ext4", "xfs", "nfsd", "btrfs")
N_SYMBOLS = 10_000
N_RELOCS = 50_000
N_SECTIONS = 500


def build_cumulative_patch() -> bytes:
    sections = [
        Section(".modinfo", SHT_PROGBITS, SHF_ALLOC,
                modinfo_data([("livepatch", "Y"), ("name", "livepatch_cumulative"), ("vermagic", "6.1.0 SMP")])),
    ]  # fmt: skip
    symbols = []
    per_obj = N_SYMBOLS // len(OBJECTS)
    klp_syms = {obj: [f".klp.sym.{obj}.sym_{obj}_{i}.isra.0,{i % 3}" for i in range(per_obj)] for obj in OBJECTS}
    for names in klp_syms.values():
        symbols += [Symbol(n, shndx=SHN_LIVEPATCH) for n in names]
    per_sec = N_RELOCS // N_SECTIONS
    kpatch_funcs: list[Reloc] = []  # struct kpatch_patch_func: new_addr @0, name @40, objname @48
    strings = bytearray(b"vmlinux\0")
    for s in range(N_SECTIONS):
        obj = OBJECTS[s % len(OBJECTS)]
        func = f"patched_func_{s}"
        text = f".text.{func}"
        sections.append(Section(text, SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, b"\xcc" * (per_sec * 8)))
        symbols.append(Symbol(func, shndx=text, type=STT_FUNC, size=per_sec * 8))
        names = klp_syms[obj]
        relocs = [
            Reloc(8 * r, names[(s * per_sec + r) % len(names)], R_X86_64_PLT32 if r % 2 else R_X86_64_PC32, -4)
            for r in range(per_sec)
        ]
        sections.append(Section(f".klp.rela.{obj}{text}", SHT_RELA, SHF_ALLOC | SHF_RELA_LIVEPATCH | SHF_INFO_LINK,
                                info=text, relocs=relocs, addralign=8))  # fmt: skip
        objname = len(strings)
        strings += obj.encode() + b"\0"
        kpatch_funcs += [
            Reloc(56 * s, func, R_X86_64_64),
            Reloc(56 * s + 40, ".kpatch.strings", R_X86_64_64, len(strings)),
            Reloc(56 * s + 48, ".kpatch.strings", R_X86_64_64, objname if obj != "vmlinux" else 0),
        ]
        strings += func.removeprefix("patched_").encode() + b"\0"
    sections += [
        Section(".kpatch.strings", SHT_PROGBITS, SHF_ALLOC, bytes(strings)),
        Section(".kpatch.funcs", SHT_PROGBITS, SHF_ALLOC, bytes(56 * N_SECTIONS), addralign=8),
        Section(".rela.kpatch.funcs", SHT_RELA, SHF_INFO_LINK, info=".kpatch.funcs", relocs=kpatch_funcs, addralign=8),
    ]
    symbols.append(Symbol(".kpatch.strings", shndx=".kpatch.strings", type=STT_SECTION, bind=STB_LOCAL))
    return create_elf_file(sections, symbols)


def klpd_parse(data: bytes) -> tuple[int, int]:
    pm = parse_patch_module(data, "livepatch-cumulative.ko")
    assert not pm.problems, pm.problems
    assert pm.description is not None and sum(len(o.functions or ()) for o in pm.description.objects) == N_SECTIONS
    return len(pm.symbols), sum(len(s.relocations) for s in pm.sections)


def pyelftools_iterate(data: bytes) -> tuple[int, int]:
    elf = ELFFile(io.BytesIO(data))
    nsym = nrel = 0
    symtab = elf.get_section_by_name(".symtab")
    for sym in symtab.iter_symbols():
        _ = (sym.name, sym["st_shndx"], sym["st_value"])
        nsym += 1
    for sec in elf.iter_sections():
        if isinstance(sec, RelocationSection) and sec.name.startswith(".klp.rela."):
            for rel in sec.iter_relocations():
                _ = (rel["r_offset"], rel["r_info"], rel["r_addend"])
                nrel += 1
    return nsym, nrel


def best_of(repeat: int, fn: Callable[[bytes], tuple[int, int]], data: bytes) -> tuple[float, tuple[int, int]]:
    best = float("inf")
    result = (0, 0)
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn(data)
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per parser; the best one counts")
    args = parser.parse_args()
    data = build_cumulative_patch()
    print(f"module: {len(data) / 1e6:.1f} MB, {N_SYMBOLS} livepatch symbols, {N_RELOCS} relocations "
          f"in {N_SECTIONS} .klp.rela sections, objects {', '.join(OBJECTS)}")  # fmt: skip
    t_klpd, (k_syms, k_rels) = best_of(args.repeat, klpd_parse, data)
    t_pyelf, (p_syms, p_rels) = best_of(max(1, args.repeat // 2), pyelftools_iterate, data)
    assert k_rels == p_rels == N_RELOCS, (k_rels, p_rels)
    print(f"klpd parse_patch_module:  {t_klpd * 1000:8.1f} ms  ({k_syms} symbols kept, {k_rels} relocations)")
    print(f"pyelftools iteration:     {t_pyelf * 1000:8.1f} ms  ({p_syms} symbols, {p_rels} relocations)")
    ratio = t_klpd / t_pyelf
    print(f"ratio klpd/pyelftools:    {ratio:8.3f}x  (target <= 0.2x: {'met' if ratio <= 0.2 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
