"""Patch and target module files, read for an evaluation: parsed, or a Problem naming the file; never an exception.

:class:`ModuleCache` keeps what was parsed by path while the file's (inode, size, mtime) stay the same, so the
daemon does not parse an unchanged file again.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from klpd.decompress import read_module_bytes
from klpd.elf.klpmodule import parse_patch_module, read_patch_module
from klpd.elf.load_info import build_facts
from klpd.elf.modinfo import parse_modinfo
from klpd.elf.symtab import read_module_symtab
from klpd.errors import FormatError, KlpdError, SourceError
from klpd.model import ModuleSymtab, PatchModule, Problem, Severity
from klpd.root import HostPath


def _file_problem(exc: KlpdError | OSError, path: str) -> Problem:
    reason = exc.reason if isinstance(exc, FormatError | SourceError) else str(exc)
    return Problem("unreadable_file", Severity.ERROR, f"{path}: {reason}", subject=path)


def read_patch_file(where: HostPath) -> tuple[PatchModule | None, Problem | None]:
    """Parse a patch module file; a bad file is a Problem naming it, never an exception."""
    try:
        return read_patch_module(where), None
    except (KlpdError, OSError) as exc:
        return None, _file_problem(exc, where.host)


def module_build_facts(where: HostPath) -> tuple[str | None, int | None]:
    """vermagic= and the .gnu.linkonce.this_module size of an in-tree module: what kernel_build reads through it,
    read by the same code as a patch's (section headers and .modinfo only), so both sides mean the same."""
    return build_facts(read_module_bytes(where), where.host)


def read_installed_file(where: HostPath) -> tuple[PatchModule | None, Problem | None] | None:
    """A file found in a patch directory: parsed, or a Problem naming it; None for an ordinary module (extra/ and
    updates/ hold DKMS drivers too), recognised by its modinfo alone and not parsed further."""
    try:
        data = read_module_bytes(where)
        if not parse_modinfo(data, where.host).livepatch:
            return None
        return parse_patch_module(data, where.host), None
    except (KlpdError, OSError) as exc:
        return None, _file_problem(exc, where.host)


# An installed patch file: where, and what it parsed to (or why it did not).
Found = tuple[HostPath, PatchModule | None, Problem | None]


class ModuleCache:
    """Parsed files by path, valid while (inode, size, mtime) stay the same: unchanged files are not parsed again."""

    def __init__(self) -> None:
        self._patches: dict[str, tuple[tuple[int, int, int], tuple[PatchModule | None, Problem | None] | None]] = {}
        self._symtabs: dict[str, tuple[tuple[int, int, int], ModuleSymtab | Problem]] = {}

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def patch(self, where: HostPath) -> tuple[PatchModule | None, Problem | None] | None:
        """:func:`read_installed_file`, cached."""
        stamp = self._stamp(where.local)
        hit = self._patches.get(str(where.local))
        if stamp is not None and hit is not None and hit[0] == stamp:
            return hit[1]
        result = read_installed_file(where)
        if stamp is not None:
            self._patches[str(where.local)] = (stamp, result)
        return result

    def symtab(self, where: HostPath) -> ModuleSymtab | Problem:
        stamp = self._stamp(where.local)
        hit = self._symtabs.get(str(where.local))
        if stamp is not None and hit is not None and hit[0] == stamp:
            return hit[1]
        result: ModuleSymtab | Problem
        try:
            result = read_module_symtab(where)
        except (KlpdError, OSError) as exc:
            result = _file_problem(exc, where.host)
        if stamp is not None:
            self._symtabs[str(where.local)] = (stamp, result)
        return result

    def retain(self, paths: Iterable[HostPath]) -> None:
        """Forget every entry but these (files that disappeared must not pin memory in a long-running daemon)."""
        keep = {str(p.local) for p in paths}
        for table in (self._patches, self._symtabs):
            for key in [k for k in table if k not in keep]:
                del table[key]
