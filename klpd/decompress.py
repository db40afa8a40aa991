"""Compressed module files: ``.ko.xz``, ``.ko.gz``, ``.ko.zst``.

The kernel decompresses modules itself since 5.17 (CONFIG_MODULE_DECOMPRESS, kernel/module/decompress.c); before
that kmod did it in user space. Either way the compression is chosen by the file, so klpd goes by the magic bytes,
not by the file name. Output is capped: a hostile file cannot make klpd allocate more than ``limit`` bytes. So
are the input (``limit`` bytes too) and the number of concatenated members (:data:`MAX_MEMBERS`), and the time
spent is linear in the input.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from klpd.errors import ElfFormatError, SourceError
from klpd.regular_file import TooLarge, read_regular
from klpd.root import HostPath

if TYPE_CHECKING:
    from zstandard import ZstdDecompressor

# Far above any real module (the largest in-tree .ko files are a few tens of MiB with debug info).
MAX_MODULE_SIZE = 256 * 1024 * 1024
# Members (gzip), streams (xz) or frames (zstd) one file may hold. kmod, xz and zstd write one; pzstd writes one
# frame per input chunk (4 MiB and up), so a MAX_MODULE_SIZE module makes at most 64.
MAX_MEMBERS = 1024
# Input slices a member's decoder gets: the first, and the largest (gzip, xz; zstd's are smaller, see _ZstdMember).
_FIRST_SLICE = 256
_SLICE = 1024 * 1024
_ZSTD_SLICE = 1024
_Bounds = tuple[int, int]  # (output limit, members)

XZ_MAGIC = b"\xfd7zXZ\x00"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _too_big(path: str, kind: str, limit: int) -> ElfFormatError:
    return ElfFormatError(path, f"{kind} stream decompresses to more than {limit} bytes; refusing it")


class _Decoder(Protocol):
    """One member's decompressor, as zlib and lzma spell it (zstandard's through :class:`_ZstdMember`)."""

    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: memoryview, max_length: int, /) -> bytes: ...


def _members(data: bytes, path: str, kind: str, bounds: _Bounds, new: Callable[[], _Decoder], *, largest: int) -> bytes:
    """Every member of ``data`` decompressed, each by a fresh decoder from ``new``.

    Members follow each other (gzip(1), xz(1), zstd(1) concatenation; kmod and the kernel read them all). Each
    decoder gets slices of the input that start small and double up to ``largest`` bytes, so a member's end costs
    at most a copy of one slice (its ``unused_data``), never of the rest of the file: linear time whatever the
    members, where handing each decoder the whole rest was quadratic (4 MB of empty gzip members took 19 s).
    """
    limit, max_members = bounds
    view = memoryview(data)
    parts: list[bytes] = []
    total = pos = members = 0
    while pos < len(data):
        members += 1
        if members > max_members:
            raise ElfFormatError(path, f"more than {max_members} concatenated {kind} members; refusing it")
        dec = new()
        step = _FIRST_SLICE
        while True:
            end = min(pos + step, len(data))
            # Output stops at limit + 1: past it the file is refused, so input left unread then does not matter.
            chunk = dec.decompress(view[pos:end], limit + 1 - total)
            total += len(chunk)
            if total > limit:
                raise _too_big(path, kind, limit)
            parts.append(chunk)
            if dec.eof:
                pos = end - len(dec.unused_data)
                break
            if end == len(data):
                # Short of the limit yet not at the end: the input ran out.
                raise ElfFormatError(path, f"truncated {kind} stream")
            pos = end
            step = min(step * 2, largest)
    return b"".join(parts)


class _ZstdMember:
    """One zstd frame's decoder, spelled as :class:`_Decoder`.

    zstandard's decompressobj() has no output bound, so its slices stay small (:data:`_ZSTD_SLICE`) and the output
    is checked after each: a zstd block yields at most 128 KiB from at least 3 bytes of input, so one slice
    overshoots the limit by at most ~_ZSTD_SLICE * 43 KiB.
    """

    def __init__(self, decompressor: ZstdDecompressor) -> None:
        self._dec = decompressor.decompressobj()

    @property
    def eof(self) -> bool:
        return bool(self._dec.eof)

    @property
    def unused_data(self) -> bytes:
        return bytes(self._dec.unused_data)

    def decompress(self, data: memoryview, max_length: int, /) -> bytes:
        return bytes(self._dec.decompress(data))


def _xz(data: bytes, path: str, bounds: _Bounds) -> bytes:
    import lzma  # noqa: PLC0415  (a compressed module's reader pays for its decoder, an uncompressed one none)

    return _members(data, path, "xz", bounds, lambda: lzma.LZMADecompressor(format=lzma.FORMAT_XZ), largest=_SLICE)


def _gzip(data: bytes, path: str, bounds: _Bounds) -> bytes:
    return _members(data, path, "gzip", bounds, lambda: zlib.decompressobj(wbits=31), largest=_SLICE)


def _zstd(data: bytes, path: str, bounds: _Bounds) -> bytes:
    from zstandard import ZstdDecompressor  # noqa: PLC0415  (as in _xz)

    decompressor = ZstdDecompressor()  # one context, reset for each frame: cheaper than one per frame
    return _members(data, path, "zstd", bounds, lambda: _ZstdMember(decompressor), largest=_ZSTD_SLICE)


def _decoder_errors() -> tuple[type[Exception], ...]:
    """The errors of the decoders imported so far (an import here would cost what the lazy imports saved)."""
    errors: list[type[Exception]] = []
    if (lzma := sys.modules.get("lzma")) is not None:
        errors.append(lzma.LZMAError)
    if (zstandard := sys.modules.get("zstandard")) is not None:
        errors.append(zstandard.ZstdError)
    return tuple(errors)


def decompress(data: bytes, path: str, limit: int = MAX_MODULE_SIZE, *, max_members: int = MAX_MEMBERS) -> bytes:
    """The ELF bytes of a module file, decompressed by magic; an uncompressed file is returned as it is.

    Raises :class:`ElfFormatError` for a corrupt or truncated stream, one that expands past ``limit``, a file of
    more than ``limit`` bytes or of more than ``max_members`` concatenated members.
    """
    if len(data) > limit:
        raise ElfFormatError(path, f"file is larger than {limit} bytes; refusing it")
    bounds = (limit, max_members)
    try:
        if data.startswith(XZ_MAGIC):
            return _xz(data, path, bounds)
        if data.startswith(GZIP_MAGIC):
            return _gzip(data, path, bounds)
        if data.startswith(ZSTD_MAGIC):
            return _zstd(data, path, bounds)
    except Exception as exc:
        if not isinstance(exc, (zlib.error, EOFError, *_decoder_errors())):
            raise
        raise ElfFormatError(path, f"corrupt compressed module: {exc}") from None
    return data


def read_module_bytes(where: HostPath, limit: int = MAX_MODULE_SIZE) -> bytes:
    """The ELF bytes of the module file ``where``, decompressed.

    Unreadable -> :class:`SourceError`; corrupt or oversized -> :class:`ElfFormatError`; both name ``where.host``.
    """
    shown = where.host
    try:
        data = read_regular(where, limit)  # a FIFO or device planted under --root: an error, not a hang
    except TooLarge:
        raise ElfFormatError(shown, f"file is larger than {limit} bytes; refusing it") from None
    except OSError as exc:
        raise SourceError(shown, exc.strerror or str(exc)) from None
    return decompress(data, shown, limit)
