"""Hostile inputs (issue 15): decompression of many empty concatenated members, and a newline-less kallsyms.

Run: ``.venv/bin/python benchmarks/bench_hostile_inputs.py``. The member cap is lifted here so that every member
is decompressed; the time should grow linearly with the size (it was quadratic: 4 MB of gzip members, 19 s).
With the cap (the default), each of these files is refused after MAX_MEMBERS members, in about a millisecond.
"""

from __future__ import annotations

import gzip
import lzma
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from tempfile import TemporaryDirectory

import zstandard

from klpd.decompress import ElfFormatError, decompress
from klpd.root import SystemRoot
from klpd.sources.kallsyms import parse_kallsyms, read_kallsyms

MEMBERS = {"gzip": gzip.compress(b""), "xz": lzma.compress(b""), "zstd": zstandard.ZstdCompressor().compress(b"")}


def _timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    with suppress(ElfFormatError):
        call()
    return time.perf_counter() - start


def _decompress(bomb: bytes, max_members: int | None = None) -> Callable[[], object]:
    if max_members is None:
        return lambda: decompress(bomb, "x")
    return lambda: decompress(bomb, "x", max_members=max_members)


def main() -> None:
    for kind, member in MEMBERS.items():
        for megabytes in (1, 2, 4, 8):
            bomb = member * ((megabytes << 20) // len(member))
            every = _timed(_decompress(bomb, len(bomb)))
            capped = _timed(_decompress(bomb))
            print(f"{kind:5} {megabytes} MB  all members {every:7.3f} s   default cap (refused) {capped:7.4f} s")
    data = b"ffffffff81000000 T " + b"a" * (200 << 20)
    print(f"newline-less kallsyms 200 MB: parse {_timed(lambda: parse_kallsyms(data, 'k')):.3f} s", end="")
    with TemporaryDirectory() as tmp:
        target = Path(tmp, "proc/kallsyms")
        target.parent.mkdir()
        target.write_bytes(data)
        print(f", read through cat and parsed {_timed(lambda: read_kallsyms(SystemRoot.at(tmp))):.3f} s")


if __name__ == "__main__":
    main()
