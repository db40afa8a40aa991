from __future__ import annotations

import os

import pytest

from klpd.errors import FormatError, SourceError
from klpd.root import SystemRoot
from klpd.sources.kernel import parse_osrelease, parse_tainted, read_kernel_info
from tests.fixtures import FixtureRoot


def test_fixture_kernel(tmp_path):
    fx = FixtureRoot(tmp_path)
    fx.kernel("6.1.0-27-amd64", tainted=32768 | 4096 | 8192)
    read = read_kernel_info(fx.root)
    info = read.value
    assert read.problems == ()
    assert info.release == "6.1.0-27-amd64"
    assert info.tainted == 45056 and info.livepatch_tainted is True
    assert info.livepatch_supported


def test_untainted_kernel_without_livepatch(tmp_path):
    fx = FixtureRoot(tmp_path)
    fx.kernel("5.15.0", tainted=0, livepatch=False)
    info = read_kernel_info(fx.root).value
    assert info.livepatch_tainted is False and not info.livepatch_supported


def test_unreadable_tainted_is_none_with_a_problem(tmp_path):
    fx = FixtureRoot(tmp_path)
    fx.kernel(tainted=None)
    read = read_kernel_info(fx.root)
    assert read.value.tainted is None and read.value.livepatch_tainted is None
    assert "/proc/sys/kernel/tainted" in read.problems[0].message
    fx.write("/proc/sys/kernel/tainted", "lots\n")
    read = read_kernel_info(fx.root)
    assert read.value.tainted is None and "not a taint mask" in read.problems[0].message


def test_fixture_root_never_falls_back_to_uname(tmp_path):
    fx = FixtureRoot(tmp_path)
    with pytest.raises(SourceError) as error:
        read_kernel_info(fx.root)
    assert error.value.path == "/proc/sys/kernel/osrelease"
    fx.write("/proc/sys/kernel/osrelease", "\n")
    with pytest.raises(SourceError):
        read_kernel_info(fx.root)


def test_parsers():
    assert parse_osrelease("6.1.0\n", "p") == "6.1.0"
    with pytest.raises(FormatError):
        parse_osrelease("6.1 extra\n", "p")
    assert parse_tainted("0\n", "p") == 0
    with pytest.raises(FormatError):
        parse_tainted("-1\n", "p")
    with pytest.raises(FormatError):
        parse_tainted("9" * 50, "p")


def test_live_host():
    info = read_kernel_info(SystemRoot.at("/")).value
    assert info.release == os.uname().release
    assert info.livepatch_supported == os.path.isdir("/sys/kernel/livepatch")
