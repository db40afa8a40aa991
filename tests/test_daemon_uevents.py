"""Module uevents: the real kernel netlink socket where this machine allows it, a fake monitor otherwise."""

from __future__ import annotations

import errno
import os
import select
from pathlib import Path

import pytest

from klpd.config import UeventSource as Setting
from klpd.daemon.uevents import UeventSource, choose_source
from klpd.root import SystemRoot
from tests.daemon_scenario import FakeMonitor

# A device whose synthetic "add" is harmless: /dev/null's. Writing an action to a uevent file makes the kernel
# send that uevent (kobject_synth_uevent, the mechanism of `udevadm trigger`).
DEVICE = Path("/sys/devices/virtual/mem/null")


def test_real_kernel_uevent_through_netlink():
    if os.geteuid() != 0 or not (DEVICE / "uevent").exists():
        pytest.skip("needs root and /sys/devices/virtual/mem/null/uevent to emit a real uevent")
    try:
        source = UeventSource.open("kernel", subsystem="mem")
    except OSError as exc:
        # Only a kernel or sandbox without NETLINK_KOBJECT_UEVENT is a reason to skip; a missing pyudev or a bug
        # in opening the monitor is a failure.
        cause = exc.__cause__
        if not (isinstance(cause, OSError) and cause.errno in (errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT,
                                                                 errno.EPERM, errno.EACCES)):  # fmt: skip
            raise
        pytest.skip(f"no uevent netlink socket here: {exc}")
    try:
        source.read()
        (DEVICE / "uevent").write_text("add")
        events = []
        for _ in range(20):  # other devices may send events meanwhile; ours arrives within a second
            if not select.select([source.fileno()], [], [], 1.0)[0]:
                break
            events += source.read().events
            if any(e.subject == "null" for e in events):
                break
        ours = [e for e in events if e.subject == "null"]
        assert ours and ours[0].kind == "add" and ours[0].source == "kernel"
    finally:
        source.close()


def test_fake_monitor_events_and_enobufs():
    monitor = FakeMonitor()
    source = UeventSource(monitor, "udev", clock=lambda: 5.0)
    try:
        monitor.emit("add", "ext4")
        monitor.overflow()
        monitor.emit("remove", "nfsd")
        batch = source.read()
        assert [(e.time, e.source, e.kind, e.subject) for e in batch.events] == [
            (5.0, "udev", "add", "ext4"), (5.0, "udev", "remove", "nfsd")]  # fmt: skip
        assert batch.lost == 1
        assert source.read().events == ()
    finally:
        monitor.close()


def test_other_monitor_errors_propagate():
    class Broken(FakeMonitor):
        def poll(self, timeout=None):
            raise OSError(errno.EBADF, "Bad file descriptor")

    monitor = Broken()
    try:
        with pytest.raises(OSError):
            UeventSource(monitor, "udev").read()
    finally:
        monitor.close()


def test_auto_picks_udev_only_when_udevd_runs(tmp_path):
    live = SystemRoot.at("/")
    expected = "udev" if Path("/run/udev/control").exists() else "kernel"
    assert choose_source(Setting.AUTO, live) == expected
    assert choose_source(Setting.KERNEL, live) == "kernel"
    assert choose_source(Setting.NONE, live) is None
    assert choose_source(Setting.UDEV, SystemRoot.at(tmp_path)) is None  # a fixture tree has no uevents
