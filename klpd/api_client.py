"""Client of the daemon's JSON API: HTTP/1.1 over its Unix socket (``GET /v1/status``).

HTTP keeps the socket usable by hand at 3 a.m.: ``curl --unix-socket /run/klpd/klpd.sock http://klpd/v1/status``.

The request is written by hand rather than with http.client: that module pulls in email.parser and ssl, about
15 ms of imports, a third of the time ``klpctl status`` may take. One GET of a server that always answers with a
Content-Length and closes the connection (klpd.daemon.api) needs none of it.

Whatever answers on the socket is not trusted: the whole exchange has one deadline (a peer that drips a byte at a
time cannot hold klpctl), the reply has a size cap, and the JSON is decoded with a bound on nesting. Each failure
is a DaemonUnavailable, on which klpctl computes the status itself.
"""

from __future__ import annotations

import json
import re
import socket
import time
from typing import Any

from klpd.errors import DaemonUnavailable
from klpd.numbers import kernel_decimal
from klpd.protocol import STATUS_PATH

# The largest reply accepted. A status document is about 1 KiB per patch plus 200 bytes per symbol: a host with
# 100 patches of 1,000 symbols each is some 20 MiB. 64 MiB is far above any real one and still cheap to hold.
MAX_REPLY_BYTES = 64 << 20
# The deepest nesting of JSON arrays and objects accepted; a status document nests 6 levels.
MAX_JSON_DEPTH = 64
# The whole exchange, connect to the last byte: a daemon answers from a rendered snapshot in milliseconds.
DEFAULT_DEADLINE = 5.0


def _exchange(socket_path: str, path: str, deadline: float, limit: int = MAX_REPLY_BYTES) -> bytes:
    """The raw reply to ``GET path``, read until the daemon closes the connection, within ``deadline`` seconds in
    all (not per read) and ``limit`` bytes; DaemonUnavailable past either."""
    end = time.monotonic() + deadline
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:

        def remaining() -> float:
            left = end - time.monotonic()
            if left <= 0:
                raise DaemonUnavailable(f"no complete reply within {deadline:g} s")
            return left

        sock.settimeout(remaining())
        sock.connect(socket_path)
        sock.settimeout(remaining())
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: klpd\r\nConnection: close\r\n\r\n".encode("ascii"))
        chunks = []
        size = 0
        while True:
            sock.settimeout(remaining())
            try:
                chunk = sock.recv(1 << 16)
            except TimeoutError:
                raise DaemonUnavailable(f"no complete reply within {deadline:g} s") from None
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise DaemonUnavailable(f"reply larger than {limit >> 20} MiB")
            chunks.append(chunk)
    return b"".join(chunks)


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def _nests_within(body: bytes, max_depth: int) -> bool:
    """Whether the arrays and objects of ``body`` nest at most ``max_depth`` deep (brackets inside strings not
    counted). Each pass deletes the innermost pairs, so ``max_depth`` passes empty a balanced body that deep; all
    in C, no recursion, so it can be asked before json.loads, whose recursion a deep document would exhaust."""
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKET)
    for _ in range(max_depth):
        if not brackets:
            return True
        brackets = brackets.replace(b"[]", b"").replace(b"{}", b"")
    return not brackets


# The bracket check costs a pass per level over the body; past this size json.loads' own recursion guard (it
# raises RecursionError, from C, caught below) is the cheaper bound.
_CHECKED_BELOW = 1 << 20


def decode_json(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``body`` as JSON; DaemonUnavailable when it is not, or nests deeper than ``max_depth``."""
    if len(body) < _CHECKED_BELOW and not _nests_within(body, max_depth):
        raise DaemonUnavailable(f"not a status document: unbalanced, or nested deeper than {max_depth} levels")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: belt and braces over the depth check
        raise DaemonUnavailable(f"not JSON: {str(exc)[:200]}") from None


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


def fetch_status(socket_path: str, deadline: float | None = None, limit: int | None = None) -> dict[str, Any]:
    """The daemon's ``klpd.status/1`` document; DaemonUnavailable when it cannot be had within ``deadline`` seconds
    (DEFAULT_DEADLINE) and ``limit`` bytes (MAX_REPLY_BYTES)."""
    deadline = DEFAULT_DEADLINE if deadline is None else deadline
    limit = MAX_REPLY_BYTES if limit is None else limit
    try:
        raw = _exchange(socket_path, STATUS_PATH, deadline, limit)
    except DaemonUnavailable:
        raise
    except TimeoutError as exc:
        raise DaemonUnavailable(f"no complete reply within {deadline:g} s") from exc
    except OSError as exc:
        raise DaemonUnavailable(exc.strerror or str(exc)) from exc
    code, reason, body = _parse_reply(raw)
    if code != 200:
        raise DaemonUnavailable(f"HTTP {code} {reason}")
    doc = decode_json(body)
    if not isinstance(doc, dict):
        raise DaemonUnavailable("not a status document")
    return doc
