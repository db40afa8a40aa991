from __future__ import annotations

import os

import pytest

from klpd.sources.sys_module import parse_attribute, read_sys_module
from tests.fixtures import FixtureRoot


def test_loaded_patch_module(tmp_path):
    fx = FixtureRoot(tmp_path)
    sections = [".text", ".klp.rela.vmlinux..text.cmdline_proc_show", ".klp.rela.ext4.text", ".data"]
    fx.sys_module("livepatch_fix", srcversion="9C2B4D1F3E", taint="OEK", sections=sections)
    read = read_sys_module(fx.root, "livepatch_fix")
    mod = read.value
    assert read.problems == ()
    assert mod is not None
    assert (mod.name, mod.initstate, mod.srcversion, mod.taint) == ("livepatch_fix", "live", "9C2B4D1F3E", "OEK")
    assert mod.sections == tuple(sorted(sections))
    assert mod.klp_rela_sections == (".klp.rela.ext4.text", ".klp.rela.vmlinux..text.cmdline_proc_show")


def test_builtin_module_has_no_initstate_or_sections(tmp_path):
    fx = FixtureRoot(tmp_path)
    fx.sys_module("printk", initstate=None, taint=None, sections=None)
    mod = read_sys_module(fx.root, "printk").value
    assert mod is not None
    assert (mod.initstate, mod.srcversion, mod.taint, mod.sections) == (None, None, None, None)
    assert mod.klp_rela_sections == ()


def test_untainted_is_empty_not_none(tmp_path):
    fx = FixtureRoot(tmp_path)
    fx.sys_module("ext4", taint="")
    assert read_sys_module(fx.root, "ext4").value.taint == ""


def test_not_loaded(tmp_path):
    assert read_sys_module(FixtureRoot(tmp_path).root, "ext4").value is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files of mode 0000")
def test_unreadable_attribute_is_a_problem(tmp_path):
    fx = FixtureRoot(tmp_path)
    fx.sys_module("ext4", srcversion="X")
    (tmp_path / "sys/module/ext4/srcversion").chmod(0)
    read = read_sys_module(fx.root, "ext4")
    assert read.value.srcversion is None
    assert "/sys/module/ext4/srcversion" in read.problems[0].message


def test_unreadable_attribute_is_a_problem_as_root(tmp_path):
    # root can read anything; a directory where the attribute should be fails the same way (EISDIR)
    fx = FixtureRoot(tmp_path)
    fx.sys_module("ext4", srcversion=None)
    fx.mkdir("/sys/module/ext4/srcversion")
    read = read_sys_module(fx.root, "ext4")
    assert read.value.srcversion is None and read.value.initstate == "live"
    (problem,) = read.problems
    assert "/sys/module/ext4/srcversion" in problem.message


def test_parse_attribute():
    assert parse_attribute("OE\n") == "OE"
    assert parse_attribute("\n") == ""
    assert parse_attribute("x") == "x"
