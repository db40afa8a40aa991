"""Hand-made hosts for the prediction's tests: a small kallsyms, loaded modules, patches built with the ELF writer."""

from __future__ import annotations

from elfwriter import KlpModule, patch_using, target_module

from klpd.elf import parse_module_symtab, parse_patch_module
from klpd.kernel_version import KernelSemantics
from klpd.model import HostStatus, KernelInfo, LoadedModule, ModuleSymtab, PatchStatus, SymbolResult, SysfsPatch
from klpd.predict import PatchInput, SystemState, compute_status
from klpd.sources.kallsyms import parse_kallsyms

RELEASE = "6.1.0-test"

KALLSYMS = """\
ffffffff81000000 T _text
ffffffff81001000 t unique_fn
ffffffff81002000 t dup_fn
ffffffff81003000 t dup_fn
ffffffff81004000 T saved_command_line
ffffffffc0001000 t mod_fn\t[loaded_mod]
ffffffffc0002000 t mod_dup\t[loaded_mod]
ffffffffc0003000 t mod_dup\t[loaded_mod]
"""


def hidden(text: str) -> str:
    return "\n".join("0" * 16 + line[16:] for line in text.splitlines()) + "\n"


def system(
    kallsyms: str = KALLSYMS,
    modules: tuple[str, ...] = ("loaded_mod",),
    known: tuple[str, ...] = ("loaded_mod", "target_mod"),
    livepatches: tuple[SysfsPatch, ...] = (),
    *,
    release: str = RELEASE,
    semantics: KernelSemantics | None = None,
) -> SystemState:
    loaded = {m: LoadedModule(m, 4096, 0, (), "Live", "") for m in modules}
    for lp in livepatches:
        loaded[lp.name] = LoadedModule(lp.name, 4096, 1, (), "Live", "OEK")
    return SystemState(
        kernel=KernelInfo(release, 0, True),
        kallsyms=parse_kallsyms(kallsyms.encode(), "/proc/kallsyms").value,
        modules=loaded,
        livepatches=livepatches,
        known_modules=frozenset(known),
        kernel_semantics=semantics,
    )


def patch_with(*syms: tuple[str, str, int], name: str = "livepatch_test") -> KlpModule:
    return patch_using(name, f"{RELEASE} SMP preempt mod_unload modversions ", *syms)


def evaluate(
    m: KlpModule, sys_state: SystemState, symtabs: dict[str, object] | None = None, **build: object
) -> tuple[HostStatus, PatchStatus]:
    module = parse_patch_module(m.build(**build), f"/lib/modules/{RELEASE}/livepatch/{m.name}.ko")
    status = compute_status(sys_state, [PatchInput(module.name, module, symtabs or {})])  # type: ignore[arg-type]
    return status, status.patches[0]


def symbol(patch: PatchStatus, obj: str, name: str) -> SymbolResult:
    o = next(o for o in patch.objects if o.name == obj)
    return next(s for s in o.symbols if s.name == name)


def target_symtab(*funcs: tuple[str, str]) -> ModuleSymtab:
    """A target .ko with functions given as (name, section)."""
    return parse_module_symtab(target_module(*funcs), "/lib/modules/6.1.0-test/kernel/target_mod.ko")


