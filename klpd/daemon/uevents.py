"""Module add/remove uevents (NETLINK_KOBJECT_UEVENT, subsystem ``module``) through pyudev.

Two sources, as pyudev names them: ``udev`` (the events udevd re-broadcasts once its rules ran) and ``kernel``
(the kernel's own multicast group). The ``udev`` source receives nothing at all — silently — where no udevd runs
(containers, minimal hosts), so ``auto`` takes ``udev`` only when udevd's control socket ``/run/udev/control``
exists. Module uevents carry ACTION, DEVPATH (``/module/<name>``), SUBSYSTEM and SEQNUM; the ``add`` of a module
goes out after its init succeeded (since 5.11), so a refused load sends none (see kernel_log.py).

A full socket buffer makes the kernel drop events and report ENOBUFS (POLLERR) once: counted as a loss, which
makes the loop resync.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol

from klpd.config import UeventSource as UeventSetting
from klpd.daemon.events import Batch, Event
from klpd.errors import SourceError
from klpd.root import SystemRoot

log = logging.getLogger(__name__)

SUBSYSTEM = "module"
UDEV_CONTROL = "/run/udev/control"
# Asked for, not required: enlarging the buffer past net.core.rmem_max needs CAP_NET_ADMIN (SO_RCVBUFFORCE). A
# boot storm fits in it either way; a loss only costs a resync.
RECEIVE_BUFFER = 8 << 20
# Events taken per read(), so one source cannot starve the others during a storm.
MAX_PER_READ = 4096


class MonitorLike(Protocol):
    """What the source needs of a pyudev Monitor; tests pass a fake with the same two methods."""

    def fileno(self) -> int: ...

    def poll(self, timeout: float | None = None) -> Any: ...


def choose_source(setting: UeventSetting, root: SystemRoot) -> str | None:
    """The pyudev source to use ("udev" or "kernel"), or None for no uevents."""
    if setting is UeventSetting.NONE or not root.is_live:
        return None  # a fixture tree has no uevents of its own
    if setting is UeventSetting.AUTO:
        return "udev" if root.path(UDEV_CONTROL).exists() else "kernel"
    return setting.value


def open_monitor(source: str, subsystem: str | None = SUBSYSTEM) -> Any:
    """A started pyudev Monitor on ``source`` ("udev" or "kernel"), filtered to ``subsystem``."""
    try:
        import pyudev  # noqa: PLC0415 (only the live uevent sources need libudev)

        monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source=source)
        if subsystem is not None:
            monitor.filter_by(subsystem)
        with contextlib.suppress(OSError, ValueError):
            monitor.set_receive_buffer_size(RECEIVE_BUFFER)
        monitor.start()
    except (ImportError, OSError, ValueError) as exc:
        raise SourceError(f"uevent netlink ({source})", f"cannot open: {exc}") from exc
    return monitor


class UeventSource:
    """Module uevents from a pyudev Monitor (or anything shaped like one)."""

    def __init__(self, monitor: MonitorLike, name: str, clock: Callable[[], float] = time.time) -> None:
        self._monitor = monitor
        self._name = name
        self._clock = clock

    @classmethod
    def open(cls, source: str, subsystem: str | None = SUBSYSTEM) -> UeventSource:
        return cls(open_monitor(source, subsystem), source)

    @property
    def name(self) -> str:
        return self._name

    def fileno(self) -> int:
        return self._monitor.fileno()

    def read(self) -> Batch:
        events: list[Event] = []
        lost = 0
        for _ in range(MAX_PER_READ):
            try:
                device = self._monitor.poll(timeout=0)
            except OSError as exc:
                # pyudev reports POLLERR without an errno ("Error while polling fd"); either way the socket's
                # pending error (ENOBUFS) is cleared below so the next poll() does not fail again.
                if exc.errno not in (None, errno.ENOBUFS):
                    raise
                lost += 1
                self._clear_socket_error()
                continue
            if device is None:
                break
            events.append(Event(self._clock(), self._name, device.action or "change", device.sys_name))
        return Batch(tuple(events), lost)

    def _clear_socket_error(self) -> None:
        # Reading SO_ERROR clears a netlink socket's pending error, as a failing recvmsg() would.
        try:
            fd = os.dup(self.fileno())
        except (OSError, ValueError):
            return
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            return
        with sock, contextlib.suppress(OSError):
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)

    def close(self) -> None:
        # pyudev closes the netlink socket when the Monitor is garbage collected; drop our reference.
        self._monitor = _Closed()


class _Closed:
    def fileno(self) -> int:
        return -1

    def poll(self, timeout: float | None = None) -> None:
        return None
