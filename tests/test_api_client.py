"""The client klpctl asks the daemon with: against the daemon's own API server, and against things that are not it."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from klpd.api_client import fetch_status
from klpd.daemon.api import ApiServer
from klpd.errors import DaemonUnavailable, KlpdError
from klpd.protocol import STATUS_PATH


@dataclass(frozen=True)
class Docs:
    status_json: bytes
    health_json: bytes = b"{}\n"


def serve(path: Path, documents: Docs | None) -> ApiServer:
    server = ApiServer(path, 0o600, lambda: documents)
    server.start()
    return server


def test_the_status_document_from_the_daemons_server(tmp_path: Path) -> None:
    doc = {"schema": "klpd.status/1", "host": {}, "patches": [], "daemon": {"pid": 1, "note": "é" * 40_000}}
    server = serve(tmp_path / "klpd.sock", Docs(json.dumps(doc).encode()))
    try:
        assert fetch_status(str(tmp_path / "klpd.sock")) == doc
    finally:
        server.close()


def test_a_daemon_still_starting_is_unavailable_with_its_http_status(tmp_path: Path) -> None:
    server = serve(tmp_path / "klpd.sock", None)
    try:
        with pytest.raises(DaemonUnavailable, match=r"^HTTP 503 Service Unavailable$"):
            fetch_status(str(tmp_path / "klpd.sock"))
    finally:
        server.close()


def test_no_daemon_names_the_os_error(tmp_path: Path) -> None:
    with pytest.raises(DaemonUnavailable, match=r"^No such file or directory$") as info:
        fetch_status(str(tmp_path / "none.sock"))
    assert isinstance(info.value, KlpdError) and isinstance(info.value, ConnectionError)


@pytest.fixture
def canned(tmp_path: Path) -> Iterator[tuple[str, list[bytes], list[bytes]]]:
    """A socket whose server answers each connection with the next canned reply and records the request."""
    path = str(tmp_path / "other.sock")
    replies: list[bytes] = []
    requests: list[bytes] = []
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()

    def run() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(4096)
                requests.append(request)
                conn.sendall(replies.pop(0))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield path, replies, requests
    listener.shutdown(socket.SHUT_RDWR)
    listener.close()
    thread.join(5)


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"", "closed the connection without a reply"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "not an HTTP reply: 'SSH-2.0-OpenSSH_9.2'"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}", "reply cut short: 2 of 100 bytes"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "not JSON"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]", "not a status document"),
        (b"HTTP/1.0 404 Not Found\r\n\r\n", "HTTP 404 Not Found"),
    ],
)
def test_a_reply_that_is_not_a_status_document_is_unavailable(
    canned: tuple[str, list[bytes], list[bytes]], reply: bytes, message: str
) -> None:
    path, replies, requests = canned
    replies.append(reply)
    with pytest.raises(DaemonUnavailable, match=message):
        fetch_status(path)
    assert requests[0].startswith(f"GET {STATUS_PATH} HTTP/1.1\r\n".encode())


def test_only_content_length_bytes_are_the_body(canned: tuple[str, list[bytes], list[bytes]]) -> None:
    path, replies, _ = canned
    headers = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 9\r\n\r\n"
    replies.append(headers + b'{"a": 1}\ntrailing')
    assert fetch_status(path) == {"a": 1}
