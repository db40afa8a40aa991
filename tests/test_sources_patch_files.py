from __future__ import annotations

import os

import pytest

from klpd.sources.patch_files import find_patch_files
from tests.fixtures import FixtureRoot

REL = "6.1.0-test"


def test_every_layout_and_compression(tmp_path):
    fx = FixtureRoot(tmp_path)
    files = [
        f"/var/lib/kpatch/{REL}/kpatch-fix.ko",
        f"/usr/lib/kpatch/{REL}/kpatch-other.ko.xz",
        f"/lib/modules/{REL}/livepatch/kgraft-patch-1.ko.zst",
        f"/lib/modules/{REL}/extra/deep/down/livepatch-fix.ko.gz",
        f"/lib/modules/{REL}/updates/lkp_Ubuntu_6_1_0_1_generic_42.ko",
    ]
    for f in files:
        fx.file(f)
    fx.file(f"/var/lib/kpatch/{REL}/README")
    fx.file(f"/var/lib/kpatch/{REL}/fix.ko.bak")
    fx.file("/var/lib/kpatch/other-release/kpatch-old.ko")
    fx.file(f"/lib/modules/{REL}/kernel/fs/ext4/ext4.ko.xz")  # not a patch directory
    read = find_patch_files(fx.root, REL)
    assert read.problems == ()
    assert read.value == tuple(sorted((fx.root.file(f) for f in files), key=lambda found: found.local))


def test_missing_directories_are_normal(tmp_path):
    read = find_patch_files(FixtureRoot(tmp_path).root, REL)
    assert read.value == () and read.problems == ()


def test_symlink_loops_and_duplicates(tmp_path):
    fx = FixtureRoot(tmp_path)
    real = fx.file(f"/var/lib/kpatch/{REL}/a/kpatch-fix.ko")
    (real.parent / "loop").symlink_to(real.parent.parent)  # a/loop -> kpatch/REL
    (real.parent / "same.ko").symlink_to(real)  # the same file twice
    (real.parent / "dangling.ko").symlink_to(real.parent / "gone.ko")
    usr = fx.root.path(f"/usr/lib/kpatch/{REL}")
    usr.parent.mkdir(parents=True)
    usr.symlink_to(real.parent.parent)  # a second install dir that is the first one
    read = find_patch_files(fx.root, REL)
    assert read.value == (fx.root.under(real),)
    assert read.value[0].host == f"/var/lib/kpatch/{REL}/a/kpatch-fix.ko"


def test_configured_directories(tmp_path):
    fx = FixtureRoot(tmp_path, patch_dirs=["/opt/patches/{release}"])
    fx.file(f"/opt/patches/{REL}/p.ko")
    fx.file(f"/var/lib/kpatch/{REL}/ignored.ko")
    assert find_patch_files(fx.root, REL).value == (fx.root.file(f"/opt/patches/{REL}/p.ko"),)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can list a directory of mode 0000")
def test_unreadable_directory_is_a_problem(tmp_path):
    fx = FixtureRoot(tmp_path)
    fx.file(f"/var/lib/kpatch/{REL}/locked/p.ko")
    locked = fx.root.path(f"/var/lib/kpatch/{REL}/locked")
    locked.chmod(0)
    try:
        read = find_patch_files(fx.root, REL)
    finally:
        locked.chmod(0o755)
    assert read.value == ()
    assert f"/var/lib/kpatch/{REL}/locked" in read.problems[0].message
