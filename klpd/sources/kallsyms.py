"""/proc/kallsyms: every symbol the running kernel knows, in the order klp_find_object_symbol() counts them.

kernel/kallsyms.c s_show() prints ``"%px %c %s\\n"`` for vmlinux and ``"%px %c %s\\t[%s]\\n"`` for everything
else (``%pK`` before 4.15, same layout). vmlinux comes first, in kallsyms index order (ascending address), then
the loaded modules, each with its core symbol table in ELF order, then pseudo-objects: freed module init functions
kept for ftrace (printed under their module's name, since 4.15), ``[bpf]`` programs (since 4.11),
``[__builtin__ftrace]`` and ``[__builtin__kprobes]`` trampolines (since 5.9). Readers the kernel does not trust
with addresses (kallsyms_show_value(): no CAP_SYSLOG, or kptr_restrict) see every address as 0, names and order
unchanged — and names and order are all that sympos needs.

The file is large (100k+ lines) and the daemon re-reads it on every module event, so:

- parsing uses only C-speed primitives per block of lines (``bytes.split``, list slicing, ``bytes.join``,
  ``Counter.update``); the kernel's exact layout is proven for a whole block at once, and a block that fails the
  proof sends the part to a line-by-line parse that skips and counts odd lines;
- vmlinux is indexed by name count only: resolving a symbol needs how often its name occurs and, when addresses
  are visible, whether the counted occurrence sits at address 0, and the rare zero-address lines are found with a
  C-speed search; addresses are read back from the text only when asked for;
- a re-read whose vmlinux part is identical to the previous read's (it never changes while the kernel runs,
  recognised by length and checksum) takes over what that read found and the answers it gave, and parses only
  the module part; a daemon keeps only that memo between reads, not the file or an index of it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import signal
import subprocess
import zlib
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field
from itertools import compress, groupby
from operator import is_not
from pathlib import Path

from klpd.errors import SourceError
from klpd.model import VMLINUX, Problem
from klpd.names import KLP_SYM_PREFIX
from klpd.resolve import Occurrences
from klpd.root import SystemRoot
from klpd.sources.result import malformed_lines, os_reason

log = logging.getLogger(__name__)

_HEX_DIGITS = b"0123456789abcdefABCDEF"
_HEX_DIGITS_NEWLINE = _HEX_DIGITS + b"\n"
# bytes.split() separates at these; every other byte belongs to a token.
_WHITESPACE = b" \t\n\r\x0b\x0c"
_NON_WHITESPACE = bytes(b for b in range(256) if b not in _WHITESPACE)
# The separators of one line, as s_show() prints them.
_VMLINUX_LINE = b"  \n"
_OBJECT_LINE = b"  \t\n"
# Symbol types of data, bss and read-only data. Without CONFIG_KALLSYMS_ALL, scripts/kallsyms.c (symbol_valid())
# keeps only symbols in the text ranges plus the __start_*/__stop_* section markers, so vmlinux then shows a few
# dozen markers and a stray boundary symbol or two (__init_begin) of these types; with it, tens of thousands.
_DATA_TYPES = b"dDbBrR"
_DATA_TYPE = re.compile(b"[" + _DATA_TYPES + b"]")
_SECTION_MARKERS = (b"__start_", b"__stop_")
_KALLSYMS_ALL_MIN = 16  # data symbols other than section markers
_KLP_SYM_PREFIX = KLP_SYM_PREFIX.encode()
# Bytes of vmlinux lines parsed per block: small enough that a block's short-lived tokens are freed and their
# memory reused by the next block, large enough that the per-block Python overhead does not show.
_BLOCK = 1 << 17
_ANSWERS_MAX = 1 << 16
# Where the cold read looks for cat: fixed directories, not $PATH (the daemon runs as root).
_CAT_PATH = "/usr/bin:/bin"
# Pipe capacity asked for, and the most read at once: the default is 64 KiB; 1 MiB is what fs.pipe-max-size
# allows unprivileged processes by default.
_PIPE_SIZE = 1 << 20


def _encode(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _is_hex(token: bytes) -> bool:
    return bool(token) and not token.translate(None, _HEX_DIGITS)


class _NameIndex:
    """Positions of names in a run of lines: a name's one position, or the tuple of all of them if it repeats.

    Built at C speed, one block of lines at a time while its names are still in the CPU cache (the dict probes,
    not the hashing, are what costs here). ``setdefault()`` hands back the offered position object itself
    (``is``) only where a name occurs for the first time, so one pass both indexes a block and finds the few
    repeated names (static symbols of the same name in different files); only those meet Python code.
    """

    __slots__ = ("_next", "_repeated", "positions", "repeated")

    def __init__(self, start: int = 0) -> None:
        # name -> its only position, or ~i for the positions self.repeated[i]
        self.positions: dict[bytes, int] = {}
        self.repeated: list[tuple[int, ...]] = []
        self._repeated: dict[bytes, list[int]] = {}  # every position of a repeated name, in file order
        self._next = start

    def add(self, names: list[bytes]) -> None:
        """Index ``names``, the lines that follow the ones already added."""
        positions = list(range(self._next, self._next + len(names)))  # one object per position, for ``is``
        self._next += len(names)
        first = self.positions
        repeated = self._repeated
        offset = positions[0] if positions else 0
        for position in compress(positions, map(is_not, map(first.setdefault, names, positions), positions)):
            name = names[position - offset]
            found = repeated.get(name)
            if found is None:
                found = repeated[name] = [first[name]]
            found.append(position)

    def finish(self) -> _NameIndex:
        """Give every repeated name all its positions; no add() after this.

        A repeated name's entry becomes ``~i`` for the i-th tuple of positions: entries stay ints, so the dict
        holds no object the garbage collector tracks, and is never traversed by it (a full collection would
        otherwise visit every name: milliseconds).
        """
        positions = self.positions
        for name, found in self._repeated.items():
            positions[name] = ~len(self.repeated)
            self.repeated.append(tuple(found))
        self._repeated = {}
        return self

    def get(self, name: bytes) -> int | tuple[int, ...] | None:
        found = self.positions.get(name)
        return found if found is None or found >= 0 else self.repeated[~found]


class _Addresses:
    """An address column: its hex tokens, converted when asked."""

    __slots__ = ("_tokens",)

    def __init__(self, tokens: list[bytes]) -> None:
        self._tokens = tokens

    def __getitem__(self, position: int) -> int:
        return int(self._tokens[position], 16)

    def get(self, found: int | tuple[int, ...] | None) -> tuple[int, ...]:
        """The addresses of what _NameIndex.get() found."""
        if found is None:
            return ()
        if isinstance(found, int):
            return (self[found],)
        return tuple([self[p] for p in found])


# The usual answers, made once: most names occur once and at a non-zero address.
_COUNTED = tuple(Occurrences(n) for n in range(4))


class _CountIndex:
    """vmlinux lines proven to have s_show()'s exact layout: how often each name occurs, and nothing per line.

    Resolving a symbol needs the count and, when addresses are visible, whether the counted occurrence sits at
    address 0 (klp_find_object_symbol(): ``if (args.addr == 0)``). Zero addresses are rare and found with a
    C-speed search, so positions, the costly part of a full index, are only looked for by names that have one;
    addresses are read from the text itself on demand.
    """

    __slots__ = ("_data", "_end", "_width", "counts", "zero_names")

    def __init__(self, data: bytes, end: int, width: int, counts: dict[bytes, int], visible: bool) -> None:
        self._data = data
        self._end = end
        self._width = width
        self.counts = counts
        self.zero_names = self._zero_names() if visible else frozenset()

    def _zero_names(self) -> frozenset[bytes]:
        data, end, width = self._data, self._end, self._width
        zero = b"0" * width + b" "
        starts = [0] if end and data.startswith(zero) else []
        needle = b"\n" + zero
        at = data.find(needle, 0, end)
        while at >= 0:
            starts.append(at + 1)
            at = data.find(needle, at + 1, end)
        return frozenset(data[start + width + 3 : data.find(b"\n", start)] for start in starts)

    def find(self, name: bytes) -> Occurrences:
        count = self.counts.get(name, 0)
        if self.zero_names and name in self.zero_names:
            return Occurrences(count, tuple(i for i, a in enumerate(self.addresses(name), start=1) if a == 0))
        return _COUNTED[count] if count < 4 else Occurrences(count)  # 4: len(_COUNTED), without a call

    def addresses(self, name: bytes) -> tuple[int, ...]:
        """Every address of ``name``, in file order: one search through the part (a millisecond or so)."""
        if name not in self.counts:
            return ()
        data, end, width = self._data, self._end, self._width
        # In a proven line "ADDRESS T NAME\n" the name alone lies between a space and the newline, and the
        # address starts width + 2 bytes before that space.
        needle = b" " + name + b"\n"
        found = []
        at = data.find(needle, 0, end)
        while at >= 0:
            found.append(int(data[at - width - 2 : at - 2], 16))
            at = data.find(needle, at + len(needle), end)
        return tuple(found)


class _PositionIndex:
    """vmlinux lines parsed one by one (some were odd): every name's positions and the address column."""

    __slots__ = ("_addresses", "_index")

    def __init__(self, index: _NameIndex, addresses: _Addresses) -> None:
        self._index = index
        self._addresses = addresses

    def find(self, name: bytes) -> Occurrences:
        return Occurrences.of(self.addresses(name))

    def addresses(self, name: bytes) -> tuple[int, ...]:
        return self._addresses.get(self._index.get(name))


_Index = _CountIndex | _PositionIndex


@dataclass(frozen=True)
class _Vmlinux:
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


@dataclass(frozen=True)
class _Objects:
    """The module part of /proc/kallsyms: columns of its well-formed lines."""

    addresses: _Addresses
    names: list[bytes]
    objects: list[bytes]  # without brackets
    addresses_visible: bool
    malformed: int = 0
    first_malformed: tuple[int, str] | None = None  # (line number within the part, text)


def _layout(block: bytes, object_lines_from: int) -> tuple[list[bytes], int, int] | None:
    """The tokens of ``block`` and its vmlinux and object line counts, if every line has s_show()'s exact layout.

    ``block`` ends with a newline; lines from offset ``object_lines_from`` on must be object lines. The layout is
    proven for all lines at once: the separator bytes must be exactly the per-line patterns repeated, and there
    must be exactly as many tokens as the patterns have gaps — so every gap holds exactly one token.
    """
    separators = block.translate(None, _NON_WHITESPACE)
    object_lines = block.count(b"\n", object_lines_from)
    vmlinux_lines, rest = divmod(len(separators) - len(_OBJECT_LINE) * object_lines, len(_VMLINUX_LINE))
    if rest or vmlinux_lines < 0:
        return None
    if separators != _VMLINUX_LINE * vmlinux_lines + _OBJECT_LINE * object_lines:
        return None
    tokens = block.split()
    if len(tokens) != 3 * vmlinux_lines + 4 * object_lines:
        return None
    return tokens, vmlinux_lines, object_lines


def _kallsyms_all(found: int, names: list[bytes], types: bytes) -> int:
    """``found`` plus the data symbols other than section markers among ``names``, counting up to the threshold.

    Without CONFIG_KALLSYMS_ALL a whole vmlinux has a few dozen data-typed lines, with it the first block reaches
    the threshold: either way this looks at few lines.
    """
    for match in _DATA_TYPE.finditer(types):
        if found >= _KALLSYMS_ALL_MIN:
            break
        found += not names[match.start()].startswith(_SECTION_MARKERS)
    return found


class _FastVmlinux:
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
            separators = block.translate(None, _NON_WHITESPACE)
            lines = len(separators) // len(_VMLINUX_LINE)
            if separators != _VMLINUX_LINE * lines:
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
            if addresses[width::stride] != b"\n" * (lines - 1) or addresses.translate(None, _HEX_DIGITS_NEWLINE):
                return False
            names = tokens[2::3]
            if self.data_symbols < _KALLSYMS_ALL_MIN:
                self.data_symbols = _kallsyms_all(self.data_symbols, names, types)
            # Hidden addresses: every byte but the separators is "0". strip() stops at the first other byte.
            self.visible = self.visible or bool(addresses.strip(b"0\n"))
            self.counts.update(names)
            self.count += lines
            start = stop
        return True

    def finish(self, data: bytes, end: int) -> tuple[_Vmlinux, _CountIndex]:
        """What the lines added found; ``data[:end]`` must be exactly those lines."""
        vmlinux = _Vmlinux(end, self.count, self.data_symbols >= _KALLSYMS_ALL_MIN, self.visible)
        return vmlinux, _CountIndex(data, end, self.width, self.counts, self.visible)


def _vmlinux_fast(data: bytes, end: int) -> tuple[_Vmlinux, _CountIndex] | None:
    """vmlinux lines ``data[:end]`` block by block; None as soon as one line is odd."""
    parser = _FastVmlinux()
    return parser.finish(data, end) if parser.add(data, 0, end) else None


def _lines(raw: bytes) -> list[bytes]:
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def _vmlinux_slowly(data: bytes, end: int) -> tuple[_Vmlinux, _PositionIndex]:
    """Line by line, skipping and counting odd lines. Only used when the fast path's layout proof fails."""
    names: list[bytes] = []
    addresses: list[bytes] = []
    data_symbols = malformed = 0
    first: tuple[int, str] | None = None
    for number, line in enumerate(_lines(data[:end]), start=1):
        tokens = line.split()
        if len(tokens) != 3 or not _is_hex(tokens[0]) or len(tokens[1]) != 1:
            malformed += 1
            first = first or (number, _decode(line))
            continue
        names.append(tokens[2])
        addresses.append(tokens[0])
        data_symbols += tokens[1] in _DATA_TYPES and not tokens[2].startswith(_SECTION_MARKERS)
    index = _NameIndex()
    index.add(names)
    visible = any(address.strip(b"0") for address in addresses)
    vmlinux = _Vmlinux(end, len(addresses), data_symbols >= _KALLSYMS_ALL_MIN, visible, malformed, first)
    return vmlinux, _PositionIndex(index.finish(), _Addresses(addresses))


def _parse_vmlinux(data: bytes, end: int) -> tuple[_Vmlinux, _Index]:
    return _vmlinux_fast(data, end) or _vmlinux_slowly(data, end)


def _objects_fast(block: bytes) -> _Objects | None:
    """Object lines, all at once; None when one of them is odd."""
    layout = _layout(block, 0)
    if layout is None:
        return None
    tokens, _, lines = layout
    addresses = tokens[0::4]
    buffer = b"".join(addresses)
    if len(b"".join(tokens[1::4])) != lines or buffer.translate(None, _HEX_DIGITS):
        return None
    brackets = tokens[3::4]
    distinct = set(brackets)
    if any(len(token) < 3 or token[:1] != b"[" or token[-1:] != b"]" for token in distinct):
        return None
    stripped = {token: token[1:-1] for token in distinct}  # objects come in runs: few distinct tokens
    objects = [stripped[token] for token in brackets]
    visible = buffer.count(b"0") != len(buffer)
    return _Objects(_Addresses(addresses), tokens[2::4], objects, visible)


def _objects_slowly(block: bytes) -> _Objects:
    """Line by line, skipping and counting odd lines. Only used when the fast path's layout proof fails."""
    addresses: list[bytes] = []
    names: list[bytes] = []
    objects: list[bytes] = []
    malformed = 0
    first: tuple[int, str] | None = None
    for number, line in enumerate(_lines(block), start=1):
        tokens = line.split()
        bracket = tokens[3] if len(tokens) == 4 else b""
        if len(bracket) < 3 or bracket[:1] + bracket[-1:] != b"[]" or not _is_hex(tokens[0]) or len(tokens[1]) != 1:
            malformed += 1
            first = first or (number, _decode(line))
            continue
        addresses.append(tokens[0])
        names.append(tokens[2])
        objects.append(bracket[1:-1])
    visible = any(address.strip(b"0") for address in addresses)
    return _Objects(_Addresses(addresses), names, objects, visible, malformed, first)


def _module_part_start(data: bytes) -> int:
    """Offset of the first line that names an object (``[...]``), or len(data) when none does."""
    bracket = data.find(b"[")
    return len(data) if bracket < 0 else data.rfind(b"\n", 0, bracket) + 1


def _digest(part: memoryview) -> int:
    """A checksum that tells a re-read's vmlinux part from the previous one's.

    Only the running kernel writes the vmlinux part (module, bpf and ftrace lines come after it), so nobody can
    craft a collision; what does change it while the kernel runs, addresses turning visible or hidden
    (kptr_restrict, capabilities), rewrites whole fields, which CRC-32 never misses in practice. It costs a
    millisecond for a 5 MB part, where blake2b costs 6: the daemon pays it on every module event.
    """
    return zlib.crc32(part)


class _VmlinuxText:
    """One read's vmlinux part, its digest and index, each made when first needed."""

    __slots__ = ("_digest", "data", "end", "index_")

    def __init__(self, data: bytes, end: int, index: _Index | None = None, digest: int | None = None) -> None:
        self.data = data
        self.end = end
        self.index_ = index
        self._digest = digest

    def index(self) -> _Index:
        if self.index_ is None:
            self.index_ = _parse_vmlinux(self.data, self.end)[1]
        return self.index_

    def digest(self) -> int:
        if self._digest is None:
            self._digest = _digest(memoryview(self.data)[: self.end])
        return self._digest


@dataclass(frozen=True, eq=False)
class KallsymsMemo:
    """What a later read of the same kernel needs from a :class:`Kallsyms`: the vmlinux part's size and digest,
    what its parse found and the answers already given. A few hundred kilobytes at most, where the Kallsyms it
    comes from holds the whole file and an index of it: a daemon keeps this between reads.
    """

    vmlinux: _Vmlinux  # its length and what its parse found
    digest: int


class _ObjectRuns:
    """The module part by object: the line range of each object's first run, and per-object indexes.

    A module's own symbols are listed together; its freed init functions that ftrace remembers come in a second
    run after all modules (ftrace_mod_get_kallsym(), since 4.15). klp_find_object_symbol() only walks the
    module's symbol table, so only the first run counts.
    """

    __slots__ = ("_indexes", "part", "ranges")

    def __init__(self, part: _Objects) -> None:
        self.part = part
        self.ranges: dict[bytes, tuple[int, int]] = {}
        position = 0
        for obj, run in groupby(part.objects):
            length = len(list(run))
            self.ranges.setdefault(obj, (position, position + length))
            position += length
        self._indexes: dict[bytes, _NameIndex] = {}

    def index(self, obj: bytes) -> _NameIndex | None:
        index = self._indexes.get(obj)
        if index is None:
            span = self.ranges.get(obj)
            if span is None:
                return None
            index = _NameIndex(span[0])
            index.add(self.part.names[span[0] : span[1]])
            index = self._indexes[obj] = index.finish()
        return index


@dataclass(frozen=True, eq=False)
class Kallsyms:
    """/proc/kallsyms, parsed. Compare answers, not objects: instances compare by identity.

    ``addresses_visible`` is False when every address reads 0 (the reader lacks CAP_SYSLOG); the addresses this
    object returns are then all 0 and mean nothing, while names and order stay exact.
    """

    path: str
    addresses_visible: bool
    kallsyms_all: bool  # vmlinux lists data symbols: CONFIG_KALLSYMS_ALL=y
    malformed_lines: int
    vmlinux_reused: bool  # the vmlinux part was identical to ``previous``'s and was taken over from it
    problems: tuple[Problem, ...]
    _vmlinux: _Vmlinux = field(repr=False)
    _text: _VmlinuxText = field(repr=False)
    _runs: _ObjectRuns = field(repr=False)

    @property
    def vmlinux_symbols(self) -> int:
        return self._vmlinux.count

    @property
    def module_symbols(self) -> int:
        return len(self._runs.part.names)

    def find(self, obj: str, name: str) -> Occurrences:
        """How often ``name`` occurs in object ``obj`` ("vmlinux" or a bracketed name), and where at address 0:
        what klp_find_object_symbol() learns (klpd.resolve.lookup_occurrences() decides from it)."""
        if obj == VMLINUX:
            # The hot path of every evaluation (thousands of calls): kept to a few dict look-ups.
            answers = self._vmlinux.answers
            known = answers.get(name)
            if known is None:
                known = (self._text.index_ or self._text.index()).find(name.encode("utf-8", "surrogateescape"))
                if len(answers) >= _ANSWERS_MAX:  # names come from installed patches; bound them anyway
                    answers.clear()
                answers[name] = known
            return known
        return Occurrences.of(self.occurrences(obj, name))

    def occurrences(self, obj: str, name: str) -> tuple[int, ...]:
        """Addresses of every ``name`` in object ``obj`` ("vmlinux" or a bracketed name), in /proc/kallsyms order."""
        if obj == VMLINUX:
            return self._text.index().addresses(_encode(name))
        found = self._runs.index(_encode(obj))
        return () if found is None else self._runs.part.addresses.get(found.get(_encode(name)))

    def memo(self) -> KallsymsMemo:
        """What a later read needs from this one (pass it as ``previous``); keep it rather than this object."""
        return KallsymsMemo(self._vmlinux, self._text.digest())

    def modules(self) -> frozenset[str]:
        """Every bracketed object: loaded modules and pseudo-objects such as bpf or __builtin__ftrace.

        /proc/modules, not this, says which modules are loaded.
        """
        return frozenset(_decode(obj) for obj in self._runs.ranges)

    def klp_symbols(self, module: str) -> tuple[tuple[str, int], ...]:
        """The ``.klp.sym.*`` symbols of a loaded patch module with the addresses the kernel resolved them to.

        The kernel lists them with type ``?`` (SHN_LIVEPATCH is above SHN_LORESERVE); address 0 means it never
        resolved the symbol — meaningful only when ``addresses_visible``.
        """
        span = self._runs.ranges.get(_encode(module))
        if span is None:
            return ()
        part = self._runs.part
        return tuple(
            (_decode(part.names[p]), part.addresses[p])
            for p in range(*span)
            if part.names[p].startswith(_KLP_SYM_PREFIX)
        )


def _take_over(previous: Kallsyms | KallsymsMemo | None, data: bytes, end: int) -> tuple[_Vmlinux, _VmlinuxText] | None:
    """The previous vmlinux part's findings, if ``data[:end]`` is exactly that part again."""
    if previous is None:
        return None
    memo = previous.memo() if isinstance(previous, Kallsyms) else previous
    if memo.vmlinux.length != end or memo.digest != _digest(memoryview(data)[:end]):
        return None
    # A previous Kallsyms's index describes the same bytes: take it too.
    index = previous._text.index_ if isinstance(previous, Kallsyms) else None
    return memo.vmlinux, _VmlinuxText(data, end, index, memo.digest)


def parse_kallsyms(data: bytes, path: str, previous: Kallsyms | KallsymsMemo | None = None) -> Kallsyms:
    """Parse the bytes of /proc/kallsyms (``path`` names it in problems). Never raises on odd content.

    With ``previous`` (an earlier read of the same kernel, or its memo()), an unchanged vmlinux part is taken over
    and only the module part is parsed; the vmlinux part is indexed again only if a name the earlier reads were
    not asked about is asked.
    """
    if data and not data.endswith(b"\n"):
        data += b"\n"  # only hand-made files lack it; the layout proof relies on it
    end = _module_part_start(data)
    taken = _take_over(previous, data, end)
    if taken is None:
        vmlinux, index = _parse_vmlinux(data, end)
        return _assemble(data, path, end, vmlinux, _VmlinuxText(data, end, index), reused=False)
    return _assemble(data, path, end, *taken, reused=True)


def _assemble(data: bytes, path: str, end: int, vmlinux: _Vmlinux, text: _VmlinuxText, *, reused: bool) -> Kallsyms:
    """The Kallsyms of ``data``, whose vmlinux part ``data[:end]`` has been parsed: parse the module part."""
    block = data[end:]
    objects = _objects_fast(block) or _objects_slowly(block)
    malformed = vmlinux.malformed + objects.malformed
    problems: tuple[Problem, ...] = ()
    if vmlinux.first_malformed is not None:
        problems = (malformed_lines(path, malformed, *vmlinux.first_malformed),)
    elif objects.first_malformed is not None:
        number, text_ = objects.first_malformed
        problems = (malformed_lines(path, malformed, number + data.count(b"\n", 0, end), text_),)
    return Kallsyms(
        path=path,
        addresses_visible=vmlinux.addresses_visible or objects.addresses_visible,
        kallsyms_all=vmlinux.kallsyms_all,
        malformed_lines=malformed,
        vmlinux_reused=reused,
        problems=problems,
        _vmlinux=vmlinux,
        _text=text,
        _runs=_ObjectRuns(objects),
    )


def _read_through_cat(path: Path, host: str) -> Kallsyms | None:
    """Read ``path`` through a ``cat`` child and parse the vmlinux part as it arrives; None when that fails.

    procfs formats /proc/kallsyms in the reading task, a page or so per read(): tens of milliseconds of kernel
    time for 100k+ lines, as long again as the parse. With ``cat`` reading, that work runs on another CPU while
    this process parses what the pipe already holds. (A reader thread does not help: every read() needs the GIL
    back.) ``cat`` opens the file with this process's credentials, so it sees the same addresses; only a clean
    exit of ``cat`` vouches for the bytes, and any doubt (no ``cat``, a failed spawn, an odd line, a missing
    final newline) leaves the whole job to the direct read and parse_kallsyms(), which give the same answers.
    """
    if signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:
        log.debug("SIGCHLD is ignored, so cat's exit status would be lost: reading %s directly", host)
        return None
    cat = shutil.which("cat", path=_CAT_PATH)
    if cat is None:
        log.debug("no cat in %s: reading %s directly", _CAT_PATH, host)
        return None
    try:
        child = subprocess.Popen(
            [cat, "--", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            bufsize=0,
            close_fds=True,
        )
    except (OSError, subprocess.SubprocessError) as error:
        log.debug("cannot run %s (%s): reading %s directly", cat, error, host)
        return None
    chunks: list[bytes] = []
    parser: _FastVmlinux | None = _FastVmlinux()
    pending = b""  # the start of a line whose end has not arrived
    end = 0  # bytes of the vmlinux part parsed so far
    in_vmlinux = True
    with child:  # closes the pipe and waits for the child, whatever happens here
        assert child.stdout is not None  # stdout=PIPE
        fd = child.stdout.fileno()
        with suppress(OSError):  # a bigger pipe lets cat run further ahead; the default works too
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        try:
            while chunk := os.read(fd, _PIPE_SIZE):
                chunks.append(chunk)
                if parser is None or not in_vmlinux:
                    continue
                cut = chunk.rfind(b"\n") + 1
                if not cut:
                    pending += chunk
                    continue
                lines = pending + chunk[:cut] if pending else chunk[:cut]
                pending = chunk[cut:]
                bracket = lines.find(b"[")  # the first object line starts the module part
                if bracket >= 0:
                    in_vmlinux = False
                    lines = lines[: lines.rfind(b"\n", 0, bracket) + 1]
                if not parser.add(lines, 0, len(lines)):
                    parser = None
                end += len(lines)
        except OSError as error:
            log.debug("reading %s through cat failed (%s): reading it directly", host, error)
            return None
    if child.returncode != 0:
        log.debug("cat %s exited with %s: reading it directly", host, child.returncode)
        return None
    data = b"".join(chunks)
    if parser is None or not data.endswith(b"\n"):
        return parse_kallsyms(data, host)  # odd lines, or no final newline (hand-made files): the careful way
    vmlinux, index = parser.finish(data, end)
    return _assemble(data, host, end, vmlinux, _VmlinuxText(data, end, index), reused=False)


def read_kallsyms(root: SystemRoot, previous: Kallsyms | KallsymsMemo | None = None) -> Kallsyms:
    """Read and parse /proc/kallsyms under ``root``; SourceError when it cannot be read.

    Without ``previous``, the file is read through ``cat`` so that its formatting by the kernel and the parse
    overlap (see _read_through_cat()); with it, most of the parse is skipped and a direct read is quicker.
    """
    path = root.kallsyms
    host = root.host_path(path)
    if previous is None:
        kallsyms = _read_through_cat(path, host)
        if kallsyms is not None:
            return kallsyms
    try:
        # Unbuffered readall(): procfs reports size 0, and one growing buffer beats BufferedReader's chunks.
        with open(path, "rb", buffering=0) as stream:
            data = stream.readall()
    except OSError as error:
        raise SourceError(host, os_reason(error)) from error
    return parse_kallsyms(data, host, previous)
