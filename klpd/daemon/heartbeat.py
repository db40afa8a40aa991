"""Is the loop stuck? The loop thread marks when it stops waiting and when it waits again; the API thread asks.

The systemd watchdog restarts a loop that stops pinging for WatchdogSec (60 s in the shipped unit), but until
then, and on hosts without systemd, ``/v1/health`` would keep serving the last snapshot's "ok". With this it
says "wedged" once one turn of the loop (reading the sources, an evaluation, a reload) has lasted longer than
:data:`WEDGED_AFTER`. An evaluation takes well under a second on metal, a few on a loaded TCG guest, and every
read in it is bounded (the longest: a ``cat`` of /proc/kallsyms that stalls, killed after 60 s).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

WEDGED_AFTER = 30.0


class Heartbeat:
    """Written by the loop thread only; a read from another thread sees one whole float (or None)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._busy_since: float | None = None

    def busy(self) -> None:
        if self._busy_since is None:
            self._busy_since = self._clock()

    def idle(self) -> None:
        self._busy_since = None

    def waiting(self, wait: Callable[[float | None], T], timeout: float | None) -> T:
        """``wait(timeout)`` (the loop's select) counted as idle; busy again once it returns."""
        self.idle()
        try:
            return wait(timeout)
        finally:
            self.busy()

    def busy_for(self) -> float:
        """Seconds the current turn has lasted; 0 while the loop waits."""
        since = self._busy_since
        return 0.0 if since is None else max(0.0, self._clock() - since)
