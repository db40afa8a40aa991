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
  ``dict.setdefault`` through ``map``); the kernel's exact layout is proven for a whole block at once, and a block
  that fails the proof sends the part to a line-by-line parse that skips and counts odd lines;
- vmlinux is indexed while it is parsed, one block at a time, keeping one object per symbol (its name) and the
  addresses as one buffer of fixed-width hex fields: fewer objects is less time than anything else here;
- a re-read whose vmlinux part is byte-identical to the previous read (it never changes while the kernel runs)
  takes the previous vmlinux part over, index included, and parses only the module part, which is indexed per
  object on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import compress, groupby
from operator import is_not

from klpd.errors import SourceError
from klpd.model import Problem
from klpd.names import KLP_SYM_PREFIX
from klpd.root import SystemRoot
from klpd.sources.result import malformed_lines, os_reason

VMLINUX = "vmlinux"

_HEX_DIGITS = b"0123456789abcdefABCDEF"
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
_SECTION_MARKERS = (b" __start_", b" __stop_")
_KALLSYMS_ALL_MIN = 16  # data symbols other than section markers
_KLP_SYM_PREFIX = KLP_SYM_PREFIX.encode()
# Bytes of vmlinux lines parsed per block: small enough that a block's short-lived tokens are freed and their
# memory reused by the next block, large enough that the per-block Python overhead does not show.
_BLOCK = 1 << 17
_ANSWERS_MAX = 1 << 16


def _encode(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _is_hex(token: bytes) -> bool:
    return bool(token) and not token.translate(None, _HEX_DIGITS)


class _NameIndex:
    """Positions of names in a list of lines: the first one of each name, and all of them for repeated names."""

    __slots__ = ("first", "repeated")

    def __init__(self) -> None:
        self.first: dict[bytes, int] = {}
        self.repeated: dict[bytes, list[int]] = {}

    def add(self, names: Sequence[bytes], offset: int) -> None:
        """Index ``names``, the lines from position ``offset`` on, at C speed.

        setdefault() hands back the offered position object itself (``is``) only where a name occurs for the
        first time. Few names repeat (static symbols of the same name in different files), so the Python loop
        runs over a handful of positions.
        """
        positions = list(range(offset, offset + len(names)))
        first = self.first
        for position in compress(positions, map(is_not, map(first.setdefault, names, positions), positions)):
            name = names[position - offset]
            repeated = self.repeated.get(name)
            if repeated is None:
                repeated = self.repeated[name] = [first[name]]
            repeated.append(position)

    def positions(self, name: bytes) -> Sequence[int]:
        repeated = self.repeated.get(name)
        if repeated is not None:
            return repeated
        first = self.first.get(name)
        return () if first is None else (first,)


class _Addresses:
    """An address column: one buffer of fixed-width hex fields (what %px prints), or hex tokens of any width."""

    __slots__ = ("_buffer", "_tokens", "_width")

    def __init__(self, buffer: bytes = b"", width: int = 0, tokens: list[bytes] | None = None) -> None:
        self._buffer = buffer
        self._width = width
        self._tokens = tokens

    def __getitem__(self, position: int) -> int:
        if self._tokens is not None:
            return int(self._tokens[position], 16)
        start = position * self._width
        return int(self._buffer[start : start + self._width], 16)

    def get(self, positions: Sequence[int]) -> tuple[int, ...]:
        # Called once per symbol lookup, thousands of times per evaluation: no per-position method calls, and
        # no comprehension for the usual single occurrence.
        if len(positions) == 1:
            return (self[positions[0]],)
        if self._tokens is not None:
            tokens = self._tokens
            return tuple([int(tokens[p], 16) for p in positions])
        buffer, width = self._buffer, self._width
        return tuple([int(buffer[p * width : (p + 1) * width], 16) for p in positions])


@dataclass(frozen=True)
class _Vmlinux:
    """The vmlinux part of /proc/kallsyms, indexed."""

    raw: memoryview  # the part's bytes (a view, not a copy): an identical part on the next read is recognised by them
    index: _NameIndex
    addresses: _Addresses
    count: int
    kallsyms_all: bool
    addresses_visible: bool
    malformed: int = 0
    first_malformed: tuple[int, str] | None = None  # (line number, text)
    # Answers already given. The part never changes and is handed from read to read, so the daemon's next
    # evaluation resolves the same patch symbols with one dict look-up each.
    answers: dict[str, tuple[int, ...]] = field(default_factory=dict, compare=False, repr=False)


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


def _vmlinux_fast(data: bytes, end: int) -> _Vmlinux | None:
    """vmlinux lines ``data[:end]`` block by block; None as soon as one line is odd."""
    index = _NameIndex()
    buffers: list[bytes] = []
    width = count = data_symbols = 0
    visible = False
    start = 0
    while start < end:
        stop = data.find(b"\n", min(start + _BLOCK, end) - 1) + 1  # the part ends with a newline: stop <= end
        block = data[start:stop]
        layout = _layout(block, len(block))
        if layout is None:
            return None
        tokens, lines, _ = layout
        addresses = tokens[0::3]
        width = width or len(addresses[0])
        buffer = b"".join(addresses)
        types = b"".join(tokens[1::3])
        # Every address must have the width of the first (what %px prints): all at most that wide and the total
        # exactly that many times the line count.
        if len(types) != lines or len(buffer) != width * lines or max(map(len, addresses)) != width:
            return None
        if buffer.translate(None, _HEX_DIGITS):
            return None
        # Markers of any type are subtracted too: that can only understate, and the threshold has room.
        data_symbols += lines - len(types.translate(None, _DATA_TYPES)) - sum(map(block.count, _SECTION_MARKERS))
        visible = visible or buffer.count(b"0") != len(buffer)
        index.add(tokens[2::3], count)
        buffers.append(buffer)
        count += lines
        start = stop
    raw = memoryview(data)[:end]
    column = _Addresses(b"".join(buffers), width)
    return _Vmlinux(raw, index, column, count, data_symbols >= _KALLSYMS_ALL_MIN, visible)


def _lines(raw: bytes) -> list[bytes]:
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def _vmlinux_slowly(data: bytes, end: int) -> _Vmlinux:
    """Line by line, skipping and counting odd lines. Only used when the fast path's layout proof fails."""
    index = _NameIndex()
    addresses: list[bytes] = []
    data_symbols = malformed = 0
    first: tuple[int, str] | None = None
    for number, line in enumerate(_lines(data[:end]), start=1):
        tokens = line.split()
        if len(tokens) != 3 or not _is_hex(tokens[0]) or len(tokens[1]) != 1:
            malformed += 1
            first = first or (number, _decode(line))
            continue
        index.add(tokens[2:3], len(addresses))
        addresses.append(tokens[0])
        marker = (b" " + tokens[2]).startswith(_SECTION_MARKERS)
        data_symbols += tokens[1] in _DATA_TYPES and not marker
    return _Vmlinux(
        memoryview(data)[:end],
        index,
        _Addresses(tokens=addresses),
        len(addresses),
        data_symbols >= _KALLSYMS_ALL_MIN,
        any(address.strip(b"0") for address in addresses),
        malformed,
        first,
    )


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
    return _Objects(_Addresses(tokens=addresses), tokens[2::4], objects, visible)


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
    return _Objects(_Addresses(tokens=addresses), names, objects, visible, malformed, first)


def _module_part_start(data: bytes) -> int:
    """Offset of the first line that names an object (``[...]``), or len(data) when none does."""
    bracket = data.find(b"[")
    return len(data) if bracket < 0 else data.rfind(b"\n", 0, bracket) + 1


def _reuses(previous: Kallsyms, data: bytes) -> bool:
    """True when ``data`` begins with exactly the previous vmlinux part and its next line names an object."""
    raw = previous._vmlinux.raw
    if not data.startswith(raw):
        return False
    end = len(raw)
    if end == len(data):
        return True
    next_line_end = data.find(b"\n", end)
    return data.find(b"[", end, next_line_end if next_line_end >= 0 else len(data)) >= 0


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
            index = self._indexes[obj] = _NameIndex()
            index.add(self.part.names[span[0] : span[1]], span[0])
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
    _runs: _ObjectRuns = field(repr=False)

    @property
    def vmlinux_symbols(self) -> int:
        return self._vmlinux.count

    @property
    def module_symbols(self) -> int:
        return len(self._runs.part.names)

    def occurrences(self, obj: str, name: str) -> tuple[int, ...]:
        """Addresses of every ``name`` in object ``obj`` ("vmlinux" or a bracketed name), in /proc/kallsyms order."""
        if obj == VMLINUX:
            # The hot path of every evaluation (thousands of calls): kept to a few dict look-ups.
            answers = self._vmlinux.answers
            known = answers.get(name)
            if known is None:
                known = self._vmlinux_occurrences(name)
                if len(answers) >= _ANSWERS_MAX:  # names come from installed patches; bound them anyway
                    answers.clear()
                answers[name] = known
            return known
        found = self._runs.index(_encode(obj))
        return () if found is None else self._runs.part.addresses.get(found.positions(_encode(name)))

    def _vmlinux_occurrences(self, name: str) -> tuple[int, ...]:
        key = name.encode("utf-8", "surrogateescape")
        index = self._vmlinux.index
        first = index.first.get(key)
        if first is None:
            return ()
        repeated = index.repeated.get(key)
        return self._vmlinux.addresses.get(repeated if repeated is not None else (first,))

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


def parse_kallsyms(data: bytes, path: str, previous: Kallsyms | None = None) -> Kallsyms:
    """Parse the bytes of /proc/kallsyms (``path`` names it in problems). Never raises on odd content.

    With ``previous`` (an earlier read of the same kernel), an unchanged vmlinux part is taken over, index and
    all, and only the module part is parsed.
    """
    if data and not data.endswith(b"\n"):
        data += b"\n"  # only hand-made files lack it; the layout proof relies on it
    reused = previous is not None and _reuses(previous, data)
    if previous is not None and reused:
        vmlinux = previous._vmlinux
    else:
        end = _module_part_start(data)
        vmlinux = _vmlinux_fast(data, end) or _vmlinux_slowly(data, end)
    block = data[len(vmlinux.raw) :]
    objects = _objects_fast(block) or _objects_slowly(block)
    malformed = vmlinux.malformed + objects.malformed
    problems: tuple[Problem, ...] = ()
    if vmlinux.first_malformed is not None:
        problems = (malformed_lines(path, malformed, *vmlinux.first_malformed),)
    elif objects.first_malformed is not None:
        number, text = objects.first_malformed
        problems = (malformed_lines(path, malformed, number + data.count(b"\n", 0, len(vmlinux.raw)), text),)
    return Kallsyms(
        path=path,
        addresses_visible=vmlinux.addresses_visible or objects.addresses_visible,
        kallsyms_all=vmlinux.kallsyms_all,
        malformed_lines=malformed,
        vmlinux_reused=reused,
        problems=problems,
        _vmlinux=vmlinux,
        _runs=_ObjectRuns(objects),
    )


def read_kallsyms(root: SystemRoot, previous: Kallsyms | None = None) -> Kallsyms:
    """Read and parse /proc/kallsyms under ``root``; SourceError when it cannot be read."""
    path = root.kallsyms
    host = root.host_path(path)
    try:
        # Unbuffered readall(): procfs reports size 0, and one growing buffer beats BufferedReader's chunks.
        with open(path, "rb", buffering=0) as stream:
            data = stream.readall()
    except OSError as error:
        raise SourceError(host, os_reason(error)) from error
    return parse_kallsyms(data, host, previous)
