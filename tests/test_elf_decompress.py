"""klpd.decompress: .ko.xz / .ko.gz / .ko.zst by magic, bounded output, clean errors."""

from __future__ import annotations

import gzip
import lzma
import os

import pytest
import zstandard
from elfwriter import KlpModule

from klpd.decompress import read_module_bytes
from klpd.elf import decompress, parse_patch_module
from klpd.errors import ElfFormatError, SourceError
from klpd.root import HostPath

MODULE = KlpModule().build()
PAYLOAD = MODULE + os.urandom(4096) + b"\0" * 100_000

COMPRESSORS = {
    "xz": lambda d: lzma.compress(d, format=lzma.FORMAT_XZ),
    "gzip": gzip.compress,
    "zstd": lambda d: zstandard.ZstdCompressor(level=3).compress(d),
}


@pytest.mark.parametrize("kind", COMPRESSORS)
def test_round_trip(kind):
    assert decompress(COMPRESSORS[kind](PAYLOAD), "m.ko") == PAYLOAD


def test_plain_elf_passes_through_unchanged():
    assert decompress(MODULE, "m.ko") is MODULE


def test_compression_is_chosen_by_magic_not_by_name():
    data = decompress(gzip.compress(MODULE), "misnamed.ko.xz")
    pm = parse_patch_module(data, "misnamed.ko.xz")
    assert pm.name == "livepatch_test"  # parsed as the module it is, not refused as .xz
    assert [p.code for p in pm.problems if p.code != "description_not_found"] == []


@pytest.mark.parametrize("kind", COMPRESSORS)
def test_concatenated_streams(kind):
    compress = COMPRESSORS[kind]
    assert decompress(compress(b"first ") + compress(b"second"), "m.ko") == b"first second"


@pytest.mark.parametrize("kind", COMPRESSORS)
@pytest.mark.parametrize("keep", [0.2, 0.5, 0.99])
def test_truncated_stream_is_an_elf_format_error(kind, keep):
    blob = COMPRESSORS[kind](PAYLOAD)
    with pytest.raises(ElfFormatError) as exc:
        decompress(blob[: int(len(blob) * keep)], "/lib/modules/6.1/x.ko")
    assert exc.value.path == "/lib/modules/6.1/x.ko"
    assert "truncated" in exc.value.reason or "corrupt" in exc.value.reason


@pytest.mark.parametrize("kind", COMPRESSORS)
def test_corrupt_stream_is_an_elf_format_error(kind):
    blob = bytearray(COMPRESSORS[kind](PAYLOAD))
    for i in range(12, len(blob), 97):
        blob[i] ^= 0x5A
    with pytest.raises(ElfFormatError):
        decompress(bytes(blob), "x.ko")


@pytest.mark.parametrize("kind", COMPRESSORS)
def test_bomb_is_refused_without_expanding_it(kind):
    bomb = COMPRESSORS[kind](b"\0" * (64 * 1024 * 1024))
    assert len(bomb) < 10 * 1024 * 1024
    with pytest.raises(ElfFormatError, match=f"{kind} stream decompresses to more than 1048576 bytes"):
        decompress(bomb, "bomb.ko", limit=1024 * 1024)


def test_limit_is_exact():
    data = b"x" * 1000
    for kind, compress in COMPRESSORS.items():
        assert decompress(compress(data), kind, limit=1000) == data
        with pytest.raises(ElfFormatError):
            decompress(compress(data), kind, limit=999)


def test_oversized_plain_file_is_refused():
    with pytest.raises(ElfFormatError, match="larger than 10 bytes"):
        decompress(MODULE, "m.ko", limit=10)


def test_unknown_magic_passes_through_and_the_elf_parser_says_what_it_is():
    blob = b"BZh91AY&SY" + os.urandom(64)  # bzip2: not a module compression the kernel or kmod supports
    assert decompress(blob, "m.ko.bz2") == blob
    with pytest.raises(ElfFormatError, match="not an ELF file"):
        parse_patch_module(blob, "m.ko.bz2")


def test_read_module_bytes(tmp_path):
    path = tmp_path / "m.ko.zst"
    path.write_bytes(COMPRESSORS["zstd"](MODULE))
    assert read_module_bytes(HostPath(str(path), path)) == MODULE
    big = tmp_path / "big.ko"
    big.write_bytes(b"\0" * 2048)
    with pytest.raises(ElfFormatError, match="larger than 1024 bytes") as exc:
        read_module_bytes(HostPath("/host/big.ko", big), limit=1024)
    assert exc.value.path == "/host/big.ko"
    with pytest.raises(SourceError):
        read_module_bytes(HostPath(str(tmp_path / "absent.ko"), tmp_path / "absent.ko"))


def test_a_fifo_in_place_of_a_module_is_an_error_not_a_hang(tmp_path):
    """Under --root a copied tree may hold a FIFO where an in-tree module or a patch file should be: a plain open()
    would block until a writer comes."""
    fifo = tmp_path / "intree.ko"
    os.mkfifo(fifo)
    with pytest.raises(SourceError, match="not a regular file"):
        read_module_bytes(HostPath("/lib/modules/x/kernel/intree.ko", fifo))
