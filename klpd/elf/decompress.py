"""Compressed module files: ``.ko.xz``, ``.ko.gz``, ``.ko.zst``.

The kernel decompresses modules itself since 5.17 (CONFIG_MODULE_DECOMPRESS, kernel/module/decompress.c); before
that kmod did it in user space. Either way the compression is chosen by the file, so klpd goes by the magic bytes,
not by the file name. Output is capped: a hostile file cannot make klpd allocate more than ``limit`` bytes.
"""

from __future__ import annotations

import sys
import zlib

from klpd.errors import ElfFormatError, SourceError
from klpd.regular_file import TooLarge, read_regular
from klpd.root import HostPath

# Far above any real module (the largest in-tree .ko files are a few tens of MiB with debug info).
MAX_MODULE_SIZE = 256 * 1024 * 1024
_ZSTD_SLICE = 1024

XZ_MAGIC = b"\xfd7zXZ\x00"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _too_big(path: str, kind: str, limit: int) -> ElfFormatError:
    return ElfFormatError(path, f"{kind} stream decompresses to more than {limit} bytes; refusing it")


def _xz(data: bytes, path: str, limit: int) -> bytes:
    import lzma  # noqa: PLC0415  (a compressed module's reader pays for its decoder, an uncompressed one none)

    parts: list[bytes] = []
    total = 0
    rest = data
    # Several streams may follow each other (xz(1) concatenation), as in the gzip and zstd cases below.
    while rest:
        dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        chunk = dec.decompress(rest, max_length=limit + 1 - total)
        total += len(chunk)
        if total > limit:
            raise _too_big(path, "xz", limit)
        parts.append(chunk)
        if not dec.eof:
            # Short of the limit yet not at the end: the input ran out.
            raise ElfFormatError(path, "truncated xz stream")
        rest = dec.unused_data
    return b"".join(parts)


def _gzip(data: bytes, path: str, limit: int) -> bytes:
    parts: list[bytes] = []
    total = 0
    rest = data
    # A gzip file may hold several members back to back (gzip(1) concatenation); kmod reads them all.
    while rest:
        dec = zlib.decompressobj(wbits=31)
        chunk = dec.decompress(rest, limit + 1 - total)
        while True:
            total += len(chunk)
            parts.append(chunk)
            if total > limit:
                raise _too_big(path, "gzip", limit)
            if dec.eof or not dec.unconsumed_tail:
                break
            chunk = dec.decompress(dec.unconsumed_tail, limit + 1 - total)
        if not dec.eof:
            raise ElfFormatError(path, "truncated gzip stream")
        rest = dec.unused_data
    return b"".join(parts)


def _zstd(data: bytes, path: str, limit: int) -> bytes:
    from zstandard import ZstdDecompressor  # noqa: PLC0415  (as in _xz)

    parts: list[bytes] = []
    total = 0
    view = memoryview(data)
    pos = 0
    # zstandard's decompressobj() has no output bound, so feed it small slices of input and check after each: a
    # zstd block yields at most 128 KiB from at least 3 bytes of input, so one slice overshoots the limit by at
    # most ~_ZSTD_SLICE * 43 KiB. A file may hold several frames back to back (zstd(1) concatenation).
    while pos < len(data):
        dec = ZstdDecompressor().decompressobj()
        while not dec.eof and pos < len(data):
            chunk = dec.decompress(view[pos : pos + _ZSTD_SLICE])
            pos = min(pos + _ZSTD_SLICE, len(data))
            total += len(chunk)
            if total > limit:
                raise _too_big(path, "zstd", limit)
            parts.append(chunk)
        if not dec.eof:
            raise ElfFormatError(path, "truncated zstd stream")
        pos -= len(dec.unused_data)
    return b"".join(parts)


def _decoder_errors() -> tuple[type[Exception], ...]:
    """The errors of the decoders imported so far (an import here would cost what the lazy imports saved)."""
    errors: list[type[Exception]] = []
    if (lzma := sys.modules.get("lzma")) is not None:
        errors.append(lzma.LZMAError)
    if (zstandard := sys.modules.get("zstandard")) is not None:
        errors.append(zstandard.ZstdError)
    return tuple(errors)


def decompress(data: bytes, path: str, limit: int = MAX_MODULE_SIZE) -> bytes:
    """The ELF bytes of a module file, decompressed by magic; an uncompressed file is returned as it is.

    Raises :class:`ElfFormatError` for a corrupt or truncated stream or one that expands past ``limit``.
    """
    try:
        if data.startswith(XZ_MAGIC):
            return _xz(data, path, limit)
        if data.startswith(GZIP_MAGIC):
            return _gzip(data, path, limit)
        if data.startswith(ZSTD_MAGIC):
            return _zstd(data, path, limit)
    except Exception as exc:
        if not isinstance(exc, (zlib.error, EOFError, *_decoder_errors())):
            raise
        raise ElfFormatError(path, f"corrupt compressed module: {exc}") from None
    if len(data) > limit:
        raise ElfFormatError(path, f"file is larger than {limit} bytes; refusing it")
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
