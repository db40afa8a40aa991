"""What every event source of the daemon hands the loop: events, and how many were lost.

A source is anything with a file descriptor the loop can select() on and a non-blocking ``read()``; tests inject
fakes with the same two methods. Lost events (a full netlink buffer, an overwritten kernel log, an inotify queue
overflow) are counted, and each loss makes the loop resync at once, since nobody knows what was missed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened. ``time`` is Unix time; ``kind`` is source-specific ("add", "refused", "created")."""

    time: float
    source: str  # "udev", "kernel", "kmsg", "journal", "inotify", ...
    kind: str
    subject: str  # the module, patch or file it is about
    message: str | None = None  # the kernel's message, for kernel log events
    detail: Any = field(default=None, compare=False)  # the parsed message (kernel_log.LivepatchMessage)

    def as_json(self) -> dict[str, Any]:
        return {"time": self.time, "source": self.source, "kind": self.kind, "subject": self.subject,
                "message": self.message}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Batch:
    """What one ``read()`` of a source returned: its events, and how many times events were lost meanwhile."""

    events: tuple[Event, ...] = ()
    lost: int = 0


class EventSource(Protocol):
    """An event source of the loop. ``read()`` never blocks; it returns what is queued now."""

    @property
    def name(self) -> str: ...

    def fileno(self) -> int: ...

    def read(self) -> Batch: ...

    def close(self) -> None: ...
