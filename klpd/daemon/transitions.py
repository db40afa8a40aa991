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

import errno
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from klpd.daemon.kernel_log import LivepatchEvent, LivepatchMessage
from klpd.errors import FormatError
from klpd.model import HostStatus
from klpd.numbers import kernel_decimal
from klpd.regular_file import read_regular
from klpd.root import SystemRoot

KLP_UNDEFINED = -1
KLP_UNPATCHED = 0
KLP_PATCHED = 1
# Tasks listed by name in the snapshot; the count covers all of them.
MAX_LISTED_TASKS = 50


def parse_patch_state(text: str, path: str = "patch_state") -> int:
    """The value of a patch_state file; FormatError if it is not -1, 0 or 1."""
    value = text.strip()
    if value not in ("-1", "0", "1"):
        raise FormatError(path, f"patch_state is {value[:20]!r}, not -1, 0 or 1")
    return int(value)


@dataclass(frozen=True, slots=True)
class BlockingTask:
    pid: int
    tid: int
    comm: str
    patch_state: int


@dataclass(frozen=True, slots=True)
class TaskScan:
    """The tasks blocking a transition to ``target``: the first MAX_LISTED_TASKS and how many in all."""

    target: int
    tasks: tuple[BlockingTask, ...]
    blocking: int  # every blocking task found (may exceed len(tasks))
    scanned: int  # tasks whose patch_state was read
    unreadable: int  # tasks whose patch_state could not be read (EACCES)
    reason: str | None = None  # why some or all could not be read, or why nothing could be scanned

    @property
    def complete(self) -> bool:
        return self.unreadable == 0 and self.reason is None


def _numeric_entries(path: str) -> list[int]:
    try:
        with os.scandir(path) as it:
            return [n for e in it if (n := kernel_decimal(e.name)) is not None]
    except OSError:
        return []  # the process exited while we looked


def _read_comm(task_dir: str) -> str:
    try:
        return read_regular(f"{task_dir}/comm", 64).rstrip(b"\n").decode("utf-8", "replace")
    except OSError:
        return "?"


def scan_blocking_tasks(root: SystemRoot, target: int) -> TaskScan:
    """Every task under ``root``'s /proc whose patch_state is neither ``target`` nor idle (-1)."""
    proc = str(root.proc)
    tasks: list[BlockingTask] = []
    blocking = scanned = unreadable = missing = 0
    for pid in sorted(_numeric_entries(proc)):
        for tid in sorted(_numeric_entries(f"{proc}/{pid}/task")):
            task_dir = f"{proc}/{pid}/task/{tid}"
            try:
                # Regular files only: under --root a FIFO planted here must not hang the scan.
                raw = read_regular(f"{task_dir}/patch_state", 16)
            except PermissionError:
                unreadable += 1
                continue
            except OSError as exc:
                missing += exc.errno == errno.ENOENT
                continue  # ESRCH and friends: the task exited
            try:
                state = parse_patch_state(raw.decode("ascii", "replace"), task_dir)
            except FormatError:
                continue
            scanned += 1
            if state not in (target, KLP_UNDEFINED):
                blocking += 1
                if len(tasks) < MAX_LISTED_TASKS:
                    tasks.append(BlockingTask(pid, tid, _read_comm(task_dir), state))
    reason = None
    if unreadable:
        reason = f"{unreadable} tasks' patch_state unreadable (permission denied: needs root or CAP_DAC_READ_SEARCH)"
    elif scanned == 0 and missing:
        reason = "no /proc/<pid>/task/<tid>/patch_state files (kernel without CONFIG_LIVEPATCH, or before 4.12)"
    return TaskScan(target, tuple(tasks), blocking, scanned, unreadable, reason)


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
