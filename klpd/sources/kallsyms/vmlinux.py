"""The vmlinux part of /proc/kallsyms (every line before the first module line): its parse and its layout proof.

kallsyms_expand_symbol() and s_show() print vmlinux lines as ``%px %c %s\\n``: an address of fixed width (16 hex
digits on 64-bit kernels, 8 on 32-bit; all zeros for a reader not trusted with addresses), one type letter, a
name without whitespace. The fast parse proves that layout for a whole block of lines at once and keeps only a
count per name (:class:`~.indexes.CountIndex`); a part with one odd line is parsed again line by line
(:func:`_vmlinux_slowly`), which skips and counts odd lines and indexes positions.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from klpd.model import Occurrences
from klpd.sources.kallsyms.indexes import Addresses, CountIndex, Index, NameIndex, PositionIndex
from klpd.sources.kallsyms.layout import (
    DATA_TYPE,
    DATA_TYPES,
    HEX_DIGITS_NEWLINE,
    KALLSYMS_ALL_MIN,
    NON_WHITESPACE,
    SECTION_MARKERS,
    VMLINUX_LINE,
    decode,
    is_hex,
    split_lines,
)

# Bytes of vmlinux lines parsed per block: small enough that a block's short-lived tokens are freed and their
# memory reused by the next block, large enough that the per-block Python overhead does not show.
_BLOCK = 1 << 17


@dataclass(frozen=True)
class Vmlinux:
    """What a parse of the vmlinux part found: small, and handed from read to read while the part is unchanged."""

    length: int  # bytes
    count: int
    kallsyms_all: bool
    addresses_visible: bool
    malformed: int = 0
    first_malformed: tuple[int, str] | None = None  # (line number, text)
    # Answers already given. The part never changes while the kernel runs, so the daemon's next evaluation
    # resolves the same patch symbols with one dict look-up each, and without any index of the part.
    answers: dict[str, Occurrences] = field(default_factory=dict, compare=False, repr=False)


def _count_data_symbols(found: int, names: list[bytes], types: bytes) -> int:
    """``found`` plus the data symbols other than section markers among ``names``, counting up to the threshold.

    Without CONFIG_KALLSYMS_ALL a whole vmlinux has a few dozen data-typed lines, with it the first block reaches
    the threshold: either way this looks at few lines.
    """
    for match in DATA_TYPE.finditer(types):
        if found >= KALLSYMS_ALL_MIN:
            break
        found += not names[match.start()].startswith(SECTION_MARKERS)
    return found


class FastVmlinux:
    """The fast vmlinux parse, fed whole lines in any number of pieces: the same findings however they are cut.

    Per block, the layout is proven for all lines at once: the separator bytes must be exactly ``"  \\n"`` per
    line, and there must be exactly three tokens per line — so every gap holds exactly one token (a token holds no
    whitespace). The type column joined must then be one byte per line, and the address column joined with
    newlines must have its newlines exactly every width + 1 bytes (the width of the first address, what %px
    prints) and nothing but hex digits besides.
    """

    __slots__ = ("count", "counts", "data_symbols", "stride", "visible", "width")

    def __init__(self) -> None:
        self.counts: Counter[bytes] = Counter()
        self.width = self.stride = self.count = self.data_symbols = 0
        self.visible = False

    def add(self, data: bytes, start: int, end: int) -> bool:
        """Parse the lines ``data[start:end]`` (ending with a newline); False as soon as one line is odd."""
        while start < end:
            stop = data.find(b"\n", min(start + _BLOCK, end) - 1) + 1  # the lines end with a newline: stop <= end
            block = data[start:stop]
            separators = block.translate(None, NON_WHITESPACE)
            lines = len(separators) // len(VMLINUX_LINE)
            if separators != VMLINUX_LINE * lines:
                return False
            tokens = block.split()
            if len(tokens) != 3 * lines:
                return False
            if not self.width:
                self.width = len(tokens[0])
                self.stride = self.width + 1
            width, stride = self.width, self.stride
            addresses = b"\n".join(tokens[0::3])
            types = b"".join(tokens[1::3])
            if len(types) != lines or len(addresses) != stride * lines - 1:
                return False
            if addresses[width::stride] != b"\n" * (lines - 1) or addresses.translate(None, HEX_DIGITS_NEWLINE):
                return False
            names = tokens[2::3]
            if self.data_symbols < KALLSYMS_ALL_MIN:
                self.data_symbols = _count_data_symbols(self.data_symbols, names, types)
            # Hidden addresses: every byte but the separators is "0". strip() stops at the first other byte.
            self.visible = self.visible or bool(addresses.strip(b"0\n"))
            self.counts.update(names)
            self.count += lines
            start = stop
        return True

    def finish(self, data: bytes, end: int) -> tuple[Vmlinux, CountIndex]:
        """What the lines added found; ``data[:end]`` must be exactly those lines."""
        vmlinux = Vmlinux(end, self.count, self.data_symbols >= KALLSYMS_ALL_MIN, self.visible)
        return vmlinux, CountIndex(data, end, self.width, self.counts, self.visible)


def _vmlinux_fast(data: bytes, end: int) -> tuple[Vmlinux, CountIndex] | None:
    """vmlinux lines ``data[:end]`` block by block; None as soon as one line is odd."""
    parser = FastVmlinux()
    return parser.finish(data, end) if parser.add(data, 0, end) else None


def _vmlinux_slowly(data: bytes, end: int) -> tuple[Vmlinux, PositionIndex]:
    """Line by line, skipping and counting odd lines. Only used when the fast path's layout proof fails."""
    names: list[bytes] = []
    addresses: list[bytes] = []
    data_symbols = malformed = 0
    first: tuple[int, str] | None = None
    for number, line in enumerate(split_lines(data[:end]), start=1):
        tokens = line.split()
        if len(tokens) != 3 or not is_hex(tokens[0]) or len(tokens[1]) != 1:
            malformed += 1
            first = first or (number, decode(line))
            continue
        names.append(tokens[2])
        addresses.append(tokens[0])
        data_symbols += tokens[1] in DATA_TYPES and not tokens[2].startswith(SECTION_MARKERS)
    index = NameIndex()
    index.add(names)
    visible = any(address.strip(b"0") for address in addresses)
    vmlinux = Vmlinux(end, len(addresses), data_symbols >= KALLSYMS_ALL_MIN, visible, malformed, first)
    return vmlinux, PositionIndex(index.finish(), Addresses(addresses))


def parse_vmlinux(data: bytes, end: int) -> tuple[Vmlinux, Index]:
    return _vmlinux_fast(data, end) or _vmlinux_slowly(data, end)

