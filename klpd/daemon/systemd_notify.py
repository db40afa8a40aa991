"""sd_notify(3) through systemd-python: READY=1, STATUS=, RELOADING=1, STOPPING=1 and WATCHDOG=1 pings.

Everything is a no-op without ``$NOTIFY_SOCKET`` (not started by systemd, or Type= is not notify), so the
daemon runs the same by hand. The watchdog interval comes from ``$WATCHDOG_USEC`` (set by WatchdogSec=), meant
for this process only when ``$WATCHDOG_PID`` is unset or ours; pings go out at half the interval, as
sd_watchdog_enabled(3) advises.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping

from klpd.numbers import kernel_decimal

log = logging.getLogger(__name__)


def _systemd_send() -> Callable[[str], object] | None:
    try:  # optional: klpd runs without systemd
        import systemd.daemon  # noqa: PLC0415
    except ImportError:
        return None
    notify: Callable[[str], object] = systemd.daemon.notify
    return notify


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between watchdog pings (half of WatchdogSec=), or None when no watchdog is asked for."""
    usec = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    interval = kernel_decimal(usec)
    if not interval:  # absent, malformed or 0
        return None
    if owner and owner != str(pid):
        return None
    return interval / 2e6


class Notifier:
    """Sends sd_notify states; ``send`` is injectable for tests (it receives the state string)."""

    def __init__(self, send: Callable[[str], object] | None = None,
                 environ: Mapping[str, str] | None = None) -> None:  # fmt: skip
        env = os.environ if environ is None else environ
        if send is None and env.get("NOTIFY_SOCKET"):
            send = _systemd_send()
            if send is None:
                log.warning("$NOTIFY_SOCKET is set but systemd-python is missing: systemd will not hear from klpd")
        self._send = send
        self.watchdog_interval = watchdog_interval(env, os.getpid()) if self._send is not None else None
        self._last_status: str | None = None

    def _notify(self, state: str) -> None:
        if self._send is None:
            return
        try:
            self._send(state)
        except OSError as exc:  # the manager went away; nothing to do but say so once in a while
            log.debug("sd_notify(%r) failed: %s", state, exc)

    def ready(self, status: str) -> None:
        self._last_status = status
        self._notify(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        if status != self._last_status:
            self._last_status = status
            self._notify(f"STATUS={status}")

    def reloading(self) -> None:
        self._notify("RELOADING=1")

    def reloaded(self) -> None:
        self._notify("READY=1")

    def stopping(self) -> None:
        self._notify("STOPPING=1")

    def watchdog(self) -> None:
        self._notify("WATCHDOG=1")
