"""The daemon's published answer: one immutable :class:`DaemonSnapshot` per evaluation, every byte a reader may
ask for rendered in it once.

A snapshot holds the HostStatus, the daemon's counters (:class:`~klpd.daemon.stats.DaemonStats`), the ``daemon``
part of the ``klpd.status/1`` document, and the rendered /v1/status and /v1/health JSON and /metrics text. The
servers (in their own threads) only copy those bytes: a query or a scrape never computes anything, and the
loop swaps a whole snapshot in with one assignment, so a reader never sees half of one.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from klpd import __version__
from klpd.daemon.stats import Counters, DaemonStats
from klpd.daemon.transitions import Transition
from klpd.model import HostStatus, Problem, Severity
from klpd.outputs.json import status_document
from klpd.outputs.metrics import MetricsSnapshot, patch_state, render
from klpd.predict.verdicts import patch_has_problems, undetermined
from klpd.sources.host_identity import HostIdentity


@dataclass(frozen=True)
class DaemonSnapshot:
    """Everything a reader may ask for, as of one evaluation. Immutable; replaced as a whole."""

    status: HostStatus
    stats: DaemonStats
    daemon: Mapping[str, Any]  # the "daemon" part of the status document
    transitions: tuple[Transition, ...]
    summary: str  # one line, for STATUS= and the log
    status_json: bytes
    health_json: bytes
    metrics_text: bytes  # klpd's metrics in the text exposition format (the process_* ones stay live)


@dataclass(frozen=True)
class Published:
    """The daemon's state a snapshot is built from, besides the status: its counters and where it looks."""

    stats: DaemonStats
    counters: Counters  # for the recent events and refusals; read here, in the loop thread
    started: float  # Unix time the daemon started
    watched_dirs: tuple[str, ...]  # as the host names them
    identity: HostIdentity | None = None  # which host and boot: in both documents


def summarize(status: HostStatus) -> str:
    """The one-line STATUS= text: how many patches in which state, and how many with problems (as klpctl counts
    them: a refused module load or a failing symbol too)."""
    states = Counter(patch_state(p) for p in status.patches)
    bad = sum(1 for p in status.patches if patch_has_problems(p))
    parts = [f"{n} {s.replace('_', ' ')}" for s, n in sorted(states.items())]
    text = f"{len(status.patches)} patches" + (f" ({', '.join(parts)})" if parts else "")
    if bad:
        text += f", {bad} with problems"
    if undetermined(status):
        text += ", sources unreadable"
    return text


def failed_status(last: HostStatus | None, reason: str) -> tuple[HostStatus, str]:
    """What a failed evaluation publishes, and its summary: the last good status (or an empty one) with the reason
    as an error problem, so /v1/health says "error" and klpctl status says it could not determine."""
    problem = Problem("evaluation_failed", Severity.ERROR, f"evaluation failed: {reason}")
    if last is not None:
        return replace(last, problems=(*last.problems, problem)), problem.message
    return HostStatus("", None, None, False, False, (), (problem,)), problem.message


def daemon_document(state: Published, transitions: Sequence[Transition]) -> dict[str, Any]:
    """The ``daemon`` object of the daemon's status document (klpctl status prints it)."""
    stats, c = state.stats, state.counters
    sources = {
        name: {"up": up, "events": stats.events.get(name, 0), "lost": stats.lost_events.get(name, 0)}
        for name, up in sorted(stats.source_up.items())
    }
    return {
        "version": __version__,
        "pid": os.getpid(),
        "started": state.started,
        "evaluations": stats.evaluations,
        "last_evaluation": stats.evaluation_timestamp_seconds,
        "evaluation_duration_seconds": stats.evaluation_duration_seconds,
        "sources": sources,
        "watched_dirs": list(state.watched_dirs),
        "refusals": [
            {"time": e.time, "patch": e.detail.patch, "module": e.detail.module, "message": e.message}
            for e in c.recent_refusals
        ],
        "refusal_counts": [
            {"patch": p, "module": m, "count": n} for (p, m), n in sorted(stats.refusals.items())
        ],
        "transitions": [t.as_json() for t in transitions],
        "events": [e.as_json() for e in reversed(c.recent_events)],  # newest first
    }


def build_snapshot(
    status: HostStatus, transitions: Sequence[Transition], state: Published, error: str | None = None
) -> DaemonSnapshot:
    """Render every document of one evaluation. ``error``: the evaluation failed, and ``status`` is the last
    good one (or empty) carrying the reason."""
    stats = state.stats
    daemon = daemon_document(state, transitions)
    summary = error or summarize(status)
    identity = state.identity.as_json() if state.identity is not None else {}
    health = {
        "status": "error" if error else "ok",
        "summary": summary,
        **identity,
        "evaluations": stats.evaluations,
        "last_evaluation": stats.evaluation_timestamp_seconds,
        "sources": dict(sorted(stats.source_up.items())),
    }
    return DaemonSnapshot(
        status=status,
        stats=stats,
        daemon=MappingProxyType(daemon),
        transitions=tuple(transitions),
        summary=summary,
        status_json=(json.dumps(status_document(status, "daemon", daemon, identity), indent=2) + "\n").encode(),
        health_json=(json.dumps(health) + "\n").encode(),
        metrics_text=render(MetricsSnapshot(status, stats)),
    )

