"""Let the kernel format a large procfs file while this process does something else (a ``klpctl`` run's imports).

procfs formats /proc/kallsyms in the reading task: tens of milliseconds of kernel time for 100k+ lines, as much as
``cat`` takes. A one-shot ``klpctl check`` or ``status --direct`` spends about as long importing its own code. A
``cat`` child started first writes the file into an anonymous memory file (memfd) on the other CPU meanwhile; the
reader later takes the bytes in one read. A reader thread would not do: each read() needs the GIL back while the
imports hold it. Only a clean exit of ``cat`` vouches for the bytes; any doubt (no memfd or cat, SIGCHLD ignored,
not a regular file, a failed spawn or read) answers None and the caller reads the file itself, with the same result.
The file is opened and checked here (:func:`klpd.regular_file.open_regular`: a FIFO or device would have ``cat``
block or stream for ever) and ``cat`` reads that descriptor as its stdin. A ``cat`` that has not exited within
:data:`DEADLINE` is killed and reaped: it never outlives its reader.

This module is imported before the rest of klpd, so it imports nothing heavy (no subprocess, no shutil).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

from klpd.regular_file import open_regular
from klpd.root import HostPath

# Where cat is looked for: fixed directories, not $PATH (klpd and klpctl run as root).
_CATS = ("/usr/bin/cat", "/bin/cat")
# How long cat may take for the whole file: the kernel formats a large /proc/kallsyms in ~50 ms.
DEADLINE = 10.0
# More than this in the memfd and the caller reads (and refuses) the file itself; as kallsyms.layout.KALLSYMS_LIMIT.
LIMIT = 256 * 1024 * 1024


def cat_program() -> str | None:
    """The cat a read of procfs may run here, or None: none in /usr/bin or /bin, or SIGCHLD ignored (the exit
    status that vouches for cat's bytes would be lost). Shared with the daemon's cold read (kallsyms.pipe)."""
    if signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:
        return None
    return next((c for c in _CATS if os.access(c, os.X_OK)), None)


class Prefetch:
    """A ``cat`` child writing one file into a memfd. :meth:`take` the bytes once; :meth:`close` if never taken."""

    def __init__(self, path: HostPath, pid: int, memfd: int) -> None:
        self.path = path
        self._pid = pid
        self._memfd = memfd

    def take(self) -> bytes | None:
        """The file's bytes as ``cat`` read them, or None when ``cat`` did not exit cleanly."""
        if self._memfd < 0:
            return None
        try:
            status = self._wait()
            if status is None or not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
                return None
            size = os.fstat(self._memfd).st_size
            if size > LIMIT:
                return None
            return os.pread(self._memfd, size, 0) if size else b""
        except OSError:
            return None
        finally:
            self._release()

    def _wait(self) -> int | None:
        """cat's wait status; None, with cat killed and reaped, when it has not exited within :data:`DEADLINE`."""
        deadline = time.monotonic() + DEADLINE
        pause = 0.0005
        while True:
            pid, status = os.waitpid(self._pid, os.WNOHANG)
            if pid:
                return status
            if time.monotonic() >= deadline:
                self._kill()
                return None
            time.sleep(pause)
            pause = min(pause * 2, 0.01)

    def close(self) -> None:
        """Stop the child (if it still runs) and free the memfd."""
        if self._memfd >= 0:
            self._kill()
            self._release()

    def _kill(self) -> None:
        with contextlib.suppress(OSError):
            os.kill(self._pid, signal.SIGKILL)
            os.waitpid(self._pid, 0)

    def _release(self) -> None:
        os.close(self._memfd)
        self._memfd = -1


def start(path: HostPath) -> Prefetch | None:
    """Start ``cat path`` into a memfd; None when that cannot be done safely here."""
    cat = cat_program()
    if cat is None or not hasattr(os, "memfd_create"):
        return None
    try:
        source = open_regular(path)  # a FIFO or a device would have cat block or run without end
        if os.fstat(source).st_size > LIMIT:  # a (sparse) copy far larger than any kallsyms: not into RAM
            os.close(source)
            return None
    except OSError:
        return None
    try:
        memfd = os.memfd_create("klpd-prefetch", os.MFD_CLOEXEC)
    except OSError:
        os.close(source)
        return None
    try:
        pid = os.posix_spawn(
            cat,
            [cat],
            {},
            file_actions=[
                (os.POSIX_SPAWN_DUP2, source, 0),
                (os.POSIX_SPAWN_DUP2, memfd, 1),
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
            ],
        )
    except OSError:
        os.close(memfd)
        return None
    finally:
        os.close(source)
    return Prefetch(path, pid, memfd)
