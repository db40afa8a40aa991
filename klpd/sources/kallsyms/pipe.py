"""A cold read of /proc/kallsyms through a ``cat`` child, parsing the vmlinux part as the pipe delivers it.

procfs formats /proc/kallsyms in the reading task (s_start()/s_next()/s_show() per seq_file page): tens of
milliseconds of kernel time for 100k+ lines, as long again as the parse. With ``cat`` reading, that work runs on
another CPU while this process parses what the pipe already holds. (A reader thread does not help: every read()
needs the GIL back.) ``cat`` opens the file with this process's credentials, so it sees the same addresses; only
a clean exit of ``cat`` vouches for the bytes, and any doubt (no ``cat``, a failed spawn, a failed read) leaves
the whole job to the caller's direct read, which gives the same answers.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
from contextlib import suppress
from dataclasses import dataclass

from klpd.root import HostPath
from klpd.sources.kallsyms.indexes import CountIndex
from klpd.sources.kallsyms.vmlinux import FastVmlinux, Vmlinux
from klpd.sources.prefetch import cat_program

log = logging.getLogger(__name__)

# Pipe capacity asked for, and the most read at once: the default is 64 KiB; 1 MiB is what fs.pipe-max-size
# allows unprivileged processes by default.
_PIPE_SIZE = 1 << 20


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


def _spawn_cat(path: HostPath) -> subprocess.Popen[bytes] | None:
    cat = cat_program()
    if cat is None:
        log.debug("no cat to run in /usr/bin or /bin, or SIGCHLD ignored: reading %s directly", path)
        return None
    try:
        return subprocess.Popen(
            [cat, "--", str(path.local)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            bufsize=0,
            close_fds=True,
        )
    except (OSError, subprocess.SubprocessError) as error:
        log.debug("cannot run %s (%s): reading %s directly", cat, error, path)
        return None


def read_through_cat(path: HostPath) -> Piped | None:
    """Read ``path`` through a ``cat`` child, parsing the vmlinux part as it arrives; None when that fails."""
    child = _spawn_cat(path)
    if child is None:
        return None
    chunks: list[bytes] = []
    feed = _VmlinuxFeed()
    with child:  # closes the pipe and waits for the child, whatever happens here
        assert child.stdout is not None  # stdout=PIPE
        fd = child.stdout.fileno()
        with suppress(OSError):  # a bigger pipe lets cat run further ahead; the default works too
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        try:
            while chunk := os.read(fd, _PIPE_SIZE):
                chunks.append(chunk)
                feed.add(chunk)
        except OSError as error:
            log.debug("reading %s through cat failed (%s): reading it directly", path, error)
            return None
    if child.returncode != 0:
        log.debug("cat %s exited with %s: reading it directly", path, child.returncode)
        return None
    data = b"".join(chunks)
    if feed.parser is None or not data.endswith(b"\n"):
        return Piped(data, None)  # odd lines, or no final newline (hand-made files): the careful way
    return Piped(data, feed.parser.finish(data, feed.end))
