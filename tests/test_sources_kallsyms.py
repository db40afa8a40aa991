from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from klpd.errors import SourceError
from klpd.model import Occurrences, SymbolStatus
from klpd.predict.lookup import lookup, lookup_occurrences
from klpd.root import SystemRoot
from klpd.sources import kallsyms as kallsyms_module
from klpd.sources import prefetch
from klpd.sources.kallsyms import parse_kallsyms, read_kallsyms
from klpd.sources.kallsyms import pipe as kallsyms_pipe
from klpd.sources.kallsyms import vmlinux as kallsyms_vmlinux
from tests.fixtures import FixtureRoot, kallsyms_line
from tests.klp_reference import kernel_find_object_symbol

BASE = 0xFFFFFFFF81000000
VMLINUX = [
    (BASE, "T", "_stext"),
    (BASE + 0x10, "t", "cleanup"),  # static, three times
    (BASE + 0x20, "T", "cmdline_proc_show"),
    (BASE + 0x30, "t", "cleanup"),
    (BASE + 0x40, "t", "foo.isra.0"),
    (BASE + 0x50, "t", "cleanup"),
    (BASE + 0x60, "D", "__start___jump_table"),
    (BASE + 0x70, "T", "_etext"),
]
MODULES = [
    (0xFFFFFFFFC0001000, "t", "ext4_fill_super", "ext4"),
    (0xFFFFFFFFC0001100, "t", "cleanup", "ext4"),
    (0xFFFFFFFFC0001200, "T", "ext4_cleanup", "ext4"),
    (0xFFFFFFFFC0001300, "t", "cleanup", "ext4"),
    (0xFFFFFFFFC0002000, "t", "livepatch_cmdline_proc_show", "livepatch_fix"),
    (0xFFFFFFFF81000020, "?", ".klp.sym.vmlinux.cmdline_proc_show,0", "livepatch_fix"),
    (0, "?", ".klp.sym.ext4.cleanup,2", "livepatch_fix"),
    (0xFFFFFFFFC0003000, "t", "bpf_prog_6deef7357e7b4530_sd_devices", "bpf"),
    (0xFFFFFFFFC0004000, "T", "ext4_init_fs", "ext4"),  # freed init function ftrace keeps: a second run
    (0xFFFFFFFFC0005000, "t", "ftrace_trampoline", "__builtin__ftrace"),
]


def text(vmlinux=VMLINUX, modules=MODULES, hide=False) -> bytes:
    lines = [kallsyms_line(0 if hide else a, t, n) for a, t, n in vmlinux]
    lines += [kallsyms_line(0 if hide else a, t, n, o) for a, t, n, o in modules]
    return "".join(lines).encode()


def parsed(data: bytes, previous=None):
    """The Read of parse_kallsyms(): the Kallsyms and the problems met."""
    return parse_kallsyms(data, "/proc/kallsyms", previous)


def parse(data: bytes, previous=None):
    return parsed(data, previous).value


def test_vmlinux_occurrences_in_file_order():
    k = parse(text())
    assert k.occurrences("vmlinux", "cleanup") == (BASE + 0x10, BASE + 0x30, BASE + 0x50)
    assert k.occurrences("vmlinux", "foo.isra.0") == (BASE + 0x40,)
    assert k.occurrences("vmlinux", "nonexistent") == ()
    # a module's symbol is not a vmlinux symbol
    assert k.occurrences("vmlinux", "ext4_fill_super") == ()
    assert k.vmlinux_symbols == len(VMLINUX)
    assert k.malformed_lines == 0 and parsed(text()).problems == ()


def test_module_occurrences_only_count_the_module_and_its_first_run():
    k = parse(text())
    assert k.occurrences("ext4", "cleanup") == (0xFFFFFFFFC0001100, 0xFFFFFFFFC0001300)
    assert k.occurrences("ext4", "_stext") == ()
    # ext4_init_fs only appears in ftrace's later run of freed init functions: not in the module's symtab
    assert k.occurrences("ext4", "ext4_init_fs") == ()
    assert k.occurrences("not_loaded", "cleanup") == ()


def test_pseudo_objects_are_objects():
    k = parse(text())
    assert k.modules() == frozenset({"ext4", "livepatch_fix", "bpf", "__builtin__ftrace"})
    assert k.occurrences("bpf", "bpf_prog_6deef7357e7b4530_sd_devices") == (0xFFFFFFFFC0003000,)
    assert k.occurrences("__builtin__ftrace", "ftrace_trampoline") == (0xFFFFFFFFC0005000,)


def test_klp_symbols_with_their_resolved_addresses():
    k = parse(text())
    assert k.klp_symbols("livepatch_fix") == (
        (".klp.sym.vmlinux.cmdline_proc_show,0", BASE + 0x20),
        (".klp.sym.ext4.cleanup,2", 0),
    )
    assert k.klp_symbols("ext4") == ()
    assert k.klp_symbols("missing") == ()


def test_sympos_resolution_through_lookup():
    k = parse(text())
    occ = k.occurrences("vmlinux", "cleanup")
    assert lookup(occ, 0, k.addresses_visible) is SymbolStatus.AMBIGUOUS
    assert lookup(occ, 3, k.addresses_visible) is SymbolStatus.OK
    assert lookup(occ, 4, k.addresses_visible) is SymbolStatus.SYMPOS_NOT_FOUND


def test_hidden_addresses_change_nothing_but_visibility():
    shown = parse(text())
    hidden = parse(text(hide=True))
    assert shown.addresses_visible and not hidden.addresses_visible
    assert hidden.occurrences("vmlinux", "cleanup") == (0, 0, 0)
    assert hidden.modules() == shown.modules()
    assert hidden.kallsyms_all == shown.kallsyms_all
    assert [name for name, _ in hidden.klp_symbols("livepatch_fix")] == [
        name for name, _ in shown.klp_symbols("livepatch_fix")
    ]
    # an unprivileged reader still resolves by name and order
    occ = hidden.occurrences("vmlinux", "cleanup")
    assert lookup(occ, 2, hidden.addresses_visible) is SymbolStatus.OK
    assert lookup(occ, 0, hidden.addresses_visible) is SymbolStatus.AMBIGUOUS
    assert hidden.malformed_lines == 0


def test_address_zero_with_visible_addresses_is_kept():
    # x86-64 per-CPU symbols really sit at 0: the kernel's "addr == 0 means not found" must be reachable
    vmlinux = [(0, "A", "fixed_percpu_data"), *VMLINUX]
    k = parse(text(vmlinux))
    assert k.addresses_visible
    assert k.occurrences("vmlinux", "fixed_percpu_data") == (0,)
    assert lookup(k.occurrences("vmlinux", "fixed_percpu_data"), 0, True) is SymbolStatus.NOT_FOUND


def test_kallsyms_all_needs_more_than_section_markers():
    markers = [(BASE + i, "D", f"__start_section{i}") for i in range(40)]
    markers += [(BASE + 0x100, "B", "__init_begin")]
    assert not parse(text([*VMLINUX, *markers])).kallsyms_all
    data = [(BASE + 0x1000 + i, "d", f"static_var_{i}") for i in range(40)]
    assert parse(text([*VMLINUX, *data])).kallsyms_all


def test_odd_lines_are_skipped_and_counted():
    lines = [
        kallsyms_line(BASE, "T", "_stext"),
        "ffffffff81000010 T\n",  # no name
        "zzzzffff81000020 T bad_hex\n",
        "ffffffff81000030 TT two_letter_type\n",
        "\n",
        kallsyms_line(BASE + 0x40, "t", "cleanup"),
        "ffffffff81000050 t name extra words\n",
        kallsyms_line(BASE + 0x60, "t", "cleanup"),
        kallsyms_line(0xFFFFFFFFC0000000, "t", "x", "mod"),
        "ffffffffc0000010 t y [\n",  # not a bracketed object
        "ffffffffc0000020 t z\t[]\n",
        kallsyms_line(0xFFFFFFFFC0000030, "t", "x", "mod"),
    ]
    read = parsed("".join(lines).encode())
    k = read.value
    assert k.malformed_lines == 7
    assert k.occurrences("vmlinux", "cleanup") == (BASE + 0x40, BASE + 0x60)
    assert k.occurrences("vmlinux", "bad_hex") == ()
    assert k.occurrences("mod", "x") == (0xFFFFFFFFC0000000, 0xFFFFFFFFC0000030)
    assert len(read.problems) == 1
    problem = read.problems[0]
    assert problem.severity == "warning" and "/proc/kallsyms" in problem.message
    assert "7 malformed lines" in problem.message and "line 2" in problem.message


def test_odd_module_line_is_numbered_in_the_whole_file():
    data = text() + b"ffffffffc0009000 t lonely\n"
    read = parsed(data)
    k = read.value
    assert k.malformed_lines == 1
    assert f"line {len(VMLINUX) + len(MODULES) + 1}" in read.problems[0].message
    assert k.occurrences("vmlinux", "cleanup") == (BASE + 0x10, BASE + 0x30, BASE + 0x50)


def test_mixed_address_widths_fall_back_without_misreading():
    # widths that differ but add up to a multiple of the first: the fast path must not slice the buffer wrongly
    data = b"ffffffff81000000 T a\nffffffff8100001 T b\nffffffff810000020 T c\n"
    k = parse(data)
    assert k.occurrences("vmlinux", "a") == (0xFFFFFFFF81000000,)
    assert k.occurrences("vmlinux", "b") == (0xFFFFFFFF8100001,)
    assert k.occurrences("vmlinux", "c") == (0xFFFFFFFF810000020,)


def test_32_bit_addresses_and_missing_final_newline():
    data = b"c1000000 T _stext\nc1000010 t cleanup\nc1000020 t cleanup"
    k = parse(data)
    assert k.occurrences("vmlinux", "cleanup") == (0xC1000010, 0xC1000020)
    assert k.malformed_lines == 0


def test_empty_and_garbage_input_never_raise():
    assert parse(b"").vmlinux_symbols == 0
    assert not parse(b"").addresses_visible
    k = parse(b"\x00\xff\xfe garbage \n\n\t[\n")
    assert k.vmlinux_symbols == 0 and k.malformed_lines >= 1


def test_one_character_names_and_addresses_are_indexed():
    # CPython shares one-byte bytes objects; the index must not mistake two of them for one occurrence
    data = b"1 T a\n2 t a\n3 t b\n"
    k = parse(data)
    assert k.occurrences("vmlinux", "a") == (1, 2)
    assert k.occurrences("vmlinux", "b") == (3,)


def test_large_file_spans_several_blocks(monkeypatch):
    monkeypatch.setattr(kallsyms_vmlinux, "_BLOCK", 256)
    vmlinux = [(BASE + i * 16, "t", f"f{i % 37}") for i in range(500)]
    k = parse(text(vmlinux, MODULES[:2]))
    assert k.occurrences("vmlinux", "f5") == tuple(BASE + i * 16 for i in range(500) if i % 37 == 5)
    assert k.occurrences("vmlinux", "f36") == tuple(BASE + i * 16 for i in range(500) if i % 37 == 36)
    assert k.vmlinux_symbols == 500


def answers(k, names):
    return (
        [k.occurrences("vmlinux", n) for n in names],
        {m: [k.occurrences(m, n) for n in names] for m in k.modules()},
        k.modules(),
        k.klp_symbols("livepatch_fix"),
        k.addresses_visible,
        k.kallsyms_all,
    )


NAMES = ["cleanup", "_stext", "foo.isra.0", "ext4_fill_super", "missing", "livepatch_cmdline_proc_show"]


def test_previous_is_reused_when_vmlinux_is_unchanged():
    first = parse(text())
    # a module loads: new lines at the end; vmlinux identical
    more = [*MODULES, (0xFFFFFFFFC0009000, "t", "cleanup", "xfs")]
    second = parse(text(modules=more), previous=first)
    assert second.vmlinux_reused
    assert answers(second, NAMES) == answers(parse(text(modules=more)), NAMES)
    assert second.occurrences("xfs", "cleanup") == (0xFFFFFFFFC0009000,)
    # and unloading
    third = parse(text(modules=MODULES[:2]), previous=second)
    assert third.vmlinux_reused
    assert third.modules() == frozenset({"ext4"})
    assert answers(third, NAMES) == answers(parse(text(modules=MODULES[:2])), NAMES)


def test_previous_is_not_reused_when_vmlinux_differs():
    first = parse(text())
    changed = [*VMLINUX, (BASE + 0x80, "t", "late")]
    second = parse(text(changed), previous=first)
    assert not second.vmlinux_reused
    assert second.occurrences("vmlinux", "late") == (BASE + 0x80,)
    # addresses hidden now (another reader, or kptr_restrict changed): vmlinux bytes differ
    hidden = parse(text(hide=True), previous=first)
    assert not hidden.vmlinux_reused and not hidden.addresses_visible
    # a vmlinux line that is a prefix-extension of the old last line must not be mistaken for a module line
    longer = [*VMLINUX[:-1], (BASE + 0x70, "T", "_etext_more")]
    assert not parse(text(longer, []), previous=parse(text(VMLINUX, []))).vmlinux_reused


def test_previous_without_modules():
    first = parse(text(modules=[]))
    second = parse(text(modules=[]), previous=first)
    assert second.vmlinux_reused and second.modules() == frozenset()
    third = parse(text(), previous=first)
    assert third.vmlinux_reused and "ext4" in third.modules()


def test_read_from_fixture_root(tmp_path):
    fx = FixtureRoot(tmp_path)
    fx.kallsyms(vmlinux=VMLINUX, objects=MODULES)
    k = read_kallsyms(fx.root).value
    assert k.path == "/proc/kallsyms"
    assert k.occurrences("vmlinux", "cleanup") == (BASE + 0x10, BASE + 0x30, BASE + 0x50)
    again = read_kallsyms(fx.root, previous=k).value
    assert again.vmlinux_reused


def test_read_missing_file_is_a_source_error(tmp_path):
    with pytest.raises(SourceError) as error:
        read_kallsyms(FixtureRoot(tmp_path).root)
    assert error.value.path == "/proc/kallsyms"


LIVE = Path("/proc/kallsyms")


@pytest.mark.skipif(not LIVE.exists(), reason="no /proc/kallsyms on this host")
def test_live_host_parses_cleanly():
    root = SystemRoot.at("/")
    read = read_kallsyms(root)
    k = read.value
    assert k.malformed_lines == 0 and read.problems == ()
    assert k.vmlinux_symbols > 1000
    # names this parse finds must agree with a plain line-by-line reading of the same file
    data = LIVE.read_bytes()
    lines = [line.split() for line in data.splitlines()]
    vmlinux_names = [f[2].decode() for f in lines if len(f) == 3]
    assert k.vmlinux_symbols == len(vmlinux_names)
    for name in ("_stext", vmlinux_names[len(vmlinux_names) // 2], vmlinux_names[-1]):
        expected = [int(f[0], 16) for f in lines if len(f) == 3 and f[2].decode() == name]
        assert list(k.occurrences("vmlinux", name)) == expected
    if os.geteuid() == 0:
        assert k.addresses_visible
    assert read_kallsyms(root, previous=k).value.vmlinux_reused


def test_kallsyms_all_and_hidden_addresses_across_blocks(monkeypatch):
    # the fast path decides both per block: the answer must not depend on where the block boundaries fall
    monkeypatch.setattr(kallsyms_vmlinux, "_BLOCK", 128)
    text_symbols = [(BASE + i * 16, "t", f"f{i}") for i in range(60)]
    markers = [(BASE + 0x1000 + i, "D", f"__start_s{i}") for i in range(30)]
    data_symbols = [(BASE + 0x2000 + i, "d", f"v{i}") for i in range(16)]
    assert not parse(text([*text_symbols, *markers])).kallsyms_all
    assert not parse(text([*text_symbols, *markers, *data_symbols[:15]])).kallsyms_all
    assert parse(text([*text_symbols, *markers, *data_symbols])).kallsyms_all
    hidden = parse(text(text_symbols, [], hide=True))
    assert not hidden.addresses_visible and hidden.occurrences("vmlinux", "f59") == (0,)
    # one visible address in the last block is enough
    last_visible = [(0, t, n) for _, t, n in text_symbols[:-1]] + [text_symbols[-1]]
    shown = parse(text(last_visible, []))
    assert shown.addresses_visible and shown.occurrences("vmlinux", "f59") == (BASE + 59 * 16,)


def test_repeated_names_within_and_across_blocks_keep_file_order(monkeypatch):
    monkeypatch.setattr(kallsyms_vmlinux, "_BLOCK", 64)
    names = ["a", "b", "a", "c", "a", "b", "d", "a"] * 5
    vmlinux = [(BASE + i, "t", n) for i, n in enumerate(names)]
    k = parse(text(vmlinux, []))
    for name in "abcd":
        assert k.occurrences("vmlinux", name) == tuple(BASE + i for i, n in enumerate(names) if n == name)
    assert k.occurrences("vmlinux", "e") == ()


# ----------------------------------------------------------------------------------------------------------------
# find(): counts and zero addresses, without a per-line index


TABLE_NAMES = st.sampled_from(["foo", "bar", "foo.isra.0", "b", "percpu_var"])


@settings(max_examples=400, deadline=None)
@given(
    table=st.lists(st.tuples(TABLE_NAMES, st.sampled_from([0, 0x1000, 0xC1000000])), min_size=1, max_size=25),
    width=st.sampled_from([8, 16]),
    odd_line=st.booleans(),
    sympos=st.integers(0, 4),
)
def test_find_resolves_as_the_kernel_does(table, width, odd_line, sympos):
    lines = [kallsyms_line(a, "t", n, width=width) for n, a in table]
    if odd_line:  # sends the part to the line-by-line parse, which must answer alike
        lines.insert(len(lines) // 2, "not a kallsyms line\n")
    lines.append(kallsyms_line(0, "t", "foo", "mod", width=width))  # a module name is not a vmlinux one
    k = parse("".join(lines).encode())
    assert k.malformed_lines == int(odd_line)
    assert k.addresses_visible == any(a for _, a in table)
    for name in ["foo", "bar", "foo.isra.0", "b", "percpu_var", "absent"]:
        addresses = tuple(a for n, a in table if n == name)
        assert k.occurrences("vmlinux", name) == addresses
        found = k.find("vmlinux", name)
        assert found.matches == len(addresses)
        verdict = lookup_occurrences(found, sympos, k.addresses_visible)
        if k.addresses_visible:
            assert verdict == kernel_find_object_symbol(table, name, sympos)
        else:  # every address reads 0: names and order decide, as with the real addresses
            assert verdict == lookup(tuple(1 for _ in addresses), sympos)


def test_zero_address_counts_only_where_the_kernel_stops():
    # per-CPU symbols sit at 0; the first occurrence (at the very first line) is at 0, the second is not
    vmlinux = [(0, "A", "pcpu"), (BASE, "T", "_stext"), (BASE + 0x10, "t", "pcpu"), (0, "A", "late_zero")]
    k = parse(text(vmlinux, []))
    assert k.find("vmlinux", "pcpu") == Occurrences(2, (1,))
    assert lookup_occurrences(k.find("vmlinux", "pcpu"), 1, True) is SymbolStatus.NOT_FOUND
    assert lookup_occurrences(k.find("vmlinux", "pcpu"), 2, True) is SymbolStatus.OK
    assert lookup_occurrences(k.find("vmlinux", "pcpu"), 0, True) is SymbolStatus.AMBIGUOUS
    assert lookup_occurrences(k.find("vmlinux", "late_zero"), 0, True) is SymbolStatus.NOT_FOUND
    assert k.find("vmlinux", "_stext") == Occurrences(1)
    # hidden addresses: no address is known to be 0
    hidden = parse(text(vmlinux, [], hide=True))
    assert hidden.find("vmlinux", "pcpu") == Occurrences(2) and hidden.find("vmlinux", "late_zero") == Occurrences(1)


def test_find_in_modules_counts_the_first_run_only():
    k = parse(text())
    assert k.find("ext4", "cleanup") == Occurrences(2)
    assert k.find("ext4", "ext4_init_fs") == Occurrences(0)
    assert k.find("livepatch_fix", ".klp.sym.ext4.cleanup,2") == Occurrences(1, (1,))
    assert k.find("not_loaded", "cleanup") == Occurrences(0)


def test_memo_stands_for_the_previous_read():
    first = parse(text())
    first.find("vmlinux", "cleanup")  # asked once: the memo answers it from now on
    memo = first.memo()
    more = [*MODULES, (0xFFFFFFFFC0009000, "t", "cleanup", "xfs")]
    second = parse(text(modules=more), previous=memo)
    assert second.vmlinux_reused
    assert answers(second, NAMES) == answers(parse(text(modules=more)), NAMES)
    # names never asked before are still answered (from this read's bytes), and real addresses too
    assert second.find("vmlinux", "foo.isra.0") == Occurrences(1)
    assert second.occurrences("vmlinux", "cleanup") == (BASE + 0x10, BASE + 0x30, BASE + 0x50)
    # a chain of reads keeps recognising the part
    assert parse(text(), previous=second.memo()).vmlinux_reused


def test_memo_does_not_stand_for_another_vmlinux_part():
    memo = parse(text()).memo()
    # same length, addresses now hidden: the byte count alone cannot tell
    hidden = parse(text(hide=True), previous=memo)
    assert not hidden.vmlinux_reused and not hidden.addresses_visible
    zero = [(0, "A", "pcpu"), *VMLINUX[1:]]
    changed = parse(text(zero), previous=parse(text([(BASE, "A", "pcpu"), *VMLINUX[1:]])).memo())
    assert not changed.vmlinux_reused
    assert lookup_occurrences(changed.find("vmlinux", "pcpu"), 0, True) is SymbolStatus.NOT_FOUND


def test_memo_keeps_no_copy_of_the_file():
    data = text(vmlinux=[(BASE + i, "t", f"function_{i}") for i in range(2000)])
    memo = parse(data).memo()
    assert len(pickle.dumps(memo)) < len(data) // 20


# The cold read goes through a `cat` child and parses the vmlinux part as it arrives (_read_through_cat): it must
# give exactly what a direct read and parse_kallsyms() give, whatever the content and however the pipe cuts it.


def everything(read, names):
    """All a user of a Kallsyms can observe, for the given names, and the problems its read met."""
    k = read.value
    memo = k.memo()
    return (
        answers(k, names),
        [k.find("vmlinux", n) for n in names],
        {m: [k.find(m, n) for n in names] for m in k.modules()},
        {m: k.klp_symbols(m) for m in k.modules()},
        k.path,
        k.malformed_lines,
        read.problems,
        k.vmlinux_symbols,
        k.module_symbols,
        k.vmlinux_reused,
        memo.vmlinux,
        memo.digest,
    )


def through_cat(root):
    read = kallsyms_module._read_through_cat(root.kallsyms)
    assert read is not None, "cat could not be used"
    return read


ODD = (
    text()
    + b"ffffffffc0009000 t lonely\n"
    + b"ffffffffc0009010 t y [\n"
    + kallsyms_line(0xFFFFFFFFC0009020, "t", "cleanup", "ext4").encode()
)
CAT_CASES = {
    "plain": text(),
    "hidden": text(hide=True),
    "no modules": text(modules=[]),
    "only modules": text(vmlinux=[]),
    "empty": b"",
    "odd vmlinux lines": b"".join(
        line.encode()
        for line in [
            kallsyms_line(BASE, "T", "_stext"),
            "ffffffff81000010 T\n",
            "zzzzffff81000020 T bad_hex\n",
            "\n",
            kallsyms_line(BASE + 0x40, "t", "cleanup"),
            "ffffffff81000050 t name extra words\n",
            kallsyms_line(0xFFFFFFFFC0000000, "t", "x", "mod"),
            "ffffffffc0000020 t z\t[]\n",
        ]
    ),
    "odd module lines": ODD,
    "bracket in a vmlinux line": b"ffffffff81000000 T a\nffffffff81000010 T b[1]\n" + text(vmlinux=[]),
    "zero address": text([*VMLINUX, (0, "t", "cleanup")]),
    "no final newline": text(modules=[]).rstrip(b"\n"),
    "no final newline after modules": text().rstrip(b"\n"),
    "many blocks": text([(BASE + i * 16, "t", f"f{i % 37}") for i in range(3000)], MODULES),
}


@pytest.mark.parametrize("pipe_size", [61, 1 << 20])
@pytest.mark.parametrize("case", list(CAT_CASES))
def test_read_through_cat_is_exactly_the_direct_read(tmp_path, monkeypatch, case, pipe_size):
    # a pipe read this small cuts lines, and the first module line, anywhere; a tiny block size cuts them again
    monkeypatch.setattr(kallsyms_pipe, "_PIPE_SIZE", pipe_size)
    monkeypatch.setattr(kallsyms_vmlinux, "_BLOCK", 200)
    data = CAT_CASES[case]
    fx = FixtureRoot(tmp_path)
    fx.write("/proc/kallsyms", data)
    names = [*NAMES, "f5", "f36", "bad_hex", "x", "a", "b[1]", "lonely", "y"]
    direct = parsed(data)
    read = through_cat(fx.root)
    assert everything(read, names) == everything(direct, names)
    assert everything(read_kallsyms(fx.root), names) == everything(direct, names)
    # what a later read takes over from it is the same too
    more = data + kallsyms_line(0xFFFFFFFFC0009000, "t", "cleanup", "xfs").encode()
    assert everything(parsed(more, previous=read.value), names) == everything(
        parsed(more, previous=direct.value), names
    )


@pytest.mark.skipif(not LIVE.exists(), reason="no /proc/kallsyms on this host")
def test_live_read_through_cat_is_exactly_the_direct_read():
    root = SystemRoot.at("/")
    read = through_cat(root)
    data = LIVE.read_bytes()
    direct = parsed(data)
    lines = data.splitlines()
    names = [line.split()[2].decode() for line in lines[:: max(1, len(lines) // 500)]] + NAMES
    k = read.value
    assert k._text.data == data  # the same bytes (no module came or went in between)
    assert everything(read, names) == everything(direct, names)
    assert k.vmlinux_symbols > 1000 and k.malformed_lines == 0


def fake_cat(tmp_path, script):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cat = bin_dir / "cat"
    cat.write_text("#!/bin/sh\n" + script)
    cat.chmod(0o755)
    return str(bin_dir)


def test_cat_failing_falls_back_to_the_direct_read(tmp_path, monkeypatch, caplog):
    fx = FixtureRoot(tmp_path)
    fx.kallsyms(vmlinux=VMLINUX, objects=MODULES)
    # a cat that writes a plausible but wrong file and then fails: its output must not be used
    script = "printf 'ffffffff81000000 T bogus\\n'\nexit 3\n"
    monkeypatch.setattr(prefetch, "_CATS", (fake_cat(tmp_path, script) + "/cat",))
    with caplog.at_level("DEBUG", logger="klpd.sources.kallsyms"):
        read = read_kallsyms(fx.root)
    assert read.value.occurrences("vmlinux", "bogus") == ()
    assert everything(read, NAMES) == everything(parsed(text()), NAMES)
    assert "exited with 3" in caplog.text


def test_cat_killed_by_a_signal_falls_back(tmp_path, monkeypatch):
    fx = FixtureRoot(tmp_path)
    fx.kallsyms(vmlinux=VMLINUX, objects=MODULES)
    script = "printf 'ffffffff81000000 T bogus'\nkill -9 $$\n"
    monkeypatch.setattr(prefetch, "_CATS", (fake_cat(tmp_path, script) + "/cat",))
    assert everything(read_kallsyms(fx.root), NAMES) == everything(parsed(text()), NAMES)


def test_no_cat_falls_back_to_the_direct_read(tmp_path, monkeypatch, caplog):
    fx = FixtureRoot(tmp_path)
    fx.kallsyms(vmlinux=VMLINUX, objects=MODULES)
    monkeypatch.setattr(prefetch, "_CATS", (str(tmp_path / "nowhere" / "cat"),))
    with caplog.at_level("DEBUG", logger="klpd.sources.kallsyms"):
        read = read_kallsyms(fx.root)
    assert everything(read, NAMES) == everything(parsed(text()), NAMES)
    assert "no cat" in caplog.text


def test_cat_that_cannot_be_spawned_falls_back(tmp_path, monkeypatch):
    fx = FixtureRoot(tmp_path)
    fx.kallsyms(vmlinux=VMLINUX, objects=MODULES)

    def denied(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")  # what seccomp or an LSM gives

    monkeypatch.setattr(kallsyms_pipe.subprocess, "Popen", denied)
    assert everything(read_kallsyms(fx.root), NAMES) == everything(parsed(text()), NAMES)
    with pytest.raises(SourceError):
        read_kallsyms(FixtureRoot(tmp_path / "empty").root)


def test_reread_with_previous_does_not_spawn_cat(tmp_path, monkeypatch):
    fx = FixtureRoot(tmp_path)
    fx.kallsyms(vmlinux=VMLINUX, objects=MODULES)
    first = read_kallsyms(fx.root).value

    def unexpected(*args, **kwargs):
        raise AssertionError("cat spawned for a re-read")

    monkeypatch.setattr(kallsyms_pipe.subprocess, "Popen", unexpected)
    assert read_kallsyms(fx.root, previous=first).value.vmlinux_reused
    assert read_kallsyms(fx.root, previous=first.memo()).value.vmlinux_reused


@pytest.mark.parametrize("case", ["plain", "hidden", "only modules", "bracket in a vmlinux line", "many blocks"])
def test_well_formed_files_are_parsed_as_they_arrive(tmp_path, monkeypatch, case):
    # lines cut by the pipe must be put together again, not sent to the careful whole-file parse
    monkeypatch.setattr(kallsyms_pipe, "_PIPE_SIZE", 61)
    fx = FixtureRoot(tmp_path)
    fx.write("/proc/kallsyms", CAT_CASES[case])
    direct = parsed(CAT_CASES[case])

    def whole_file(*args, **kwargs):
        raise AssertionError("fell back to parsing the whole file")

    monkeypatch.setattr(kallsyms_module, "parse_kallsyms", whole_file)
    assert everything(through_cat(fx.root), NAMES) == everything(direct, NAMES)
