"""One evaluation of the host for the daemon, and its failure policy: a failed evaluation is logged and reported,
never raised into the loop.

A source the evaluation cannot read (``/proc/kallsyms`` without permission, say) raises KlpdError or OSError; a
bug raises anything else. Either way the daemon keeps its last good status, marks the evaluation's source down
(``klpd_source_up{source="kallsyms"} 0``) and publishes the reason (:func:`klpd.daemon.snapshot.failed_status`);
the schedule retries it (:data:`klpd.daemon.schedule.RETRY_AFTER_FAILURE`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable
from typing import Protocol

from klpd.collect import Evaluation
from klpd.errors import KlpdError
from klpd.model import HostStatus

log = logging.getLogger(__name__)


class EvaluatorLike(Protocol):
    def evaluate(self) -> Evaluation: ...


def malloc_trim() -> Callable[[], object]:
    """glibc's malloc_trim(0): an evaluation's transient parse buffers (megabytes for /proc/kallsyms) go back to
    the system instead of staying in the heap's free lists, which is most of a long-running daemon's RSS."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl): nothing to trim
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


class Evaluations:
    """Runs the evaluator and keeps what the daemon reports of the evaluations so far."""

    def __init__(self, evaluator: EvaluatorLike, wall_clock: Callable[[], float] = time.time) -> None:
        self.evaluator = evaluator
        self._wall = wall_clock
        self.count = 0  # that succeeded
        self.duration: float | None = None  # seconds the last good one took
        self.timestamp: float | None = None  # Unix time the last good one finished
        self.source_up: dict[str, bool] = {}  # the data sources (kallsyms, ...) as the last one found them
        self.last_status: HostStatus | None = None

    def run(self) -> tuple[Evaluation, float] | str:
        """The evaluation and the Unix time it finished, or the reason it failed (logged here)."""
        try:
            evaluation = self.evaluator.evaluate()
        except (KlpdError, OSError) as exc:
            log.error("evaluation failed: %s", exc)
            return self._failed(str(exc))
        except Exception:  # a bug must not take the agent down; the log has the traceback
            log.exception("evaluation failed unexpectedly")
            return self._failed("internal error (see the log)")
        self.count += 1
        self.duration = evaluation.duration_seconds
        self.timestamp = self._wall()
        self.source_up = dict(evaluation.source_up)
        self.last_status = evaluation.status
        return evaluation, self.timestamp

    def _failed(self, reason: str) -> str:
        # Shown on kallsyms, the source every symbol resolution needs, so klpd_source_up has the failure until an
        # evaluation succeeds again (the next good one replaces this whole mapping).
        self.source_up = {**self.source_up, "kallsyms": False}
        return reason
