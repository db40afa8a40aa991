"""The daemon's single-threaded event loop: events → coalesced evaluations → one immutable snapshot.

One thread owns everything that changes: a selector over the event sources (:mod:`klpd.daemon.event_sources`)
and a wake-up pipe (signals, other threads), with the nearest timer of the :class:`~klpd.daemon.schedule.Schedule`
as select()'s timeout, so an idle daemon sleeps. Each turn counts what the sources brought
(:mod:`klpd.daemon.stats`), feeds the kernel's livepatch messages to the transition tracker, pings the watchdog
and evaluates when the schedule says so (:mod:`klpd.daemon.evaluation`).

Each evaluation ends in :meth:`Agent.publish`: a frozen :class:`~klpd.daemon.snapshot.DaemonSnapshot` with every
document rendered, swapped in with one assignment, then announced (:mod:`klpd.daemon.announce`). The
servers (:mod:`klpd.daemon.servers`, in their own threads) only read that attribute. SIGHUP reloads the
configuration here too: new intervals, a new root, reopened sources, moved servers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import time
from collections.abc import Callable, Sequence

from klpd.collect import Evaluator
from klpd.config import Config
from klpd.daemon.announce import Announcer
from klpd.daemon.evaluation import Evaluations, EvaluatorLike, malloc_trim
from klpd.daemon.event_sources import SourceSet, sources_changed
from klpd.daemon.events import Batch, EventSource
from klpd.daemon.heartbeat import Heartbeat
from klpd.daemon.schedule import Schedule
from klpd.daemon.servers import Servers, addresses_changed
from klpd.daemon.snapshot import DaemonSnapshot, Published, build_snapshot, failed_status
from klpd.daemon.stats import Counters
from klpd.daemon.systemd_notify import Notifier
from klpd.daemon.transitions import Transition, TransitionTracker
from klpd.errors import ConfigError
from klpd.model import HostStatus
from klpd.outputs.exposition import Exposition
from klpd.outputs.metrics import render
from klpd.root import SystemRoot
from klpd.sources.host_identity import read_host_identity

log = logging.getLogger(__name__)


class Agent:
    """The daemon: sources, evaluations, the snapshot, the servers.

    ``sources`` replaces the configured event sources (tests inject fakes); ``evaluator_factory`` builds the
    evaluator for a SystemRoot; ``config_loader`` re-reads the configuration on SIGHUP (raises ConfigError).
    ``clock`` (monotonic) drives the schedule and ``selector`` is where the loop waits: tests inject both to run
    the loop in simulated time.
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
        selector: selectors.BaseSelector | None = None,
    ) -> None:
        self.config = config
        self._evaluator_factory = evaluator_factory
        self._config_loader = config_loader
        self.notifier = notifier or Notifier()
        self._clock = clock
        self._scan_tasks = scan_tasks
        self.root = config.system_root()
        self._evaluations = Evaluations(evaluator_factory(self.root), wall_clock)
        self._selector = selector or selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._sources = SourceSet(self._selector, sources)
        self._counters = Counters()
        self._tracker = TransitionTracker()
        self._transitions: tuple[Transition, ...] = ()
        self.schedule = Schedule(config.coalesce_delay, config.resync_interval, self.notifier.watchdog_interval)
        self._snapshot: DaemonSnapshot | None = None
        self._starting_metrics = render(None)  # what /metrics says before the first evaluation: build info
        self.exposition = Exposition(self._metrics_text)
        self.heartbeat = Heartbeat(clock)
        self.servers = Servers(lambda: self._snapshot, self.exposition, self.heartbeat.busy_for)
        self._stop = self._reload = False  # asked for by signal handlers; acted on by the loop thread
        self._started = wall_clock()
        self._announcer = Announcer(self.notifier)
        self._trim = malloc_trim()

    @property
    def snapshot(self) -> DaemonSnapshot | None:
        return self._snapshot

    def _metrics_text(self) -> bytes:
        snap = self._snapshot
        return snap.metrics_text if snap is not None else self._starting_metrics

    def start_servers(self) -> None:
        """Bind the API socket and the metrics port (SetupError says what is wrong and which flag helps)."""
        self.servers.start(self.config)

    def open_sources(self) -> None:
        for source in self._sources.open(self.config, self.root):
            self._counters.add_source(source.name)

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
        self.heartbeat.busy()  # opening the sources counts too
        if not self._sources.sources:
            self.open_sources()
        self.schedule = self.schedule.started(self._clock())
        if not self._stop:  # a SIGTERM while starting: stop without the first evaluation
            self.evaluate_now()
        try:
            while not self._stop:
                self._turn()
        finally:
            self.notifier.stopping()
            log.info("stopping")
        return 0

    def _turn(self) -> None:
        for key, _mask in self.heartbeat.waiting(self._selector.select, self.schedule.timeout(self._clock())):
            if key.data is None:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
                continue
            batch = self._sources.read(key.data)
            if batch is None:  # the source failed and was dropped: what it would have said is unknown
                self.schedule = self.schedule.immediate()
            else:
                self.handle(key.data.name, batch)
        if self._stop:
            return
        if self._reload:
            self._reload = False
            self.reload()
        now = self._clock()
        if self.schedule.watchdog_due(now):
            self.notifier.watchdog()
            self.schedule = self.schedule.pinged(now)
        if self.schedule.evaluation_due(now):
            self.evaluate_now()

    def handle(self, name: str, batch: Batch) -> None:
        """Count a source's batch, remember what matters and arm the evaluation timer."""
        for event, message in self._counters.count(name, batch):
            self._tracker.observe(message, event.time)
        if batch.events:
            self.schedule = self.schedule.event(self._clock())
        if batch.lost:
            log.warning("%s lost events (%d); resyncing now", name, batch.lost)
            self.schedule = self.schedule.immediate()

    # -- evaluation and publication --------------------------------------------------------------------------------

    def evaluate_now(self) -> None:
        start = self._clock()
        result = self._evaluations.run()
        if isinstance(result, str):
            self.schedule = self.schedule.failed(start)
            status, error = failed_status(self._evaluations.last_status, result)
            self.publish(status, self._transitions, error)
            return
        evaluation, finished = result
        self._sources.watch(evaluation.watch_dirs)
        transitions = self._tracker.update(evaluation.status, finished, self.root if self._scan_tasks else None)
        self._transitions = tuple(transitions)
        self.schedule = self.schedule.evaluated(self._clock(), in_transition=bool(transitions))
        self.publish(evaluation.status, transitions)
        self._trim()

    def publish(
        self, status: HostStatus, transitions: Sequence[Transition], error: str | None = None
    ) -> DaemonSnapshot:
        """Build and swap in the snapshot, then announce it. ``error``: the evaluation failed, and ``status`` is
        the last good one (or empty) carrying the reason."""
        ev = self._evaluations
        stats = self._counters.freeze(
            evaluations=ev.count, duration=ev.duration, timestamp=ev.timestamp,
            source_up={**ev.source_up, **self._sources.up, **self._announcer.up}, transitions=transitions,
        )  # fmt: skip
        watched = tuple(self.root.host_path(p) for p in self._sources.watched)
        state = Published(stats, self._counters, self._started, watched, read_host_identity(self.root))
        snapshot = build_snapshot(status, transitions, state, error)
        self._snapshot = snapshot
        self._announcer.announce(snapshot, self.config.textfile_dir)
        return snapshot

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
            self._evaluations.evaluator = self._evaluator_factory(self.root)
        if sources_changed(old, new) or not self._sources.all_up:  # a reload also reopens the sources that failed
            self._sources.close()
            self.open_sources()
        if addresses_changed(old, new):
            self.config = self.servers.restart(new, old)
        log.info("configuration reloaded from %s", new.source or "built-in defaults")
        self.notifier.reloaded()
        self.schedule = self.schedule.reconfigured(new.coalesce_delay, new.resync_interval).immediate()
        return True

    def close(self) -> None:
        self._sources.close()
        self.servers.close()
        self._selector.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

