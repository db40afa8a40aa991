"""The kernel-version seam: which rules a release gets, and verdicts that change with them."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from elfwriter import SHN_UNDEF, patch_using
from status_fixture import evaluate, symbol, system

from klpd import kernel_messages as msg
from klpd.kernel_version import NEWEST, TABLE, KernelSemantics, parse_release, semantics_for
from klpd.model import KSYM_NAME_MAX, SymbolStatus

LONG = "f" * 200  # a symbol name longer than KSYM_NAME_LEN 128 allows, within 512


def test_table_is_ordered_and_each_entry_changes_something() -> None:
    assert [e.since for e in TABLE] == sorted({e.since for e in TABLE})
    for older, newer in itertools.pairwise(TABLE):
        changed = [f.name for f in dataclasses.fields(KernelSemantics)
                   if f.name != "since" and getattr(older, f.name) != getattr(newer, f.name)]  # fmt: skip
        assert changed, f"the {newer.since} entry repeats {older.since}"
    # The model's widest symbol field is the newest kernel's: the fast regex in klpd.elf.klpmodule is built on it.
    assert NEWEST.ksym_name_max == KSYM_NAME_MAX


@pytest.mark.parametrize(
    ("release", "version", "expected"),
    [
        # (symbol width, relocations cleared on module removal, <object>/patched, long "not marked" message)
        ("5.10.0-30-amd64", (5, 10), (127, False, False, False)),
        ("6.1.0-57-amd64", (6, 1), (511, False, True, False)),
        ("6.12.48+deb13-amd64", (6, 12), (511, True, True, False)),
        ("7.2.13+deb14-amd64", (7, 2), (511, True, True, True)),
    ],
)
def test_debian_kernels_get_their_own_rules(release, version, expected) -> None:
    width, clears, object_patched, long_message = expected
    rules = semantics_for(release)
    assert parse_release(release) == version
    assert rules.release == release and rules.problems == ()
    assert rules.ksym_name_max == width
    assert rules.clears_relocs_on_module_removal is clears
    assert rules.sysfs_object_patched is object_patched
    assert rules.not_livepatch_symbol_names_position is long_message


@pytest.mark.parametrize(
    ("release", "code", "judged_as"),
    [
        ("9.0.0", "kernel_version_newer", NEWEST.since),
        ("4.18.0-477.el8.x86_64", "kernel_version_unsupported", TABLE[0].since),
        ("my-kernel", "kernel_version_unknown", NEWEST.since),
    ],
)
def test_a_release_outside_the_table_is_judged_by_the_nearest_entry_and_says_so(release, code, judged_as) -> None:
    rules = semantics_for(release)
    assert rules.since == judged_as
    assert [p.code for p in rules.problems] == [code]
    assert release in rules.problems[0].message


def test_the_host_problems_name_a_release_outside_the_table() -> None:
    status, _ = evaluate(patch_using("lp", "9.1.0 SMP ", ("vmlinux", "unique_fn", 0)), system(release="9.1.0"))
    assert [p.code for p in status.problems] == ["kernel_version_newer"]


def test_a_long_symbol_name_is_malformed_before_6_1_and_resolves_since() -> None:
    kallsyms = f"ffffffff81000000 T _text\nffffffff81001000 t {LONG}\n"
    new_release, old_release = "6.1.0-57-amd64", "5.10.0-30-amd64"
    patch = patch_using("lp", f"{new_release} SMP ", ("vmlinux", LONG, 0))
    _, new = evaluate(patch, system(kallsyms, release=new_release))
    assert new.will_load and symbol(new, "vmlinux", LONG).status is SymbolStatus.OK
    elf_name = f".klp.sym.vmlinux.{LONG},0"
    _, old = evaluate(
        patch_using("lp", f"{old_release} SMP ", ("vmlinux", LONG, 0)), system(kallsyms, release=old_release)
    )
    (obj,) = old.objects
    (result,) = obj.symbols
    assert result.status is SymbolStatus.MALFORMED_NAME
    assert result.kernel_message == f"livepatch: symbol {elf_name} has an incorrectly formatted name"
    assert not old.will_load and result.kernel_message in old.reasons


def test_the_not_livepatch_symbol_message_names_its_position_since_6_19() -> None:
    reasons = {}
    for release in ("6.12.48+deb13-amd64", "7.2.13+deb14-amd64"):
        patch = patch_using("lp", f"{release} SMP ", ("vmlinux", "unique_fn", 0))
        patch.symbol("plain", shndx=SHN_UNDEF)
        patch.klp_rela("vmlinux", ".text.g", [(0, patch.klp_sym("vmlinux", "unique_fn", 0), 2), (8, "plain", 2)])
        _, p = evaluate(patch, system(release=release))
        reasons[release] = [r for r in p.reasons if "plain" in r]
    assert reasons["6.12.48+deb13-amd64"] == [msg.NOT_LIVEPATCH_SYMBOL.format(symbol="plain")]
    (long_form,) = reasons["7.2.13+deb14-amd64"]
    fields = msg.NOT_LIVEPATCH_SYMBOL_AT.match(long_form.removeprefix(msg.LIVEPATCH))
    assert fields is not None and fields["symbol"] == "plain"
    # idx is the relocation's index in its section: the second one here.
    assert long_form.endswith(" idx 1 is not marked as a livepatch symbol")


def test_each_section_names_its_own_relocation_in_the_6_19_message() -> None:
    release = "7.2.13+deb14-amd64"
    patch = patch_using("lp", f"{release} SMP ", ("vmlinux", "unique_fn", 0))
    patch.symbol("plain", shndx=SHN_UNDEF)
    sym = patch.klp_sym("vmlinux", "unique_fn", 0)
    patch.klp_rela("vmlinux", ".text.g", [(0, "plain", 2)])
    patch.klp_rela("vmlinux", ".text.h", [(0, sym, 2), (8, sym, 2), (16, "plain", 2)])
    _, p = evaluate(patch, system(release=release))
    by_section = {s.name: s.reasons for s in p.objects[0].sections}
    assert [r.split(" idx ")[1] for r in by_section[".klp.rela.vmlinux.text.g"]] == [
        "0 is not marked as a livepatch symbol"
    ]
    assert [r.split(" idx ")[1] for r in by_section[".klp.rela.vmlinux.text.h"]] == [
        "2 is not marked as a livepatch symbol"
    ]
