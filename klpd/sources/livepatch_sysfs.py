"""/sys/kernel/livepatch/: the loaded livepatches (Documentation/ABI/testing/sysfs-kernel-livepatch).

``<patch>/`` (3.19) holds ``enabled`` (3.19), ``transition`` (4.12), ``force`` (4.15, write-only: only its
presence is noted, it is never read), ``replace`` (6.11) and ``stack_order`` (6.14); one ``<object>/`` per
klp_object (3.19, "vmlinux" or a module name, present even when the module is not loaded) with ``patched`` (6.1);
and in it one ``<function,sympos>/`` per patched function (3.19, no attributes; sympos 0 is shown as 1). The
4.16–5.0 ``signal`` attribute is ignored.

An attribute newer than the running kernel is simply absent: None, no problem. An attribute that every kernel
has (``enabled``) missing, or any attribute unreadable or malformed, is None plus a Problem. A patch directory
disappears when its patch is disabled and unpatching completes, so one that vanishes while it is read is left out.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from klpd.errors import FormatError
from klpd.model import Problem, Severity, SysfsFunction, SysfsObject, SysfsPatch
from klpd.numbers import kernel_decimal
from klpd.regular_file import read_regular_text
from klpd.root import HostPath, SystemRoot
from klpd.sources.result import Read, unreadable

T = TypeVar("T")


def parse_bool_attribute(text: str, path: str) -> bool:
    """A ``%d\\n`` boolean attribute (enabled, transition, patched, replace)."""
    value = text.strip()
    if value not in ("0", "1"):
        raise FormatError(path, f"expected 0 or 1, found {value[:40]!r}")
    return value == "1"


def parse_int_attribute(text: str, path: str) -> int:
    """A ``%d\\n`` integer attribute (stack_order)."""
    value = kernel_decimal(text.strip(), signed=True)
    if value is None:
        raise FormatError(path, f"expected an integer, found {text.strip()[:40]!r}")
    return value


def parse_function_dir(name: str) -> SysfsFunction | None:
    """``<function>,<sympos>``: a function name never holds ',' but may hold '.', so split at the last ','."""
    function, comma, sympos = name.rpartition(",")
    position = kernel_decimal(sympos)
    if not comma or not function or position is None:
        return None
    return SysfsFunction(function, position)


class _PatchReader:
    """Reads one patch directory, collecting problems; ``vanished`` when a file disappeared under it."""

    def __init__(self, directory: HostPath) -> None:
        self.directory = directory
        self.problems: list[Problem] = []
        self.vanished = False

    def text(self, path: HostPath, required: bool) -> str | None:
        try:
            return read_regular_text(path)  # a FIFO or device planted under --root: a problem, not a hang
        except FileNotFoundError:
            self.vanished = self.vanished or not self.directory.local.is_dir()
            if required and not self.vanished:
                self.problems.append(
                    Problem(
                        "attribute_missing",
                        Severity.ERROR,
                        f"{path.host}: missing (every kernel with livepatch has it)",
                        subject=path.host,
                    )
                )
            return None
        except OSError as error:
            self.problems.append(unreadable(path.host, error, Severity.ERROR))
            return None

    def flag(self, path: HostPath, required: bool = False) -> bool | None:
        text = self.text(path, required)
        return None if text is None else self._parsed(parse_bool_attribute, text, path)

    def number(self, path: HostPath) -> int | None:
        text = self.text(path, required=False)
        return None if text is None else self._parsed(parse_int_attribute, text, path)

    def _parsed(self, parse: Callable[[str, str], T], text: str, path: HostPath) -> T | None:
        try:
            return parse(text, path.host)
        except FormatError as error:
            self.problems.append(Problem("attribute_malformed", Severity.ERROR, str(error), subject=path.host))
            return None

    def subdirectories(self, directory: HostPath) -> list[str]:
        try:
            with os.scandir(directory.local) as entries:
                return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            self.vanished = self.vanished or not self.directory.local.is_dir()
            return []
        except OSError as error:
            self.problems.append(unreadable(directory.host, error, Severity.ERROR))
            return []

    def obj(self, name: str) -> SysfsObject:
        directory = self.directory.child(name)
        functions = []
        for entry in self.subdirectories(directory):
            function = parse_function_dir(entry)
            if function is None:
                host = directory.child(entry).host
                self.problems.append(
                    Problem(
                        "attribute_malformed",
                        Severity.WARNING,
                        f"{host}: not a '<function>,<sympos>' directory name",
                        subject=host,
                    )
                )
                continue
            functions.append(function)
        functions.sort(key=lambda f: (f.name, f.sympos))
        # Since 6.1.
        return SysfsObject(name, self.flag(directory.child("patched")), tuple(functions))

    def patch(self) -> SysfsPatch:
        d = self.directory
        return SysfsPatch(
            name=d.name,
            enabled=self.flag(d.child("enabled"), required=True),
            transition=self.flag(d.child("transition")),  # since 4.12
            force_present=d.child("force").exists(),  # since 4.15; mode 0200: never read
            replace=self.flag(d.child("replace")),  # since 6.11
            stack_order=self.number(d.child("stack_order")),  # since 6.14
            objects=tuple(self.obj(name) for name in self.subdirectories(d)),
        )


def read_sysfs_patch(root: SystemRoot, name: str) -> Read[SysfsPatch | None]:
    """``/sys/kernel/livepatch/<name>/``; value None when there is no such patch (or it vanished meanwhile)."""
    directory = root.sys_livepatch.child(name)
    if not directory.local.is_dir():
        return Read(None)
    reader = _PatchReader(directory)
    patch = reader.patch()
    if reader.vanished or not directory.local.is_dir():
        return Read(None)
    return Read(patch, tuple(reader.problems))


def read_livepatch(root: SystemRoot) -> Read[tuple[SysfsPatch, ...]]:
    """Every loaded patch, sorted by name. No /sys/kernel/livepatch (no CONFIG_LIVEPATCH): none, no problem."""
    top = root.sys_livepatch
    try:
        with os.scandir(top.local) as entries:
            names = sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return Read(())
    except OSError as error:
        return Read((), (unreadable(top.host, error, Severity.ERROR),))
    patches: list[SysfsPatch] = []
    problems: list[Problem] = []
    for name in names:
        read = read_sysfs_patch(root, name)
        if read.value is not None:
            patches.append(read.value)
            problems.extend(read.problems)
    return Read(tuple(patches), tuple(problems))
