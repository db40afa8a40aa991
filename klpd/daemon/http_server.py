"""The HTTP/1.1 server under both of the daemon's endpoints (the JSON API, /metrics): one thread, one selector,
and bounds no local client can get round.

Why not http.server / socketserver: their timeout is per read (a client dripping a byte every few seconds holds a
request for ever), and they either serve one connection at a time or start a thread for each, without a cap. Here
a connection is a buffer in a selector: only a request read whole reaches the handler, which returns prepared
bytes at once, so a slow or idle client costs one file descriptor and delays nobody.

The bounds (module constants; the daemon's configuration does not set them):

- a request must be read whole within ``REQUEST_DEADLINE`` (5 s) of its accept(), else it is answered 408 (best
  effort) and closed; the reply must then be written within ``WRITE_DEADLINE`` (5 s), else it is closed;
- at most ``MAX_CONNECTIONS`` (256) connections per server. One more is still accepted, and the oldest open
  connection is closed to make room: a flood of idle clients churns among itself, while a real client (curl,
  Prometheus, klpctl), whose request comes with its connection, is answered as soon as it is accepted (it
  could only lose its place if 256 other connections were accepted between its connect() and its request);
- a listen backlog of ``BACKLOG`` (1024; the kernel caps it at net.core.somaxconn), so a burst waits, not refused;
- accept() failing (for want of resources: EMFILE, ENFILE, ENOBUFS, ENOMEM; or anything but EAGAIN) pauses for
  ``ACCEPT_BACKOFF`` (0.1 s, doubling to 2 s while it keeps failing), logged once per episode: no busy loop.
"""

from __future__ import annotations

import contextlib
import http
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["HttpServer", "Request", "Response"]

from klpd.numbers import kernel_decimal

log = logging.getLogger(__name__)

REQUEST_DEADLINE = 5.0  # seconds from accept() to the last byte of the request
WRITE_DEADLINE = 5.0  # seconds to write the reply
MAX_CONNECTIONS = 256  # per server: both together (512) stay inside systemd's default of 1024 open files
BACKLOG = 1024
ACCEPT_BACKOFF = 0.1
ACCEPT_BACKOFF_MAX = 2.0
MAX_HEAD = 8 * 1024  # request line and headers (431 beyond)
MAX_BODY = 8 * 1024  # neither endpoint takes a body; a small one is read and ignored, a larger one is 413
_RECV = 16 * 1024  # so a connection's buffer stays under 32 KiB: 8 MiB for a full server at worst
_ACCEPTS_PER_STEP = 64  # then the connections already open get their turn


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query string


@dataclass(frozen=True)
class Response:
    status: int
    headers: tuple[tuple[str, str], ...]  # Content-Length and Connection are the server's
    body: bytes


Handler = Callable[[Request], Response]
ErrorReply = Callable[[int, str], Response]  # the server's own errors (400, 408, 413, ...), in the endpoint's format


def render(response: Response, head_only: bool) -> bytes:
    try:
        reason = http.HTTPStatus(response.status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {response.status} {reason}", "Server: klpd"]
    lines += [f"{name}: {value}" for name, value in response.headers]
    lines += [f"Content-Length: {len(response.body)}", "Connection: close", "", ""]
    head = "\r\n".join(lines).encode("latin-1")
    return head if head_only else head + response.body


class _Connection:
    __slots__ = ("deadline", "head_only", "received", "reply", "scanned", "sock")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.received = bytearray()
        self.scanned = 0  # where the search for the end of the head starts again: no quadratic rescans
        self.reply: memoryview | None = None  # set once the request is read: what remains to write
        self.deadline = deadline
        self.head_only = False


def _head_end(received: bytearray, start: int) -> tuple[int, int]:
    """Where the request head ends and how long the blank line is: CRLF CRLF, or bare LF LF as nc and hand-typed
    requests send (http.server took both); (-1, 0) while it has not arrived."""
    crlf, lf = received.find(b"\r\n\r\n", start), received.find(b"\n\n", start)
    if lf >= 0 and (crlf < 0 or lf < crlf):
        return lf, 2
    return (crlf, 4) if crlf >= 0 else (-1, 0)


def _parse(conn: _Connection) -> Request | tuple[int, str] | None:
    """The request, an error (status, message), or None while more bytes are needed."""
    end, blank = _head_end(conn.received, max(conn.scanned - 3, 0))
    if end < 0:
        conn.scanned = len(conn.received)
        return (431, f"request head larger than {MAX_HEAD} bytes") if len(conn.received) > MAX_HEAD else None
    if end > MAX_HEAD:
        return 431, f"request head larger than {MAX_HEAD} bytes"
    line, *fields = bytes(conn.received[:end]).decode("latin-1").replace("\r\n", "\n").split("\n")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[0].isalpha():
        return 400, "malformed request line"
    headers = {}
    for field in fields:
        name, sep, value = field.partition(":")
        if not sep:
            return 400, "malformed header line"
        headers[name.strip().lower()] = value.strip()
    if "transfer-encoding" in headers:
        return 501, "request bodies in chunks are not supported"
    length = kernel_decimal(headers.get("content-length", "0"))  # str.isdigit() takes '²', which int() refuses
    if length is None:
        return 400, "malformed Content-Length"
    if length > MAX_BODY:
        return 413, f"request body larger than {MAX_BODY} bytes"
    if len(conn.received) < end + blank + length:
        return None
    conn.head_only = parts[0] == "HEAD"
    return Request(parts[0], parts[1].split("?", 1)[0])


class HttpServer:
    """Serves ``handler`` on a listening socket; :meth:`step` does one round (a test drives it with a fake clock
    and selector), :meth:`serve` loops until :meth:`stop`."""

    def __init__(self, listener: socket.socket, handler: Handler, error: ErrorReply, name: str, *,
                 clock: Callable[[], float] = time.monotonic,
                 selector: selectors.BaseSelector | None = None) -> None:  # fmt: skip
        self.listener = listener
        self.max_connections = MAX_CONNECTIONS
        self._handler = handler
        self._error = error
        self._name = name
        self._clock = clock
        self._selector = selector if selector is not None else selectors.DefaultSelector()
        self._connections: dict[int, _Connection] = {}  # by fd, oldest first (dicts keep insertion order)
        self._paused_until: float | None = None
        self._backoff = ACCEPT_BACKOFF
        self._stopped = threading.Event()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        listener.setblocking(False)
        self._selector.register(self._wake, selectors.EVENT_READ)
        self._selector.register(listener, selectors.EVENT_READ)

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def serve(self) -> None:
        failing = 0  # rounds in a row that raised: the traceback is logged for the first one only
        while not self._stopped.is_set():
            try:
                self.step()
            except Exception:  # a bug must not end the thread: the listener would stay open, answering nobody
                failing += 1
                if failing == 1:
                    log.error("%s: unexpected error; dropping every connection and going on", self._name,
                              exc_info=True)  # fmt: skip
                for fd in list(self._connections):
                    self._drop(fd)
                self._stopped.wait(0.1)  # a fault that repeats must not spin
            else:
                if failing > 1:
                    log.warning("%s: the error repeated %d times before a round succeeded", self._name, failing)
                failing = 0

    def stop(self) -> None:
        """Make :meth:`serve` return (from another thread); :meth:`close` then releases everything."""
        self._stopped.set()
        with contextlib.suppress(OSError):
            os.eventfd_write(self._wake, 1)

    def close(self) -> None:
        for fd in list(self._connections):
            self._drop(fd)
        self._selector.close()
        self.listener.close()
        os.close(self._wake)

    def step(self) -> None:
        now = self._clock()
        self._expire(now)
        if self._paused_until is not None and now >= self._paused_until:
            self._paused_until = None
            self._selector.register(self.listener, selectors.EVENT_READ)
        for key, _ in self._selector.select(self._timeout(now)):
            if key.fileobj is self.listener:
                self._accept()
            elif key.fd == self._wake:
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(self._wake)
            elif key.fd in self._connections:
                # By state, not by event: the fd may be a new connection's, its old one closed this round.
                conn = self._connections[key.fd]
                self._write(conn) if conn.reply is not None else self._read(conn)

    def _timeout(self, now: float) -> float | None:
        deadlines = [c.deadline for c in self._connections.values()]
        if self._paused_until is not None:
            deadlines.append(self._paused_until)
        return max(min(deadlines) - now, 0.0) if deadlines else None

    def _expire(self, now: float) -> None:
        for fd, conn in list(self._connections.items()):
            if now < conn.deadline:
                continue
            if conn.reply is None:
                # Best effort, never waits: the client learns why, if it still listens.
                with contextlib.suppress(OSError):
                    conn.sock.send(render(self._error(408, f"request not complete within {REQUEST_DEADLINE:g} s"),
                                          False), socket.MSG_DONTWAIT)  # fmt: skip
            log.debug("%s: dropped a connection past its deadline", self._name)
            self._drop(fd)

    def _accept(self) -> None:
        for _ in range(_ACCEPTS_PER_STEP):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                self._pause(exc)
                return
            if self._backoff != ACCEPT_BACKOFF:
                log.warning("%s: accepting connections again", self._name)
                self._backoff = ACCEPT_BACKOFF
            if len(self._connections) >= self.max_connections:
                # The oldest still sending its request; a reply half written is a scrape to finish, not to cut.
                waiting = (fd for fd, c in self._connections.items() if c.reply is None)
                oldest = next(waiting, next(iter(self._connections)))
                log.debug("%s: %d connections open, closing the oldest", self._name, len(self._connections))
                self._drop(oldest)
            sock.setblocking(False)
            conn = _Connection(sock, self._clock() + REQUEST_DEADLINE)
            self._connections[sock.fileno()] = conn
            self._selector.register(sock, selectors.EVENT_READ)
            self._read(conn)  # the request usually came with the connection: answer it now

    def _pause(self, exc: OSError) -> None:
        if self._backoff == ACCEPT_BACKOFF:  # once per episode, whatever the errno (EMFILE is the usual one)
            log.warning("%s: cannot accept connections: %s; retrying every %g s at most", self._name,
                        exc.strerror or exc, ACCEPT_BACKOFF_MAX)  # fmt: skip
        self._paused_until = self._clock() + self._backoff
        self._backoff = min(self._backoff * 2, ACCEPT_BACKOFF_MAX)
        self._selector.unregister(self.listener)

    def _read(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn.sock.fileno())
            return
        if not data:
            self._drop(conn.sock.fileno())
            return
        conn.received += data
        parsed = _parse(conn)
        if parsed is None:
            return
        response = self._handle(parsed) if isinstance(parsed, Request) else self._error(*parsed)
        log.debug("%s: %s -> %d", self._name, parsed, response.status)
        conn.reply = memoryview(render(response, conn.head_only))
        conn.deadline = self._clock() + WRITE_DEADLINE
        self._selector.modify(conn.sock, selectors.EVENT_WRITE)
        self._write(conn)

    def _handle(self, request: Request) -> Response:
        try:
            return self._handler(request)
        except Exception:
            log.error("%s: request failed", self._name, exc_info=True)
            return self._error(500, "internal error; see klpd's log")

    def _write(self, conn: _Connection) -> None:
        assert conn.reply is not None
        try:
            sent = conn.sock.send(conn.reply)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # the client went away before reading: nothing to tell anyone
            log.debug("%s: client went away: %s", self._name, exc)
            self._drop(conn.sock.fileno())
            return
        conn.reply = conn.reply[sent:]
        if not conn.reply:
            # Input left unread (a refused head or body) would make close() send a reset, which can destroy the
            # reply before the client reads it: take what has arrived, a bounded amount, without waiting.
            with contextlib.suppress(OSError):
                for _ in range(8):
                    if not conn.sock.recv(_RECV, socket.MSG_DONTWAIT):
                        break
            self._drop(conn.sock.fileno())

    def _drop(self, fd: int) -> None:
        conn = self._connections.pop(fd)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        conn.sock.close()
