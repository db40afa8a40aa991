"""A patched module removed and loaded again while its patch stays: refused before 6.3 on x86, patched again since.

The kernel's answer on each version comes from the real-kernel suite (tests/test_vm_module_reload.py); here the
prediction's inputs are made by hand: what /proc/kallsyms shows of the loaded patch's ``.klp.sym`` symbols.
"""

from __future__ import annotations

import dataclasses

import pytest
from status_fixture import evaluate, patch_with, system, target_symtab

from klpd.kernel_version import semantics_for
from klpd.model import ModuleLoad, RunningPatch


def reload_status(release: str, resolved: frozenset[str] | None) -> tuple[ModuleLoad, tuple[str, ...]]:
    base = system(release=release, semantics=semantics_for(release))
    running = RunningPatch((".klp.rela.target_mod..text",), (".klp.sym.target_mod.tgt_fn,0",), resolved)
    state = dataclasses.replace(base, running_patches={"livepatch_test": running})
    symtab = target_symtab(("tgt_fn", ".text"))
    _, p = evaluate(patch_with(("target_mod", "tgt_fn", 0)), state, {"target_mod": symtab})
    obj = next(o for o in p.objects if o.name == "target_mod")
    assert obj.module_load is not None
    return obj.module_load, obj.reasons


@pytest.mark.parametrize("release", ["5.10.0-35-amd64", "6.1.0-57-amd64"])
def test_reload_refused_where_the_kernel_keeps_relocation_targets(release: str) -> None:
    load, reasons = reload_status(release, frozenset({"target_mod"}))
    assert load is ModuleLoad.REFUSED
    assert "livepatch: failed to initialize patch 'livepatch_test' for module 'target_mod' (-8)" in reasons
    assert any("x86/modules: Skipping invalid relocation target, existing value is nonzero" in r for r in reasons)


@pytest.mark.parametrize("release", ["6.12.118+deb13-amd64", "7.2.13+deb14-amd64"])
def test_reload_patched_again_where_the_kernel_clears_them(release: str) -> None:
    assert reload_status(release, frozenset({"target_mod"})) == (ModuleLoad.OK, ())


def test_first_load_is_not_a_reload() -> None:
    assert reload_status("6.1.0-57-amd64", frozenset()) == (ModuleLoad.OK, ())
    assert reload_status("6.1.0-57-amd64", None) == (ModuleLoad.OK, ())  # addresses hidden: nothing known
