"""``klpd``: the command line of the daemon, and the one place that turns its errors into log lines and exit codes.

    klpd [--config FILE] [--root DIR] [--listen HOST:PORT] [--socket PATH] [--textfile DIR] [--log-level LEVEL]
    klpd --once ...     one evaluation, the human-readable status on stdout, and klpctl's exit codes

Flags override the configuration file. Logs go to stderr; under systemd (``$JOURNAL_STREAM``) each line carries
its syslog priority as a ``<N>`` prefix, which journald turns into the entry's PRIORITY. SIGHUP reloads the
configuration (a bad file is logged and the running configuration kept); SIGTERM and SIGINT stop cleanly (0),
within 20 s (:data:`STOP_DEADLINE`; past it klpd exits at once, with 1).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import ClassVar

from klpd import __version__
from klpd.config import DEFAULT_CONFIG_PATH, Config, load_config
from klpd.daemon.loop import Agent
from klpd.daemon.once import run_once
from klpd.errors import ConfigError, KlpdError, SetupError

log = logging.getLogger("klpd")


class ExitCode(IntEnum):
    """``klpd``'s exit codes (README.md, "Exit codes (klpd)"). With ``--once`` they mean what klpctl's do.

    - 0 OK: stopped by SIGTERM or SIGINT (or --help, --version); with --once, all good.
    - 1 FAILURE: the daemon could not start or run (say the API socket or the metrics port cannot be bound: the
      message names the flag that helps), or did not stop within 20 s of SIGTERM or SIGINT; with --once,
      problems found.
    - 2 USAGE: bad flags, or a configuration file or --root that is not valid, at start (on SIGHUP a bad
      configuration is logged and the running one kept).
    - 3 UNDETERMINED: with --once only, a source klpd needs could not be read.
    """

    OK = 0
    FAILURE = 1
    USAGE = 2
    UNDETERMINED = 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="klpd", description="klpd: the livepatch state agent (metrics, JSON API).")
    p.add_argument("--version", action="version", version=f"klpd {__version__}")
    p.add_argument("--config", metavar="FILE", default=None,
                   help=f"configuration file (default {DEFAULT_CONFIG_PATH}; built-in defaults if that is missing)")
    p.add_argument("--root", metavar="DIR", help="read the system from DIR instead of / (a fixture tree)")
    p.add_argument("--listen", metavar="HOST:PORT", help="address of /metrics ('' = off)")
    p.add_argument("--socket", metavar="PATH", help="Unix socket of the JSON API ('' = off)")
    p.add_argument("--textfile", metavar="DIR", help="also write klpd.prom into this node_exporter directory")
    p.add_argument("--log-level", metavar="LEVEL", help="debug, info, warning or error")
    p.add_argument("--once", action="store_true", help="evaluate once, print the status and exit")
    return p  # fmt: skip


class _JournalFormatter(logging.Formatter):
    """``<priority>message``: journald reads the prefix as the entry's syslog priority (sd-daemon(3))."""

    _PRIORITY: ClassVar[dict[int, int]] = {
        logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2,
    }  # fmt: skip

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prio = self._PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


def setup_logging(level: str, journal: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if journal:
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s klpd %(levelname)s: %(message)s"))
    root = logging.getLogger("klpd")
    root.handlers[:] = [handler]
    root.propagate = False
    root.setLevel(level.upper())


def load(args: argparse.Namespace) -> Config:
    """The configuration file (or the defaults) with the command-line flags applied; ConfigError when invalid."""
    if args.config is not None:
        config = load_config(args.config)
    elif DEFAULT_CONFIG_PATH.exists():
        config = load_config(DEFAULT_CONFIG_PATH)
    else:
        config = Config()
    return config.with_overrides(listen=args.listen, socket=args.socket, textfile_dir=args.textfile,
                                 root=args.root, log_level=args.log_level)  # fmt: skip


# How long a stop may take, from the signal to the exit: the loop stops between two turns and every read in a turn
# is bounded, but the longest bound (a stalled ``cat`` of /proc/kallsyms, 60 s) is longer than an operator should
# wait. Long enough for a loaded TCG guest to finish an evaluation and close the servers (2 s each).
STOP_DEADLINE = 20.0


def _start_timer(seconds: float, action: Callable[[], None]) -> threading.Timer:
    timer = threading.Timer(seconds, action)
    timer.daemon = True
    timer.name = "klpd-stop-deadline"
    timer.start()
    return timer


def _exit_now() -> None:
    """From the timer thread, while the main thread is stuck (and may hold the logging lock, or block on a full
    stderr): one best-effort write that cannot block, the ``cat`` children killed, and ``_exit``."""
    prefix = "<3>" if os.environ.get("JOURNAL_STREAM") else ""
    message = (f"{prefix}klpd: error: not stopped {STOP_DEADLINE:.0f} s after SIGTERM/SIGINT (stuck in a turn of "
               "the loop, or in closing); exiting now without cleanup\n")  # fmt: skip
    with contextlib.suppress(OSError):
        os.set_blocking(2, False)
        os.write(2, message.encode())
    pipe = sys.modules.get("klpd.sources.kallsyms.pipe")  # imported only if a cold read ever ran
    if pipe is not None:
        pipe.kill_running()
    os._exit(ExitCode.FAILURE)


class Signals:
    """SIGTERM, SIGINT and SIGHUP from the first moment of the daemon's ``main``, before anything slow: a signal
    that arrives before the agent exists (reading the configuration, binding the servers) is remembered and handed
    to it once it does. A SIGHUP then becomes a reload right after the start (the configuration file may have
    been changed while klpd was starting), a SIGTERM a stop before the first evaluation.

    Without this, SIGHUP's default action ended a starting daemon silently (exit 129). Only the few milliseconds
    of the interpreter's start and of importing klpd (about 0.15 s) come before it.

    The first SIGTERM or SIGINT also arms :data:`STOP_DEADLINE`: a daemon still running then exits at once (1,
    with a line on stderr; its ``cat`` children killed; the stale API socket is removed by the next start).
    :meth:`restore` disarms it and puts the previous handlers back once ``main`` is done. ``arm`` and ``exit_now``
    are injected by tests.
    """

    def __init__(
        self,
        arm: Callable[[float, Callable[[], None]], threading.Timer | None] = _start_timer,
        exit_now: Callable[[], None] = _exit_now,
    ) -> None:
        self.stop = self.reload = False
        self._agent: Agent | None = None
        self._arm = arm
        self._exit_now = exit_now
        self._timer: threading.Timer | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        """Cancel the stop deadline and put back the handlers ``install`` replaced (``main`` called in-process)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]  # what signal.signal returned
        self._previous.clear()

    def _handle(self, signum: int, _frame: object) -> None:
        agent = self._agent
        if signum == signal.SIGHUP:
            self.reload = True
            if agent is not None:
                agent.request_reload()
        else:
            first, self.stop = not self.stop, True
            if agent is not None:
                agent.request_stop()
            if first:  # after the stop is recorded: a timer that cannot start must not lose it
                try:
                    self._timer = self._arm(STOP_DEADLINE, self._exit_now)
                except RuntimeError as exc:  # "can't start new thread"
                    log.warning("no stop deadline (%s): the stop waits for the current turn of the loop", exc)

    def attach(self, agent: Agent | None) -> None:
        """Hand the signals to ``agent`` from now on, and those that came before; None once it is closed (its
        wake-up pipe is gone)."""
        self._agent = agent
        if agent is not None and self.stop:
            agent.request_stop()
        if agent is not None and self.reload:
            agent.request_reload()


def run_daemon(config: Config, args: argparse.Namespace, signals: Signals | None = None) -> int:
    signals = signals or Signals()
    if not config.root.is_dir():
        raise ConfigError(config.source or "<command line>", "root", f"{config.root}: not a directory")
    if signals.stop:
        return ExitCode.OK
    agent = Agent(config, config_loader=lambda: load(args))
    signals.attach(agent)
    try:
        agent.start_servers()
        log.info("klpd %s starting (root %s, configuration %s)", __version__, config.root,
                 config.source or "built-in defaults")  # fmt: skip
        return agent.run()
    finally:
        signals.attach(None)
        agent.close()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else ExitCode.USAGE
    signals = Signals()
    if not args.once:  # --once is a command: its SIGINT is a KeyboardInterrupt, its SIGHUP a hangup
        signals.install()
    try:
        return _run(args, signals)
    finally:
        signals.restore()


def _run(args: argparse.Namespace, signals: Signals) -> int:
    setup_logging(args.log_level if args.log_level in ("debug", "info", "warning", "error") else "info",
                  journal=bool(os.environ.get("JOURNAL_STREAM")))  # fmt: skip
    try:
        config = load(args)
    except ConfigError as exc:
        log.error("%s", exc)
        return ExitCode.USAGE
    logging.getLogger("klpd").setLevel(config.log_level.value.upper())
    try:
        return run_once(config) if args.once else run_daemon(config, args, signals)
    except ConfigError as exc:
        log.error("%s", exc)
        return ExitCode.USAGE
    except SetupError as exc:
        log.error("%s", exc)
        return ExitCode.FAILURE
    except KlpdError as exc:
        log.error("%s", exc)
        return ExitCode.UNDETERMINED if args.once else ExitCode.FAILURE
    except KeyboardInterrupt:
        return ExitCode.OK


def main_entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    main_entry()
