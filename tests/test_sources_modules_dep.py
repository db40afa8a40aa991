from __future__ import annotations

from pathlib import Path

from klpd.root import HostPath
from klpd.sources.modules_dep import parse_modules_dep, read_modules_dep
from tests.fixtures import FixtureRoot

TEXT = """\
kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz kernel/fs/mbcache.ko.xz kernel/fs/jbd2/jbd2.ko.xz
kernel/drivers/net/virtio-net.ko.zst: kernel/drivers/net/net_failover.ko.zst
kernel/lib/crc16.ko.xz:
updates/dkms/nvidia-drm.ko.gz:
extra/livepatch-fix.ko:
/opt/weird/absolute.ko:
"""


def host(path: str) -> HostPath:
    """A .ko that modules.dep read without a root names: read where it is on this host."""
    return HostPath(path, Path(path))


def test_names_paths_and_dependencies():
    read = parse_modules_dep(TEXT, "/lib/modules/6.1.0/modules.dep")
    assert read.problems == ()
    dep = read.value
    assert dep.get("ext4") == host("/lib/modules/6.1.0/kernel/fs/ext4/ext4.ko.xz")
    # '-' in a file name is '_' in the module name; either spelling finds it
    virtio = host("/lib/modules/6.1.0/kernel/drivers/net/virtio-net.ko.zst")
    assert dep.get("virtio_net") == dep.get("virtio-net") == virtio
    assert dep.get("nvidia_drm") == host("/lib/modules/6.1.0/updates/dkms/nvidia-drm.ko.gz")
    assert dep.get("livepatch_fix") == host("/lib/modules/6.1.0/extra/livepatch-fix.ko")
    assert dep.get("absolute") == host("/opt/weird/absolute.ko")
    assert dep.get("xfs") is None and "xfs" not in dep and "virtio-net" in dep
    assert dep.depends("ext4") == ("crc16", "mbcache", "jbd2")
    assert dep.depends("crc16") == ()
    assert len(dep) == 6 and dep.names() == frozenset(
        {"ext4", "virtio_net", "crc16", "nvidia_drm", "livepatch_fix", "absolute"}
    )


def test_odd_lines_are_skipped_and_reported():
    text = "kernel/a.ko:\nno colon here\nkernel/b.o:\nkernel/c.ko: kernel/d.txt\n\nkernel/e.ko:\n"
    read = parse_modules_dep(text, "/lib/modules/r/modules.dep")
    assert read.value.names() == frozenset({"a", "e"})
    (problem,) = read.problems
    assert "/lib/modules/r/modules.dep" in problem.message and "3 malformed lines" in problem.message


def test_first_entry_of_a_repeated_name_wins():
    dep = parse_modules_dep("kernel/a/x.ko:\nextra/x.ko:\n", "/lib/modules/r/modules.dep").value
    assert dep.get("x") == host("/lib/modules/r/kernel/a/x.ko")


def test_read_maps_paths_under_the_root(tmp_path):
    fx = FixtureRoot(tmp_path)
    fx.modules_dep("6.1.0", {"kernel/fs/ext4/ext4.ko.xz": ["kernel/fs/jbd2/jbd2.ko.xz"]})
    dep = read_modules_dep(fx.root, "6.1.0").value
    assert dep.path == "/lib/modules/6.1.0/modules.dep"
    host_ext4 = "/lib/modules/6.1.0/kernel/fs/ext4/ext4.ko.xz"
    ext4 = HostPath(host_ext4, tmp_path / host_ext4.lstrip("/"))
    assert dep.get("ext4") == ext4
    assert dep.paths() == (ext4,)


def test_missing_is_empty_with_a_problem(tmp_path):
    read = read_modules_dep(FixtureRoot(tmp_path).root, "6.1.0")
    assert len(read.value) == 0 and read.value.get("ext4") is None
    (problem,) = read.problems
    assert problem.severity == "warning" and "/lib/modules/6.1.0/modules.dep" in problem.message


def test_a_path_holding_nul_is_a_malformed_line():
    read = parse_modules_dep("kernel/a\0b/evil.ko:\nkernel/fs/ok.ko:\n", "/lib/modules/r/modules.dep")
    assert read.value.names() == frozenset({"ok"})
    (problem,) = read.problems
    assert "1 malformed line" in problem.message
