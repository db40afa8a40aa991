"""Which functions ftrace can patch: tracefs ``available_filter_functions``.

klp_patch_func() (kernel/livepatch/patch.c) refuses a replaced function that has no ftrace location: "failed to
find location for function '%s'" (-EINVAL). tracefs lists one line per ftrace record, named by the symbol that
holds it (``ftrace.c:print_rec``): ``name`` for the core kernel, ``name [module]`` for a loaded module. A function
the compiler left without an ``__fentry__`` call (``notrace``, inlined copies, some assembly) has no line.

From 6.1 on the kernel takes the first record inside the function (``ftrace_location()``), before that the record
must sit at its first byte; on x86_64 without IBT both are the same record, and a record inside the function is
what a line here means. A name with several symbols of that name counts its records: when some of them have none,
which one does not is not known from the names alone.

tracefs is root's (mode 0700): without the privilege the index is None and the verdicts say "not checked".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from klpd.model import VMLINUX
from klpd.regular_file import read_regular_text
from klpd.root import SystemRoot

# available_filter_functions of a distribution kernel with its modules is 1-3 MB.
_LIMIT = 64 << 20


@dataclass(frozen=True)
class FtraceIndex:
    """How many ftrace records each asked-for (object, name) has; the path it was read from."""

    path: str
    records: Counter[tuple[str, str]]

    def count(self, obj: str, name: str) -> int:
        return self.records[(obj, name)]


def parse_filter_functions(text: str, path: str, wanted: Iterable[str]) -> FtraceIndex:
    """Count the records of the ``wanted`` names, by object (``vmlinux`` or the module in brackets)."""
    names = frozenset(wanted)
    records: Counter[tuple[str, str]] = Counter()
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if name not in names:
            continue
        rest = rest.strip()
        obj = rest[1:-1] if rest.startswith("[") and rest.endswith("]") else VMLINUX
        records[(obj, name)] += 1
    return FtraceIndex(path, records)


def read_ftrace_index(root: SystemRoot, wanted: Iterable[str]) -> FtraceIndex | None:
    """The records of the ``wanted`` names, from the first readable available_filter_functions; None when none
    is readable (tracefs not mounted, or not root): the ftrace check is then not made."""
    names = tuple(wanted)
    for path in root.ftrace_functions:
        try:
            text = read_regular_text(path, _LIMIT, errors="replace")
        except OSError:
            continue
        if not text.strip():
            return None  # an empty copy (a tar of tracefs) says nothing: never "no function is traceable"
        return parse_filter_functions(text, path.host, names)
    return None


class FtraceCache:
    """The index of the asked names, kept: ftrace's records change only when modules come and go, so the daemon
    reads the file again only then (the kernel formats every record, 50k+, on each read)."""

    def __init__(self) -> None:
        self._last: tuple[tuple[frozenset[str], tuple[str, ...]], FtraceIndex | None] | None = None

    def read(self, root: SystemRoot, wanted: set[str], modules: tuple[str, ...]) -> FtraceIndex | None:
        """:func:`read_ftrace_index`, again only when ``wanted`` or the loaded ``modules`` changed."""
        key = (frozenset(wanted), modules)
        if self._last is None or self._last[0] != key:
            self._last = (key, read_ftrace_index(root, wanted))
        return self._last[1]
