from __future__ import annotations

import gzip
import os
import threading
from pathlib import Path

import pytest

from klpd.collect import Evaluator
from klpd.elf.files import module_build_facts
from klpd.root import HostPath, SystemRoot
from klpd.sources.kernel_build import KernelBuildCache, parse_symvers, read_kernel_build
from klpd.sources.modules_dep import read_modules_dep
from tests.fixtures import RELEASE, FixtureRoot, SymversEntry, symvers_text

VERMAGIC = f"{RELEASE} SMP preempt mod_unload modversions "
EXPORTS = [
    SymversEntry("module_layout", 0x9060323F),
    SymversEntry("printk", 0x92997ED8),
    SymversEntry("cxl_bus_type", 0x0D1F2E3C, "drivers/cxl/core/cxl_core", gpl=True, namespace="CXL"),
    SymversEntry("jbd2_journal_start", 0xA1B2C3D4, "fs/jbd2/jbd2", gpl=True),
]
CRCS = {e.symbol: e.crc for e in EXPORTS}


def read(fx: FixtureRoot, cache: KernelBuildCache | None = None, release: str = RELEASE):
    dep = read_modules_dep(fx.root, release).value
    return read_kernel_build(fx.root, release, dep, module_build_facts, cache)


def debian_host(tmp_path: Path, compression: str = ".xz") -> FixtureRoot:
    fx = FixtureRoot(tmp_path)
    fx.kernel()
    fx.in_tree_module(path="kernel/arch/x86/crypto/aesni-intel.ko", compression=compression, this_module_size=1344)
    fx.modules_dep(
        entries={
            "updates/dkms/vboxdrv.ko": [],  # not in-tree: another build's vermagic
            f"kernel/arch/x86/crypto/aesni-intel.ko{compression}": [],
            "kernel/fs/ext4/ext4.ko.xz": [],  # never read: the first in-tree module decides
        }
    )
    fx.module_symvers(entries=EXPORTS)
    return fx


# -- the live host ------------------------------------------------------------------------------------------------


def test_live_running_release():
    root = SystemRoot.at("/")
    release = os.uname().release
    result = read_kernel_build(root, release, read_modules_dep(root, release).value, module_build_facts)
    has_symvers = any(p.local.exists() for p in (root.module_symvers(release), root.boot_symvers(release)))
    assert (result.value.crcs is not None) == has_symvers
    if not has_symvers:
        assert "source_missing" in {p.code for p in result.problems}
    if result.value.vermagic is not None:
        assert result.value.vermagic.startswith(release + " ")
        assert result.value.this_module_size and result.value.this_module_size > 0
    else:
        assert {"no_in_tree_module", "unreadable_file"} & {p.code for p in result.problems}


def test_live_installed_headers_parse_cleanly():
    """Every Module.symvers of linux-headers on this machine (Debian 6.1 here) parses without an odd line."""
    for build in Path("/lib/modules").glob("*/build/Module.symvers"):
        symvers = parse_symvers(build.read_text(), str(build))
        assert symvers.problems == ()
        assert "module_layout" in symvers.value.crcs and symvers.value.exporters["module_layout"] == "vmlinux"


# -- Module.symvers ------------------------------------------------------------------------------------------------


def test_debian_host(tmp_path):
    result = read(debian_host(tmp_path))
    assert result.problems == ()
    build = result.value
    assert build.vermagic == VERMAGIC
    assert build.vermagic_source == f"/lib/modules/{RELEASE}/kernel/arch/x86/crypto/aesni-intel.ko.xz"
    assert build.this_module_size == 1344
    assert build.crcs == CRCS
    assert build.crcs_source == f"/lib/modules/{RELEASE}/build/Module.symvers"
    assert build.exports is not None
    assert build.exports["cxl_bus_type"] == "cxl_core" and build.exports["printk"] == "vmlinux"


@pytest.mark.parametrize("layout", ["5.10", "5.4", "5.3"])
def test_every_layout_gives_the_same_crcs(layout):
    entries = EXPORTS if layout != "5.3" else [e for e in EXPORTS if not e.namespace]
    symvers = parse_symvers(symvers_text(entries, layout), "Module.symvers")
    assert symvers.problems == ()
    assert symvers.value.crcs == {e.symbol: e.crc for e in entries}
    assert symvers.value.exporters["jbd2_journal_start"] == "jbd2"  # the name /proc/modules lists


def test_odd_symvers_lines_are_counted():
    good = symvers_text(EXPORTS)
    text = good + "0xZZ\tbad_crc\tvmlinux\tEXPORT_SYMBOL\t\n0x1_0\tunderscore\tvmlinux\tEXPORT_SYMBOL\t\n"
    text += "0x12345678\tno_export_column\tvmlinux\n\n0x12345678\t\tvmlinux\tEXPORT_SYMBOL\t\n"
    symvers = parse_symvers(text, "/x/Module.symvers")
    assert symvers.value.crcs == CRCS
    (problem,) = symvers.problems
    assert problem.code == "malformed_lines" and "/x/Module.symvers" in problem.message
    assert "4 malformed lines, first at line 5: '0xZZ" in problem.message


def test_boot_symvers_gz_when_no_headers(tmp_path):
    fx = debian_host(tmp_path)
    fx.root.module_symvers(RELEASE).local.unlink()
    fx.boot_symvers(entries=EXPORTS, layout="5.4")
    build = read(fx).value
    assert build.crcs == CRCS and build.crcs_source == f"/boot/symvers-{RELEASE}.gz"


def test_headers_win_over_boot(tmp_path):
    fx = debian_host(tmp_path)
    fx.boot_symvers(entries=[SymversEntry("printk", 1)])
    assert read(fx).value.crcs == CRCS


def test_corrupt_gz_is_a_problem(tmp_path):
    fx = debian_host(tmp_path)
    fx.root.module_symvers(RELEASE).local.unlink()
    fx.write(f"/boot/symvers-{RELEASE}.gz", gzip.compress(symvers_text(EXPORTS).encode())[:-12])
    result = read(fx)
    assert result.value.crcs is None and result.value.crcs_source is None
    (problem,) = result.problems
    assert problem.subject == f"/boot/symvers-{RELEASE}.gz" and "gzip" in problem.message


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (gzip.compress(b"") * 5000, "more than 1024 concatenated gzip members"),  # was quadratic, unbounded
        (b"0x1\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n", "no gzip magic"),  # plain text under a .gz name
    ],
)
def test_a_hostile_or_mislabelled_gz_is_a_problem(tmp_path, data, says):
    fx = debian_host(tmp_path)
    fx.root.module_symvers(RELEASE).local.unlink()
    fx.write(f"/boot/symvers-{RELEASE}.gz", data)
    result = read(fx)
    assert result.value.crcs is None
    (problem,) = result.problems
    assert problem.subject == f"/boot/symvers-{RELEASE}.gz" and says in problem.message, problem.message


def test_no_symvers_anywhere_is_one_warning(tmp_path):
    fx = debian_host(tmp_path)
    fx.root.module_symvers(RELEASE).local.unlink()
    result = read(fx)
    assert result.value.crcs is None and result.value.exports is None
    assert result.value.vermagic == VERMAGIC  # the module still tells
    (problem,) = result.problems
    assert problem.code == "source_missing" and problem.severity == "warning"
    assert f"linux-headers-{RELEASE}" in problem.message and f"/boot/symvers-{RELEASE}.gz" in problem.message


def test_fifo_symvers_is_unreadable_and_boot_is_tried(tmp_path):
    fx = debian_host(tmp_path)
    headers = fx.root.module_symvers(RELEASE).local
    headers.unlink()
    os.mkfifo(headers)
    fx.boot_symvers(entries=EXPORTS)
    done: list[object] = []
    reader = threading.Thread(target=lambda: done.append(read(fx)), daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert done, "blocked on a FIFO"
    result = done[0]
    assert result.value.crcs == CRCS  # type: ignore[attr-defined]
    (problem,) = result.problems  # type: ignore[attr-defined]
    assert problem.code == "source_unreadable" and problem.subject == str(fx.root.module_symvers(RELEASE))


# -- the in-tree module --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["", ".gz", ".zst"])
def test_first_in_tree_module_any_compression(tmp_path, compression):
    build = read(debian_host(tmp_path, compression)).value
    assert build.vermagic == VERMAGIC and build.this_module_size == 1344
    assert build.vermagic_source and build.vermagic_source.endswith("aesni-intel.ko" + compression)


def test_no_in_tree_module_is_a_warning(tmp_path):
    fx = debian_host(tmp_path)
    fx.modules_dep(entries={"updates/dkms/vboxdrv.ko": [], "extra/livepatch-fix.ko": []})
    result = read(fx)
    assert (result.value.vermagic, result.value.vermagic_source, result.value.this_module_size) == (None, None, None)
    assert result.value.crcs == CRCS
    (problem,) = result.problems
    assert problem.code == "no_in_tree_module" and problem.severity == "warning" and RELEASE in problem.message


def test_missing_modules_dep_gives_no_vermagic(tmp_path):
    fx = debian_host(tmp_path)
    fx.root.modules_dep(RELEASE).local.unlink()
    result = read(fx)
    assert result.value.vermagic is None and "no_in_tree_module" in {p.code for p in result.problems}


def test_corrupt_in_tree_module_is_a_problem_naming_it(tmp_path):
    fx = debian_host(tmp_path, compression="")
    module = fx.root.path(f"/lib/modules/{RELEASE}/kernel/arch/x86/crypto/aesni-intel.ko")
    module.write_bytes(b"\x7fELF garbage")
    result = read(fx)
    assert result.value.vermagic is None and result.value.this_module_size is None
    (problem,) = result.problems
    assert problem.subject == f"/lib/modules/{RELEASE}/kernel/arch/x86/crypto/aesni-intel.ko"


def test_module_without_this_module_section(tmp_path):
    fx = debian_host(tmp_path, compression="")
    fx.in_tree_module(path="kernel/arch/x86/crypto/aesni-intel.ko", this_module_size=None)
    result = read(fx)
    assert result.value.vermagic == VERMAGIC and result.value.this_module_size is None
    (problem,) = result.problems
    assert problem.code == "in_tree_module_incomplete" and ".gnu.linkonce.this_module" in problem.message


# -- cost -----------------------------------------------------------------------------------------------------------


def test_cache_parses_each_file_once_per_change(tmp_path):
    fx = debian_host(tmp_path)
    calls: list[str] = []

    def counting(where: HostPath) -> tuple[str | None, int | None]:
        calls.append(where.host)
        return module_build_facts(where)

    cache = KernelBuildCache()
    dep = read_modules_dep(fx.root, RELEASE).value
    first = read_kernel_build(fx.root, RELEASE, dep, counting, cache).value
    second = read_kernel_build(fx.root, RELEASE, dep, counting, cache).value
    assert len(calls) == 1 and second.crcs is first.crcs  # the same parsed dict, not a new parse
    fx.module_symvers(entries=[*EXPORTS, SymversEntry("new_export", 7)])
    third = read_kernel_build(fx.root, RELEASE, dep, counting, cache).value
    assert third.crcs is not first.crcs and third.crcs is not None and third.crcs["new_export"] == 7


def test_evaluator_fills_system_state(tmp_path):
    fx = debian_host(tmp_path)
    fx.kallsyms([(0xFFFFFFFF81000000, "T", "_stext")])
    fx.proc_modules([])
    fx.sig_enforce(True)
    fx.lockdown("integrity")
    state, up, _ = Evaluator(fx.root).system()
    assert state.kernel_build is not None and state.kernel_build.crcs == CRCS
    assert state.module_signing is not None
    assert (state.module_signing.sig_enforce, state.module_signing.lockdown) == (True, "integrity")
    assert up["kernel_build"] and up["module_signing"]


def test_a_one_shot_read_searches_module_symvers_for_the_symbols_asked(tmp_path) -> None:
    """klpctl's one-shot evaluation: the same CRCs and exporters as the full parse, for the symbols asked."""
    fx = FixtureRoot(tmp_path)
    fx.module_symvers(RELEASE, [*EXPORTS, SymversEntry("my-mod_sym", 0x5, "drivers/misc/my-mod")])
    dep = read_modules_dep(fx.root, RELEASE).value
    full = read_kernel_build(fx.root, RELEASE, dep, module_build_facts).value
    once = read_kernel_build(fx.root, RELEASE, dep, module_build_facts, one_shot=True).value
    assert full.crcs is not None and once.crcs is not None and full.exports is not None and once.exports is not None
    for symbol in [e.symbol for e in EXPORTS] + ["my-mod_sym", "absent", "vmlinux", "fs/jbd2/jbd2", "a b", ""]:
        assert once.crcs.get(symbol) == full.crcs.get(symbol), symbol
        assert once.exports.get(symbol) == full.exports.get(symbol), symbol
    assert once.exports["my-mod_sym"] == "my_mod"


def test_a_one_shot_lookup_is_a_whole_mapping_when_listed(tmp_path) -> None:
    """Truth-testing, len() or iterating the one-shot view parses the whole file: same as the full parse."""
    fx = FixtureRoot(tmp_path)
    fx.module_symvers(RELEASE, EXPORTS)
    dep = read_modules_dep(fx.root, RELEASE).value
    once = read_kernel_build(fx.root, RELEASE, dep, module_build_facts, one_shot=True).value
    full = read_kernel_build(fx.root, RELEASE, dep, module_build_facts).value
    assert once.exports and full.exports is not None and once.crcs is not None and full.crcs is not None
    assert dict(once.exports) == dict(full.exports) and dict(once.crcs) == dict(full.crcs)


def test_a_one_shot_lookup_reads_what_the_full_parse_reads_on_odd_files() -> None:
    """Duplicates (the last line wins), separators str.splitlines() would cut at, CRLF, and a line holding the
    symbol's tab-delimited name many times (read once, not once per occurrence)."""
    from klpd.sources.kernel_build import SymversLookup

    text = (
        "0x00000001\tfoo\tvmlinux\tEXPORT_SYMBOL\t\n"
        "0x00000002\tfoo\tfs/x/x\tEXPORT_SYMBOL\t\n"  # foo again: the full parse keeps this one
        "0x00000003\tbar\u001cbaz\tvmlinux\tEXPORT_SYMBOL\t\n"  # one line for the kernel's "\n"-only reader
        "0x00000004\tcr\tvmlinux\tEXPORT_SYMBOL\t\r\n"
        + "0x00000005\tnoise" + "\tfoo" * 5000 + "\n"  # a hostile line: foo between tabs 5,000 times
    )
    full = parse_symvers(text, "Module.symvers").value
    lookup = SymversLookup(text)
    for symbol in ("foo", "bar\u001cbaz", "bar", "baz", "cr", "noise"):
        expected = (full.crcs[symbol], full.exporters[symbol]) if symbol in full.crcs else None
        assert lookup.entry(symbol) == expected, symbol


def test_a_module_symvers_without_the_kernels_anchors_is_not_used(tmp_path) -> None:
    """An empty or cut-short Module.symvers would make every import 'Unknown symbol': it is reported and left
    out, so the symbols check says unknown instead."""
    fx = FixtureRoot(tmp_path)
    fx.module_symvers(RELEASE, [SymversEntry("_printk", 0x92997ED8)])
    dep = read_modules_dep(fx.root, RELEASE).value
    for one_shot in (False, True):
        read = read_kernel_build(fx.root, RELEASE, dep, module_build_facts, one_shot=one_shot)
        assert read.value.crcs is None and read.value.exports is None
        assert "symvers_incomplete" in {p.code for p in read.problems}
