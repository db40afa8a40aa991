"""Reading a small system file without hanging on whatever was planted in its place.

Under ``--root`` the tree is anybody's copy: a FIFO where ``/proc/keys`` or ``Module.symvers`` should be would block
a plain ``open()`` until a writer comes, and a character device would stream for ever. Opening with O_NONBLOCK
returns at once for a FIFO, and the fstat() that follows refuses anything but a regular file (procfs and sysfs
files are regular files).
"""

from __future__ import annotations

import errno
import os
import stat

from klpd.root import HostPath


class NotRegularFile(OSError):
    """The path exists but is a FIFO, device, socket or directory."""


class TooLarge(OSError):
    """The file is larger than the reader accepts."""


def read_regular(path: HostPath, limit: int) -> bytes:
    """The bytes of the regular file ``path`` (at most ``limit``); OSError (FileNotFoundError when absent,
    :class:`NotRegularFile`, :class:`TooLarge`, PermissionError ...) otherwise."""
    fd = os.open(path.local, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(errno.EINVAL, "not a regular file")
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
