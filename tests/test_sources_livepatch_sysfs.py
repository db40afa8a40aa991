from __future__ import annotations

import pytest

from klpd.errors import FormatError
from klpd.model import SysfsFunction
from klpd.sources import livepatch_sysfs
from klpd.sources.livepatch_sysfs import (
    parse_bool_attribute,
    parse_function_dir,
    parse_int_attribute,
    read_livepatch,
    read_sysfs_patch,
)
from tests.fixtures import FixtureRoot, LivepatchObject


def test_kernel_6_14_layout(tmp_path):
    fx = FixtureRoot(tmp_path)
    fx.livepatch(
        "livepatch_b", enabled=True, transition=True, replace=True, stack_order=2,
        objects=[LivepatchObject("vmlinux", patched=True, functions=[("cmdline_proc_show", 0)])],
    )
    fx.livepatch(
        "livepatch_a", enabled=False, transition=False, replace=False, stack_order=1,
        objects=[
            LivepatchObject("vmlinux", True, [("foo.isra.0", 2), ("cmdline_proc_show", 1)]),
            LivepatchObject("ext4", patched=False, functions=[("ext4_fill_super", 0)]),
        ],
    )
    read = read_livepatch(fx.root)
    assert read.problems == ()
    a, b = read.value
    assert (a.name, b.name) == ("livepatch_a", "livepatch_b")
    assert (b.enabled, b.transition, b.force_present, b.replace, b.stack_order) == (True, True, True, True, 2)
    assert (a.enabled, a.transition, a.replace, a.stack_order) == (False, False, False, 1)
    assert [o.name for o in a.objects] == ["ext4", "vmlinux"]
    ext4, vmlinux = a.objects
    assert ext4.patched is False and vmlinux.patched is True
    # sympos 0 is shown as 1 by the kernel; a name keeps its dots
    assert ext4.functions == (SysfsFunction("ext4_fill_super", 1),)
    assert vmlinux.functions == (SysfsFunction("cmdline_proc_show", 1), SysfsFunction("foo.isra.0", 2))


def test_kernel_before_6_1_has_no_patched_and_no_newer_attributes(tmp_path):
    fx = FixtureRoot(tmp_path)
    fx.livepatch("p", enabled=True, transition=False, objects=[LivepatchObject("vmlinux", None, [("f", 0)])])
    read = read_livepatch(fx.root)
    assert read.problems == ()
    (p,) = read.value
    assert (p.replace, p.stack_order) == (None, None)
    assert p.objects[0].patched is None


def test_kernel_4_x_without_transition_or_force(tmp_path):
    fx = FixtureRoot(tmp_path)
    fx.livepatch("p", enabled=True, transition=None, force=False)
    (p,) = read_livepatch(fx.root).value
    assert (p.enabled, p.transition, p.force_present, p.objects) == (True, None, False, ())


def test_missing_enabled_is_a_problem(tmp_path):
    fx = FixtureRoot(tmp_path)
    fx.livepatch("p", enabled=None)
    read = read_livepatch(fx.root)
    assert read.value[0].enabled is None
    (problem,) = read.problems
    assert problem.severity == "error" and "/sys/kernel/livepatch/p/enabled" in problem.message


def test_malformed_attributes_are_problems_not_crashes(tmp_path):
    fx = FixtureRoot(tmp_path)
    fx.livepatch("p", objects=[LivepatchObject("vmlinux", True, [("f", 0)])])
    fx.write("/sys/kernel/livepatch/p/enabled", "yes\n")
    fx.write("/sys/kernel/livepatch/p/stack_order", "first\n")
    fx.mkdir("/sys/kernel/livepatch/p/vmlinux/no_sympos_here")
    fx.mkdir("/sys/kernel/livepatch/p/vmlinux/f,x")
    read = read_livepatch(fx.root)
    (p,) = read.value
    assert p.enabled is None and p.stack_order is None
    assert p.objects[0].functions == (SysfsFunction("f", 1),)
    messages = " ".join(problem.message for problem in read.problems)
    assert "/sys/kernel/livepatch/p/enabled" in messages and "/sys/kernel/livepatch/p/stack_order" in messages
    assert "no_sympos_here" in messages and "f,x" in messages
    assert len(read.problems) == 4


def test_unreadable_attribute(tmp_path):
    fx = FixtureRoot(tmp_path)
    fx.livepatch("p", transition=None)
    fx.mkdir("/sys/kernel/livepatch/p/transition/x")  # a directory where a file belongs: EISDIR
    # ...which also makes "transition" look like an object directory, as a corrupt tree would
    read = read_livepatch(fx.root)
    assert read.value[0].transition is None
    assert any("/sys/kernel/livepatch/p/transition" in p.message for p in read.problems)


def test_no_livepatch_support(tmp_path):
    assert read_livepatch(FixtureRoot(tmp_path).root).value == ()
    fx = FixtureRoot(tmp_path)
    fx.kernel()
    assert read_livepatch(fx.root).value == ()


def test_patch_vanishing_mid_read_is_left_out(tmp_path, monkeypatch):
    fx = FixtureRoot(tmp_path)
    fx.livepatch("going", objects=[LivepatchObject("vmlinux", True, [("f", 0)])])
    fx.livepatch("staying")
    original = livepatch_sysfs._PatchReader.text

    def text_then_vanish(self, path, required):
        value = original(self, path, required)
        if self.directory.name == "going" and path.name == "enabled":
            import shutil

            shutil.rmtree(self.directory.local)  # unpatching completed while we read
        return value

    monkeypatch.setattr(livepatch_sysfs._PatchReader, "text", text_then_vanish)
    read = read_livepatch(fx.root)
    assert [p.name for p in read.value] == ["staying"]
    assert read.problems == ()
    assert read_sysfs_patch(fx.root, "going").value is None


def test_parsers():
    assert parse_bool_attribute("1\n", "x") is True
    assert parse_bool_attribute("0\n", "x") is False
    with pytest.raises(FormatError, match="x: expected 0 or 1"):
        parse_bool_attribute("2\n", "x")
    assert parse_int_attribute("3\n", "x") == 3
    with pytest.raises(FormatError):
        parse_int_attribute("9" * 100, "x")
    assert parse_function_dir("foo,1") == SysfsFunction("foo", 1)
    assert parse_function_dir("foo.cold.2,3") == SysfsFunction("foo.cold.2", 3)
    assert parse_function_dir("a,b,2") == SysfsFunction("a,b", 2)
    assert parse_function_dir("foo") is None
    assert parse_function_dir(",1") is None
    assert parse_function_dir("foo,") is None
    assert parse_function_dir("foo,-1") is None
