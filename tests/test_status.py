"""The pure status computation on hand-made hosts: each test is a situation an operator meets."""

from __future__ import annotations

import pytest
from elfwriter import (
    R_X86_64_PC32,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHN_ABS,
    SHT_PROGBITS,
    KlpModule,
    Section,
    Symbol,
    create_elf_file,
)
from status_fixture import KALLSYMS, RELEASE, evaluate, hidden, patch_with, symbol, system, target_symtab

from klpd.elf import parse_module_symtab
from klpd.model import (
    ModuleLoad,
    SectionState,
    SymbolStatus,
    SysfsObject,
    SysfsPatch,
)
from klpd.predict import has_problems


def test_unique_vmlinux_symbol_loads() -> None:
    status, p = evaluate(patch_with(("vmlinux", "unique_fn", 0)), system())
    assert p.will_load and p.reasons == ()
    assert symbol(p, "vmlinux", "unique_fn").status is SymbolStatus.OK
    assert [s.state for s in p.objects[0].sections] == [SectionState.APPLIED]
    assert not has_problems(status)


@pytest.mark.parametrize(
    ("sym", "pos", "expected", "message"),
    [
        ("dup_fn", 0, SymbolStatus.AMBIGUOUS,
         "livepatch: unresolvable ambiguity for symbol 'dup_fn' in object '(null)'"),
        ("dup_fn", 3, SymbolStatus.SYMPOS_NOT_FOUND,
         "livepatch: symbol position 3 for symbol 'dup_fn' in object 'vmlinux' not found"),
        ("nonexistent", 0, SymbolStatus.NOT_FOUND, "livepatch: symbol 'nonexistent' not found in symbol table"),
    ],
)  # fmt: skip
def test_unresolvable_vmlinux_symbol_fails_the_patch_load(
    sym: str, pos: int, expected: SymbolStatus, message: str
) -> None:
    status, p = evaluate(patch_with(("vmlinux", sym, pos)), system())
    result = symbol(p, "vmlinux", sym)
    assert result.status is expected
    assert result.kernel_message == message
    assert not p.will_load and message in p.reasons
    assert p.objects[0].sections[0].state is SectionState.FAILS
    assert has_problems(status)


def test_second_occurrence_by_sympos_loads() -> None:
    _, p = evaluate(patch_with(("vmlinux", "dup_fn", 2)), system())
    assert p.will_load and symbol(p, "vmlinux", "dup_fn").occurrences == 2


def test_hidden_addresses_give_the_same_verdicts() -> None:
    for sym, pos in (("unique_fn", 0), ("dup_fn", 0), ("dup_fn", 2), ("dup_fn", 3), ("nonexistent", 0)):
        _, visible = evaluate(patch_with(("vmlinux", sym, pos)), system())
        status, blind = evaluate(patch_with(("vmlinux", sym, pos)), system(hidden(KALLSYMS)))
        assert not status.kallsyms_addresses_visible
        assert symbol(blind, "vmlinux", sym).status is symbol(visible, "vmlinux", sym).status
        assert blind.will_load == visible.will_load


def test_non_livepatch_symbol_in_klp_section_fails_the_load() -> None:
    m = KlpModule("livepatch_test", vermagic=f"{RELEASE} SMP")
    text = m.function("patched_fn")
    m.klp_rela("vmlinux", text, [(0, m.klp_sym("vmlinux", "unique_fn", 0, shndx=text), R_X86_64_PC32, -4)])
    _, p = evaluate(m, system())
    result = symbol(p, "vmlinux", "unique_fn")
    assert result.status is SymbolStatus.NOT_LIVEPATCH_SYMBOL
    assert not p.will_load
    assert "livepatch: symbol .klp.sym.vmlinux.unique_fn,0 is not marked as a livepatch symbol" in p.reasons


def test_vmlinux_symbol_from_module_section() -> None:
    m = KlpModule("livepatch_test", vermagic=f"{RELEASE} SMP")
    text = m.function("patched_fn")
    m.klp_rela("loaded_mod", text, [(0, m.klp_sym("vmlinux", "unique_fn", 0), R_X86_64_PC32, -4)])
    _, p = evaluate(m, system())
    assert symbol(p, "vmlinux", "unique_fn").status is SymbolStatus.VMLINUX_FROM_MODULE_SECTION
    assert not p.will_load  # loaded_mod is loaded: its section is applied when the patch is enabled


def test_module_not_loaded_is_pending_and_its_load_will_succeed() -> None:
    symtab = target_symtab(("tgt_fn", ".text"), ("other", ".text"))
    _, p = evaluate(patch_with(("target_mod", "tgt_fn", 0)), system(), {"target_mod": symtab})
    obj = next(o for o in p.objects if o.name == "target_mod")
    assert not obj.loaded and obj.module_load is ModuleLoad.OK
    assert obj.sections[0].state is SectionState.PENDING
    assert obj.target_path == symtab.path
    assert p.will_load


def test_broken_module_sympos_refuses_the_module_not_the_patch() -> None:
    symtab = target_symtab(("tgt_fn", ".text"))
    status, p = evaluate(patch_with(("target_mod", "tgt_fn", 2)), system(), {"target_mod": symtab})
    obj = next(o for o in p.objects if o.name == "target_mod")
    assert p.will_load  # the patch itself loads: the section only applies when target_mod comes
    assert obj.module_load is ModuleLoad.REFUSED
    assert obj.sections[0].state is SectionState.FAILS
    assert (
        "livepatch: patch 'livepatch_test' failed for module 'target_mod', refusing to load module 'target_mod'"
        in obj.reasons
    )
    assert has_problems(status)


def test_loaded_module_symbols_come_from_kallsyms() -> None:
    _, ok = evaluate(patch_with(("loaded_mod", "mod_dup", 2)), system())
    _, bad = evaluate(patch_with(("loaded_mod", "mod_dup", 0)), system())
    assert ok.will_load and symbol(ok, "loaded_mod", "mod_dup").status is SymbolStatus.OK
    assert not bad.will_load and symbol(bad, "loaded_mod", "mod_dup").status is SymbolStatus.AMBIGUOUS


def test_init_section_symbol_makes_the_answer_load_order_dependent() -> None:
    # klp_module_coming() sees the full symtab (two dup_init); once loaded, kallsyms has only the .text one.
    symtab = target_symtab(("dup_init", ".text"), ("dup_init", ".init.text"))
    _, p = evaluate(patch_with(("target_mod", "dup_init", 0)), system(), {"target_mod": symtab})
    result = symbol(p, "target_mod", "dup_init")
    assert result.status is SymbolStatus.AMBIGUOUS and result.occurrences == 2
    assert result.load_order_dependent


def test_zero_address_symbol_is_not_found() -> None:
    data = create_elf_file(
        [Section(".text", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, b"\xcc" * 16)],
        [Symbol("abs_zero", value=0, shndx=SHN_ABS)],
    )
    symtab = parse_module_symtab(data, "target_mod.ko")
    _, p = evaluate(patch_with(("target_mod", "abs_zero", 0)), system(), {"target_mod": symtab})
    assert symbol(p, "target_mod", "abs_zero").status is SymbolStatus.NOT_FOUND


def test_module_unknown_to_modules_dep() -> None:
    _, p = evaluate(patch_with(("dummy", "fn", 0)), system())
    obj = next(o for o in p.objects if o.name == "dummy")
    assert obj.module_load is ModuleLoad.UNKNOWN
    assert symbol(p, "dummy", "fn").status is None
    assert any(x.code == "object_module_unknown" for x in p.problems)


def test_release_mismatch_is_always_a_problem_and_blocks_without_modversions() -> None:
    m = patch_with(("vmlinux", "unique_fn", 0))
    m.modinfo = [("livepatch", "Y"), ("name", m.name), ("vermagic", "5.10.0-other SMP mod_unload ")]
    _, plain = evaluate(m, system())
    _, versioned = evaluate(m, system(), versions=True)
    for p in (plain, versioned):
        assert any(x.code == "release_mismatch" for x in p.problems)
    assert not plain.will_load
    assert versioned.will_load  # same_magic() skips the release when __versions exists


def test_loaded_patch_reports_sysfs_state() -> None:
    lp = SysfsPatch(
        "livepatch_test", True, False, True, None, None,
        (SysfsObject("vmlinux", True, ()), SysfsObject("target_mod", False, ())),
    )  # fmt: skip
    symtab = target_symtab(("tgt_fn", ".text"))
    m = patch_with(("vmlinux", "unique_fn", 0), ("target_mod", "tgt_fn", 0))
    _, p = evaluate(m, system(livepatches=(lp,)), {"target_mod": symtab})
    assert p.loaded and p.enabled and p.transition is False
    vmlinux, target = p.objects
    assert vmlinux.patched is True and vmlinux.sections[0].state is SectionState.APPLIED
    assert target.patched is False and target.sections[0].state is SectionState.PENDING


def test_another_patch_in_transition_blocks_loading() -> None:
    busy = SysfsPatch("other_patch", True, True, True, None, None, (SysfsObject("vmlinux", True, ()),))
    _, p = evaluate(patch_with(("vmlinux", "unique_fn", 0)), system(livepatches=(busy,)))
    assert not p.will_load
    assert any("EBUSY" in r for r in p.reasons)


def test_module_loaded_after_the_patch_is_applied_but_the_order_is_a_hazard() -> None:
    # target_mod's .ko has dup_init in .text and in .init.text; once loaded, kallsyms shows only the .text one.
    kallsyms = KALLSYMS + "ffffffffc0009000 t dup_init\t[target_mod]\n"
    symtab = target_symtab(("dup_init", ".init.text"), ("dup_init", ".text"))
    lp = SysfsPatch("livepatch_test", True, False, True, None, None, (SysfsObject("target_mod", True, ()),))
    sys_state = system(kallsyms, modules=("loaded_mod", "target_mod"), livepatches=(lp,))
    _, p = evaluate(patch_with(("target_mod", "dup_init", 2)), sys_state, {"target_mod": symtab})
    result = symbol(p, "target_mod", "dup_init")
    assert result.status is SymbolStatus.SYMPOS_NOT_FOUND  # what a patch load now would get (core symtab)
    assert result.load_order_dependent
    section = next(o for o in p.objects if o.name == "target_mod").sections[0]
    assert section.state is SectionState.APPLIED  # sysfs says patched: the kernel applied it at module load
    assert "loaded after the patch" in section.reasons[0]


def test_same_answer_different_function_is_a_load_order_hazard() -> None:
    # Full symtab: dup_fn in .text, .init.text, .text. Patch first (full): sympos 2 is the .init.text copy, freed
    # after init; module first (core): sympos 2 is the second .text copy. Both "ok", different functions (seen on 6.1).
    symtab = target_symtab(("dup_fn", ".text"), ("dup_fn", ".init.text"), ("dup_fn", ".text"))
    _, p = evaluate(patch_with(("target_mod", "dup_fn", 2)), system(), {"target_mod": symtab})
    result = symbol(p, "target_mod", "dup_fn")
    assert result.status is SymbolStatus.OK and result.occurrences == 3
    assert result.load_order_dependent
    _, unique = evaluate(
        patch_with(("target_mod", "tgt_fn", 1)), system(), {"target_mod": target_symtab(("tgt_fn", ".text"))}
    )
    assert not symbol(unique, "target_mod", "tgt_fn").load_order_dependent


def test_loaded_module_same_entry_either_way_is_no_hazard() -> None:
    # dup_init in .text first, then in .init.text: sympos 1 names the .text copy in the full and the core symtab
    # alike, though the full one counts two names and the core one (kallsyms) one.
    kallsyms = KALLSYMS + "ffffffffc0009000 t dup_init\t[target_mod]\n"
    symtab = target_symtab(("dup_init", ".text"), ("dup_init", ".init.text"))
    sys_state = system(kallsyms, modules=("loaded_mod", "target_mod"))
    _, p = evaluate(patch_with(("target_mod", "dup_init", 1)), sys_state, {"target_mod": symtab})
    result = symbol(p, "target_mod", "dup_init")
    assert result.status is SymbolStatus.OK
    assert not result.load_order_dependent
