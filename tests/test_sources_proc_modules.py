from __future__ import annotations

from pathlib import Path

import pytest

from klpd.errors import SourceError
from klpd.root import SystemRoot
from klpd.sources.proc_modules import parse_proc_modules, read_proc_modules
from tests.fixtures import FixtureRoot

LINES = [
    "livepatch_fix 16384 1 - Live 0xffffffffc0a00000 (OEK)",
    "nft_chain_nat 12288 7 - Live 0xffffffffc09f0000",
    "nf_nat 61440 2 nft_chain_nat,xt_MASQUERADE, Live 0xffffffffc09d0000",
    "ext4 1011712 1 - Live 0x0000000000000000",
    "loading_mod 8192 0 - Loading 0xffffffffc0990000 (O+)",
    "going_mod 8192 0 [permanent], Unloading 0xffffffffc0980000 (-)",
]


def test_fields():
    read = parse_proc_modules("\n".join(LINES) + "\n", "/proc/modules")
    mods = read.value
    assert read.problems == ()
    assert list(mods) == [line.split()[0] for line in LINES]
    fix = mods["livepatch_fix"]
    assert (fix.size, fix.refcount, fix.used_by, fix.state, fix.taint) == (16384, 1, (), "Live", "OEK")
    assert mods["nf_nat"].used_by == ("nft_chain_nat", "xt_MASQUERADE")
    assert mods["ext4"].taint == ""
    # the +/- of a module in transit is its state, already in the state field
    assert (mods["loading_mod"].state, mods["loading_mod"].taint) == ("Loading", "O")
    assert (mods["going_mod"].state, mods["going_mod"].taint, mods["going_mod"].used_by) == ("Unloading", "", ())


def test_kernel_without_module_unload():
    mods = parse_proc_modules("ext4 1011712 - - Live 0xffffffffc0a00000\n", "/proc/modules").value
    assert mods["ext4"].refcount is None and mods["ext4"].used_by == ()


def test_odd_lines_are_skipped_and_reported():
    text = "\n".join([
        LINES[0],
        "truncated 16384",
        "badsize 12x 1 - Live 0xffffffffc0000000",
        "badaddr 12 1 - Live ffffffffc0000000",
        "badtaint 12 1 - Live 0xffffffffc0000000 OE",
        "",
        LINES[1],
    ])
    read = parse_proc_modules(text, "/proc/modules")
    assert set(read.value) == {"livepatch_fix", "nft_chain_nat"}
    (problem,) = read.problems
    assert "/proc/modules" in problem.message and "5 malformed lines" in problem.message
    assert "line 2" in problem.message


def test_read_fixture(tmp_path):
    fx = FixtureRoot(tmp_path)
    fx.proc_modules(LINES)
    read = read_proc_modules(fx.root)
    assert "livepatch_fix" in read.value and read.problems == ()


def test_missing_file_means_no_modules_with_a_warning(tmp_path):
    read = read_proc_modules(FixtureRoot(tmp_path).root)
    assert read.value == {}
    (problem,) = read.problems
    assert problem.severity == "warning" and "/proc/modules" in problem.message


def test_unreadable_file_is_a_source_error(tmp_path):
    fx = FixtureRoot(tmp_path)
    fx.mkdir("/proc/modules")  # a directory where the file should be: EISDIR
    with pytest.raises(SourceError) as error:
        read_proc_modules(fx.root)
    assert error.value.path == "/proc/modules"


@pytest.mark.skipif(not Path("/proc/modules").exists(), reason="this kernel has no /proc/modules (CONFIG_MODULES=n)")
def test_live_host_parses_cleanly():
    read = read_proc_modules(SystemRoot.at("/"))
    assert read.problems == ()
    lines = Path("/proc/modules").read_text().splitlines()
    assert len(read.value) == len(lines)
