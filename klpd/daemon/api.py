"""The daemon's servers: the JSON API (HTTP/1.1 on a Unix socket) and /metrics (HTTP on ``listen``).

Both only copy bytes the loop prepared when it published its snapshot: nothing is computed on a query or a
scrape. Each server runs in a daemon thread of its own; the loop never waits for them.

- ``GET /v1/status``: the ``klpd.status/1`` document with the daemon's own ``"daemon"`` part (klpctl status);
  ``GET /v1/health``: is the daemon up, how fresh is its snapshot, which sources work. 503 before the first
  evaluation, 404 for any other path.
- ``/metrics``: prometheus-client's text format, from :class:`klpd.outputs.exposition.Exposition`.
"""

from __future__ import annotations

import contextlib
import errno
import http.server
import logging
import os
import socket
import socketserver
import stat
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from klpd.config import ListenAddress
from klpd.errors import SetupError
from klpd.outputs.exposition import Exposition, metrics_wsgi_app
from klpd.protocol import HEALTH_PATH, STATUS_PATH

__all__ = ["ApiServer", "Documents", "MetricsServer"]

log = logging.getLogger(__name__)

# A client that connects and sends nothing must not hold a thread forever.
REQUEST_TIMEOUT = 10.0


class Documents(Protocol):
    """What the API serves, rendered once per snapshot."""

    @property
    def status_json(self) -> bytes: ...

    @property
    def health_json(self) -> bytes: ...


class _ApiHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "klpd"
    server: _UnixHTTPServer

    def setup(self) -> None:
        self.request.settimeout(REQUEST_TIMEOUT)
        super().setup()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path not in (STATUS_PATH, HEALTH_PATH):
            self._reply(404, b'{"error": "not found; try GET /v1/status or /v1/health"}\n')
            return
        docs = self.server.get_documents()
        if docs is None:
            self._reply(503, b'{"error": "klpd is starting: no evaluation yet"}\n')
            return
        self._reply(200, docs.status_json if path == STATUS_PATH else docs.health_json)

    def do_HEAD(self) -> None:
        self.do_GET()

    def _reply(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                # The client hung up before reading (curl -f on a 503, a timeout): nothing to tell anyone.
                log.debug("api: client went away before the reply was written")
        self.close_connection = True

    def address_string(self) -> str:
        return "unix"  # client_address is empty on a Unix socket

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("api: " + format, *args)


class _QuietErrors:
    """socketserver prints a traceback to stderr (the journal) for every failed request. A client that hung up
    (curl -f on a 503, a scrape timeout) is not klpd's error; anything else is logged once, with its traceback."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError):
            log.debug("client went away: %s", exc)
        else:
            log.error("request failed", exc_info=True)


class _UnixHTTPServer(_QuietErrors, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, get_documents: Callable[[], Documents | None]) -> None:
        self.get_documents = get_documents
        super().__init__(path, _ApiHandler, bind_and_activate=False)


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


def _serve(server: socketserver.BaseServer, stopped: threading.Event) -> None:
    # handle_request() with no timeout blocks in select() until a client comes: no periodic wake-ups, unlike
    # serve_forever()'s 0.5 s polling. close() shuts the listening socket down, which wakes it.
    server.timeout = None
    while not stopped.is_set():
        server.handle_request()


class ApiServer:
    """The JSON API on a Unix socket."""

    def __init__(self, path: Path, mode: int, get_documents: Callable[[], Documents | None]) -> None:
        self.path = path
        self.mode = mode
        self._get = get_documents
        self._server: _UnixHTTPServer | None = None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

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
        server = _UnixHTTPServer(str(self.path), self._get)
        try:
            server.server_bind()
            os.chmod(self.path, self.mode)  # explicit: bind() honours the umask (0077 under the unit)
            server.server_activate()
        except OSError as exc:
            server.server_close()
            raise _setup_error("API socket", str(self.path), exc, hint) from exc
        self._server = server
        self._thread = threading.Thread(target=_serve, args=(server, self._stopped), name="klpd-api", daemon=True)
        self._thread.start()
        log.info("JSON API on unix:%s (mode %#o)", self.path, self.mode)

    def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        _stop(server, self._stopped, self._thread)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _stop(server: socketserver.BaseServer, stopped: threading.Event, thread: threading.Thread | None) -> None:
    stopped.set()
    sock = getattr(server, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    if thread is not None:
        thread.join(timeout=2.0)
    server.server_close()


class _QuietHandler(WSGIRequestHandler):
    def setup(self) -> None:
        self.request.settimeout(REQUEST_TIMEOUT)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics: " + format, *args)


class _MetricsWSGIServer(_QuietErrors, WSGIServer):
    # One request at a time: a scrape only copies prepared bytes, and a thread per connection made the p99 worse
    # (thread start-up and GIL hand-offs) than any queueing. REQUEST_TIMEOUT bounds a client that stalls.
    allow_reuse_address = True


class _MetricsWSGIServer6(_MetricsWSGIServer):
    address_family = socket.AF_INET6


class MetricsServer:
    """/metrics over HTTP on ``listen``."""

    def __init__(self, listen: ListenAddress, exposition: Exposition) -> None:
        self.listen = listen
        self._app = metrics_wsgi_app(exposition)
        self._server: WSGIServer | None = None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (differs from ``listen.port`` when that is 0)."""
        return int(self._server.server_address[1]) if self._server is not None else self.listen.port

    def start(self) -> None:
        cls = _MetricsWSGIServer6 if ":" in self.listen.host else _MetricsWSGIServer
        try:
            server = cls((self.listen.host, self.listen.port), _QuietHandler)
        except OSError as exc:
            hint = "pick another address with --listen HOST:PORT; --listen '' turns /metrics off"
            raise SetupError(f"cannot listen on {self.listen} for /metrics: {exc.strerror or exc} ({hint})") from exc
        server.set_app(self._app)
        self._server = server
        self._thread = threading.Thread(target=_serve, args=(server, self._stopped), name="klpd-metrics",
                                        daemon=True)  # fmt: skip
        self._thread.start()
        log.info("metrics on http://%s/metrics", self.address)

    @property
    def address(self) -> str:
        host = self.listen.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host or '0.0.0.0'}:{self.port}"

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            _stop(server, self._stopped, self._thread)
