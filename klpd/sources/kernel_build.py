"""What the running kernel was built with, from files of its release: vermagic, sizeof(struct module), symbol CRCs.

The kernel exposes none of these at run time, but every module built with it carries the first two, and the build
tree records the third:

- **vermagic** (``check_modinfo()`` → ``same_magic()``): the ``vermagic=`` string of ``.modinfo`` of an in-tree
  module of the release — the first ``kernel/`` entry of modules.dep (depmod's order), decompressed as needed;
- **sizeof(struct module)**: that module's ``.gnu.linkonce.this_module`` sh_size (checked against a patch's by
  ``elf_validity_cache_index_mod()`` since 6.12);
- **CRCs** (``check_version()``, CONFIG_MODVERSIONS): ``/lib/modules/<release>/build/Module.symvers`` (Debian's
  linux-headers-<release>), else ``/boot/symvers-<release>.gz`` (RHEL, Fedora, SUSE), as modpost's write_dump()
  writes it, one export a line, tab-separated:

  - 5.10+: ``0x<crc>\\t<symbol>\\t<module>\\tEXPORT_SYMBOL[_GPL]\\t<namespace>`` (namespace may be empty);
  - 5.4-5.9: ``0x<crc>\\t<symbol>\\t<namespace>\\t<module>\\t<export type>`` (namespaces arrived in 5.4);
  - up to 5.3: ``0x<crc>\\t<symbol>\\t<module>\\t<export type>``.

  The column holding ``EXPORT_*`` tells the layouts apart. ``<module>`` is ``vmlinux`` or the module's build path
  without ``.ko`` (``fs/btrfs/btrfs``). A kernel without CONFIG_MODVERSIONS writes 0x00000000 for every CRC.

Reading the in-tree module needs the ELF reader, which sits beside this layer, so the caller passes it in as
``inspect`` (klpd.collect does). :class:`KernelBuildCache` keeps what was parsed while the files' (inode, size,
mtime) stay the same: the daemon re-evaluates on every module event and Module.symvers is ~1.5 MB.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

from klpd.decompress import GZIP_MAGIC, decompress
from klpd.errors import FormatError, KlpdError, SourceError
from klpd.model import Problem, Severity
from klpd.model_loader import KernelBuild
from klpd.names import module_name_from_filename
from klpd.regular_file import read_regular
from klpd.root import HostPath, SystemRoot
from klpd.sources.modules_dep import ModulesDep
from klpd.sources.result import Read, malformed_lines, unreadable

# A module file -> (vermagic, .gnu.linkonce.this_module sh_size); raises KlpdError or OSError for a bad file.
ModuleInspector = Callable[[HostPath], tuple[str | None, int | None]]

SYMVERS_SIZE_LIMIT = 64 << 20  # Module.symvers of an allmodconfig build is ~5 MB
_Stamp = tuple[int, int, int]
_CRC = re.compile(r"0x[0-9a-fA-F]{1,16}")
_V = TypeVar("_V")
# What the checks read of Module.symvers: CRCs, exporting modules (by symbol), and the file they came from.
Exports = tuple[Mapping[str, int], Mapping[str, str], str]


@dataclass(frozen=True, slots=True)
class Symvers:
    """A parsed Module.symvers: per exported symbol its CRC and the module exporting it (shared strings)."""

    path: str
    crcs: dict[str, int]
    exporters: dict[str, str]  # symbol -> "vmlinux" or the module's name, as /proc/modules lists it ("btrfs")


def _symvers_line(line: str) -> tuple[str, int, str] | None:
    """(symbol, crc, module) of one line in any of the three layouts, or None."""
    fields = line.split("\t")
    if len(fields) == 5 and fields[3].startswith("EXPORT_"):
        crc, symbol, module = fields[0], fields[1], fields[2]  # 5.10+
    elif len(fields) == 5 and fields[4].startswith("EXPORT_"):
        crc, symbol, module = fields[0], fields[1], fields[3]  # 5.4-5.9
    elif len(fields) == 4 and fields[3].startswith("EXPORT_"):
        crc, symbol, module = fields[0], fields[1], fields[2]  # up to 5.3
    else:
        return None
    # int() would also take '_', blanks and a sign, which the kernel's 0x%08x never writes
    if _CRC.fullmatch(crc) is None or not symbol or not symbol.isprintable() or " " in symbol or not module:
        return None
    return symbol, int(crc, 16), module


# Exports every kernel klpd judges has: module_layout (up to 6.x's modversions) or klp_enable_patch (livepatch).
# A Module.symvers with neither is not the running kernel's whole export list (empty, cut short, another build).
_ANCHORS = ("module_layout", "klp_enable_patch")


class SymversLookup:
    """Module.symvers answered by searching its text for the few symbols asked (a one-shot klpctl run: a full
    parse costs ~25 ms for Debian 6.1's 24,683 exports). Each line found is read by the full parse's own rule, so
    the answers are the same; its malformed lines are not reported."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._found: dict[str, tuple[int, str] | None] = {}
        self._all: Symvers | None = None

    def whole(self) -> Symvers:
        """Every line, parsed: for a caller that lists or counts the exports rather than asking for some."""
        if self._all is None:
            self._all = parse_symvers(self._text, "Module.symvers").value
        return self._all

    def entry(self, symbol: str) -> tuple[int, str] | None:
        """(CRC, exporting module's name) of ``symbol``, or None. Like the full parse, the last valid line of a
        symbol listed twice wins; each line is looked at once, so a hostile file costs linear time."""
        if symbol in self._found:
            return self._found[symbol]
        text, needle, found = self._text, f"\t{symbol}\t", None
        at = text.find(needle) if symbol and symbol.isprintable() and " " not in symbol else -1
        while at >= 0:
            start = text.rfind("\n", 0, at) + 1
            end = text.find("\n", at)
            end = len(text) if end < 0 else end
            line = _symvers_line(text[start:end].removesuffix("\r"))
            if line is not None and line[0] == symbol:
                found = (line[1], module_name_from_filename(line[2]))
            at = text.find(needle, end)  # the next line: a line is read once however often the needle occurs in it
        self._found[symbol] = found
        return found


class _Column(Mapping[str, _V]):
    """One column of a :class:`SymversLookup` as a mapping: what the prediction asks (get, in) is a search; listing
    or counting it parses the whole file."""

    def __init__(self, lookup: SymversLookup, column: Callable[[tuple[int, str]], _V]) -> None:
        self._lookup = lookup
        self._column = column

    def __getitem__(self, symbol: str) -> _V:
        entry = self._lookup.entry(symbol)
        if entry is None:
            raise KeyError(symbol)
        return self._column(entry)

    def __iter__(self) -> Iterator[str]:
        return iter(self._lookup.whole().crcs)

    def __len__(self) -> int:
        return len(self._lookup.whole().crcs)


def parse_symvers(text: str, path: str) -> Read[Symvers]:
    """Every well-formed line of a Module.symvers; odd lines are skipped and reported in one Problem."""
    crcs: dict[str, int] = {}
    exporters: dict[str, str] = {}
    modules: dict[str, str] = {}  # one string per module name, not one per line
    skipped = 0
    first: tuple[int, str] | None = None
    # Lines end at "\n" alone, as modpost writes them: str.splitlines() would also cut at \x1c-\x1e, \x85...
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        if not line:
            continue
        entry = _symvers_line(line)
        if entry is None:
            skipped += 1
            first = first or (number, line)
            continue
        symbol, crc, module = entry
        crcs[symbol] = crc
        name = modules.get(module)
        if name is None:  # Module.symvers names a module by its build path ("fs/btrfs/btrfs"); /proc/modules by
            name = modules[module] = sys.intern(module_name_from_filename(module))  # KBUILD_MODNAME
        exporters[symbol] = name
    problems = () if first is None else (malformed_lines(path, skipped, *first),)
    return Read(Symvers(path, crcs, exporters), problems)


def _symvers_text(path: HostPath, compressed: bool) -> str:
    data = read_regular(path, SYMVERS_SIZE_LIMIT)
    if compressed:  # decompress() is linear in time and bounds the members (a hostile .gz cannot stall klpd)
        if not data.startswith(GZIP_MAGIC):
            raise OSError(0, "not a readable gzip file: no gzip magic")
        try:
            data = decompress(data, path.host, SYMVERS_SIZE_LIMIT)
        except FormatError as error:
            raise OSError(0, f"not a readable gzip file: {error.reason}") from None
    return data.decode("utf-8", "surrogateescape")


def _stamp(path: HostPath) -> _Stamp | None:
    try:
        st = os.stat(path.local)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class KernelBuildCache:
    """The last Module.symvers and in-tree module parsed, reused while the file's (inode, size, mtime) holds.

    One entry of each: the release does not change under a running daemon. Only successful reads are kept, so a
    file made readable later is read again.
    """

    def __init__(self) -> None:
        self._symvers: tuple[str, _Stamp, Read[Symvers]] | None = None
        self._module: tuple[str, _Stamp, tuple[str | None, int | None]] | None = None

    def symvers(self, path: HostPath, compressed: bool) -> Read[Symvers]:
        """Raises OSError when the file cannot be read."""
        stamp = _stamp(path)
        if stamp is not None and self._symvers is not None and self._symvers[:2] == (str(path.local), stamp):
            return self._symvers[2]
        read = parse_symvers(_symvers_text(path, compressed), path.host)
        if stamp is not None:
            self._symvers = (str(path.local), stamp, read)
        return read

    def module(self, path: HostPath, inspect: ModuleInspector) -> tuple[str | None, int | None]:
        """Raises what ``inspect`` raises."""
        stamp = _stamp(path)
        if stamp is not None and self._module is not None and self._module[:2] == (str(path.local), stamp):
            return self._module[2]
        found = inspect(path)
        if stamp is not None:
            self._module = (str(path.local), stamp, found)
        return found


def _warning(code: str, path: str, message: str) -> Problem:
    return Problem(code, Severity.WARNING, f"{path}: {message}", subject=path)


def _crcs(root: SystemRoot, release: str, cache: KernelBuildCache, problems: list[Problem], *,
          one_shot: bool) -> Exports | None:  # fmt: skip
    headers, boot = root.module_symvers(release), root.boot_symvers(release)
    found = False
    for path, compressed in ((headers, False), (boot, True)):
        try:
            if one_shot:
                lookup = SymversLookup(_symvers_text(path, compressed))
                exports: Exports = (_Column(lookup, lambda e: e[0]), _Column(lookup, lambda e: e[1]), path.host)
            else:
                read = cache.symvers(path, compressed)
                problems += read.problems
                exports = (read.value.crcs, read.value.exporters, read.value.path)
        except FileNotFoundError:
            continue
        except OSError as error:
            problems.append(unreadable(path.host, error))
            found = True
            continue
        if not any(anchor in exports[0] for anchor in _ANCHORS):
            message = f"lists neither {' nor '.join(_ANCHORS)}: not this kernel's export list; not used"
            problems.append(_warning("symvers_incomplete", path.host, message))
            found = True
            continue
        return exports
    if not found:
        message = (
            f"missing, and so is {boot.host}: the symbol CRCs of kernel {release} are unknown"
            f" (install linux-headers-{release} or the kernel package's symvers file)"
        )
        problems.append(_warning("source_missing", headers.host, message))
    return None


def _in_tree_module(root: SystemRoot, release: str, dep: ModulesDep) -> HostPath | None:
    tree = root.modules_dir(release).child("kernel").host + "/"
    return next((path for path in dep.paths() if path.host.startswith(tree)), None)


def _module(root: SystemRoot, release: str, dep: ModulesDep, *, inspect: ModuleInspector, cache: KernelBuildCache,
            problems: list[Problem]) -> tuple[str | None, str | None, int | None]:  # fmt: skip
    """(vermagic, the module read, this_module size)."""
    module = _in_tree_module(root, release, dep)
    if module is None:
        problems.append(
            _warning(
                "no_in_tree_module",
                dep.path,
                f"no module under kernel/: the vermagic and struct module size of kernel {release} are unknown",
            )
        )
        return None, None, None
    try:
        vermagic, size = cache.module(module, inspect)
    except (KlpdError, OSError) as error:
        reason = error.reason if isinstance(error, FormatError | SourceError) else str(error)
        problems.append(_warning("unreadable_file", module.host, f"{reason}: the kernel's vermagic is unknown"))
        return None, module.host, None
    for value, what in ((vermagic, "no vermagic= in .modinfo"), (size, "no .gnu.linkonce.this_module section")):
        if value is None:
            problems.append(_warning("in_tree_module_incomplete", module.host, what))
    return vermagic, module.host, size


def read_kernel_build(
    root: SystemRoot,
    release: str,
    dep: ModulesDep,
    inspect: ModuleInspector,
    cache: KernelBuildCache | None = None,
    *,
    one_shot: bool = False,
) -> Read[KernelBuild]:
    """What kernel ``release`` was built with; fields None (with a warning) where no file of the release tells.
    ``one_shot``: the caller asks about a few symbols once (klpctl), so Module.symvers is searched, not parsed."""
    cache = cache or KernelBuildCache()
    problems: list[Problem] = []
    vermagic, module, size = _module(root, release, dep, inspect=inspect, cache=cache, problems=problems)
    symvers = _crcs(root, release, cache, problems, one_shot=one_shot)
    build = KernelBuild(
        vermagic=vermagic,
        vermagic_source=module if vermagic is not None else None,
        this_module_size=size,
        crcs=symvers[0] if symvers is not None else None,
        crcs_source=symvers[2] if symvers is not None else None,
        exports=symvers[1] if symvers is not None else None,
    )
    return Read(build, tuple(problems))
