"""The one error tree of klpd.

Every error klpd raises on purpose derives from :class:`KlpdError` and from the builtin it refines, so callers
that only know the builtin still catch it. Only the entry points (``klpctl``, the daemon) turn these into exit
codes or log lines; everything below them raises.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: klpctl's daemon query should not pay for pathlib
    from pathlib import Path


class KlpdError(Exception):
    """Base of every error klpd raises on purpose."""


class UsageError(KlpdError, ValueError):
    """The command line or an API call was wrong."""


class ConfigError(KlpdError, ValueError):
    """A configuration file is invalid; the message names the file, the key and the problem."""

    def __init__(self, path: Path | str, key: str | None, problem: str) -> None:
        self.path = str(path)
        self.key = key
        self.problem = problem
        where = f"{self.path}: {key}" if key else self.path
        super().__init__(f"{where}: {problem}")


class DaemonUnavailable(KlpdError, ConnectionError):
    """No daemon answers on the socket, or it answered something that is not a status document."""


class SetupError(KlpdError, OSError):
    """A daemon server could not be started (socket path not writable, port in use); the message says what to do."""


class FormatError(KlpdError, ValueError):
    """An input file (ELF module, /proc or /sys file, modules.dep) is malformed.

    ``path`` names the file at fault; ``reason`` says what is wrong with it.
    """

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ElfFormatError(FormatError):
    """A module file is not a well-formed ELF relocatable object (corrupt, truncated, hostile)."""


class SourceError(KlpdError, OSError):
    """A system source (proc/sys file, directory) could not be read at all."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
