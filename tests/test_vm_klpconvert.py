"""klpconvert.py, the suite's .klp.rela converter, on a small object compiled here (no VM needed).

The VM cases trust it to produce exactly what kpatch-build produces; this checks the ELF it writes with pyelftools
and binutils' readelf, independently of klpd's own reader.
"""

import shutil
import subprocess

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from vm import klpconvert

SOURCE = r"""
extern char vm_sym[] __asm__("\".klp.sym.vmlinux.foo_bar,2\"");
extern char mod_sym[] __asm__("\".klp.sym.some_mod.baz,0\"");
extern int exported(int);
unsigned long f(int x) { return (unsigned long)vm_sym + (unsigned long)mod_sym + exported(x); }
"""

SHF_ALLOC_LIVEPATCH = 0x2 | 0x00100000


@pytest.fixture(scope="module")
def obj(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("no gcc to compile the test object")
    d = tmp_path_factory.mktemp("klpconvert")
    (d / "t.c").write_text(SOURCE)
    # The code model of kernel modules: absolute 32-bit sign-extended addresses, no PLT.
    subprocess.run(["gcc", "-O2", "-fno-PIE", "-mcmodel=kernel", "-c", "t.c", "-o", "t.o"], cwd=d, check=True)
    return d / "t.o"


def convert(obj, tmp_path, **kwargs):
    out = tmp_path / "out.o"
    out.write_bytes(klpconvert.convert(obj.read_bytes(), **kwargs))
    # binutils must read it cleanly too.
    proc = subprocess.run(["readelf", "-W", "-a", str(out)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "Warning" not in proc.stderr and "Error" not in proc.stderr, proc.stderr
    return out


def relocations(elf):
    """{section name: (flags, target section name, [symbol names])} for every relocation section."""
    symtab = elf.get_section_by_name(".symtab")
    out = {}
    for sec in elf.iter_sections():
        if isinstance(sec, RelocationSection):
            names = [symtab.get_symbol(r["r_info_sym"]).name for r in sec.iter_relocations()]
            out[sec.name] = (sec["sh_flags"], elf.get_section(sec["sh_info"]).name, names)
    return out


def livepatch_symbols(elf):
    return {
        s.name: s["st_shndx"] for s in elf.get_section_by_name(".symtab").iter_symbols() if s.name.startswith(".klp")
    }


def test_klp_relocations_move_into_one_section_per_object(obj, tmp_path):
    with open(convert(obj, tmp_path), "rb") as f:
        elf = ELFFile(f)
        rel = relocations(elf)
        assert rel[".klp.rela.vmlinux..text"][1:] == (".text", [".klp.sym.vmlinux.foo_bar,2"])
        assert rel[".klp.rela.some_mod..text"][1:] == (".text", [".klp.sym.some_mod.baz,0"])
        for name in (".klp.rela.vmlinux..text", ".klp.rela.some_mod..text"):
            assert rel[name][0] & SHF_ALLOC_LIVEPATCH == SHF_ALLOC_LIVEPATCH
        assert rel[".rela.text"][2] == ["exported"]  # the ordinary relocation stays
        assert set(livepatch_symbols(elf).values()) == {0xFF20}  # SHN_LIVEPATCH
        assert elf.get_section_by_name(".klp.rela.vmlinux..text")["sh_link"] == elf.get_section_index(".symtab")


def test_move_puts_an_ordinary_symbol_in_the_klp_section(obj, tmp_path):
    with open(convert(obj, tmp_path, move=["exported"]), "rb") as f:
        rel = relocations(ELFFile(f))
        assert sorted(rel[".klp.rela.vmlinux..text"][2]) == [".klp.sym.vmlinux.foo_bar,2", "exported"]
        assert rel[".rela.text"][2] == []


def test_object_overrides_the_section_name(obj, tmp_path):
    with open(convert(obj, tmp_path, object_name="some_mod"), "rb") as f:
        rel = relocations(ELFFile(f))
        assert sorted(rel[".klp.rela.some_mod..text"][2]) == [".klp.sym.some_mod.baz,0", ".klp.sym.vmlinux.foo_bar,2"]
        assert not any(name.startswith(".klp.rela.vmlinux") for name in rel)


def test_keep_rela_marks_symbols_but_moves_nothing(obj, tmp_path):
    with open(convert(obj, tmp_path, keep_rela=True), "rb") as f:
        elf = ELFFile(f)
        rel = relocations(elf)
        assert not any(name.startswith(".klp.rela") for name in rel)
        assert len(rel[".rela.text"][2]) == 3
        assert set(livepatch_symbols(elf).values()) == {0xFF20}


def test_rejects_what_it_cannot_convert(obj, tmp_path):
    with pytest.raises(klpconvert.ConvertError, match="ELF64"):
        klpconvert.convert(b"not an elf")
    with pytest.raises(klpconvert.ConvertError, match="no such symbol"):
        klpconvert.convert(obj.read_bytes(), move=["absent"])
