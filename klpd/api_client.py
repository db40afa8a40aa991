"""Client of the daemon's JSON API: HTTP/1.1 over its Unix socket (``GET /v1/status``).

HTTP keeps the socket usable by hand at 3 a.m.: ``curl --unix-socket /run/klpd/klpd.sock http://klpd/v1/status``.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

from klpd.errors import KlpdError

STATUS_PATH = "/v1/status"


class DaemonUnavailable(KlpdError, ConnectionError):
    """No daemon answers on the socket, or it answered something that is not a status document."""


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("klpd", timeout=timeout)
        self._socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def fetch_status(socket_path: str, timeout: float = 5.0) -> dict[str, Any]:
    """The daemon's ``klpd.status/1`` document; DaemonUnavailable when it cannot be had."""
    conn = _UnixHTTPConnection(socket_path, timeout)
    try:
        conn.request("GET", STATUS_PATH)
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise DaemonUnavailable(exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) from exc
    finally:
        conn.close()
    if response.status != 200:
        raise DaemonUnavailable(f"HTTP {response.status} {response.reason}")
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise DaemonUnavailable(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise DaemonUnavailable("not a status document")
    return doc
