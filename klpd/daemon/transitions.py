"""Patches in transition: since when, towards which state, and which tasks block them.

``/proc/<pid>/task/<tid>/patch_state`` (since 4.12, CONFIG_LIVEPATCH) is ``-1`` (KLP_UNDEFINED: no transition
concerns the task), ``0`` (unpatched) or ``1`` (patched). During a transition every task starts in the initial
state and is switched when it is found outside the patched functions; a task BLOCKS the transition while its
state differs from the target. The file is mode 0400 and owned by the task's user: reading other users' tasks
needs root or CAP_DAC_READ_SEARCH, so a scan says how many tasks it could not read, and why.

The target is the patch's ``enabled`` only once that has been set for the transition. ``__klp_enable_patch()`` logs
"enabling patch", sets up the transition (``transition`` reads 1 from here), registers every patched function with
ftrace (seconds on a big kernel under emulation), logs "'<patch>': starting patching transition", marks the tasks
to switch (they start switching at once) and only then sets ``enabled``: until then it still says 0. Seen on 6.12
in QEMU both before and just after the "starting" line, with the switched tasks then counted as blocking an unpatch.
So once the log said which way a patch's transition goes ("enabling patch": patched; "initializing"/"starting ...
transition": the action's), that is the target until ``enabled`` has been seen agreeing with it; from then on
``enabled`` is the target, which is how a reversal (a write to ``enabled``, logged at debug level only) is seen. A
reversal made before klpd saw ``enabled`` agree goes unnoticed until the transition completes. A disable logs
nothing at notice level before its "starting" line: while its pre-unpatch callbacks run, ``enabled`` still says 1.
And as ``enabled`` is read before the tasks are scanned, it is read again after the scan: changed meanwhile (the
transition started in between), the target follows it and the tasks are scanned again.

The kernel retries about once a second, signals the remaining tasks every 15 tries ("signaling remaining
tasks"), and an administrator may force the transition ("forcing remaining tasks to the patched state"); both
are only seen in the kernel log, which is why the tracker takes kernel log messages as well as evaluations.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from klpd.daemon.kernel_log import LivepatchEvent, LivepatchMessage
from klpd.errors import FormatError
from klpd.model import HostStatus
from klpd.regular_file import read_regular
from klpd.root import SystemRoot
from klpd.sources.livepatch_sysfs import parse_bool_attribute
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
class _Logged:
    """What the kernel log said about a patch's current transition."""

    since: float  # the first line of it: "enabling patch", else "initializing"/"starting ... transition"
    target: str
    confirmed: bool = False  # ``enabled`` seen agreeing with ``target``: from then on ``enabled`` is the target


_BEGINS = (LivepatchEvent.ENABLING, LivepatchEvent.TRANSITION_INIT, LivepatchEvent.TRANSITION_START)


@dataclass
class TransitionTracker:
    """Remembers when each transition started and what the kernel log said about it, across evaluations."""

    _seen: dict[str, _Seen] = field(default_factory=dict)
    _log_start: dict[str, _Logged] = field(default_factory=dict)
    _pending_signals: list[tuple[str, float]] = field(default_factory=list)

    def observe(self, msg: LivepatchMessage, when: float) -> None:
        """A kernel log message. Signalling and forcing name no patch: they concern the one in transition."""
        if msg.kind in _BEGINS and msg.patch:
            target = "patched" if msg.kind is LivepatchEvent.ENABLING else msg.target or ""
            prev = self._log_start.get(msg.patch)
            if prev is None or prev.target != target or prev.confirmed:  # else the same transition, further on
                self._log_start[msg.patch] = _Logged(when, target)
            when = self._log_start[msg.patch].since
            seen = self._seen.get(msg.patch)
            if seen is not None and seen.target != target:  # reversed: a new transition
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
        loaded = {p.name: p for p in status.patches if p.loaded}
        for name in [n for n, lg in self._log_start.items() if _log_is_stale(lg, loaded.get(n))]:
            del self._log_start[name]
        out: list[Transition] = []
        for name, patch in current.items():
            target, scan = self._target(name, patch.enabled), None
            if root is not None and target is not None:
                scan = scan_blocking_tasks(root, KLP_PATCHED if target == "patched" else KLP_UNPATCHED)
                again = self._target(name, _read_enabled(root, name, patch.enabled))
                if again is not None and again != target:  # the transition started during the scan
                    target = again
                    scan = scan_blocking_tasks(root, KLP_PATCHED if target == "patched" else KLP_UNPATCHED)
            seen = self._seen.get(name)
            if seen is None or (target is not None and seen.target not in (None, target)):
                logged = self._log_start.get(name)
                if logged is not None and (target is None or logged.target == target):
                    seen = _Seen(logged.since, "kernel_log", target)
                else:
                    seen = _Seen(now, "first_seen", target)
                for kind, when in self._pending_signals:
                    _note(seen, LivepatchEvent(kind), when)
                self._seen[name] = seen
            seen.target = target
            out.append(Transition(name, target or "unknown", seen.since, seen.since_source, scan,
                                  seen.signals, seen.last_signal, seen.forced))  # fmt: skip
        self._pending_signals.clear()
        return tuple(out)

    def _target(self, name: str, enabled: bool | None) -> str | None:
        """The transition's target: the logged one until ``enabled`` agreed with it, then ``enabled``'s."""
        from_sysfs = None if enabled is None else ("patched" if enabled else "unpatched")
        logged = self._log_start.get(name)
        if logged is None or logged.confirmed:
            return from_sysfs
        if from_sysfs == logged.target:
            logged.confirmed = True
        return logged.target


def _log_is_stale(logged: _Logged, patch: Any) -> bool:
    """The logged transition is over: its patch is gone (a failed enable), or out of transition at its target."""
    if patch is None:
        return True
    at_target = patch.enabled is not None and patch.enabled == (logged.target == "patched")
    return not patch.transition and at_target


def _read_enabled(root: SystemRoot, name: str, default: bool | None) -> bool | None:
    """``/sys/kernel/livepatch/<name>/enabled`` now; ``default`` when it cannot be read (the patch went)."""
    path = root.sys_livepatch.child(name).child("enabled")
    try:
        return parse_bool_attribute(read_regular(path, 16).decode("ascii", "replace"), path.host)
    except (OSError, FormatError):
        return default


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
