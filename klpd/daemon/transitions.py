"""Patches in transition: since when, towards which state, and which tasks block them.

``/proc/<pid>/task/<tid>/patch_state`` (since 4.12, CONFIG_LIVEPATCH) is ``-1`` (KLP_UNDEFINED: no transition
concerns the task), ``0`` (unpatched) or ``1`` (patched). During a transition every task starts in the initial
state and is switched when it is found outside the patched functions; a task BLOCKS the transition while its
state differs from the target, and the target is the transitioning patch's ``enabled`` (kernel/livepatch/
transition.c). The file is mode 0400 and owned by the task's user: reading other users' tasks needs root or
CAP_DAC_READ_SEARCH, so a scan says how many tasks it could not read, and why.

The kernel retries about once a second, signals the remaining tasks every 15 tries ("signaling remaining
tasks"), and an administrator may force the transition ("forcing remaining tasks to the patched state"); both
are only seen in the kernel log, which is why the tracker takes kernel log messages as well as evaluations.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from klpd.daemon.kernel_log import LivepatchEvent, LivepatchMessage
from klpd.model import HostStatus
from klpd.root import SystemRoot
from klpd.sources.tasks import KLP_PATCHED, KLP_UNPATCHED, TaskScan, scan_blocking_tasks


@dataclass(frozen=True)
class Transition:
    """One patch in transition, as of one snapshot."""

    patch: str
    target: str  # "patched" or "unpatched"
    since: float  # Unix time
    since_source: str  # "kernel_log" (the kernel said it started) or "first_seen" (klpd noticed it)
    scan: TaskScan | None  # None: /proc not scanned (a transition whose target is unknown)
    signals: int = 0  # "signaling remaining tasks" seen during this transition
    last_signal: float | None = None
    forced: float | None = None  # when "forcing remaining tasks to the patched state" was seen

    def as_json(self) -> dict[str, Any]:
        scan = self.scan
        return {
            "patch": self.patch,
            "target": self.target,
            "since": self.since,
            "since_source": self.since_source,
            "blocking_count": scan.blocking if scan is not None and scan.complete else None,
            "blocking_tasks": [
                {"pid": t.pid, "tid": t.tid, "comm": t.comm, "patch_state": t.patch_state} for t in scan.tasks
            ] if scan is not None else [],
            "tasks_scanned": scan.scanned if scan is not None else 0,
            "tasks_unreadable": scan.unreadable if scan is not None else 0,
            "tasks_note": scan.reason if scan is not None else "target state unknown (enabled unreadable)",
            "signals": self.signals,
            "last_signal": self.last_signal,
            "forced": self.forced,
        }  # fmt: skip


@dataclass
class _Seen:
    since: float
    since_source: str
    target: str | None = None
    signals: int = 0
    last_signal: float | None = None
    forced: float | None = None


@dataclass
class TransitionTracker:
    """Remembers when each transition started and what the kernel log said about it, across evaluations."""

    _seen: dict[str, _Seen] = field(default_factory=dict)
    _log_start: dict[str, tuple[float, str]] = field(default_factory=dict)  # patch -> (time, target) from the log
    _pending_signals: list[tuple[str, float]] = field(default_factory=list)

    def observe(self, msg: LivepatchMessage, when: float) -> None:
        """A kernel log message. Signalling and forcing name no patch: they concern the one in transition."""
        if msg.kind in (LivepatchEvent.TRANSITION_INIT, LivepatchEvent.TRANSITION_START) and msg.patch:
            self._log_start[msg.patch] = (when, msg.target or "")
            seen = self._seen.get(msg.patch)
            if seen is not None and seen.target != msg.target:  # reversed: a new transition
                del self._seen[msg.patch]
            elif seen is not None and seen.since_source == "first_seen" and when <= seen.since:
                # An evaluation saw the transition before its log line was read: the kernel's time is the truth.
                seen.since, seen.since_source = when, "kernel_log"
        elif msg.kind is LivepatchEvent.TRANSITION_COMPLETE and msg.patch:
            self._log_start.pop(msg.patch, None)
            self._seen.pop(msg.patch, None)
        elif msg.kind in (LivepatchEvent.SIGNALING, LivepatchEvent.FORCING):
            for seen in self._seen.values():
                _note(seen, msg.kind, when)
            if not self._seen:
                self._pending_signals.append((msg.kind.value, when))

    def update(self, status: HostStatus, now: float, root: SystemRoot | None) -> tuple[Transition, ...]:
        """The transitions in ``status``; scans /proc for blocking tasks when ``root`` is given."""
        current: dict[str, Any] = {p.name: p for p in status.patches if p.loaded and p.transition}
        for name in [n for n in self._seen if n not in current]:
            del self._seen[name]
        out: list[Transition] = []
        for name, patch in current.items():
            target = None if patch.enabled is None else ("patched" if patch.enabled else "unpatched")
            seen = self._seen.get(name)
            if seen is None or (target is not None and seen.target not in (None, target)):
                logged = self._log_start.get(name)
                if logged is not None and (target is None or logged[1] == target):
                    seen = _Seen(logged[0], "kernel_log", target)
                else:
                    seen = _Seen(now, "first_seen", target)
                for kind, when in self._pending_signals:
                    _note(seen, LivepatchEvent(kind), when)
                self._seen[name] = seen
            seen.target = target
            scan = None
            if root is not None and target is not None:
                scan = scan_blocking_tasks(root, KLP_PATCHED if target == "patched" else KLP_UNPATCHED)
            out.append(Transition(name, target or "unknown", seen.since, seen.since_source, scan,
                                  seen.signals, seen.last_signal, seen.forced))  # fmt: skip
        self._pending_signals.clear()
        return tuple(out)


def _note(seen: _Seen, kind: LivepatchEvent, when: float) -> None:
    if kind is LivepatchEvent.SIGNALING:
        seen.signals += 1
        seen.last_signal = when
    else:
        seen.forced = when


def start_times(transitions: Iterable[Transition]) -> Mapping[str, float]:
    return {t.patch: t.since for t in transitions}


def blocking_counts(transitions: Iterable[Transition]) -> Mapping[str, int]:
    """Blocking task counts for the metrics: only where every task could be read (a partial count misleads)."""
    return {t.patch: t.scan.blocking for t in transitions if t.scan is not None and t.scan.complete}
