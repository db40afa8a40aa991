"""The daemon's servers: the JSON API (HTTP/1.1 on a Unix socket) and /metrics (HTTP on ``listen``).

Both only copy bytes the loop prepared when it published its snapshot: nothing is computed on a query or a
scrape. Each server runs in a daemon thread of its own (:class:`klpd.daemon.http_server.HttpServer`, which bounds
what a client can hold: a whole-request deadline, a connection cap, a burst-sized backlog); the loop never waits
for them.

- ``GET /v1/status``: the ``klpd.status/1`` document with the daemon's own ``"daemon"`` part (klpctl status);
  ``GET /v1/health``: is the daemon up, how fresh is its snapshot, which sources work; 503 "wedged" once the
  loop has been stuck in one turn for 30 s (:mod:`klpd.daemon.heartbeat`). 503 before the first
  evaluation, 404 for any other path, 405 for another method; every error body is ``{"error": "..."}``.
- ``/metrics``: prometheus-client's text format, from :class:`klpd.outputs.exposition.Exposition`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from klpd.config import ListenAddress
from klpd.daemon.heartbeat import WEDGED_AFTER
from klpd.daemon.http_server import BACKLOG, HttpServer, Request, Response
from klpd.errors import SetupError
from klpd.outputs.exposition import Exposition, serve_metrics
from klpd.protocol import HEALTH_PATH, STATUS_PATH

__all__ = ["ApiServer", "Documents", "MetricsServer"]

log = logging.getLogger(__name__)

_JSON = (("Content-Type", "application/json"),)


class Documents(Protocol):
    """What the API serves, rendered once per snapshot."""

    @property
    def status_json(self) -> bytes: ...

    @property
    def health_json(self) -> bytes: ...


def json_error(status: int, message: str) -> Response:
    return Response(status, _JSON, json.dumps({"error": message}).encode() + b"\n")


def _no_wait() -> float:
    return 0.0


def wedged_health(busy_for: float, docs: Documents | None) -> Response:
    """503 and why: the loop has been in one turn for ``busy_for`` seconds, the last snapshot's facts kept."""
    last: dict[str, object] = {}
    if docs is not None:
        with contextlib.suppress(ValueError):
            last = json.loads(docs.health_json)
    summary = (f"the evaluation loop has been busy for {busy_for:.0f} s (more than {WEDGED_AFTER:.0f} s): "
               "the answers served are from before; the systemd watchdog restarts a loop that stays stuck")  # fmt: skip
    if docs is None:
        summary += "; no evaluation has finished yet"
    body = {**last, "status": "wedged", "summary": summary, "busy_seconds": round(busy_for, 1)}
    return Response(503, _JSON, (json.dumps(body) + "\n").encode())


def api_handler(
    get_documents: Callable[[], Documents | None], busy_for: Callable[[], float] = _no_wait
) -> Callable[[Request], Response]:
    """``busy_for``: seconds the loop has spent in its current turn (:class:`~klpd.daemon.heartbeat.Heartbeat`)."""

    def handle(request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            allow = json_error(405, f"method {request.method} not allowed; try GET /v1/status or /v1/health")
            return Response(405, (*_JSON, ("Allow", "GET, HEAD")), allow.body)
        if request.path not in (STATUS_PATH, HEALTH_PATH):
            return Response(404, _JSON, b'{"error": "not found; try GET /v1/status or /v1/health"}\n')
        docs = get_documents()
        if request.path == HEALTH_PATH and (busy := busy_for()) > WEDGED_AFTER:
            return wedged_health(busy, docs)
        if docs is None:
            return Response(503, _JSON, b'{"error": "klpd is starting: no evaluation yet"}\n')
        return Response(200, _JSON, docs.status_json if request.path == STATUS_PATH else docs.health_json)

    return handle


def _text_error(status: int, message: str) -> Response:
    return Response(status, (("Content-Type", "text/plain; charset=utf-8"),), message.encode() + b"\n")


def metrics_handler(exposition: Exposition) -> Callable[[Request], Response]:
    def handle(request: Request) -> Response:
        status, headers, body = serve_metrics(exposition, request.method, request.path)
        return Response(status, tuple(headers), body)

    return handle


def _setup_error(what: str, target: str, exc: OSError, hint: str) -> SetupError:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return SetupError(f"cannot create the {what} {target}: {reason} ({hint})")
    return SetupError(f"cannot create the {what} {target}: {reason}")


def _remove_stale(path: Path) -> None:
    """Remove a socket file a dead daemon left behind; refuse to take over a live one or a non-socket."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SetupError(f"cannot create the API socket {path}: a file that is not a socket is in the way")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # nobody listens: stale
        return
    finally:
        probe.close()
    raise SetupError(f"another daemon already answers on {path}; stop it, or use --socket PATH")


class _Thread:
    """An HttpServer in a daemon thread of its own."""

    def __init__(self, server: HttpServer, name: str) -> None:
        self.server = server
        self._thread = threading.Thread(target=server.serve, name=name, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.stop()
        self._thread.join(timeout=2.0)
        if self._thread.is_alive():
            # Closing the selector under a running serve() would turn a slow stop into a crash of that thread;
            # it is a daemon thread, so the process exit reclaims it.
            log.warning("the %s server did not stop within 2 s; leaving it to the process exit", self._thread.name)
            return
        self.server.close()


class ApiServer:
    """The JSON API on a Unix socket."""

    def __init__(
        self,
        path: Path,
        mode: int,
        get_documents: Callable[[], Documents | None],
        busy_for: Callable[[], float] = _no_wait,
    ) -> None:
        self.path = path
        self.mode = mode
        self._get = get_documents
        self._busy_for = busy_for
        self._running: _Thread | None = None

    @property
    def http(self) -> HttpServer | None:
        return self._running.server if self._running is not None else None

    def start(self) -> None:
        hint = "run as root, or give another path with --socket PATH; --socket '' turns the API off"
        try:
            self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as exc:
            raise _setup_error("directory of the API socket", str(self.path.parent), exc, hint) from exc
        try:
            _remove_stale(self.path)
        except SetupError:
            raise
        except OSError as exc:  # from lstat() or unlink() of the old socket
            raise _setup_error("API socket", str(self.path), exc, hint) from exc
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
            os.chmod(self.path, self.mode)  # explicit: bind() honours the umask (0077 under the unit)
            sock.listen(BACKLOG)
        except OSError as exc:
            sock.close()
            raise _setup_error("API socket", str(self.path), exc, hint) from exc
        server = HttpServer(sock, api_handler(self._get, self._busy_for), json_error, "api")
        self._running = _Thread(server, "klpd-api")
        log.info("JSON API on unix:%s (mode %#o)", self.path, self.mode)

    def close(self) -> None:
        running, self._running = self._running, None
        if running is None:
            return
        running.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class MetricsServer:
    """/metrics over HTTP on ``listen``."""

    def __init__(self, listen: ListenAddress, exposition: Exposition) -> None:
        self.listen = listen
        self._exposition = exposition
        self._running: _Thread | None = None
        self._port = listen.port

    @property
    def http(self) -> HttpServer | None:
        return self._running.server if self._running is not None else None

    @property
    def port(self) -> int:
        """The bound port (differs from ``listen.port`` when that is 0)."""
        return self._port

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.listen.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart rebinds despite TIME_WAIT
            sock.bind((self.listen.host, self.listen.port))
            sock.listen(BACKLOG)
        except OSError as exc:
            sock.close()
            hint = "pick another address with --listen HOST:PORT; --listen '' turns /metrics off"
            raise SetupError(f"cannot listen on {self.listen} for /metrics: {exc.strerror or exc} ({hint})") from exc
        self._port = int(sock.getsockname()[1])
        server = HttpServer(sock, metrics_handler(self._exposition), _text_error, "metrics")
        self._running = _Thread(server, "klpd-metrics")
        log.info("metrics on http://%s/metrics", self.address)

    @property
    def address(self) -> str:
        host = self.listen.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host or '0.0.0.0'}:{self.port}"

    def close(self) -> None:
        running, self._running = self._running, None
        if running is not None:
            running.close()
