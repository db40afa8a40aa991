"""The patch description klpd reads from a livepatch module (klpd/elf/description), per producer and architecture,
and what it reports for malformed and missing descriptions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from descriptions import (
    ARCHES,
    I386,
    PPC32,
    X86_64,
    Arch,
    Obj,
    build,
    klp_build_patch,
    kpatch_patch,
    relocs_of,
    section_of,
    static_patch,
)
from elfwriter import (
    SHF_ALLOC,
    SHF_WRITE,
    SHT_NOBITS,
    SHT_PROGBITS,
    SHT_REL,
    STB_LOCAL,
    STT_OBJECT,
    STT_SECTION,
    KlpModule,
    Reloc,
)

from klpd.cli import main
from klpd.elf import parse_patch_module
from klpd.model import PatchModule, Severity
from klpd.model_description import (
    FoundBy,
    FunctionDescription,
    ObjectDescription,
    PatchDescription,
    StateDescription,
)

OBJECTS: list[Obj] = [
    (None, [("cmdline_proc_show", "lp_cmdline", 0), ("dup_name", "lp_dummy", 2)], []),
    ("ext4", [("ext4_attr_store", "lp_ext4_attr_store", 0)], ["pre_patch", "post_unpatch"]),
]
EXPECTED = (
    ObjectDescription(None, (FunctionDescription("cmdline_proc_show", 0, "lp_cmdline"),
                             FunctionDescription("dup_name", 2, "lp_dummy"))),
    ObjectDescription("ext4", (FunctionDescription("ext4_attr_store", 0, "lp_ext4_attr_store"),),
                      ("pre_patch", "post_unpatch")),
)  # fmt: skip
ALL_ARCHES = [*ARCHES.values(), PPC32]


def parse(m: KlpModule, arch: Arch = X86_64, path: str = "livepatch-test.ko") -> PatchModule:
    return parse_patch_module(build(m, arch), path)


def only_problem(pm: PatchModule, code: str) -> str:
    assert [p.code for p in pm.problems] == [code], pm.problems
    return pm.problems[0].message


def arch_id(a: Arch) -> str:
    return a.name


@pytest.mark.parametrize("arch", ALL_ARCHES, ids=arch_id)
def test_static_patch_5_5_layout(arch: Arch) -> None:
    pm = parse(static_patch(arch, OBJECTS, states=[(0x1234, 2), (7, 1)], replace=True), arch)
    assert pm.problems == ()
    states = (StateDescription(0x1234, 2), StateDescription(7, 1))
    assert pm.description == PatchDescription(FoundBy.STATIC, "patch in .data, 5.5+ layout", True, states, EXPECTED)


@pytest.mark.parametrize("arch", ALL_ARCHES, ids=arch_id)
def test_static_patch_4_18_layout_has_no_states_and_no_replace(arch: Arch) -> None:
    pm = parse(static_patch(arch, OBJECTS, layout="4.16-5.0"), arch)
    assert pm.problems == ()
    assert pm.description == PatchDescription(FoundBy.STATIC, "patch in .data, 4.16-5.0 layout", False, (), EXPECTED)


@pytest.mark.parametrize("arch", ALL_ARCHES, ids=arch_id)
def test_static_patch_5_1_layout_has_replace_but_no_states(arch: Arch) -> None:
    pm = parse(static_patch(arch, OBJECTS, layout="5.1-5.4", replace=True), arch)
    assert pm.problems == ()
    assert pm.description == PatchDescription(FoundBy.STATIC, "patch in .data, 5.1-5.4 layout", True, (), EXPECTED)


@pytest.mark.parametrize("arch", ALL_ARCHES, ids=arch_id)
def test_static_patch_is_found_without_symbols_and_without_call_site(arch: Arch) -> None:
    pm = parse(static_patch(arch, OBJECTS, states=[], symbols=False, call_site=False, patch_offset=64), arch)
    assert pm.problems == ()
    assert pm.description is not None
    assert (pm.description.objects, pm.description.states, pm.description.replace) == (EXPECTED, (), False)
    assert pm.description.where == ".data+0x40 in .data, 5.5+ layout"


@pytest.mark.parametrize("sections", [(".init.klp_objects", ".init.klp_funcs"), ("__klp_objects", "__klp_funcs")])
@pytest.mark.parametrize("arch", ALL_ARCHES, ids=arch_id)
def test_klp_build(arch: Arch, sections: tuple[str, str]) -> None:
    pm = parse(klp_build_patch(arch, OBJECTS, sections=sections), arch)
    assert pm.problems == ()
    assert pm.description == PatchDescription(FoundBy.KLP_BUILD, f"section {sections[0]}", None, (), EXPECTED)


@pytest.mark.parametrize("arch", ALL_ARCHES, ids=arch_id)
def test_kpatch_groups_functions_by_object_in_order_of_first_appearance(arch: Arch) -> None:
    callbacks = {"pre_patch": [("lp_pre", "ext4")], "post_unpatch": [("lp_post", "ext4"), ("lp_x", "xfs")]}
    m = kpatch_patch(arch, [("vmlinux", "cmdline_proc_show", "lp_cmdline", 0),
                            ("ext4", "ext4_attr_store", "lp_ext4_attr_store", 0),
                            ("vmlinux", "dup_name", "lp_dummy", 2)], callbacks)  # fmt: skip
    pm = parse(m, arch)
    assert pm.problems == ()
    assert pm.description == PatchDescription(FoundBy.KPATCH, "section .kpatch.funcs", None, (),
                                              (*EXPECTED, ObjectDescription("xfs", (), ("post_unpatch",))))  # fmt: skip


def test_i386_modules_are_read_too() -> None:
    pm = parse(static_patch(I386, OBJECTS), I386)
    assert pm.description is not None and pm.description.objects == EXPECTED


# -- malformed but readable: represented as the kernel will see it -----------------------------------------------
def test_null_funcs_null_old_name_null_new_func_duplicates_and_module_file_names_are_kept() -> None:
    # (None, None) would be the terminator, so the object without funcs is a named one.
    objects: list[Obj] = [("ext4", None, []), ("dummy.ko", [(None, "lp_a", 0), ("foo", None, 1)], []),
                          ("dummy.ko", [("foo", "lp_a", 0)], [])]  # fmt: skip
    for m in (static_patch(X86_64, objects), klp_build_patch(X86_64, objects[1:])):
        pm = parse(m)
        assert pm.problems == ()
        assert pm.description is not None
        got = pm.description.objects
        if pm.description.found_by is FoundBy.STATIC:
            assert got[0] == ObjectDescription("ext4", None)
            got = got[1:]
        assert got == (
            ObjectDescription("dummy.ko", (FunctionDescription(None, 0, "lp_a"),
                                           FunctionDescription("foo", 1, None, new_func_set=False))),
            ObjectDescription("dummy.ko", (FunctionDescription("foo", 0, "lp_a"),)),
        )  # fmt: skip


def test_new_func_without_a_symbol_is_named_by_section_and_offset() -> None:
    m = kpatch_patch(X86_64, [("vmlinux", "foo", "lp_foo", 0)])
    relocs_of(m, ".kpatch.funcs")[0] = Reloc(0, ".text", X86_64.absolute, 0x8)
    pm = parse(m)
    assert pm.description is not None
    assert pm.description.objects[0].functions == (FunctionDescription("foo", 0, ".text+0x8"),)


# -- corrupt: an error naming the file, section and offset ------------------------------------------------------
def test_missing_terminator_of_the_last_function_array() -> None:
    m = static_patch(X86_64, OBJECTS[:1])
    data = section_of(m, ".data")
    data.data = data.data[:-152]  # the section ends where the klp_func terminator should be
    pm = parse(m)
    assert pm.description is None
    message = only_problem(pm, "description_corrupt")
    assert message.startswith("livepatch-test.ko: the patch description is corrupt at .data+")
    assert "klp_func array has no terminator before the section end" in message
    assert pm.problems[0].severity is Severity.ERROR


def test_missing_object_terminator_is_corrupt() -> None:
    pm = parse(static_patch(X86_64, OBJECTS, terminate=False))
    assert pm.description is None
    assert "passed to klp_enable_patch()" in only_problem(pm, "description_corrupt")


@pytest.mark.parametrize("producer", ["static", "kpatch", "klp-build"])
def test_string_pointer_past_its_section(producer: str) -> None:
    if producer == "static":
        m, sec = static_patch(X86_64, OBJECTS), ".data"
    elif producer == "kpatch":
        m, sec = kpatch_patch(X86_64, [("vmlinux", "foo", "lp_foo", 0)]), ".kpatch.funcs"
    else:
        m, sec = klp_build_patch(X86_64, OBJECTS), ".init.klp_funcs"
    relocs = relocs_of(m, sec)
    i = next(i for i, r in enumerate(relocs) if r.symbol in (".rodata.str1.1", ".kpatch.strings"))
    relocs[i].addend = 0x100000
    pm = parse(m)
    assert pm.description is None
    assert "is past the section" in only_problem(pm, "description_corrupt")


def test_relocation_against_a_symbol_past_the_symbol_table() -> None:
    m = klp_build_patch(X86_64, OBJECTS)
    relocs_of(m, ".init.klp_objects")[0].symbol = 9999  # objs[0].funcs (objs[0].name is NULL: vmlinux)
    message = only_problem(parse(m), "description_corrupt")
    assert "at .init.klp_objects+0x8: relocation names symbol 9999, past the symbol table" in message


def test_klp_build_nr_funcs_past_the_funcs_section() -> None:
    m = klp_build_patch(X86_64, OBJECTS[:1])
    objs = section_of(m, ".init.klp_objects")
    objs.data = objs.data[:56] + (100).to_bytes(4, "little") + objs.data[60:]
    message = only_problem(parse(m), "description_corrupt")
    assert "100 klp_func_ext entries at .init.klp_funcs+0x0 run past the section" in message


@pytest.mark.parametrize("section", [".kpatch.funcs", ".init.klp_objects"])
def test_truncated_entry_array(section: str) -> None:
    m = kpatch_patch(X86_64, [("vmlinux", "foo", "lp_foo", 0)]) if section == ".kpatch.funcs" \
        else klp_build_patch(X86_64, OBJECTS)  # fmt: skip
    sec = section_of(m, section)
    sec.data = sec.data[:-8]
    assert "is not a whole number of" in only_problem(parse(m), "description_corrupt")


def test_kpatch_null_objname_is_corrupt() -> None:
    m = kpatch_patch(X86_64, [(None, "foo", "lp_foo", 0)])
    assert "objname is NULL" in only_problem(parse(m), "description_corrupt")


def test_an_object_whose_funcs_loop_back_to_the_object_array() -> None:
    m = static_patch(X86_64, OBJECTS[:1])
    relocs = relocs_of(m, ".data")
    funcs = next(r for r in relocs if r.offset == 200 + 8)  # objs[0].funcs
    funcs.addend = 200  # -> objs itself
    pm = parse(m)
    assert pm.description is None
    assert pm.problems[0].code == "description_corrupt"


def test_more_entries_than_any_patch_has() -> None:
    m = klp_build_patch(X86_64, OBJECTS[:1])
    objs = section_of(m, ".init.klp_objects")
    objs.data = objs.data[:56] + (70000).to_bytes(4, "little") + objs.data[60:]
    assert "more than 65536 functions" in only_problem(parse(m), "description_corrupt")


# -- finding the static patch -----------------------------------------------------------------------------------
def _two_patches(call_second: bool | None) -> KlpModule:
    """Two valid klp_patch structs in .data; the init code passes the second one (or none) to klp_enable_patch."""
    m = static_patch(X86_64, OBJECTS, call_site=call_second is not None)
    data = section_of(m, ".data")
    relocs = relocs_of(m, ".data")
    base = len(data.data)
    data.data += data.data  # a copy of everything, so its pointers are shifted by base
    data.data = data.data[: base + 24] + b"\x01" + data.data[base + 25 :]  # the copy has replace = true
    relocs += [Reloc(r.offset + base, r.symbol, r.type, r.addend + (base if r.symbol == ".data" else 0))
               for r in list(relocs)]  # fmt: skip
    if call_second:
        relocs_of(m, ".init.text")[0].addend = base
    for s in m.symbols:
        if s.name in ("patch", "objs"):
            s.size = 0  # two arrays, one symbol each: drop the sizes rather than name both
    return m


def test_two_candidates_the_one_passed_to_klp_enable_patch_wins() -> None:
    pm = parse(_two_patches(call_second=True))
    assert pm.problems == ()
    assert pm.description is not None and pm.description.objects == EXPECTED
    assert pm.description.replace is True
    assert pm.description.where.startswith(".data+0x")


def test_two_candidates_without_a_call_site_is_a_warning() -> None:
    pm = parse(_two_patches(call_second=None))
    assert pm.description is not None and pm.description.objects == EXPECTED
    assert pm.description.replace is False  # the first one
    message = only_problem(pm, "description_ambiguous")
    assert "2 static klp_patch candidates (.data+0x0, .data+0x" in message
    assert pm.problems[0].severity is Severity.WARNING


def test_a_file_operations_owner_is_not_a_patch() -> None:
    m = KlpModule("livepatch_fops")
    m.function("my_read")
    m.section(".gnu.linkonce.this_module", type=SHT_PROGBITS, flags=SHF_ALLOC | SHF_WRITE, data=bytes(0x380))
    m.symbol("__this_module", shndx=".gnu.linkonce.this_module", type=STT_OBJECT)
    m.section(".data", type=SHT_PROGBITS, flags=SHF_ALLOC | SHF_WRITE, data=bytes(256))
    m.rela(".data", [Reloc(0, "__this_module", 1), Reloc(16, "my_read", 1)])
    message = only_problem(parse(m), "description_not_found")
    assert "1 pointer(s) to __this_module, none of them a klp_patch" in message


def test_no_description_is_a_warning_naming_the_file_and_what_was_looked_for() -> None:
    pm = parse(KlpModule("livepatch_bare"), path="/lib/modules/lp-bare.ko")
    assert pm.description is None
    message = only_problem(pm, "description_not_found")
    assert message.startswith("/lib/modules/lp-bare.ko: no patch description found: looked for klp-build's")
    assert ".kpatch.funcs" in message and "static struct klp_patch" in message
    assert pm.problems[0].severity is Severity.WARNING


def test_a_module_that_is_not_a_livepatch_gets_no_description_warning() -> None:
    pm = parse(KlpModule("plain", livepatch=False))
    assert [p.code for p in pm.problems] == ["not_livepatch_module"]


def test_an_all_zero_function_array_in_bss_is_an_empty_list() -> None:
    """The samples' ``static struct klp_func no_funcs[] = { {} };`` is all zeros, so gcc puts it in .bss."""
    m = static_patch(X86_64, [("livepatch_callbacks_mod", [], ["pre_patch", "post_patch"])])
    m.section(".bss", type=SHT_NOBITS, flags=SHF_ALLOC | SHF_WRITE, size=152, addralign=8)
    m.symbol(".bss", type=STT_SECTION, bind=STB_LOCAL, shndx=".bss")
    funcs = next(r for r in relocs_of(m, ".data") if r.offset == 200 + 8)  # objs[0].funcs
    funcs.symbol, funcs.addend = ".bss", 0
    pm = parse(m)
    assert pm.problems == ()
    assert pm.description is not None
    assert pm.description.objects == (ObjectDescription("livepatch_callbacks_mod", (), ("pre_patch", "post_patch")),)


def test_inspect_shows_the_description(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ko = tmp_path / "livepatch-sample.ko"
    ko.write_bytes(build(static_patch(X86_64, [*OBJECTS, ("xfs", None, [])], states=[(0x1234, 2)])))
    bare = tmp_path / "livepatch-bare.ko"
    bare.write_bytes(KlpModule("livepatch_bare").build())
    assert main(["inspect", "--json", str(ko), str(bare)]) == 0  # a missing description is a warning only
    files = json.loads(capsys.readouterr().out)["files"]
    assert files[0]["description"] == {
        "found_by": "static",
        "replace": False,
        "states": [{"id": 0x1234, "version": 2}],
        "objects": [
            {"name": None, "callbacks": [], "functions": [
                {"old_name": "cmdline_proc_show", "old_sympos": 0, "new_func": "lp_cmdline"},
                {"old_name": "dup_name", "old_sympos": 2, "new_func": "lp_dummy"}]},
            {"name": "ext4", "callbacks": ["pre_patch", "post_unpatch"], "functions": [
                {"old_name": "ext4_attr_store", "old_sympos": 0, "new_func": "lp_ext4_attr_store"}]},
            {"name": "xfs", "callbacks": [], "functions": None},
        ],
    }  # fmt: skip
    assert files[1]["description"] is None
    assert [p["code"] for p in files[1]["problems"]] == ["description_not_found"]
    assert main(["inspect", str(ko)]) == 0
    text = capsys.readouterr().out
    assert "  Description (found by static: patch in .data, 5.5+ layout), replace no:\n" in text
    assert "    states: id 4660 version 2\n" in text
    assert "    object vmlinux (NULL name): 2 functions\n      cmdline_proc_show,0 -> lp_cmdline\n" in text
    assert "    object ext4: 1 functions, callbacks pre_patch, post_unpatch\n" in text
    assert "      dup_name,2 -> lp_dummy\n" in text and "    object xfs: funcs NULL\n" in text


def test_a_static_array_longer_than_any_patch_is_corrupt() -> None:
    """65,537 states: the kernel would walk them, but no patch has that many entries in one array."""
    m = static_patch(X86_64, OBJECTS[:1], states=[(i + 1, 1) for i in range(65537)])
    message = only_problem(parse(m), "description_corrupt")
    assert "more than 65536 entries in one array" in message


def test_rel_relocations_carry_the_addend_in_the_section() -> None:
    """SHT_REL (i386-style): the pointer's addend is the word under the relocation, not a field of the entry."""
    m = static_patch(I386, OBJECTS)
    data, rela = section_of(m, ".data"), section_of(m, ".rela.data")
    raw = bytearray(data.data)
    for r in relocs_of(m, ".data"):
        raw[r.offset : r.offset + 4] = (r.addend & 0xFFFFFFFF).to_bytes(4, "little")
    data.data = bytes(raw)
    rela.name, rela.type = ".rel.data", SHT_REL
    pm = parse(m, I386)
    assert pm.problems == ()
    assert pm.description is not None and pm.description.objects == EXPECTED
