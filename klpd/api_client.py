"""Client of the daemon's JSON API: HTTP/1.1 over its Unix socket (``GET /v1/status``).

HTTP keeps the socket usable by hand at 3 a.m.: ``curl --unix-socket /run/klpd/klpd.sock http://klpd/v1/status``.

The request is written by hand rather than with http.client: that module pulls in email.parser and ssl, about
15 ms of imports, a third of the time ``klpctl status`` may take. One GET of a server that always answers with a
Content-Length and closes the connection (klpd.daemon.api) needs none of it.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from klpd.errors import DaemonUnavailable
from klpd.numbers import kernel_decimal
from klpd.protocol import STATUS_PATH


def _exchange(socket_path: str, path: str, timeout: float) -> bytes:
    """The raw reply to ``GET path``, read until the daemon closes the connection; ``timeout`` bounds each step."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: klpd\r\nConnection: close\r\n\r\n".encode("ascii"))
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    return b"".join(chunks)


def _parse_reply(raw: bytes) -> tuple[int, str, bytes]:
    """(status code, reason, body) of an HTTP/1.x reply; DaemonUnavailable when it is not one, or is cut short."""
    if not raw:
        raise DaemonUnavailable("the daemon closed the connection without a reply")
    head, sep, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code, _, reason = rest.partition(" ")
    status = kernel_decimal(code) if len(code) == 3 else None
    if not sep or not version.startswith("HTTP/1.") or status is None:
        raise DaemonUnavailable(f"not an HTTP reply: {status_line[:80]!r}")
    for line in header_lines:
        name, _, value = line.partition(":")
        length = kernel_decimal(value.strip())
        if name.strip().lower() == "content-length" and length is not None:
            if len(body) < length:
                raise DaemonUnavailable(f"reply cut short: {len(body)} of {length} bytes")
            body = body[:length]
    return status, reason.strip(), body


def fetch_status(socket_path: str, timeout: float = 5.0) -> dict[str, Any]:
    """The daemon's ``klpd.status/1`` document; DaemonUnavailable when it cannot be had."""
    try:
        raw = _exchange(socket_path, STATUS_PATH, timeout)
    except OSError as exc:
        raise DaemonUnavailable(exc.strerror or str(exc)) from exc
    code, reason, body = _parse_reply(raw)
    if code != 200:
        raise DaemonUnavailable(f"HTTP {code} {reason}")
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise DaemonUnavailable(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise DaemonUnavailable("not a status document")
    return doc
