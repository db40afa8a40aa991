"""klpd.elf.symtab (a target module's symbol table as the kernel walks it), and the whole ELF reader checked
against binutils' readelf on modules built by tests/elfwriter.py."""

from __future__ import annotations

import random
import re
import shutil
import subprocess

import pytest
import zstandard
from elfwriter import (
    EM_386,
    EM_AARCH64,
    EM_PPC,
    EM_PPC64,
    EM_S390,
    EM_X86_64,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_WRITE,
    SHN_ABS,
    SHN_COMMON,
    SHN_LIVEPATCH,
    SHT_NOBITS,
    SHT_PROGBITS,
    SHT_REL,
    STB_LOCAL,
    STT_FUNC,
    STT_OBJECT,
    STT_SECTION,
    KlpModule,
    Section,
    Symbol,
    create_elf_file,
)

from klpd.elf import parse_module_symtab, parse_patch_module, read_module_symtab
from klpd.elf._raw import ElfFile
from klpd.errors import ElfFormatError
from klpd.model import ModuleSymtab
from klpd.root import HostPath

ALL = ModuleSymtab.CORE_WITH_KALLSYMS_ALL
TEXT = ModuleSymtab.CORE_TEXT_ONLY
ZERO = ModuleSymtab.ZERO_ADDRESS

AX = SHF_ALLOC | SHF_EXECINSTR
WA = SHF_ALLOC | SHF_WRITE


def target_module() -> bytes:
    sections = [
        Section(".text", SHT_PROGBITS, AX, b"\0" * 64),
        Section(".init.text", SHT_PROGBITS, AX, b"\0" * 16),
        Section(".data", SHT_PROGBITS, WA, b"\0" * 16),
        Section(".rodata", SHT_PROGBITS, SHF_ALLOC, b"\0" * 16),
        Section(".bss", SHT_NOBITS, WA, size=64),
        Section(".data..percpu", SHT_PROGBITS, WA, b"\0" * 8),
        Section(".comment", SHT_PROGBITS, 0, b"GCC\0"),
        Section(".exit.text", SHT_PROGBITS, AX, b"\0" * 8),
    ]
    symbols = [
        Symbol("ext4.c", bind=STB_LOCAL, shndx=SHN_ABS, value=0),  # FILE-like absolute symbol of value 0
        Symbol("", bind=STB_LOCAL, type=STT_SECTION, shndx=".text"),  # unnamed section symbol
        Symbol("helper", bind=STB_LOCAL, type=STT_FUNC, shndx=".text", value=0x10),
        Symbol("helper", bind=STB_LOCAL, type=STT_FUNC, shndx=".text", value=0x20),  # a second static helper
        Symbol("ext4_init", bind=STB_LOCAL, type=STT_FUNC, shndx=".init.text"),
        Symbol("counter", bind=STB_LOCAL, type=STT_OBJECT, shndx=".data"),
        Symbol("table", bind=STB_LOCAL, type=STT_OBJECT, shndx=".rodata"),
        Symbol("zeroed", bind=STB_LOCAL, type=STT_OBJECT, shndx=".bss"),
        Symbol("pcpu_stats", bind=STB_LOCAL, type=STT_OBJECT, shndx=".data..percpu"),
        Symbol("note", bind=STB_LOCAL, shndx=".comment"),
        Symbol("ext4_exit", bind=STB_LOCAL, type=STT_FUNC, shndx=".exit.text"),
        Symbol("abs_nonzero", shndx=SHN_ABS, value=5),
        Symbol("printk"),  # SHN_UNDEF: not in the kernel's iteration
        Symbol("common", shndx=SHN_COMMON),
        Symbol("ext4_attr_store", type=STT_FUNC, shndx=".text", value=0x30),
    ]
    return create_elf_file(sections, symbols)


def test_full_symtab_order_and_core_flags():
    st = parse_module_symtab(target_module(), "/lib/modules/6.1/kernel/fs/ext4/ext4.ko")
    assert st.path == "/lib/modules/6.1/kernel/fs/ext4/ext4.ko"
    assert list(zip(st.names, st.flags, strict=True)) == [
        ("ext4.c", ZERO),  # absolute: never core; value 0 reads as "not found"
        ("", 0),  # st_name 0: never core
        ("helper", ALL | TEXT),
        ("helper", ALL | TEXT),
        ("ext4_init", 0),  # init section: freed after init
        ("counter", ALL),  # data: only with CONFIG_KALLSYMS_ALL
        ("table", ALL),
        ("zeroed", ALL),
        ("pcpu_stats", ALL),  # per-cpu: kept by the KALLSYMS_ALL special case
        ("note", 0),  # not SHF_ALLOC
        ("ext4_exit", ALL | TEXT),  # .exit is core with CONFIG_MODULE_UNLOAD
        ("abs_nonzero", 0),
        ("common", 0),  # st_shndx >= e_shnum
        ("ext4_attr_store", ALL | TEXT),
    ]


def test_percpu_section_without_alloc_is_not_the_percpu_section():
    data = create_elf_file(
        [Section(".data..percpu", SHT_PROGBITS, SHF_WRITE, b"\0" * 8)],
        [Symbol("pcpu", shndx=".data..percpu")],
    )
    assert parse_module_symtab(data, "m.ko").flags == bytes([0])


def test_livepatch_symbols_of_a_patch_are_listed_but_never_core():
    st = parse_module_symtab(KlpModule().build(), "p.ko")
    assert st.names == () and st.flags == b""
    m = KlpModule()
    m.function("f")
    m.klp_sym("vmlinux", "g")
    st = parse_module_symtab(m.build(), "p.ko")
    assert st.names == ("f", ".klp.sym.vmlinux.g,0") and st.flags == bytes([ALL | TEXT, 0])


def test_module_without_symtab_is_an_error():
    with pytest.raises(ElfFormatError, match="no symbol table"):
        parse_module_symtab(create_elf_file([Section(".text", flags=AX)], symtab=False), "m.ko")


def test_symtab_linking_to_a_missing_strtab_is_an_error():
    data = create_elf_file([Section(".symtab2", 2, 0, b"\0" * 48, link=99)], symtab=False)
    with pytest.raises(ElfFormatError, match="string table 99, out of range"):
        parse_module_symtab(data, "m.ko")


def test_read_module_symtab_compressed(tmp_path):
    path = tmp_path / "ext4.ko.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(target_module()))
    assert read_module_symtab(HostPath(str(path), path)) == parse_module_symtab(target_module(), str(path))


# --------------------------------------------------------------------------------------------------------------
# Against readelf

READELF = shutil.which("readelf")
needs_readelf = pytest.mark.skipif(READELF is None, reason="binutils readelf is not installed")


def readelf(path, *args):
    return subprocess.run([READELF, "-W", *args, str(path)], check=True, capture_output=True, text=True).stdout


def readelf_sections(path):
    out = []
    for line in readelf(path, "-S").splitlines():
        m = re.match(r"\s*\[\s*(\d+)\]\s+(.*)$", line)
        if not m:
            continue
        tokens = m.group(2).split()
        if len(tokens) == 8:  # section 0: no name, no flags
            tokens = ["", *tokens[:5], "", *tokens[5:]]
        elif len(tokens) == 9:  # no flags
            tokens = [*tokens[:6], "", *tokens[6:]]
        name, _type, _addr, off, size, _es, _flg, lk, inf, _al = tokens
        out.append((int(m.group(1)), name, int(off, 16), int(size, 16), int(lk), int(inf)))
    return out


def readelf_symbols(path):
    out = []
    for line in readelf(path, "-s").splitlines():
        tokens = line.split()
        if not tokens or not re.fullmatch(r"\d+:", tokens[0]):
            continue
        ndx, rest = (tokens[7], tokens[8:]) if tokens[6] == "OS" else (tokens[6], tokens[7:])
        special = {"UND": 0, "ABS": SHN_ABS, "COM": SHN_COMMON}
        value = special[ndx] if ndx in special else int(ndx.strip("[]"), 0)
        # readelf shows a section symbol under its section's name; its own st_name is 0.
        name = rest[0] if rest and tokens[3] != "SECTION" else ""
        out.append((int(tokens[0][:-1]), value, name))
    return out


def readelf_relocations(path, elf_class):
    sections = {}
    current = None
    for line in readelf(path, "-r").splitlines():
        m = re.match(r"Relocation section '(.*)' at offset", line)
        if m:
            current = sections.setdefault(m.group(1), [])
            continue
        tokens = line.split()
        if current is None or len(tokens) < 5 or not re.fullmatch(r"[0-9a-f]{8,16}", tokens[0]):
            continue
        info = int(tokens[1], 16)
        sym, rtype = (info >> 32, info & 0xFFFFFFFF) if elf_class == 64 else (info >> 8, info & 0xFF)
        addend = 0
        if len(tokens) >= 7 and tokens[-2] in "+-":
            addend = int(tokens[-1], 16) * (-1 if tokens[-2] == "-" else 1)
        current.append((int(tokens[0], 16), rtype, tokens[2], sym, addend))
    return sections


MACHINES = [
    (64, True, EM_X86_64, [1, 2, 4, 9, 11]),
    (64, True, EM_AARCH64, [257, 261, 282, 283]),
    (64, False, EM_S390, [4, 19, 20, 22]),
    (64, True, EM_PPC64, [1, 10, 26, 38]),
    (64, False, EM_PPC64, [1, 10, 26]),
    (32, True, EM_386, [1, 2, 4]),
    (32, False, EM_PPC, [1, 10, 18]),
]


def random_patch(rng, elf_class, machine_types) -> KlpModule:
    m = KlpModule(f"lp_{rng.randrange(1000)}")
    objs = ["vmlinux", "ext4", "nfsd", "btrfs"]
    for i in range(rng.randrange(1, 6)):
        text = m.function(f"func_{i}")
        for obj in rng.sample(objs, rng.randrange(1, 3)):
            relocs = []
            for _ in range(rng.randrange(1, 8)):
                sym_obj = obj if rng.random() < 0.8 else "vmlinux"
                sym = m.klp_sym(sym_obj, rng.choice(["a", "b.isra.0", "c.cold", "d"]), rng.randrange(3))
                addend = rng.randrange(-(2**31), 2**31) if rng.random() < 0.5 else -4
                relocs.append((rng.randrange(0, 2**16), sym, rng.choice(machine_types), addend))
            m.klp_rela(obj, text, relocs)
        if rng.random() < 0.5:
            m.rela(text, [(0, f"func_{i}", machine_types[0], 0)], type=SHT_REL if elf_class == 32 else 4)
    return m


@needs_readelf
@pytest.mark.parametrize("target", MACHINES, ids=lambda t: f"elf{t[0]}-{'le' if t[1] else 'be'}-em{t[2]}")
@pytest.mark.parametrize("seed", range(3))
def test_parser_agrees_with_readelf(tmp_path, target, seed):
    elf_class, little, machine, types = target
    rng = random.Random(seed * 1000 + machine)
    data = random_patch(rng, elf_class, types).build(elf_class=elf_class, little_endian=little, machine=machine)
    path = tmp_path / "p.ko"
    path.write_bytes(data)

    elf = ElfFile(data, str(path))
    assert [(s.num, s.name, s.offset, s.size, s.link, s.info) for s in elf.sections] == readelf_sections(path)

    pm = parse_patch_module(data, str(path))
    symtab = elf.symtab_section()
    all_syms = readelf_symbols(path)
    assert len(all_syms) == elf.symbol_count(symtab)
    for index, ndx, name in all_syms:
        if ndx == SHN_LIVEPATCH:
            assert (pm.symbols[index].name, pm.symbols[index].shndx) == (name, ndx)
    assert set(pm.symbols) >= {i for i, ndx, _ in all_syms if ndx == SHN_LIVEPATCH}

    relocs = readelf_relocations(path, elf_class)
    klp = {name: rels for name, rels in relocs.items() if name.startswith(".klp.rela.")}
    assert [s.name for s in pm.sections] == list(klp)
    for sec in pm.sections:
        assert [(r.offset, r.type, r.type_name, r.symbol_index, r.addend) for r in sec.relocations] == klp[sec.name]
        assert sec.target_name == readelf_sections(path)[sec.target_index][1]

    st = parse_module_symtab(data, str(path))
    assert list(st.names) == [name for _, ndx, name in all_syms if ndx != 0]


@needs_readelf
def test_readelf_agrees_on_extended_numbering_and_target_module(tmp_path):
    path = tmp_path / "m.ko"
    data = KlpModule().build(extended_numbering=True)
    path.write_bytes(data)
    assert [s.name for s in ElfFile(data, "m.ko").sections] == [s[1] for s in readelf_sections(path)]
    path.write_bytes(target_module())
    syms = readelf_symbols(path)
    assert list(parse_module_symtab(target_module(), "m.ko").names) == [n for _, ndx, n in syms if ndx != 0]
