"""How every reader in ``klpd/sources`` hands back what it found and what was wrong with it.

One rule for all readers:

- Every ``read_*`` (and ``find_patch_files``) returns :class:`Read`: the value and the problems met while reading
  it. So does every ``parse_*`` of a whole file that skips odd lines (``parse_kallsyms``, ``parse_proc_modules``,
  ``parse_modules_dep``). The value's own types (``Kallsyms``, ``ModulesDep``) carry no problems.
- A reader raises :class:`klpd.errors.SourceError` only for a source that cannot be read and without which no
  verdict can be given: ``/proc/kallsyms`` (every symbol), ``/proc/modules`` when it exists (which targets are
  loaded), the kernel release under a root other than ``/``. A pure ``parse_*`` of a value that yields nothing
  (one attribute, the release) raises :class:`klpd.errors.FormatError`; its reader turns that into a Problem, or
  into SourceError where the rule above says so.
- Everything else — an odd line skipped, an attribute missing or unreadable, an optional file absent — is a
  :class:`klpd.model.Problem` next to the value, and reading carries on.

Readers take their paths from :class:`klpd.root.SystemRoot` as :class:`klpd.root.HostPath` values: they read
``local`` and name ``host`` in problems.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from klpd.model import Problem, Severity

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Read(Generic[T]):
    """A reader's value and the problems met while reading it (empty when all went well)."""

    value: T
    problems: tuple[Problem, ...] = ()


def unreadable(path: str, error: OSError, severity: Severity = Severity.WARNING) -> Problem:
    """A Problem for a file or directory that exists (or should) but could not be read."""
    return Problem("source_unreadable", severity, f"{path}: cannot read: {os_reason(error)}", subject=path)


def malformed_lines(path: str, count: int, first_line: int, first_text: str) -> Problem:
    """One Problem per file for its skipped lines: how many, and the first of them (quoted, cut short)."""
    shown = first_text if len(first_text) <= 80 else first_text[:77] + "..."
    plural = "line" if count == 1 else "lines"
    return Problem(
        "malformed_lines",
        Severity.WARNING,
        f"{path}: skipped {count} malformed {plural}, first at line {first_line}: {shown!r}",
        subject=path,
    )


def os_reason(error: OSError) -> str:
    """The short reason for an OSError, as SourceError messages give it."""
    return error.strerror or type(error).__name__
