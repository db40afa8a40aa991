"""The module part of /proc/kallsyms: every line from the first one that names a module in brackets.

s_show() prints these as ``%px %c %s\\t[%s]\\n``: loaded modules, each with its core symbol table in ELF order
(module_get_kallsym()), then pseudo-objects: freed module init functions kept for ftrace (under their module's
name, since 4.15), ``[bpf]`` programs (since 4.11), ``[__builtin__ftrace]`` and ``[__builtin__kprobes]``
trampolines (since 5.9). The part is small (a few thousand lines) and re-parsed on every read, so it is kept as
columns and indexed per object only when an object is asked about.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby

from klpd.sources.kallsyms.indexes import Addresses, NameIndex
from klpd.sources.kallsyms.layout import HEX_DIGITS, MODULE_LINE, NON_WHITESPACE, decode, is_hex, split_lines


@dataclass(frozen=True)
class ModulePart:
    """The module part of /proc/kallsyms: columns of its well-formed lines."""

    addresses: Addresses
    names: list[bytes]
    objects: list[bytes]  # without brackets
    addresses_visible: bool
    malformed: int = 0
    first_malformed: tuple[int, str] | None = None  # (line number within the part, text)


def parse_module_part(block: bytes) -> ModulePart:
    """The module lines ``block`` (ending with a newline): all at once, or line by line when one is odd."""
    return _module_part_fast(block) or _module_part_slowly(block)


def _module_part_fast(block: bytes) -> ModulePart | None:
    """Every line at once; None when one of them is odd.

    The layout is proven for all lines together: the separator bytes must be exactly ``"  \\t\\n"`` per line and
    there must be exactly four tokens per line, so every gap holds exactly one token.
    """
    separators = block.translate(None, NON_WHITESPACE)
    lines = block.count(b"\n")
    if separators != MODULE_LINE * lines:
        return None
    tokens = block.split()
    if len(tokens) != 4 * lines:
        return None
    addresses = tokens[0::4]
    buffer = b"".join(addresses)
    if len(b"".join(tokens[1::4])) != lines or buffer.translate(None, HEX_DIGITS):
        return None
    brackets = tokens[3::4]
    distinct = set(brackets)
    if any(len(token) < 3 or token[:1] != b"[" or token[-1:] != b"]" for token in distinct):
        return None
    stripped = {token: token[1:-1] for token in distinct}  # objects come in runs: few distinct tokens
    objects = [stripped[token] for token in brackets]
    visible = buffer.count(b"0") != len(buffer)
    return ModulePart(Addresses(addresses), tokens[2::4], objects, visible)


def _module_part_slowly(block: bytes) -> ModulePart:
    """Line by line, skipping and counting odd lines. Only used when the fast path's layout proof fails."""
    addresses: list[bytes] = []
    names: list[bytes] = []
    objects: list[bytes] = []
    malformed = 0
    first: tuple[int, str] | None = None
    for number, line in enumerate(split_lines(block), start=1):
        tokens = line.split()
        bracket = tokens[3] if len(tokens) == 4 else b""
        if len(bracket) < 3 or bracket[:1] + bracket[-1:] != b"[]" or not is_hex(tokens[0]) or len(tokens[1]) != 1:
            malformed += 1
            first = first or (number, decode(line))
            continue
        addresses.append(tokens[0])
        names.append(tokens[2])
        objects.append(bracket[1:-1])
    visible = any(address.strip(b"0") for address in addresses)
    return ModulePart(Addresses(addresses), names, objects, visible, malformed, first)


class ObjectRuns:
    """The module part by object: the line range of each object's first run, and per-object indexes.

    A module's own symbols are listed together; its freed init functions that ftrace remembers come in a second
    run after all modules (ftrace_mod_get_kallsym(), since 4.15). klp_find_object_symbol() only walks the
    module's symbol table, so only the first run counts.
    """

    __slots__ = ("_indexes", "part", "ranges")

    def __init__(self, part: ModulePart) -> None:
        self.part = part
        self.ranges: dict[bytes, tuple[int, int]] = {}
        position = 0
        for obj, run in groupby(part.objects):
            length = len(list(run))
            self.ranges.setdefault(obj, (position, position + length))
            position += length
        self._indexes: dict[bytes, NameIndex] = {}

    def index(self, obj: bytes) -> NameIndex | None:
        index = self._indexes.get(obj)
        if index is None:
            span = self.ranges.get(obj)
            if span is None:
                return None
            index = NameIndex(span[0])
            index.add(self.part.names[span[0] : span[1]])
            index = self._indexes[obj] = index.finish()
        return index
