"""A one-shot read's vmlinux part, answered by searching the text for the few names asked, not parsed whole.

A ``klpctl check`` of one patch asks about a handful of names; proving and counting 100k+ lines (:mod:`.vmlinux`)
costs it more than the kernel's formatting of the file. The answers, the problems and the counts here are the full
parse's:

- the layout is proven first, for all lines at once, with a few counts over a copy of the part in which every byte
  is replaced by its class (hex digit, other token byte, space, newline, other whitespace): each line is an address
  of one width, a one-byte type and a non-empty name between single spaces. A part with any other line is parsed
  whole, which skips and reports the odd lines; a well-formed part has none;
- in a well-formed part, ``" NAME\\n"`` is exactly the end of a line named NAME, so a name's occurrences, in file
  order, are one search; CONFIG_KALLSYMS_ALL is found (when a patch of a module asks) by a search per data type;
- after :data:`_SEARCHES` distinct names the part is indexed after all: searching would then cost more.
"""

from __future__ import annotations

from collections.abc import Callable

from klpd.model import Occurrences
from klpd.sources.kallsyms.indexes import Index
from klpd.sources.kallsyms.layout import DATA_TYPES, HEX_DIGITS, KALLSYMS_ALL_MIN, NON_WHITESPACE, SECTION_MARKERS
from klpd.sources.kallsyms.vmlinux import Vmlinux

_SEARCHES = 16  # distinct names searched before the part is indexed instead (a search costs ~1.5 ms per 5 MB)


def _byte_classes() -> bytes:
    """A translate() table giving each byte its class, so that a few counts of fixed patterns prove every line's
    layout at once: hex digits -> "h", other token bytes -> "x", space and newline kept, other whitespace -> "!"."""
    table = bytearray(b"x" * 256)
    for byte in HEX_DIGITS:
        table[byte] = ord("h")
    for byte in b"\t\r\x0b\x0c":
        table[byte] = ord("!")
    for byte in b" \n":
        table[byte] = byte
    return bytes(table)


_CLASSES = _byte_classes()


def _well_formed(data: bytes, end: int) -> tuple[int, int] | None:
    """(lines, address width) when every line of ``data[:end]`` is ``ADDRESS TYPE NAME``: the address all hex of
    the first line's width, a one-byte type, a non-empty name, single spaces, nothing else: exactly the lines the
    full parse takes, all of them. None otherwise (the part is then parsed whole, which skips and reports)."""
    width = data.find(b" ", 0, end)
    lines = data.count(b"\n", 0, end)
    if width <= 0 or not lines:
        return None
    classes = data[:end].translate(_CLASSES)
    start = b"h" * width + b" "
    typed = [start + kind + b" " for kind in (b"h", b"x")]
    if b"!" in classes or classes.count(b" ") != 2 * lines:
        return None
    # Each line starts with the address and a one-byte type between single spaces (so its two spaces are those).
    heads = sum(classes.count(b"\n" + head) + classes.startswith(head) for head in typed)
    if heads != lines:
        return None
    if any(classes.count(b"\n" + head + b"\n") or classes.startswith(head + b"\n") for head in typed):
        return None  # an empty name
    return lines, width


def _addresses(data: bytes, end: int, name: bytes) -> list[int]:
    """The addresses of the lines named ``name``, in file order (the part is well formed)."""
    if name.translate(None, NON_WHITESPACE):
        return []  # a name with whitespace in it is no line's name field
    needle = b" " + name + b"\n"
    found = []
    at = data.find(needle, 0, end)
    while at >= 0:
        start = data.rfind(b"\n", 0, at) + 1
        found.append(int(data[start : data.find(b" ", start)], 16))
        at = data.find(needle, at + len(needle), end)
    return found


def _visible(data: bytes, end: int, lines: int, width: int) -> bool:
    """Whether any address is non-zero (the full parse's addresses_visible), in a well-formed part."""
    zero = b"0" * width + b" "
    return data.startswith(zero) + data.count(b"\n" + zero, 0, end - 1) != lines


def _kallsyms_all(data: bytes, end: int) -> bool:
    """CONFIG_KALLSYMS_ALL: enough data symbols other than section markers (as :mod:`.vmlinux` counts them).

    In a well-formed line ``" d "`` can only be the type field, so each data type is one search."""
    found = 0
    for letter in DATA_TYPES:
        needle = b" " + bytes([letter]) + b" "
        at = data.find(needle, 0, end)
        while at >= 0 and found < KALLSYMS_ALL_MIN:
            found += not data.startswith(SECTION_MARKERS, at + len(needle))
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
    """The vmlinux part ``data[:end]`` for a few look-ups; None when it is not well formed (parse it whole)."""
    formed = _well_formed(data, end)
    if formed is None:
        return None
    lines, width = formed
    visible = _visible(data, end, lines, width)
    vmlinux = Vmlinux(end, lines, False, visible)  # kallsyms_all: ScanIndex.kallsyms_all(), when asked
    return vmlinux, ScanIndex(data, end, visible, full)
