"""The daemon's event sources over their lifetime: opened as configured, registered with the loop's selector,
dropped when one fails, reopened on a reload; and which of them work (``klpd_source_up``).

Which sources: module uevents (udev's netlink group, or the kernel's where no udevd runs: ``uevents.py``), the
kernel log (the journal's kernel transport, or /dev/kmsg: ``kernel_log.py``) and inotify on the patch directories
(``inotify.py``). A source that cannot be opened is logged and marked down; the daemon runs on without it.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
from collections.abc import Callable, Sequence
from pathlib import Path

from klpd.config import Config, KernelLogSource
from klpd.daemon import uevents
from klpd.daemon.events import Batch, EventSource
from klpd.daemon.inotify import PatchDirWatcher
from klpd.daemon.kernel_log import JournalSource, KmsgSource
from klpd.errors import KlpdError
from klpd.root import SystemRoot

log = logging.getLogger(__name__)

JOURNAL_SOCKET = "/run/systemd/journal/socket"


def open_sources(config: Config, root: SystemRoot) -> tuple[list[EventSource], dict[str, bool]]:
    """The event sources the configuration asks for; those that cannot be opened are logged and marked down."""
    sources: list[EventSource] = []
    health: dict[str, bool] = {}

    def attempt(name: str, opener: Callable[[], EventSource]) -> None:
        try:
            sources.append(opener())
            health[name] = True
        except (KlpdError, OSError) as exc:
            log.warning("event source %s unavailable: %s", name, exc)
            health[name] = False

    kind = uevents.choose_source(config.uevent_source, root)
    if kind is not None:
        attempt(kind, lambda: uevents.UeventSource.open(kind))
    log_kind = _kernel_log_kind(config.kernel_log, root)
    if log_kind == "journal":
        attempt("journal", JournalSource)
    elif log_kind == "kmsg":
        attempt("kmsg", lambda: KmsgSource(root.kmsg))
    attempt("inotify", PatchDirWatcher)
    return sources, health


def _kernel_log_kind(setting: KernelLogSource, root: SystemRoot) -> str | None:
    if setting is KernelLogSource.NONE:
        return None
    if not root.is_live:
        # A fixture tree's kernel log is its dev/kmsg (a FIFO), if it has one; never the host's journal.
        return "kmsg" if root.kmsg.exists() and setting is not KernelLogSource.JOURNAL else None
    if setting is KernelLogSource.AUTO:
        return "journal" if root.path(JOURNAL_SOCKET).exists() else "kmsg"
    return setting.value


def sources_changed(old: Config, new: Config) -> bool:
    """Whether a reload from ``old`` to ``new`` asks for other event sources."""
    return (new.root, new.kernel_log, new.uevent_source) != (old.root, old.kernel_log, old.uevent_source)


class SourceSet:
    """The open event sources, each registered with ``selector`` (its key's data is the source).

    ``injected`` replaces the configured sources (tests pass fakes); those are never closed here, since their
    owner reuses them across a reload.
    """

    def __init__(self, selector: selectors.BaseSelector, injected: Sequence[EventSource] | None = None) -> None:
        self._selector = selector
        self._injected = list(injected) if injected is not None else None
        self.sources: list[EventSource] = []
        self.up: dict[str, bool] = {}  # by source name; a failed one stays False until a reload reopens it
        self._watcher: PatchDirWatcher | None = None

    def open(self, config: Config, root: SystemRoot) -> list[EventSource]:
        if self._injected is not None:
            sources, health = list(self._injected), {s.name: True for s in self._injected}
        else:
            sources, health = open_sources(config, root)
        self.sources, self.up = sources, health
        self._watcher = next((s for s in sources if isinstance(s, PatchDirWatcher)), None)
        for source in sources:
            self._selector.register(source.fileno(), selectors.EVENT_READ, source)
        return sources

    def close(self) -> None:
        for source in self.sources:
            self._unregister(source)
            if self._injected is None:
                source.close()
        self.sources = []
        self._watcher = None

    @property
    def all_up(self) -> bool:
        return all(self.up.values())

    def read(self, source: EventSource) -> Batch | None:
        """What ``source`` has queued; None when it failed, and was dropped until a reload reopens it."""
        try:
            return source.read()
        except (OSError, KlpdError) as exc:
            log.error("event source %s failed, dropping it until a reload: %s", source.name, exc)
        except Exception:  # a bug in a source must not take the agent down; the log has the traceback
            log.exception("event source %s failed unexpectedly, dropping it until a reload", source.name)
        self._unregister(source)
        self.sources.remove(source)
        if source is self._watcher:
            self._watcher = None  # else each evaluation would mark it up again
        if self._injected is None:
            with contextlib.suppress(Exception):
                source.close()
        self.up[source.name] = False
        return None

    def watch(self, dirs: Sequence[Path]) -> None:
        """Point inotify at the patch directories an evaluation found."""
        if self._watcher is not None:
            self._watcher.set_dirs(dirs)
            self.up[self._watcher.name] = not self._watcher.failed

    @property
    def watched(self) -> tuple[Path, ...]:
        return tuple(self._watcher.watched) if self._watcher is not None else ()

    def _unregister(self, source: EventSource) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(source.fileno())
