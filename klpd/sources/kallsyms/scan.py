"""A one-shot read's vmlinux part, answered by searching the text for the few names asked, not parsed whole.

A ``klpctl check`` of one patch asks about a handful of names; proving and counting 100k+ lines (:mod:`.vmlinux`)
costs it more than the kernel's formatting of the file. Every answer here is the one the full parse gives:

- a cheap structural check first: every line's whitespace is exactly ``" "``, ``" "``, ``"\\n"`` (s_show()'s
  separators), so a line is ``ADDRESS TYPE NAME`` with three whitespace-free fields. A part that fails it is
  parsed whole, which skips and reports the odd lines;
- ``" NAME\\n"`` can then only be a line's last field; each line found is held to the full parse's rule for a valid
  line (three fields, a hex address, a one-letter type) and left out if it fails. The same holds for the global
  facts (visible addresses; CONFIG_KALLSYMS_ALL, found only when asked);
- after :data:`_SEARCHES` distinct names the part is indexed after all: searching would then cost more.

One difference is left, for speed: a line spaced right but with a field empty, an address that is not hex or a type
longer than one letter is left out of every answer, as the full parse leaves it out, but is not counted in the
malformed-lines problem. Proving every line's fields exact costs 16-25 ms, as much as the rest of a one-shot
check after the read; the kernel never writes such lines, and the separators catch truncated and garbled files.
"""

from __future__ import annotations

from collections.abc import Callable

from klpd.model import Occurrences
from klpd.sources.kallsyms.indexes import Index
from klpd.sources.kallsyms.layout import DATA_TYPES, KALLSYMS_ALL_MIN, NON_WHITESPACE, SECTION_MARKERS, is_hex
from klpd.sources.kallsyms.vmlinux import Vmlinux

_LEADING = 64  # lines looked at one by one for a non-zero address before counting the zero ones
_SEARCHES = 16  # distinct names searched before the part is indexed instead (a search costs ~1.5 ms per 5 MB)


def _well_spaced(data: bytes, end: int) -> int | None:
    """The number of lines of ``data[:end]`` if each has s_show()'s separators, and only those."""
    lines = data.count(b"\n", 0, end)
    return lines if data[:end].translate(None, NON_WHITESPACE) == b"  \n" * lines else None


def _line(data: bytes, at: int) -> tuple[bytes, bytes, bytes] | None:
    """The valid line around offset ``at`` as (address, type, name); None when the full parse would skip it."""
    start = data.rfind(b"\n", 0, at) + 1
    stop = data.find(b"\n", at)
    tokens = data[start : stop if stop >= 0 else len(data)].split()
    if len(tokens) != 3 or not is_hex(tokens[0]) or len(tokens[1]) != 1:
        return None
    return tokens[0], tokens[1], tokens[2]


def _addresses(data: bytes, end: int, name: bytes) -> list[int]:
    """The addresses of the valid lines named ``name``, in file order."""
    if name.translate(None, NON_WHITESPACE):
        return []  # the kernel's "%511[^,]" lets a .klp.sym name carry blanks; no line's name field has one
    needle = b" " + name + b"\n"
    found = []
    at = data.find(needle, 0, end)
    while at >= 0:
        line = _line(data, at + 1)
        if line is not None:
            found.append(int(line[0], 16))
        at = data.find(needle, at + len(needle), end)
    return found


def _next_line(data: bytes, at: int, end: int) -> int:
    newline = data.find(b"\n", at, end)
    return end if newline < 0 else newline + 1


def _visible(data: bytes, end: int, lines: int) -> bool:
    """Whether any valid line has a non-zero address (the full parse's addresses_visible)."""
    width = data.find(b" ", 0, end)
    zero = b"0" * width + b" "
    # Trusted readers see addresses from the first lines on; a few leading per-CPU symbols sit at 0.
    at = 0
    for _ in range(_LEADING):
        if at >= end:
            return False
        if not data.startswith(zero, at) and (line := _line(data, at)) is not None and line[0].strip(b"0"):
            return True
        at = _next_line(data, at, end)
    if (data.startswith(zero)) + data.count(b"\n" + zero, 0, end - 1) == lines:
        return False  # every line's address is zeros: hidden (or truly 0), as the full parse would find
    while at < end:
        if not data.startswith(zero, at) and (line := _line(data, at)) is not None and line[0].strip(b"0"):
            return True
        at = _next_line(data, at, end)
    return False


def _kallsyms_all(data: bytes, end: int) -> bool:
    """CONFIG_KALLSYMS_ALL: enough data symbols other than section markers (as :mod:`.vmlinux` counts them).

    In a well-spaced line, ``" d "`` can only be the type field, so each data type is one search."""
    found = 0
    for letter in DATA_TYPES:
        needle = b" " + bytes([letter]) + b" "
        at = data.find(needle, 0, end)
        while at >= 0 and found < KALLSYMS_ALL_MIN:
            line = _line(data, at + 1)
            found += line is not None and not line[2].startswith(SECTION_MARKERS)
            at = data.find(needle, at + 1, end)
    return found >= KALLSYMS_ALL_MIN


class ScanIndex:
    """Answers for a well-spaced vmlinux part by searching it; the full index once many names were asked."""

    __slots__ = ("_all", "_data", "_end", "_full", "_index", "_searches", "_visible")

    def __init__(self, data: bytes, end: int, visible: bool, full: Callable[[], Index]) -> None:
        self._data = data
        self._end = end
        self._visible = visible
        self._full = full
        self._index: Index | None = None
        self._searches = 0
        self._all: bool | None = None

    def kallsyms_all(self) -> bool:
        """CONFIG_KALLSYMS_ALL, found on first use: up to six searches through the part (~20 ms), which only a
        patch of a module needs (klpd.predict.lookup.core_bit)."""
        if self._all is None:
            self._all = _kallsyms_all(self._data, self._end)
        return self._all

    def find(self, name: bytes) -> Occurrences:
        if self._index is None and self._searches >= _SEARCHES:
            self._index = self._full()
        if self._index is not None:
            return self._index.find(name)
        self._searches += 1
        addresses = _addresses(self._data, self._end, name)
        return Occurrences.of(addresses) if self._visible else Occurrences(len(addresses))

    def addresses(self, name: bytes) -> tuple[int, ...]:
        return tuple(_addresses(self._data, self._end, name))


def scan_vmlinux(data: bytes, end: int, full: Callable[[], Index]) -> tuple[Vmlinux, ScanIndex] | None:
    """The vmlinux part ``data[:end]`` for a few look-ups; None when it is not well spaced (parse it whole)."""
    lines = _well_spaced(data, end)
    if lines is None:
        return None
    visible = _visible(data, end, lines)
    vmlinux = Vmlinux(end, lines, False, visible)  # kallsyms_all: ScanIndex.kallsyms_all(), when asked
    return vmlinux, ScanIndex(data, end, visible, full)
