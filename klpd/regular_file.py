"""Reading a small system file without hanging on whatever was planted in its place.

Under ``--root`` the tree is anybody's copy: a FIFO where ``/proc/keys`` or ``Module.symvers`` should be would block
a plain ``open()`` until a writer comes, and a character device would stream for ever. Opening with O_NONBLOCK
returns at once for a FIFO, and the fstat() that follows refuses anything but a regular file (procfs and sysfs
files are regular files). Every read is bounded by a size the caller states.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from klpd.root import HostPath

# One sysfs or small procfs attribute: sysfs hands out at most one page (PAGE_SIZE: 4 KiB, 64 KiB on some arm64
# and ppc64 kernels); osrelease and tainted are a line each.
ATTRIBUTE_LIMIT = 64 * 1024


class NotRegularFile(OSError):
    """The path exists but is a FIFO, device, socket or directory."""


class TooLarge(OSError):
    """The file is larger than the reader accepts."""


def open_regular(path: HostPath | Path | str) -> int:
    """A read-only descriptor (close-on-exec) of the regular file ``path``; OSError (FileNotFoundError when
    absent, :class:`NotRegularFile` ...) otherwise. Also what a ``cat`` child gets as its stdin, so that it
    reads exactly the file checked here, not whatever a rename put at the path meanwhile."""
    local = path.local if isinstance(path, HostPath) else path
    fd = os.open(local, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(errno.EINVAL, "not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: HostPath | Path | str, limit: int) -> bytes:
    """The bytes of the regular file ``path`` (at most ``limit``); OSError (FileNotFoundError when absent,
    :class:`NotRegularFile`, :class:`TooLarge`, PermissionError ...) otherwise."""
    fd = open_regular(path)
    try:
        chunks: list[bytes] = []
        total = 0
        # procfs files report size 0, so read until EOF rather than trusting st_size.
        while chunk := os.read(fd, min(1 << 20, limit + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise TooLarge(errno.EFBIG, f"larger than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_regular_text(
    path: HostPath | Path | str, limit: int = ATTRIBUTE_LIMIT, errors: str = "surrogateescape"
) -> str:
    """:func:`read_regular` decoded as UTF-8 (undecodable bytes kept by ``errors``)."""
    return read_regular(path, limit).decode("utf-8", errors)
