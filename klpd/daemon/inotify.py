"""inotify(7) on the patch install directories (since 2.6.13), through libc with ctypes — stdlib only.

A patch module installed or removed (kpatch install, a package update, depmod rewriting modules.dep) is noticed
without a restart. A directory that does not exist yet is watched through its nearest existing parent, so its
creation is noticed too; the loop re-targets the watches after every evaluation (Evaluation.watch_dirs).

``struct inotify_event`` is ``int wd; uint32_t mask, cookie, len; char name[len]`` (NUL-padded), several per
read(), never split across reads. IN_Q_OVERFLOW (wd -1) means the kernel dropped events: a loss, so a resync.

A watch follows an inode, not a path: a patch directory replaced by rename (``mv new dir``, a package manager's
atomic switch) leaves the watch on the old inode (IN_MOVE_SELF) or ends it (IN_DELETE_SELF, IN_IGNORED). Either
way the path is watched again at once, and what happened in between is unknown: counted as a loss, so a resync
follows and re-targets every watch.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from klpd.daemon.events import Batch, Event
from klpd.errors import FormatError, SourceError

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

# Creation, removal and renames of entries, a file finished being written, and the directory itself going away.
# Not IN_MODIFY: a file being copied in would wake the loop on every write().
WATCH_MASK = (IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF
              | IN_MOVE_SELF | IN_ONLYDIR)  # fmt: skip

_HEADER = struct.Struct("=iIII")
# NAME_MAX + 1 per event, plus headers: the read buffer inotify(7) suggests for a burst of events.
_READ_SIZE = 64 * (_HEADER.size + 256)


@dataclass(frozen=True, slots=True)
class InotifyEvent:
    wd: int
    mask: int
    cookie: int
    name: str  # "" for events on the watched directory itself


def parse_inotify_events(buf: bytes) -> list[InotifyEvent]:
    """The events in one read() of an inotify descriptor; FormatError if an event runs past the buffer."""
    events: list[InotifyEvent] = []
    offset = 0
    while offset < len(buf):
        if offset + _HEADER.size > len(buf):
            raise FormatError("inotify", f"truncated event header at byte {offset}")
        wd, mask, cookie, length = _HEADER.unpack_from(buf, offset)
        offset += _HEADER.size
        if offset + length > len(buf):
            raise FormatError("inotify", f"event name of {length} bytes runs past the {len(buf)}-byte read")
        raw = buf[offset : offset + length].split(b"\0", 1)[0]
        offset += length
        events.append(InotifyEvent(wd, mask, cookie, os.fsdecode(raw)))
    return events


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.inotify_init1.argtypes = [ctypes.c_int]
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


class Inotify:
    """An inotify descriptor (non-blocking, close-on-exec)."""

    def __init__(self) -> None:
        self._libc = _libc()
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise SourceError("inotify", f"inotify_init1: {os.strerror(err)}")
        self.fd: int = fd

    def add_watch(self, path: Path, mask: int = WATCH_MASK) -> int:
        wd = int(self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask))
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
        return wd

    def rm_watch(self, wd: int) -> None:
        # EINVAL: the kernel already removed it (the directory was deleted; IN_IGNORED is on its way).
        self._libc.inotify_rm_watch(self.fd, wd)

    def read(self) -> list[InotifyEvent]:
        try:
            data = os.read(self.fd, _READ_SIZE)
        except BlockingIOError:
            return []
        return parse_inotify_events(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class PatchDirWatcher:
    """Watches a set of directories; every change of an entry in one of them is an event."""

    name = "inotify"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._inotify = Inotify()
        self._clock = clock
        self._by_path: dict[Path, int] = {}
        self._by_wd: dict[int, Path] = {}
        self.failed: dict[Path, str] = {}  # directories that could not be watched, and why

    @property
    def watched(self) -> tuple[Path, ...]:
        return tuple(self._by_path)

    def fileno(self) -> int:
        return self._inotify.fd

    def set_dirs(self, dirs: Iterable[Path]) -> None:
        """Watch exactly these directories (adding and removing watches as needed)."""
        wanted = list(dict.fromkeys(dirs))
        for path in [p for p in self._by_path if p not in wanted]:
            wd = self._by_path.pop(path)
            self._by_wd.pop(wd, None)
            self._inotify.rm_watch(wd)
        self.failed = {}
        for path in wanted:
            if path in self._by_path:
                continue
            try:
                wd = self._inotify.add_watch(path)
            except OSError as exc:
                if exc.errno != errno.ENOENT:  # gone since the evaluation: the next one re-targets
                    self.failed[path] = exc.strerror or str(exc)
                continue
            # Two paths can give the same wd (a symlink, a bind mount): the last one names it.
            self._by_path[path] = wd
            self._by_wd[wd] = path

    def read(self) -> Batch:
        events: list[Event] = []
        lost = 0
        while True:
            chunk = self._inotify.read()
            if not chunk:
                break
            for ev in chunk:
                if ev.mask & IN_Q_OVERFLOW:
                    lost += 1
                    continue
                directory = self._by_wd.get(ev.wd)
                if directory is None:
                    continue
                if ev.mask & (IN_MOVE_SELF | IN_DELETE_SELF | IN_IGNORED) and not ev.name:
                    lost += self._rewatch(directory, ev.wd)
                subject = str(directory / ev.name) if ev.name else str(directory)
                events.append(Event(self._clock(), self.name, _kind(ev.mask), subject))
        return Batch(tuple(events), lost)

    def _rewatch(self, directory: Path, wd: int) -> int:
        """The watch ``wd`` on ``directory`` no longer watches that path: drop it and watch whatever is there now.
        1 (a loss) the first time, 0 for the later events of the same watch (IN_DELETE_SELF, then IN_IGNORED)."""
        if self._by_wd.pop(wd, None) is None:
            return 0
        for path in [p for p, w in self._by_path.items() if w == wd]:  # every name of it (a symlink, a bind mount)
            del self._by_path[path]
        self._inotify.rm_watch(wd)  # a moved directory's watch would go on reporting under the old path
        try:
            new = self._inotify.add_watch(directory)
        except OSError:
            pass  # not there (yet): the resync watches its parent
        else:
            self._by_path[directory] = new
            self._by_wd[new] = directory
        return 1

    def close(self) -> None:
        self._inotify.close()


def _kind(mask: int) -> str:
    if mask & (IN_CREATE | IN_MOVED_TO):
        return "created"
    if mask & (IN_DELETE | IN_MOVED_FROM):
        return "removed"
    if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
        return "directory_gone"
    return "written"
