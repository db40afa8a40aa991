"""klpd.elf.klpmodule: livepatch modules built by tests/elfwriter.py, well-formed and malformed."""

from __future__ import annotations

import gzip
import lzma
import struct
from pathlib import Path

import pytest
import zstandard
from elfwriter import (
    EM_386,
    EM_AARCH64,
    EM_PPC,
    EM_PPC64,
    EM_S390,
    EM_X86_64,
    R_X86_64_PC32,
    R_X86_64_PLT32,
    SHF_ALLOC,
    SHF_RELA_LIVEPATCH,
    SHN_ABS,
    SHN_LIVEPATCH,
    SHT_PROGBITS,
    SHT_REL,
    SHT_RELA,
    STT_FUNC,
    KlpModule,
    Reloc,
    Section,
    Symbol,
    create_elf_file,
)

from klpd.elf import parse_modinfo, parse_patch_module, read_modinfo, read_patch_module, reloc_type_name
from klpd.elf.signature import MAGIC as MODULE_SIG_MAGIC
from klpd.errors import ElfFormatError, SourceError
from klpd.model import KlpSymbolName, Relocation, Severity
from klpd.model_loader import ModuleSignature, SymbolVersion
from klpd.outputs.json import decode, inspect_document
from klpd.outputs.text import render_inspect
from klpd.root import HostPath

KLP_FLAGS = SHF_ALLOC | SHF_RELA_LIVEPATCH
DATA = Path(__file__).parent / "data"


def klp_problems(pm):
    """The problems of the .klp.rela / .klp.sym checks: these modules carry no patch description, whose absence
    (description_not_found, tests/test_elf_description.py) is beside the point here."""
    return tuple(p for p in pm.problems if p.code != "description_not_found")


def codes(pm):
    return [p.code for p in klp_problems(pm)]


def problem(pm, code):
    found = [p for p in pm.problems if p.code == code]
    assert len(found) == 1, pm.problems
    return found[0]


def cmdline_patch(**kw) -> KlpModule:
    """A correct patch of vmlinux and ext4, like klp-build would emit."""
    m = KlpModule("livepatch_cmdline", **kw)
    text = m.function("cmdline_proc_show")
    saved = m.klp_sym("vmlinux", "saved_command_line", 0)
    seq = m.klp_sym("vmlinux", "seq_printf", 0)
    m.klp_rela("vmlinux", text, [(0x10, saved, R_X86_64_PC32, -4), (0x20, seq, R_X86_64_PLT32, -4),
                                 (0x30, saved, R_X86_64_PC32, -4)])  # fmt: skip
    m.klp_rela("ext4", text, [(0x40, m.klp_sym("ext4", "ext4_attr_store.isra.0", 2), R_X86_64_PLT32, -4)])
    return m


# --------------------------------------------------------------------------------------------------------------
# Well-formed modules


def test_well_formed_patch_has_no_problems():
    pm = parse_patch_module(cmdline_patch().build(), "/lib/modules/x/livepatch-cmdline.ko")
    assert codes(pm) == []
    assert pm.name == "livepatch_cmdline"
    assert (pm.elf_class, pm.little_endian, pm.machine) == (64, True, "EM_X86_64")
    assert pm.modinfo.livepatch and pm.modinfo.release == "6.1.0-test"
    assert [(s.name, s.object, s.target_name) for s in pm.sections] == [
        (".klp.rela.vmlinux.text.cmdline_proc_show", "vmlinux", ".text.cmdline_proc_show"),
        (".klp.rela.ext4.text.cmdline_proc_show", "ext4", ".text.cmdline_proc_show"),
    ]
    vmlinux = pm.sections[0]
    assert vmlinux.is_livepatch and vmlinux.sh_type == SHT_RELA
    assert [(r.offset, r.type_name, pm.symbols[r.symbol_index].name, r.addend) for r in vmlinux.relocations] == [
        (0x10, "R_X86_64_PC32", ".klp.sym.vmlinux.saved_command_line,0", -4),
        (0x20, "R_X86_64_PLT32", ".klp.sym.vmlinux.seq_printf,0", -4),
        (0x30, "R_X86_64_PC32", ".klp.sym.vmlinux.saved_command_line,0", -4),
    ]
    parsed = {s.name: s.parsed for s in pm.symbols.values()}
    assert parsed[".klp.sym.ext4.ext4_attr_store.isra.0,2"] == KlpSymbolName("ext4", "ext4_attr_store.isra.0", 2)
    assert all(s.is_livepatch for s in pm.symbols.values())
    assert pm.has_versions is False


@pytest.mark.parametrize(
    ("elf_class", "little", "machine", "rtype", "type_name"),
    [
        (64, True, EM_X86_64, 2, "R_X86_64_PC32"),
        (64, True, EM_AARCH64, 283, "R_AARCH64_CALL26"),
        (64, False, EM_S390, 19, "R_390_PC32DBL"),
        (64, False, EM_PPC64, 10, "R_PPC64_REL24"),
        (64, True, EM_PPC64, 10, "R_PPC64_REL24"),
        (32, True, EM_386, 2, "R_386_PC32"),
        (32, False, EM_PPC, 10, "R_PPC_REL24"),
    ],
)
def test_every_class_byte_order_and_machine(elf_class, little, machine, rtype, type_name):
    m = KlpModule("lp")
    text = m.function("f")
    m.klp_rela("vmlinux", text, [(0x8, m.klp_sym("vmlinux", "g", 3), rtype, -8)])
    pm = parse_patch_module(m.build(elf_class=elf_class, little_endian=little, machine=machine), "lp.ko")
    assert (pm.elf_class, pm.little_endian) == (elf_class, little)
    (reloc,) = pm.sections[0].relocations
    assert (reloc.offset, reloc.type, reloc.type_name, reloc.addend) == (0x8, rtype, type_name, -8)
    assert pm.symbols[reloc.symbol_index].parsed == KlpSymbolName("vmlinux", "g", 3)
    assert codes(pm) == []


def test_name_comes_from_modinfo_else_from_file_name():
    m = KlpModule("lp")
    m.modinfo = [("livepatch", "Y"), ("vermagic", "6.1.0 SMP")]
    assert parse_patch_module(m.build(), "/x/livepatch-cve-2024-1.ko.xz").name == "livepatch_cve_2024_1"
    m.modinfo.append(("name", "from_modinfo"))
    assert parse_patch_module(m.build(), "/x/livepatch-cve.ko").name == "from_modinfo"


def test_versions_section_is_noticed():
    assert parse_patch_module(cmdline_patch().build(versions=True), "p.ko").has_versions


def test_symbols_include_unused_livepatch_symbols_and_used_ordinary_ones():
    m = KlpModule("lp")
    text = m.function("f")
    unused = m.klp_sym("vmlinux", "unused", 0)
    m.klp_rela("vmlinux", text, [(0, "f", R_X86_64_PC32, 0)])
    pm = parse_patch_module(m.build(), "lp.ko")
    names = {s.name: s for s in pm.symbols.values()}
    assert set(names) == {unused, "f"}
    assert names["f"].parsed is None and not names["f"].is_livepatch


def test_rel_section_has_zero_addends():
    m = KlpModule("lp")
    text = m.function("f")
    sym = m.klp_sym("vmlinux", "g", 0)
    m.klp_rela("vmlinux", text, [(4, sym, 2), (8, sym, 1)], type=SHT_REL, flags=SHF_ALLOC, name=".klp.rela.vmlinux.x")
    pm = parse_patch_module(m.build(elf_class=32, machine=EM_386), "lp.ko")
    assert [(r.offset, r.type_name, r.addend) for r in pm.sections[0].relocations] == [
        (4, "R_386_PC32", 0),
        (8, "R_386_32", 0),
    ]


def test_not_a_livepatch_module_still_parses():
    data = create_elf_file(
        [Section(".modinfo", SHT_PROGBITS, SHF_ALLOC, b"license=GPL\0name=ext4\0vermagic=6.1.0 SMP\0")],
        [Symbol("ext4_init", shndx=SHN_ABS)],
    )
    pm = parse_patch_module(data, "/lib/modules/6.1.0/kernel/fs/ext4/ext4.ko")
    assert pm.sections == () and pm.symbols == {}
    (p,) = pm.problems
    assert p.code == "not_livepatch_module" and p.severity is Severity.ERROR
    assert p.kernel_message == "livepatch: module ext4 is not marked as a livepatch module"


def test_module_without_livepatch_modinfo_is_reported():
    pm = parse_patch_module(cmdline_patch(livepatch=False).build(), "p.ko")
    assert codes(pm) == ["not_livepatch_module"]


# --------------------------------------------------------------------------------------------------------------
# Malformed livepatch modules: one problem per (code, subject), kernel messages filled in


@pytest.mark.parametrize("name", [".klp.rela.", ".klp.rela..text.foo", ".rela.text.foo", ".klp.rel.vmlinux.text"])
def test_flagged_section_with_malformed_name(name):
    m = KlpModule("lp")
    m.klp_rela("vmlinux", ".text.f", [(0, m.klp_sym("vmlinux", "g", 0), 2, 0)], name=name)
    pm = parse_patch_module(m.build(), "lp.ko")
    p = problem(pm, "malformed_section_name")
    assert p.subject == name and p.severity is Severity.ERROR
    assert p.kernel_message == f"livepatch: section {name} has an incorrectly formatted name"
    assert pm.sections[0].object is None


def test_section_object_longer_than_the_kernel_reads():
    obj = "m" * 56
    m = KlpModule("lp")
    m.klp_rela(obj, ".text.f", [(0, m.klp_sym("vmlinux", "g", 0), 2, 0)])
    pm = parse_patch_module(m.build(), "lp.ko")
    p = problem(pm, "section_object_truncated")
    assert pm.sections[0].object == "m" * 55
    assert "m" * 55 in p.message and p.subject == f".klp.rela.{obj}.text.f"


def test_klp_named_section_without_the_flag():
    m = KlpModule("lp")
    sym = m.klp_sym("vmlinux", "g", 0)
    m.klp_rela("vmlinux", ".text.f", [(0, sym, 2, 0), (8, sym, 2, 0)], flags=SHF_ALLOC)
    pm = parse_patch_module(m.build(), "lp.ko")
    assert problem(pm, "klp_section_not_flagged").subject == ".klp.rela.vmlinux.text.f"
    # The loader applies it like any .rela section, so its livepatch symbol relocates against 0.
    assert problem(pm, "livepatch_symbol_in_ordinary_rela").subject == sym
    assert not pm.sections[0].is_livepatch


def test_flagged_section_of_the_wrong_type_or_not_alloc():
    m = KlpModule("lp")
    sym = m.klp_sym("vmlinux", "g", 0)
    m.klp_rela("vmlinux", ".text.f", [(0, sym, 2, -4)], type=SHT_PROGBITS)
    m.klp_rela("vmlinux", ".text.g", [(0, sym, 2, -4)], flags=SHF_RELA_LIVEPATCH)
    m.klp_rela("ext4", ".text.g", [(0, m.klp_sym("ext4", "h"), 2, -4)], flags=SHF_RELA_LIVEPATCH)
    pm = parse_patch_module(m.build(), "lp.ko")
    assert codes(pm) == ["klp_section_not_rela", "klp_section_not_alloc", "klp_section_not_alloc"]
    assert problem(pm, "klp_section_not_rela").subject == ".klp.rela.vmlinux.text.f"
    # A vmlinux section is applied while the load image still exists; a module section is applied later.
    not_alloc = {p.subject: p.severity for p in pm.problems if p.code == "klp_section_not_alloc"}
    assert not_alloc == {".klp.rela.vmlinux.text.g": Severity.WARNING, ".klp.rela.ext4.text.g": Severity.ERROR}
    # The kernel reads a flagged section as Elf_Rela whatever its type.
    assert pm.sections[0].relocations[0].addend == -4


def test_relocation_against_a_symbol_not_marked_livepatch_is_reported_once():
    m = KlpModule("lp")
    text = m.function("f")
    m.symbol(".klp.sym.vmlinux.printk,0")  # right name, st_shndx SHN_UNDEF
    m.klp_rela("vmlinux", text, [(0, ".klp.sym.vmlinux.printk,0", 2, 0), (8, ".klp.sym.vmlinux.printk,0", 2, 0)])
    pm = parse_patch_module(m.build(), "lp.ko")
    p = problem(pm, "not_livepatch_symbol")
    assert p.kernel_message == "livepatch: symbol .klp.sym.vmlinux.printk,0 is not marked as a livepatch symbol"
    assert p.subject == ".klp.sym.vmlinux.printk,0"


@pytest.mark.parametrize(
    "elf_name",
    [".klp.sym.vmlinux.printk", ".klp.sym.vmlinux.printk,", ".klp.sym.vmlinux,0", ".klp.sym..printk,0",
     "printk", ".klp.sym.vmlinux.printk,-1", ".klp.sym." + "o" * 56 + ".printk,0"],
)  # fmt: skip
def test_malformed_livepatch_symbol_name(elf_name):
    m = KlpModule("lp")
    sym = m.klp_sym("vmlinux", "printk", elf_name=elf_name)
    m.klp_rela("vmlinux", ".text.f", [(0, sym, 2, 0)])
    pm = parse_patch_module(m.build(), "lp.ko")
    p = problem(pm, "malformed_name")
    assert p.kernel_message == f"livepatch: symbol {elf_name} has an incorrectly formatted name"
    assert codes(pm) == ["malformed_name"]


def test_vmlinux_symbol_from_module_section():
    m = KlpModule("lp")
    sym = m.klp_sym("vmlinux", "jiffies", 0)
    m.klp_rela("ext4", ".text.f", [(0, sym, 2, 0)])
    m.klp_rela("vmlinux", ".text.g", [(0, sym, 2, 0)])  # allowed: a vmlinux section
    pm = parse_patch_module(m.build(), "lp.ko")
    p = problem(pm, "vmlinux_from_module_section")
    assert p.kernel_message == (
        "livepatch: invalid access to vmlinux symbol 'jiffies' from module-specific livepatch relocation section"
    )
    assert p.subject == sym and ".klp.rela.ext4.text.f" in p.message
    assert codes(pm) == ["vmlinux_from_module_section"]


@pytest.mark.parametrize("suffix", [", 2", ",2junk", ",02", ",\t2"])
def test_non_canonical_sympos_is_a_warning(suffix):
    m = KlpModule("lp")
    sym = m.klp_sym("vmlinux", "f", elf_name=".klp.sym.vmlinux.f" + suffix)
    m.klp_rela("vmlinux", ".text.f", [(0, sym, 2, 0)])
    pm = parse_patch_module(m.build(), "lp.ko")
    p = problem(pm, "sympos_not_canonical")
    assert p.severity is Severity.WARNING and ".klp.sym.vmlinux.f,2" in p.message
    assert next(iter(pm.symbols.values())).parsed == KlpSymbolName("vmlinux", "f", 2)


def test_livepatch_symbol_in_ordinary_rela_section():
    m = KlpModule("lp")
    text = m.function("f")
    sym = m.klp_sym("vmlinux", "saved_command_line", 0)
    m.rela(text, [(0, sym, R_X86_64_PC32, -4), (8, sym, R_X86_64_PC32, -4)])
    m.rela(".text.g", [(0, sym, R_X86_64_PC32, -4)])
    pm = parse_patch_module(m.build(), "lp.ko")
    p = problem(pm, "livepatch_symbol_in_ordinary_rela")
    assert p.subject == sym and p.severity is Severity.ERROR and p.kernel_message is None
    assert ".rela.text.f" in p.message and ".rela.text.g" in p.message
    assert pm.sections == ()


def test_ordinary_rela_of_a_non_alloc_section_is_not_applied_so_not_reported():
    m = KlpModule("lp")
    sym = m.klp_sym("vmlinux", "saved_command_line", 0)
    m.section(".debug_info", data=b"\0" * 32)
    m.rela(".debug_info", [(0, sym, 1, 0)])
    assert codes(parse_patch_module(m.build(), "lp.ko")) == []


def test_relocation_symbol_index_past_the_symtab():
    m = KlpModule("lp")
    m.klp_rela("vmlinux", ".text.f", [Reloc(0, 999, 2, 0)])
    pm = parse_patch_module(m.build(), "lp.ko")
    p = problem(pm, "relocation_symbol_out_of_range")
    assert p.subject == ".klp.rela.vmlinux.text.f" and "999" in p.message


def test_one_module_many_faults_lists_each_once_in_file_order():
    m = KlpModule("lp", livepatch=False)
    good = m.klp_sym("vmlinux", "g", 0)
    m.symbol("plain", shndx=".modinfo")
    m.klp_rela("vmlinux", ".text.a", [(0, "plain", 2, 0), (8, "plain", 2, 0), (16, good, 2, 0)])
    m.klp_rela("vmlinux", ".text.b", [(0, "plain", 2, 0)])
    pm = parse_patch_module(m.build(), "lp.ko")
    assert codes(pm) == ["not_livepatch_module", "not_livepatch_symbol"]


# --------------------------------------------------------------------------------------------------------------
# Files that are not well-formed ELF: ElfFormatError naming the file and the fault


def test_truncated_klp_section_names_section_offsets_and_file_size():
    data = cmdline_patch().build()
    pm = parse_patch_module(data, "p.ko")
    sec = pm.sections[0]
    # Point the section past the end of the file.
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    hdr = shoff + sec.index * 64
    bad = bytearray(data)
    struct.pack_into("<Q", bad, hdr + 24, len(data) - 8)
    with pytest.raises(ElfFormatError) as exc:
        parse_patch_module(bytes(bad), "/var/lib/kpatch/6.1/p.ko")
    assert exc.value.path == "/var/lib/kpatch/6.1/p.ko"
    assert exc.value.reason == (
        f"truncated: section {sec.name} extends past end of file "
        f"(offset {len(data) - 8:#x}, size {len(sec.relocations) * 24:#x}, file {len(data):#x})"
    )


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: b"", "not an ELF file"),
        (lambda d: b"\x7fELG" + d[4:], "not an ELF file"),
        (lambda d: d[:4] + b"\x03" + d[5:], "invalid ELF class"),
        (lambda d: d[:5] + b"\x07" + d[6:], "invalid ELF data encoding"),
        (lambda d: d[:30], "truncated: ELF header"),
        (lambda d: d[:16] + struct.pack("<H", 2) + d[18:], "not a kernel module: ELF ET_EXEC"),
        (lambda d: d[:0x3A] + struct.pack("<H", 40) + d[0x3C:], "invalid section header size 40"),
        (lambda d: d[:0x28] + struct.pack("<Q", 0) + d[0x30:], "no section header table"),
        (lambda d: d[:0x3E] + struct.pack("<H", 200) + d[0x40:], "section name string table index 200"),
        (lambda d: d[:0x3C] + struct.pack("<H", 5000) + d[0x3E:], "truncated: section header table"),
        (lambda d: d[:-10], "truncated: section header table"),
    ],
)
def test_malformed_elf_is_an_elf_format_error(mutate, reason):
    with pytest.raises(ElfFormatError) as exc:
        parse_patch_module(mutate(cmdline_patch().build()), "bad.ko")
    assert exc.value.reason.startswith(reason), exc.value.reason
    assert str(exc.value).startswith("bad.ko: ")


def test_module_without_symtab_is_rejected():
    data = create_elf_file([Section(".modinfo", SHT_PROGBITS, SHF_ALLOC, b"livepatch=Y\0")], symtab=False)
    with pytest.raises(ElfFormatError, match="no symbol table"):
        parse_patch_module(data, "p.ko")


def test_extended_section_numbering_is_read():
    data = cmdline_patch().build(extended_numbering=True)
    assert struct.unpack_from("<HH", data, 0x3C) == (0, 0xFFFF)
    pm = parse_patch_module(data, "p.ko")
    assert [s.object for s in pm.sections] == ["vmlinux", "ext4"] and codes(pm) == []


def test_invalid_utf8_in_names_does_not_raise():
    m = KlpModule("lp")
    m.symbols.append(Symbol("x", shndx=SHN_LIVEPATCH))
    m.klp_rela("vmlinux", ".text.f", [Reloc(0, 1, 2, 0)])
    data = bytearray(m.build())
    data[data.index(b"\0x\0") + 1] = 0xFF  # the symbol's name in .strtab
    data[data.index(b".text.f\0") + 6] = 0xFE  # the target section's name in .shstrtab
    pm = parse_patch_module(bytes(data), "p.ko")
    assert pm.symbols[1].name == "\ufffd"
    assert pm.sections[0].target_name == ".text.\ufffd"
    assert codes(pm) == ["malformed_name"]


def test_symbol_name_offset_outside_strtab_does_not_raise():
    m = KlpModule("lp")
    m.symbols.append(Symbol("x", shndx=SHN_LIVEPATCH, name_offset=0x7FFFFFFF))
    m.klp_rela("vmlinux", ".text.f", [Reloc(0, 1, 2, 0)])
    pm = parse_patch_module(m.build(), "p.ko")
    assert pm.symbols[1].parsed is None
    assert codes(pm) == ["malformed_name"]


# --------------------------------------------------------------------------------------------------------------
# Reading files


@pytest.mark.parametrize(
    ("suffix", "compress"),
    [
        (".ko", lambda d: d),
        (".ko.xz", lambda d: lzma.compress(d, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)),
        (".ko.gz", gzip.compress),
        (".ko.zst", lambda d: zstandard.ZstdCompressor().compress(d)),
    ],
)
def test_read_patch_module_decompresses(tmp_path, suffix, compress):
    data = cmdline_patch().build()
    path = tmp_path / f"livepatch-cmdline{suffix}"
    path.write_bytes(compress(data))
    pm = read_patch_module(HostPath(f"/lib/modules/6.1/livepatch/livepatch-cmdline{suffix}", path))
    assert pm.path == f"/lib/modules/6.1/livepatch/livepatch-cmdline{suffix}"
    assert pm == parse_patch_module(data, pm.path)
    assert read_modinfo(HostPath(str(path), path)) == pm.modinfo


def test_read_errors_name_the_display_path(tmp_path):
    with pytest.raises(SourceError) as exc:
        read_patch_module(HostPath("/host/missing.ko", tmp_path / "missing.ko"))
    assert exc.value.path == "/host/missing.ko"
    with pytest.raises(SourceError):
        read_patch_module(HostPath(str(tmp_path), tmp_path))  # a directory
    bad = tmp_path / "bad.ko.xz"
    bad.write_bytes(lzma.compress(cmdline_patch().build())[:-20])
    with pytest.raises(ElfFormatError) as fexc:
        read_patch_module(HostPath("/host/bad.ko.xz", bad))
    assert fexc.value.path == "/host/bad.ko.xz"


def test_modinfo_alone():
    info = parse_modinfo(cmdline_patch().build(), "p.ko")
    assert info.livepatch and info.name == "livepatch_cmdline"
    # NUL padding between strings and entries without '=' are skipped, as get_next_modinfo() does.
    data = create_elf_file([Section(".modinfo", SHT_PROGBITS, SHF_ALLOC, b"\0\0livepatch=Y\0\0junk\0a=b=c\0")])
    assert parse_modinfo(data, "m.ko").entries == (("livepatch", "Y"), ("a", "b=c"))
    assert parse_modinfo(create_elf_file([]), "m.ko").entries == ()


# --------------------------------------------------------------------------------------------------------------
# Relocation type names


@pytest.mark.parametrize(
    ("machine", "rtype", "name"),
    [
        ("EM_X86_64", 4, "R_X86_64_PLT32"),
        ("x86_64", 2, "R_X86_64_PC32"),
        ("EM_AARCH64", 283, "R_AARCH64_CALL26"),
        ("arm64", 282, "R_AARCH64_JUMP26"),
        ("ppc64le", 10, "R_PPC64_REL24"),
        ("EM_PPC64", 1, "R_PPC64_ADDR32"),
        ("s390x", 19, "R_390_PC32DBL"),
        ("EM_S390", 22, "R_390_64"),
        ("EM_386", 2, "R_386_PC32"),
        ("EM_ARM", 28, "R_ARM_CALL"),
        ("EM_PPC", 10, "R_PPC_REL24"),
        ("EM_X86_64", 4000, "R_4000"),
        ("EM_SPARC", 1, "R_1"),
    ],
)
def test_reloc_type_name(machine, rtype, name):
    assert reloc_type_name(machine, rtype) == name


def test_symbol_table_entries_used_by_klp_sections_keep_their_function_info():
    m = KlpModule("lp")
    m.symbol("helper", shndx=".modinfo", type=STT_FUNC, value=0x40)
    m.klp_rela("vmlinux", ".text.f", [(0, "helper", 2, 0)])
    pm = parse_patch_module(m.build(), "p.ko")
    (sym,) = pm.symbols.values()
    assert (sym.name, sym.value, sym.is_livepatch) == ("helper", 0x40, False)
    assert sym.shndx == 1  # .modinfo is section 1
    assert pm.sections[0].sh_flags & KLP_FLAGS == KLP_FLAGS


@pytest.mark.parametrize("fast", [True, False])
def test_relocations_are_the_same_in_either_byte_order_and_either_construction(monkeypatch, fast):
    from klpd.elf import relocations

    monkeypatch.setattr(relocations, "_FAST_RELOCATIONS", fast)
    m = cmdline_patch()
    m.klp_rela(
        "xfs", ".text.big", [(i * 8, m.klp_sym("xfs", f"s{i % 7}", i % 3), 2 + i % 3, i - 50) for i in range(100)]
    )
    m.klp_rela("xfs", ".text.rel", [(4, ".klp.sym.xfs.s1,1", 2)], type=SHT_REL, flags=SHF_ALLOC, name=".klp.rela.xfs.r")
    expected = [
        [Relocation(r.offset, r.type, reloc_type_name("EM_X86_64", r.type), r.symbol_index, r.addend)
         for r in sec.relocations]
        for sec in parse_patch_module(m.build(), "p.ko").sections
    ]  # fmt: skip
    assert expected[2][:2] == [Relocation(0, 2, "R_X86_64_PC32", expected[2][0].symbol_index, -50),
                               Relocation(8, 3, "R_X86_64_GOT32", expected[2][1].symbol_index, -49)]  # fmt: skip
    assert expected[3] == [Relocation(4, 2, "R_X86_64_PC32", expected[3][0].symbol_index, 0)]
    for little in (True, False):
        for elf_class in (64, 32):
            pm = parse_patch_module(m.build(little_endian=little, elf_class=elf_class), "p.ko")
            got = [[(r.offset, r.type, r.symbol_index, r.addend) for r in sec.relocations] for sec in pm.sections]
            assert got == [[(r.offset, r.type, r.symbol_index, r.addend) for r in sec] for sec in expected]


# --------------------------------------------------------------------------------------------------------------
# What the module loader reads before livepatch: __versions, imports, .gnu.linkonce.this_module (klpd.elf.load_info)


def modversion_entries(entries, elf_class=64, little=True):
    """struct modversion_info entries: an unsigned long CRC, then the name NUL-padded to 64 bytes."""
    fmt = ("<" if little else ">") + ("Q56s" if elf_class == 64 else "I60s")
    return b"".join(struct.pack(fmt, crc, name.encode()) for name, crc in entries)


VERSIONS = [("module_layout", 0x70ECA2CA), ("_printk", 0xE8213E80), ("x" * 55, 0x1)]


@pytest.mark.parametrize(("elf_class", "little"), [(64, True), (64, False), (32, True), (32, False)])
def test_versions_in_either_word_size_and_byte_order(elf_class, little):
    m = cmdline_patch()
    # A partial entry at the end is ignored, as the loader counts sh_size / sizeof(struct modversion_info).
    m.section("__versions", flags=SHF_ALLOC, data=modversion_entries(VERSIONS, elf_class, little) + b"\1" * 10)
    pm = parse_patch_module(m.build(elf_class=elf_class, little_endian=little), "lp.ko")
    assert [(v.name, v.crc) for v in pm.versions] == VERSIONS
    assert pm.has_versions


def test_versions_section_the_loader_does_not_see_is_not_read():
    m = cmdline_patch()
    m.section("__versions", flags=0, data=modversion_entries(VERSIONS))  # find_sec() wants SHF_ALLOC
    assert parse_patch_module(m.build(), "lp.ko").versions == ()
    assert parse_patch_module(cmdline_patch().build(), "lp.ko").versions == ()


def test_extended_versions_are_what_the_loader_relies_on():
    long_name = "a_symbol_name_far_longer_than_the_fifty_five_characters_of_a_modversion_info"
    m = cmdline_patch()
    m.section("__versions", flags=SHF_ALLOC, data=modversion_entries(VERSIONS[:2]))
    m.section("__version_ext_crcs", flags=SHF_ALLOC, data=struct.pack(">3I", 0x70ECA2CA, 0xE8213E80, 0xDEADBEEF))
    m.section("__version_ext_names", flags=SHF_ALLOC, data=f"module_layout\0_printk\0{long_name}\0".encode())
    pm = parse_patch_module(m.build(little_endian=False, machine=EM_S390), "lp.ko")
    assert [(v.name, v.crc) for v in pm.versions] == [*VERSIONS[:2], (long_name, 0xDEADBEEF)]
    m.sections.pop()  # CRCs without names: the loader refuses the file; klpd falls back on __versions
    assert [v.name for v in parse_patch_module(m.build(), "lp.ko").versions] == ["module_layout", "_printk"]


def test_imports_are_the_undefined_strong_symbols_once_each():
    m = cmdline_patch()
    m.symbol("local_undefined", bind=0)
    for name in ("_printk", "kmalloc_caches", "_printk"):
        m.symbol(name)
    m.symbol("maybe_there", bind=2)  # STB_WEAK: left at 0 when unresolved
    m.symbol("", name_offset=0)  # unnamed
    m.symbol("_GLOBAL_OFFSET_TABLE_")  # ignore_undef_symbol() on x86
    m.symbol("defined_here", shndx=".text.cmdline_proc_show")
    m.symbol("absolute", shndx=SHN_ABS)
    pm = parse_patch_module(m.build(), "lp.ko")
    # The .klp.sym.* symbols (SHN_LIVEPATCH) are livepatch's to resolve, not the loader's.
    assert pm.imports == ("local_undefined", "_printk", "kmalloc_caches")
    aarch64 = parse_patch_module(m.build(machine=EM_AARCH64), "lp.ko")
    assert aarch64.imports[-1] == "_GLOBAL_OFFSET_TABLE_"


def test_this_module_size_is_the_section_size_as_given():
    m = cmdline_patch()
    assert parse_patch_module(m.build(), "lp.ko").this_module_size is None
    m.section(".gnu.linkonce.this_module", flags=SHF_ALLOC | 1, data=bytes(1344), addralign=64)
    assert parse_patch_module(m.build(), "lp.ko").this_module_size == 1344
    assert parse_patch_module(m.build(elf_class=32), "lp.ko").this_module_size == 1344


def test_loader_inputs_in_inspect_json_and_text():
    m = cmdline_patch()
    m.section("__versions", flags=SHF_ALLOC, data=modversion_entries(VERSIONS))
    m.symbol("_printk")
    blob = (DATA / "pkcs7-sha256-keyid.der").read_bytes()
    signed = m.build() + blob + struct.pack(">BBBBB3sI", 0, 0, 2, 0, 0, bytes(3), len(blob)) + MODULE_SIG_MAGIC
    pm = parse_patch_module(signed, "lp.ko")
    (doc,) = inspect_document([pm], [])["files"]
    assert doc["signature"] == {"id_type": 2, "signer": None, "key_id": "e85964fb886cb628080b4ed3089f9aec263c6903",
                                "hash_algorithm": "sha256", "problem": None, "by_key_id": True}  # fmt: skip
    assert doc["versions"][0] == {"name": "module_layout", "crc": 0x70ECA2CA} and doc["imports"] == ["_printk"]
    assert decode(ModuleSignature, doc["signature"]) == pm.signature
    assert decode(tuple[SymbolVersion, ...], doc["versions"]) == pm.versions
    text = render_inspect([pm], [])
    assert "  signature: signer -, key id e85964fb886cb628080b4ed3089f9aec263c6903, sha256\n" in text
    assert "  loader: 3 symbol versions, 1 imports, this_module none\n" in text
    assert "  signature: unsigned\n" in render_inspect([parse_patch_module(m.build(), "lp.ko")], [])


def test_inspect_text_says_what_is_wrong_with_a_signature():
    module = cmdline_patch().build()
    broken = module + struct.pack(">BBBBB3sI", 0, 7, 2, 0, 0, bytes(3), 16) + MODULE_SIG_MAGIC
    text = render_inspect([parse_patch_module(broken, "lp.ko")], [])
    assert "  signature: MALFORMED: the signature trailer has non-zero hash=7" in text
    other = module + bytes(16) + struct.pack(">BBBBB3sI", 0, 0, 1, 0, 0, bytes(3), 16) + MODULE_SIG_MAGIC
    assert "  signature: not PKCS#7 (id_type 1)" in render_inspect([parse_patch_module(other, "lp.ko")], [])
