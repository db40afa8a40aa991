"""Indexes over the names of /proc/kallsyms lines, and what klp_find_object_symbol() asks of them.

Resolving ``<object>.<name>,<sympos>`` (kernel/livepatch/core.c, klp_find_object_symbol()) needs how often the
name occurs in the object and, when addresses are visible, whether the counted occurrence sits at address 0.
:class:`CountIndex` answers that for a vmlinux part proven well-formed, without anything per line;
:class:`PositionIndex` for one parsed line by line; :class:`NameIndex` finds names in a module's lines.
"""

from __future__ import annotations

from itertools import compress
from operator import is_not
from typing import Protocol

from klpd.model import Occurrences


class NameIndex:
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

    def finish(self) -> NameIndex:
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


class Addresses:
    """An address column: its hex tokens, converted when asked."""

    __slots__ = ("_tokens",)

    def __init__(self, tokens: list[bytes]) -> None:
        self._tokens = tokens

    def __getitem__(self, position: int) -> int:
        return int(self._tokens[position], 16)

    def get(self, found: int | tuple[int, ...] | None) -> tuple[int, ...]:
        """The addresses of what NameIndex.get() found."""
        if found is None:
            return ()
        if isinstance(found, int):
            return (self[found],)
        return tuple([self[p] for p in found])


# The usual answers, made once: most names occur once and at a non-zero address.
_COUNTED = tuple(Occurrences(n) for n in range(4))


class CountIndex:
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


class PositionIndex:
    """vmlinux lines parsed one by one (some were odd): every name's positions and the address column."""

    __slots__ = ("_addresses", "_index")

    def __init__(self, index: NameIndex, addresses: Addresses) -> None:
        self._index = index
        self._addresses = addresses

    def find(self, name: bytes) -> Occurrences:
        return Occurrences.of(self.addresses(name))

    def addresses(self, name: bytes) -> tuple[int, ...]:
        return self._addresses.get(self._index.get(name))


class Index(Protocol):
    """What every index of the vmlinux part answers (:class:`CountIndex`, :class:`PositionIndex`, and the
    search-based ``scan.ScanIndex`` of a one-shot read)."""

    def find(self, name: bytes) -> Occurrences: ...

    def addresses(self, name: bytes) -> tuple[int, ...]: ...
