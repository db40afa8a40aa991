"""When the daemon's next evaluation is due, and when systemd's watchdog wants its next ping: pure, no clock.

Every method takes ``now`` (the loop's monotonic clock, in seconds) and returns a new :class:`Schedule`, so the
timing rules are tested with plain numbers and the loop only asks :meth:`Schedule.timeout` how long it may sleep.

Coalescing: the first event of a burst arms a deadline ``coalesce_delay`` ahead; each further event pushes it
back, but never past ``MAX_COALESCE_WAIT`` after the first one, so a boot storm of hundreds of module loads costs
a handful of evaluations and a never-ending trickle still gets one every second. Lost events, a failing source
and a reload make the next evaluation immediate, and later events do not postpone it. Between evaluations the
periodic resync is due ``resync_interval`` after the last one; sooner while a patch is in transition (its blocking
tasks change without any event) and after a failed evaluation (the retry).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

MAX_COALESCE_WAIT = 1.0  # seconds from the first event of a burst to its evaluation, at most
TRANSITION_RECHECK = 2.0  # seconds between evaluations while a patch is in transition
RETRY_AFTER_FAILURE = 10.0  # seconds before retrying an evaluation that raised
IMMEDIATE = -math.inf  # a deadline earlier than any clock reading: due at once


@dataclass(frozen=True)
class Schedule:
    """The loop's timers. ``watchdog_interval`` is None when systemd asks for no watchdog pings."""

    coalesce_delay: float
    resync_interval: float
    watchdog_interval: float | None = None
    deadline: float | None = None  # when the evaluation an event asked for is due
    burst_start: float | None = None  # when the first event since the last evaluation came
    next_resync: float = IMMEDIATE  # before the first evaluation, the resync is the first evaluation
    next_watchdog: float | None = None

    def started(self, now: float) -> Schedule:
        """The loop starts: the first watchdog ping goes out at once (systemd counts from the start)."""
        return replace(self, next_watchdog=now if self.watchdog_interval else None)

    def reconfigured(self, coalesce_delay: float, resync_interval: float) -> Schedule:
        """New intervals from a reloaded configuration; the timers already armed stay as they are."""
        return replace(self, coalesce_delay=coalesce_delay, resync_interval=resync_interval)

    def event(self, now: float) -> Schedule:
        """An event came: arm or push back the coalescing deadline."""
        burst_start = now if self.burst_start is None else self.burst_start
        deadline = min(now + self.coalesce_delay, burst_start + MAX_COALESCE_WAIT)
        if self.deadline is not None:
            # Push a pending evaluation later, never earlier; one due now (lost events, a reload) stays due now.
            deadline = self.deadline if self.deadline == IMMEDIATE else max(deadline, self.deadline)
        return replace(self, deadline=deadline, burst_start=burst_start)

    def immediate(self) -> Schedule:
        """Evaluate now: events were lost, a source failed or the configuration was reloaded."""
        return replace(self, deadline=IMMEDIATE)

    def evaluated(self, now: float, *, in_transition: bool) -> Schedule:
        """An evaluation finished at ``now``; while a patch is in transition, look again soon."""
        interval = min(self.resync_interval, TRANSITION_RECHECK) if in_transition else self.resync_interval
        return replace(self, deadline=None, burst_start=None, next_resync=now + interval)

    def failed(self, now: float) -> Schedule:
        """An evaluation that started at ``now`` raised: retry, sooner than the resync if that is far off."""
        return replace(self, deadline=None, burst_start=None,
                       next_resync=now + min(self.resync_interval, RETRY_AFTER_FAILURE))  # fmt: skip

    def pinged(self, now: float) -> Schedule:
        """A watchdog ping went out at ``now``."""
        return replace(self, next_watchdog=now + (self.watchdog_interval or 1.0))

    def evaluation_due(self, now: float) -> bool:
        return (self.deadline is not None and now >= self.deadline) or now >= self.next_resync

    def watchdog_due(self, now: float) -> bool:
        return self.next_watchdog is not None and now >= self.next_watchdog

    def timeout(self, now: float) -> float:
        """Seconds the loop may sleep in select() before a timer is due (0: one is due now)."""
        due = [self.next_resync]
        if self.deadline is not None:
            due.append(self.deadline)
        if self.next_watchdog is not None:
            due.append(self.next_watchdog)
        return max(0.0, min(due) - now)
