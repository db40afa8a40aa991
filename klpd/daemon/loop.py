"""The daemon's single-threaded event loop: events → coalesced evaluations → one immutable snapshot.

One thread owns everything that changes: a selector over the event sources (uevents, the kernel log, inotify)
and a wake-up pipe (signals, other threads), with the nearest timer as select()'s timeout, so an idle daemon
sleeps. Timers: the coalescing deadline, the periodic resync, the transition re-check and the watchdog ping.

Coalescing: the first event of a burst arms a deadline ``coalesce_delay`` ahead; each further event pushes it
back, but never past ``MAX_COALESCE_WAIT`` after the first one, so a boot storm of hundreds of module loads costs
a handful of evaluations and a never-ending trickle still gets one every second. Lost events (ENOBUFS, an
overwritten kernel log, an inotify overflow) make the next evaluation immediate.

Each evaluation ends in :meth:`Agent.publish`: a frozen :class:`DaemonSnapshot` holding the HostStatus, the
daemon's counters, the rendered JSON documents and metrics text, swapped in with one assignment. The servers (in
their own threads) only read that attribute.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import selectors
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from klpd import __version__
from klpd.collect import Evaluation, Evaluator
from klpd.config import Config, KernelLogSource
from klpd.daemon import uevents
from klpd.daemon.api import ApiServer, MetricsServer
from klpd.daemon.events import Batch, Event, EventSource
from klpd.daemon.inotify import PatchDirWatcher
from klpd.daemon.kernel_log import JournalSource, KmsgSource, LivepatchEvent, LivepatchMessage
from klpd.daemon.systemd_notify import Notifier
from klpd.daemon.transitions import Transition, TransitionTracker, blocking_counts, start_times
from klpd.errors import ConfigError, KlpdError
from klpd.model import HostStatus, Problem, Severity
from klpd.outputs.json import status_document
from klpd.outputs.metrics import DaemonStats, ExpositionCache, MetricsSnapshot, patch_state, write_textfile
from klpd.root import SystemRoot
from klpd.status import patch_has_problems, undetermined

log = logging.getLogger(__name__)

MAX_COALESCE_WAIT = 1.0  # seconds from the first event of a burst to its evaluation, at most
TRANSITION_RECHECK = 2.0  # seconds between evaluations while a patch is in transition
RETRY_AFTER_FAILURE = 10.0  # seconds before retrying an evaluation that raised
RECENT_EVENTS = 50
RECENT_REFUSALS = 20
JOURNAL_SOCKET = "/run/systemd/journal/socket"


def _malloc_trim() -> Callable[[], object]:
    """glibc's malloc_trim(0): an evaluation's transient parse buffers (megabytes for /proc/kallsyms) go back to
    the system instead of staying in the heap's free lists, which is most of a long-running daemon's RSS."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl): nothing to trim
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


class EvaluatorLike(Protocol):
    def evaluate(self) -> Evaluation: ...


@dataclass(frozen=True)
class DaemonSnapshot:
    """Everything a reader may ask for, as of one evaluation. Immutable; replaced as a whole."""

    status: HostStatus
    metrics: MetricsSnapshot
    daemon: Mapping[str, Any]  # the "daemon" part of the status document
    transitions: tuple[Transition, ...]
    summary: str  # one line, for STATUS= and the log
    status_json: bytes
    health_json: bytes


@dataclass
class _Counters:
    events: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)
    evaluations: int = 0
    refusals: dict[tuple[str, str], int] = field(default_factory=dict)
    recent_events: deque[Event] = field(default_factory=lambda: deque(maxlen=RECENT_EVENTS))
    recent_refusals: deque[Event] = field(default_factory=lambda: deque(maxlen=RECENT_REFUSALS))


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


class Agent:
    """The daemon: sources, evaluations, the snapshot, the servers.

    ``sources`` replaces the configured event sources (tests inject fakes); ``evaluator_factory`` builds the
    evaluator for a SystemRoot; ``config_loader`` re-reads the configuration on SIGHUP (raises ConfigError).
    """

    def __init__(
        self,
        config: Config,
        *,
        sources: Sequence[EventSource] | None = None,
        evaluator_factory: Callable[[SystemRoot], EvaluatorLike] = Evaluator,
        config_loader: Callable[[], Config] | None = None,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        scan_tasks: bool = True,
    ) -> None:
        self.config = config
        self._injected = list(sources) if sources is not None else None
        self._evaluator_factory = evaluator_factory
        self._config_loader = config_loader
        self.notifier = notifier or Notifier()
        self._clock = clock
        self._wall = wall_clock
        self._scan_tasks = scan_tasks
        self.root = config.system_root()
        self.evaluator = evaluator_factory(self.root)
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._sources: list[EventSource] = []
        self._source_up: dict[str, bool] = {}
        self._eval_up: dict[str, bool] = {}
        self._watcher: PatchDirWatcher | None = None
        self._counters = _Counters()
        self._tracker = TransitionTracker()
        self._snapshot: DaemonSnapshot | None = None
        self.exposition = ExpositionCache(self._metrics_snapshot)
        self.api: ApiServer | None = None
        self.metrics_server: MetricsServer | None = None
        self._stop = False
        self._reload = False
        self._deadline: float | None = None  # when the pending evaluation is due
        self._burst_start: float | None = None
        self._next_resync = 0.0
        self._next_watchdog: float | None = None
        self._last_evaluation: Evaluation | None = None
        self._last_transitions: tuple[Transition, ...] = ()
        self._last_duration: float | None = None
        self._last_timestamp: float | None = None
        self._started = wall_clock()
        self._ready_sent = False
        self._trim = _malloc_trim()

    # -- what readers see ------------------------------------------------------------------------------------------

    @property
    def snapshot(self) -> DaemonSnapshot | None:
        return self._snapshot

    def _metrics_snapshot(self) -> MetricsSnapshot | None:
        snap = self._snapshot
        return snap.metrics if snap is not None else None

    # -- setup -----------------------------------------------------------------------------------------------------

    def start_servers(self) -> None:
        """Bind the API socket and the metrics port (SetupError says what is wrong and which flag helps)."""
        cfg = self.config
        if cfg.socket is not None:
            api = ApiServer(cfg.socket, cfg.socket_mode, lambda: self._snapshot)
            api.start()
            self.api = api
        if cfg.listen is not None:
            server = MetricsServer(cfg.listen, self.exposition)
            try:
                server.start()
            except BaseException:
                self.close_servers()
                raise
            self.metrics_server = server

    def close_servers(self) -> None:
        for server in (self.api, self.metrics_server):
            if server is not None:
                server.close()
        self.api = self.metrics_server = None

    def open_sources(self) -> None:
        if self._injected is not None:
            sources, health = list(self._injected), {s.name: True for s in self._injected}
        else:
            sources, health = open_sources(self.config, self.root)
        self._sources = sources
        self._source_up = health
        self._watcher = next((s for s in sources if isinstance(s, PatchDirWatcher)), None)
        for source in sources:
            self._selector.register(source.fileno(), selectors.EVENT_READ, source)
            # Counters exist from the start, so the first event is an increase that rate() and alerts can see.
            self._counters.events.setdefault(source.name, 0)
            self._counters.lost.setdefault(source.name, 0)

    def close_sources(self) -> None:
        for source in self._sources:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(source.fileno())
            if self._injected is None:
                source.close()
        self._sources = []
        self._watcher = None

    # -- control from signal handlers and other threads ----------------------------------------------------------

    def request_stop(self) -> None:
        self._stop = True
        self._wake()

    def request_reload(self) -> None:
        self._reload = True
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a wake-up is already pending
            os.write(self._wake_w, b"\0")

    # -- the loop --------------------------------------------------------------------------------------------------

    def run(self) -> int:
        """Evaluate, then serve events until a stop is requested. Returns the exit code (0)."""
        if not self._sources:
            self.open_sources()
        now = self._clock()
        interval = self.notifier.watchdog_interval
        self._next_watchdog = now if interval else None
        self.evaluate_now()
        try:
            while not self._stop:
                self._turn()
        finally:
            self.notifier.stopping()
            log.info("stopping")
        return 0

    def _timeout(self, now: float) -> float | None:
        due = [self._next_resync]
        if self._deadline is not None:
            due.append(self._deadline)
        if self._next_watchdog is not None:
            due.append(self._next_watchdog)
        return max(0.0, min(due) - now)

    def _turn(self) -> None:
        timeout = self._timeout(self._clock())
        for key, _mask in self._selector.select(timeout):
            if key.data is None:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            else:
                self._drain(key.data)
        if self._stop:
            return
        if self._reload:
            self._reload = False
            self.reload()
        now = self._clock()
        if self._next_watchdog is not None and now >= self._next_watchdog:
            self.notifier.watchdog()
            self._next_watchdog = now + (self.notifier.watchdog_interval or 1.0)
        if (self._deadline is not None and now >= self._deadline) or now >= self._next_resync:
            self.evaluate_now()

    def _drain(self, source: EventSource) -> None:
        try:
            batch = source.read()
        except (OSError, KlpdError) as exc:
            log.error("event source %s failed, dropping it until a reload: %s", source.name, exc)
        except Exception:  # a bug in a source must not take the agent down; the log has the traceback
            log.exception("event source %s failed unexpectedly, dropping it until a reload", source.name)
        else:
            self.handle(source.name, batch)
            return
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(source.fileno())
        self._sources.remove(source)
        if source is self._watcher:
            self._watcher = None  # else each evaluation would mark it up again
        if self._injected is None:
            with contextlib.suppress(Exception):
                source.close()
        self._source_up[source.name] = False
        self._deadline = 0.0

    def handle(self, name: str, batch: Batch) -> None:
        """Count a source's batch, remember what matters and arm the evaluation timer."""
        c = self._counters
        if batch.events:
            c.events[name] = c.events.get(name, 0) + len(batch.events)
            c.recent_events.extend(batch.events)
            for event in batch.events:
                if isinstance(event.detail, LivepatchMessage):
                    self._kernel_message(event, event.detail)
            now = self._clock()
            if self._burst_start is None:
                self._burst_start = now
            deadline = min(now + self.config.coalesce_delay, self._burst_start + MAX_COALESCE_WAIT)
            # Coalesce: push a pending evaluation later, but never one that is due now (lost events, a reload).
            if self._deadline is None or (self._deadline != 0.0 and deadline > self._deadline):
                self._deadline = deadline
        if batch.lost:
            c.lost[name] = c.lost.get(name, 0) + batch.lost
            log.warning("%s lost events (%d); resyncing now", name, batch.lost)
            self._deadline = 0.0

    def _kernel_message(self, event: Event, msg: LivepatchMessage) -> None:
        self._tracker.observe(msg, event.time)
        if msg.kind is LivepatchEvent.MODULE_LOAD_REFUSED and msg.patch and msg.module:
            key = (msg.patch, msg.module)
            self._counters.refusals[key] = self._counters.refusals.get(key, 0) + 1
            self._counters.recent_refusals.append(event)
            log.warning("kernel refused to load module %s: %s", msg.module, msg.text)

    # -- evaluation and publication --------------------------------------------------------------------------------

    def evaluate_now(self) -> None:
        now = self._clock()
        self._deadline = None
        self._burst_start = None
        try:
            evaluation = self.evaluator.evaluate()
        except (KlpdError, OSError) as exc:
            log.error("evaluation failed: %s", exc)
            self._failed(now, str(exc))
            return
        except Exception:  # a bug must not take the agent down; the log has the traceback
            log.exception("evaluation failed unexpectedly")
            self._failed(now, "internal error (see the log)")
            return
        self._counters.evaluations += 1
        self._last_evaluation = evaluation
        self._last_duration = evaluation.duration_seconds
        self._last_timestamp = self._wall()
        self._eval_up = dict(evaluation.source_up)
        if self._watcher is not None:
            self._watcher.set_dirs(evaluation.watch_dirs)
            self._source_up[self._watcher.name] = not self._watcher.failed
        root = self.root if self._scan_tasks else None
        transitions = self._tracker.update(evaluation.status, self._last_timestamp, root)
        done = self._clock()
        self._next_resync = done + (min(self.config.resync_interval, TRANSITION_RECHECK)
                                    if transitions else self.config.resync_interval)  # fmt: skip
        self._last_transitions = tuple(transitions)
        self.publish(evaluation.status, transitions)
        self._trim()

    def _failed(self, now: float, reason: str) -> None:
        """Publish the failure: the last good status (or an empty one) with the reason as an error problem, so
        /v1/health says "error", klpctl status says it could not determine, and klpd_source_up shows it."""
        self._next_resync = now + min(self.config.resync_interval, RETRY_AFTER_FAILURE)
        self._eval_up = {**self._eval_up, "kallsyms": False}
        problem = Problem("evaluation_failed", Severity.ERROR, f"evaluation failed: {reason}")
        last = self._last_evaluation
        if last is not None:
            status = replace(last.status, problems=(*last.status.problems, problem))
        else:
            status = HostStatus("", None, None, False, False, (), (problem,))
        self.publish(status, self._last_transitions, error=problem.message)

    def _stats(self, transitions: Sequence[Transition]) -> DaemonStats:
        c = self._counters
        return DaemonStats(
            events=MappingProxyType(dict(c.events)),
            lost_events=MappingProxyType(dict(c.lost)),
            evaluations=c.evaluations,
            evaluation_duration_seconds=self._last_duration,
            evaluation_timestamp_seconds=self._last_timestamp,
            source_up=MappingProxyType({**self._eval_up, **self._source_up}),
            refusals=MappingProxyType(dict(c.refusals)),
            transition_start=MappingProxyType(dict(start_times(transitions))),
            transition_blocking_tasks=MappingProxyType(dict(blocking_counts(transitions))),
        )

    def _daemon_info(self, stats: DaemonStats, transitions: Sequence[Transition]) -> dict[str, Any]:
        c = self._counters
        sources = {
            name: {"up": up, "events": stats.events.get(name, 0), "lost": stats.lost_events.get(name, 0)}
            for name, up in sorted(stats.source_up.items())
        }
        return {
            "version": __version__,
            "pid": os.getpid(),
            "started": self._started,
            "evaluations": stats.evaluations,
            "last_evaluation": stats.evaluation_timestamp_seconds,
            "evaluation_duration_seconds": stats.evaluation_duration_seconds,
            "sources": sources,
            "watched_dirs": [self.root.host_path(p) for p in self._watcher.watched] if self._watcher else [],
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

    def publish(
        self, status: HostStatus, transitions: Sequence[Transition], error: str | None = None
    ) -> DaemonSnapshot:
        """Build and swap in the snapshot; pre-render its metrics, notify systemd, write the textfile. ``error``:
        the evaluation failed, and ``status`` is the last good one (or empty) carrying the reason."""
        stats = self._stats(transitions)
        daemon = self._daemon_info(stats, transitions)
        summary = error or summarize(status)
        health = {
            "status": "error" if error else "ok",
            "summary": summary,
            "evaluations": stats.evaluations,
            "last_evaluation": stats.evaluation_timestamp_seconds,
            "sources": dict(sorted(stats.source_up.items())),
        }
        snapshot = DaemonSnapshot(
            status=status,
            metrics=MetricsSnapshot(status, stats),
            daemon=MappingProxyType(daemon),
            transitions=tuple(transitions),
            summary=summary,
            status_json=(json.dumps(status_document(status, "daemon", daemon), indent=2) + "\n").encode(),
            health_json=(json.dumps(health) + "\n").encode(),
        )
        self._snapshot = snapshot
        text = self.exposition.klpd_text()  # rendered here, once, so a scrape only copies bytes
        if self.config.textfile_dir is not None:
            self._write_textfile(self.config.textfile_dir, text)
        log.debug("evaluation %d: %s", stats.evaluations, summary)
        if not self._ready_sent:
            self._ready_sent = True
            self.notifier.ready(summary)
            log.info("ready: %s", summary)
        else:
            self.notifier.status(summary)
        return snapshot

    def _write_textfile(self, directory: Path, text: bytes) -> None:
        try:
            write_textfile(directory, text)
        except OSError as exc:
            log.error("cannot write the node_exporter textfile in %s: %s", directory, exc.strerror or exc)

    # -- SIGHUP ----------------------------------------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the configuration; a bad one is logged and the running one kept. True when applied."""
        if self._config_loader is None:
            return False
        self.notifier.reloading()
        try:
            new = self._config_loader()
        except ConfigError as exc:
            log.error("configuration not reloaded, keeping the running one: %s", exc)
            self.notifier.reloaded()
            return False
        old, self.config = self.config, new
        logging.getLogger("klpd").setLevel(new.log_level.value.upper())
        if (new.root, new.patch_dirs) != (old.root, old.patch_dirs):
            self.root = new.system_root()
            self.evaluator = self._evaluator_factory(self.root)
        sources_changed = (new.root, new.kernel_log, new.uevent_source) != (old.root, old.kernel_log, old.uevent_source)
        if sources_changed or not all(self._source_up.values()):  # a reload also reopens the sources that failed
            self.close_sources()
            self.open_sources()
        if (new.socket, new.socket_mode, new.listen) != (old.socket, old.socket_mode, old.listen):
            self._restart_servers(old)
        log.info("configuration reloaded from %s", new.source or "built-in defaults")
        self.notifier.reloaded()
        self._deadline = 0.0
        return True

    def _restart_servers(self, old: Config) -> None:
        self.close_servers()
        try:
            self.start_servers()
        except KlpdError as exc:
            log.error("%s; going back to the previous addresses", exc)
            self.config = replace(self.config, socket=old.socket, socket_mode=old.socket_mode, listen=old.listen)
            try:
                self.start_servers()
            except KlpdError as exc2:
                log.error("and those failed too: %s", exc2)

    def close(self) -> None:
        self.close_sources()
        self.close_servers()
        self._selector.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
