"""The daemon's own counters: events and losses per source, evaluations, the module loads the kernel refused.

:class:`Counters` is the loop's running tally (mutable, touched by the loop thread only); :class:`DaemonStats` is
its frozen copy in each published snapshot, which :mod:`klpd.outputs.metrics` renders (it reads it through its
``DaemonCounters`` protocol, so the outputs never import the daemon).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from klpd.daemon.events import Batch, Event
from klpd.daemon.kernel_log import LivepatchEvent, LivepatchMessage
from klpd.daemon.transitions import Transition, blocking_counts, start_times

log = logging.getLogger(__name__)

RECENT_EVENTS = 50
RECENT_REFUSALS = 20


def _empty() -> Mapping[Any, Any]:
    return MappingProxyType({})


@dataclass(frozen=True)
class DaemonStats:
    """What only the daemon knows, as of one snapshot. Counters count since the daemon started."""

    events: Mapping[str, int] = field(default_factory=_empty)  # by source
    lost_events: Mapping[str, int] = field(default_factory=_empty)  # by source
    evaluations: int = 0
    evaluation_duration_seconds: float | None = None  # of the evaluation that produced the snapshot
    evaluation_timestamp_seconds: float | None = None  # Unix time it finished
    source_up: Mapping[str, bool] = field(default_factory=_empty)  # by source
    refusals: Mapping[tuple[str, str], int] = field(default_factory=_empty)  # (patch, object)
    transition_start: Mapping[str, float] = field(default_factory=_empty)  # patch -> Unix time
    # patch -> tasks whose patch_state differs from the target; a patch is missing when that was unreadable
    transition_blocking_tasks: Mapping[str, int] = field(default_factory=_empty)


@dataclass
class Counters:
    """What the event sources brought so far, counted as the loop reads it."""

    events: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)
    refusals: dict[tuple[str, str], int] = field(default_factory=dict)
    recent_events: deque[Event] = field(default_factory=lambda: deque(maxlen=RECENT_EVENTS))
    recent_refusals: deque[Event] = field(default_factory=lambda: deque(maxlen=RECENT_REFUSALS))

    def add_source(self, name: str) -> None:
        # Counters exist from the start, so the first event is an increase that rate() and alerts can see.
        self.events.setdefault(name, 0)
        self.lost.setdefault(name, 0)

    def count(self, name: str, batch: Batch) -> list[tuple[Event, LivepatchMessage]]:
        """Count a source's batch; returns its livepatch kernel messages (for the transition tracker)."""
        if batch.events:
            self.events[name] = self.events.get(name, 0) + len(batch.events)
            self.recent_events.extend(batch.events)
        if batch.lost:
            self.lost[name] = self.lost.get(name, 0) + batch.lost
        messages = [(e, e.detail) for e in batch.events if isinstance(e.detail, LivepatchMessage)]
        for event, msg in messages:
            self._refusal(event, msg)
        return messages

    def _refusal(self, event: Event, msg: LivepatchMessage) -> None:
        if msg.kind is LivepatchEvent.MODULE_LOAD_REFUSED and msg.patch and msg.module:
            key = (msg.patch, msg.module)
            self.refusals[key] = self.refusals.get(key, 0) + 1
            self.recent_refusals.append(event)
            log.warning("kernel refused to load module %s: %s", msg.module, msg.text)

    def freeze(
        self,
        *,
        evaluations: int,
        duration: float | None,
        timestamp: float | None,
        source_up: Mapping[str, bool],
        transitions: Sequence[Transition],
    ) -> DaemonStats:
        """The counters as of now, with what the last evaluation found, for a snapshot."""
        return DaemonStats(
            events=MappingProxyType(dict(self.events)),
            lost_events=MappingProxyType(dict(self.lost)),
            evaluations=evaluations,
            evaluation_duration_seconds=duration,
            evaluation_timestamp_seconds=timestamp,
            source_up=MappingProxyType(dict(source_up)),
            refusals=MappingProxyType(dict(self.refusals)),
            transition_start=MappingProxyType(dict(start_times(transitions))),
            transition_blocking_tasks=MappingProxyType(dict(blocking_counts(transitions))),
        )
