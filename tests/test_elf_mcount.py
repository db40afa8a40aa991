"""Which functions of a target .ko ftrace can patch: __mcount_loc's call sites inside each function, and what the
prediction makes of them for a module that is not loaded yet (klp_module_coming(), then klp_patch_object())."""

from __future__ import annotations

from elfwriter import (
    R_X86_64_64,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_INFO_LINK,
    SHT_PROGBITS,
    SHT_RELA,
    STB_LOCAL,
    STT_FUNC,
    STT_SECTION,
    Reloc,
    Section,
    Symbol,
    create_elf_file,
)
from test_predict_functions import desc, fn, funcs, judge, obj

from klpd import kernel_messages as msg
from klpd.elf import parse_module_symtab
from klpd.model import ModuleLoad, ModuleSymtab
from klpd.model_description import FunctionStatus, ObjectDescription


def target(mcount: bool = True) -> bytes:
    sections = [Section(".text", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, b"\xcc" * 0x100)]
    if mcount:
        # one call site at traced_fn+4 (after an ENDBR, as with IBT); none inside notrace_fn
        sections += [
            Section("__mcount_loc", SHT_PROGBITS, SHF_ALLOC, bytes(8)),
            Section(".rela__mcount_loc", SHT_RELA, SHF_INFO_LINK, info="__mcount_loc",
                    relocs=[Reloc(0, ".text", R_X86_64_64, 0x44)]),
        ]  # fmt: skip
    symbols = [
        Symbol(".text", shndx=".text", type=STT_SECTION, bind=STB_LOCAL),
        Symbol("notrace_fn", value=0x00, size=0x40, shndx=".text", type=STT_FUNC),
        Symbol("traced_fn", value=0x40, size=0x40, shndx=".text", type=STT_FUNC),
    ]
    return create_elf_file(sections, symbols)


def test_a_call_site_inside_the_function_makes_it_traceable() -> None:
    symtab = parse_module_symtab(target(), "/lib/modules/6.1.0-test/extra/target_mod.ko")
    assert symtab.mcount
    traced = {n: bool(f & ModuleSymtab.TRACEABLE) for n, f in zip(symtab.names, symtab.flags, strict=True)}
    assert traced == {".text": False, "notrace_fn": False, "traced_fn": True}
    assert not parse_module_symtab(target(mcount=False), "/x.ko").mcount


def test_a_module_function_without_a_call_site_refuses_the_modules_load_as_klp_patch_object_does() -> None:
    symtab = parse_module_symtab(target(), "/lib/modules/6.1.0-test/extra/target_mod.ko")
    p = judge(desc(ObjectDescription("target_mod", (fn("notrace_fn"), fn("traced_fn")))),
              symtabs={"target_mod": symtab})  # fmt: skip
    assert funcs(p, "target_mod") == [
        ("notrace_fn", 0, FunctionStatus.NOT_TRACEABLE),
        ("traced_fn", 0, FunctionStatus.OK),
    ]
    target_obj = obj(p, "target_mod")
    assert target_obj.module_load is ModuleLoad.REFUSED and p.will_load
    assert target_obj.reasons == (
        msg.APPLYING.format(patch="livepatch_test", module="target_mod"),
        "livepatch: failed to find location for function 'notrace_fn'",
        msg.APPLY_TO_MODULE_FAILED.format(patch="livepatch_test", module="target_mod", errno=-22),
        msg.MODULE_LOAD_REFUSED.format(patch="livepatch_test", module="target_mod"),
    )


def test_without_mcount_records_traceability_is_unknown() -> None:
    symtab = parse_module_symtab(target(mcount=False), "/lib/modules/6.1.0-test/extra/target_mod.ko")
    p = judge(desc(ObjectDescription("target_mod", (fn("notrace_fn"),))), symtabs={"target_mod": symtab})
    f = obj(p, "target_mod").functions[0]
    assert (f.status, f.traceable) == (FunctionStatus.OK, None)
    assert obj(p, "target_mod").module_load is ModuleLoad.OK
