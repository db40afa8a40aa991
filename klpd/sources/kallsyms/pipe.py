"""A cold read of /proc/kallsyms through a ``cat`` child, parsing the vmlinux part as the pipe delivers it.

procfs formats /proc/kallsyms in the reading task (s_start()/s_next()/s_show() per seq_file page): tens of
milliseconds of kernel time for 100k+ lines, as long again as the parse. With ``cat`` reading, that work runs on
another CPU while this process parses what the pipe already holds. (A reader thread does not help: every read()
needs the GIL back.) This process opens the file, refuses it unless it is a regular file (a FIFO or device would
have ``cat`` block or stream for ever) and hands ``cat`` the descriptor as its stdin, so ``cat`` reads with this
process's credentials and sees the same addresses. Only a clean exit of ``cat`` vouches for the bytes, and any
doubt (no ``cat``, a failed spawn, a failed read) leaves the whole job to the caller's direct read, which gives the
same answers. ``cat`` never outlives the read: one that stalls past :data:`CAT_DEADLINE` or writes more than
:data:`KALLSYMS_LIMIT` bytes is killed and reaped, and the read is a SourceError.
"""

from __future__ import annotations

import fcntl
import logging
import os
import select
import subprocess
import time
from contextlib import suppress
from dataclasses import dataclass

from klpd.errors import SourceError
from klpd.regular_file import open_regular
from klpd.root import HostPath
from klpd.sources.kallsyms.indexes import CountIndex
from klpd.sources.kallsyms.layout import KALLSYMS_LIMIT
from klpd.sources.kallsyms.vmlinux import FastVmlinux, Vmlinux
from klpd.sources.prefetch import cat_program

log = logging.getLogger(__name__)

# Pipe capacity asked for, and the most read at once: the default is 64 KiB; 1 MiB is what fs.pipe-max-size
# allows unprivileged processes by default.
_PIPE_SIZE = 1 << 20
# How long cat may take for the whole file: the kernel formats a large one in ~50 ms.
CAT_DEADLINE = 60.0  # procfs formats 100k+ lines in well under a second on metal; a TCG guest under load, seconds
_EXIT_GRACE = 1.0  # for cat to exit once it closed its end of the pipe
# The longest line s_show() prints: a 16-digit address, a type, a KSYM_NAME_LEN (512) name, a MODULE_NAME_LEN (56)
# module, separators. A longer run without a newline cannot pass the layout proof; holding it would only cost
# a copy per chunk (quadratic in a newline-less file).
_LINE_MAX = 1024


@dataclass(frozen=True)
class Piped:
    """What ``cat`` delivered: the file's bytes and, when every vmlinux line passed the layout proof as it arrived
    and the file ends with a newline, what that parse found (its ``length`` is where the module part starts)."""

    data: bytes
    vmlinux: tuple[Vmlinux, CountIndex] | None


class _VmlinuxFeed:
    """Hands the vmlinux lines among the chunks ``cat`` delivers to the fast parse, whole lines only."""

    __slots__ = ("end", "parser", "pending", "vmlinux_done")

    def __init__(self) -> None:
        self.parser: FastVmlinux | None = FastVmlinux()  # None once a line failed the layout proof
        self.pending = b""  # the start of a line whose end has not arrived
        self.end = 0  # bytes of the vmlinux part parsed so far
        self.vmlinux_done = False

    def add(self, chunk: bytes) -> None:
        if self.parser is None or self.vmlinux_done:
            return
        cut = chunk.rfind(b"\n") + 1
        if not cut:
            self.pending += chunk
            if len(self.pending) > _LINE_MAX:
                self.parser = None  # not a kallsyms line: the careful way will skip and report it
            return
        lines = self.pending + chunk[:cut] if self.pending else chunk[:cut]
        self.pending = chunk[cut:]
        bracket = lines.find(b"[")  # the first module line starts the module part
        if bracket >= 0:
            self.vmlinux_done = True
            lines = lines[: lines.rfind(b"\n", 0, bracket) + 1]
        if not self.parser.add(lines, 0, len(lines)):
            self.parser = None
        self.end += len(lines)


# The pids of the cat children not yet reaped, for a daemon that must exit at once (klpd.daemon.main).
_RUNNING: set[int] = set()


def kill_running() -> None:
    """SIGKILL every ``cat`` child still running: the process is about to ``_exit`` from another thread."""
    for pid in list(_RUNNING):
        with suppress(OSError):
            os.kill(pid, 9)


def _spawn_cat(path: HostPath) -> subprocess.Popen[bytes] | None:
    cat = cat_program()
    if cat is None:
        log.debug("no cat to run in /usr/bin or /bin, or SIGCHLD ignored: reading %s directly", path)
        return None
    try:
        source = open_regular(path)
    except OSError as error:
        log.debug("cannot open %s for cat (%s): reading it directly", path, error)
        return None  # the direct read meets the same error and reports it
    try:
        child = subprocess.Popen(
            [cat],
            stdin=source,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            bufsize=0,
            close_fds=True,
        )
        _RUNNING.add(child.pid)
        return child
    except (OSError, subprocess.SubprocessError) as error:
        log.debug("cannot run %s (%s): reading %s directly", cat, error, path)
        return None
    finally:
        os.close(source)


def _end(child: subprocess.Popen[bytes], *, read_all: bool) -> None:
    """Close the pipe and reap ``child``: it never outlives its reader. After the whole file was read it has a
    moment to exit (its status vouches for the bytes); otherwise, or should it not exit, it is killed."""
    assert child.stdout is not None
    child.stdout.close()
    if read_all:
        with suppress(subprocess.TimeoutExpired):
            child.wait(_EXIT_GRACE)
    if child.poll() is None:
        with suppress(OSError):
            child.kill()
        child.wait()
    _RUNNING.discard(child.pid)


def _read_all(child: subprocess.Popen[bytes], path: HostPath, feed: _VmlinuxFeed) -> list[bytes]:
    """Every chunk ``cat`` writes, fed to ``feed``; SourceError past the deadline or the size limit."""
    assert child.stdout is not None  # stdout=PIPE
    fd = child.stdout.fileno()
    with suppress(OSError):  # a bigger pipe lets cat run further ahead; the default works too
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    deadline = time.monotonic() + CAT_DEADLINE
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    chunks: list[bytes] = []
    total = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            raise SourceError(path.host, f"cat did not finish reading it within {CAT_DEADLINE:g} s")
        chunk = os.read(fd, _PIPE_SIZE)
        if not chunk:
            return chunks
        total += len(chunk)
        if total > KALLSYMS_LIMIT:
            raise SourceError(path.host, f"larger than {KALLSYMS_LIMIT} bytes")
        chunks.append(chunk)
        feed.add(chunk)


def read_through_cat(path: HostPath) -> Piped | None:
    """Read ``path`` through a ``cat`` child, parsing the vmlinux part as it arrives; None when that fails."""
    child = _spawn_cat(path)
    if child is None:
        return None
    feed = _VmlinuxFeed()
    chunks: list[bytes] | None = None
    try:
        chunks = _read_all(child, path, feed)
    except SourceError:
        raise  # stalled or oversized: a direct read would fare no better
    except OSError as error:
        log.debug("reading %s through cat failed (%s): reading it directly", path, error)
        return None
    finally:
        _end(child, read_all=chunks is not None)  # whatever happens here, an exception included
    if child.returncode != 0:
        log.debug("cat %s exited with %s: reading it directly", path, child.returncode)
        return None
    data = b"".join(chunks)
    if feed.parser is None or not data.endswith(b"\n"):
        return Piped(data, None)  # odd lines, or no final newline (hand-made files): the careful way
    return Piped(data, feed.parser.finish(data, feed.end))
