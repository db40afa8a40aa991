"""Both daemon servers (the JSON API on a Unix socket, /metrics on loopback) against the clients of issue 15: a
client dripping bytes, idle connections beyond the cap, accept() failing with EMFILE, a burst of scrapers, and
malformed requests. Every wait is bounded; verdicts are outcomes (answered, closed, counted), not durations."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import pytest

from klpd.api_client import fetch_status
from klpd.config import ListenAddress
from klpd.daemon import http_server
from klpd.daemon.api import ApiServer, MetricsServer, json_error, metrics_handler
from klpd.daemon.http_server import HttpServer
from klpd.outputs.exposition import Exposition
from tests.daemon_scenario import SimulatedTime

METRICS_TEXT = b"# TYPE klpd_up gauge\nklpd_up 1.0\n"


@dataclass(frozen=True)
class Docs:
    status_json: bytes = b'{"schema": "klpd.status/1", "patches": []}\n'
    health_json: bytes = b'{"status": "ok"}\n'


@dataclass
class Servers:
    api: ApiServer
    metrics: MetricsServer
    socket: str

    def scrape(self) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics.port}/metrics", timeout=5) as r:
            return bytes(r.read())

    def connect(self, which: str) -> socket.socket:
        if which == "api":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(5)
            sock.connect(self.socket)
        else:
            sock = socket.create_connection(("127.0.0.1", self.metrics.port), timeout=5)
        return sock

    def http(self, which: str) -> HttpServer:
        server = self.api.http if which == "api" else self.metrics.http
        assert server is not None
        return server


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    path = tmp_path / "klpd.sock"
    api = ApiServer(path, 0o600, Docs)
    api.start()
    metrics = MetricsServer(ListenAddress("127.0.0.1", 0), Exposition(lambda: METRICS_TEXT, process=False))
    metrics.start()
    yield Servers(api, metrics, str(path))
    api.close()
    metrics.close()


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def ask_api(servers: Servers, request: bytes) -> tuple[str, dict[str, str], bytes]:
    with servers.connect("api") as sock:
        sock.sendall(request)
        raw = read_all(sock)
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *fields = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
    return status, headers, body


@pytest.mark.parametrize("which", ["api", "metrics"])
def test_a_drip_feeding_client_does_not_block_a_scrape_and_is_cut_off_whole(servers, monkeypatch, which):
    """One byte at a time, never a whole request: a per-read timeout never fires; the whole-request deadline does
    (shortened here from its 5 s), with a 408; scrapes and queries meanwhile are answered."""
    monkeypatch.setattr(http_server, "REQUEST_DEADLINE", 0.5)
    drip = servers.connect(which)
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"X-Drip: " + b"a" * 1000
    reply = b""
    for i in range(200):  # at most 200 x 0.05 s; the deadline cuts it off after about 10
        try:
            drip.sendall(request[i : i + 1])
        except OSError:
            break
        assert METRICS_TEXT in servers.scrape()
        assert fetch_status(servers.socket)["schema"] == "klpd.status/1"
        try:
            drip.settimeout(0.05)
            reply = drip.recv(4096)
        except TimeoutError:
            continue
        drip.settimeout(5)
        reply += read_all(drip)  # to the end: the server has closed its side
        break
    drip.close()
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert servers.http(which).open_connections == 0


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_idle_connections_beyond_the_cap_are_bounded_and_block_nothing(servers):
    cap, idle = 8, 40
    for which in ("api", "metrics"):
        servers.http(which).max_connections = cap
    before = fd_count()
    clients = [servers.connect(which) for which in ("api", "metrics") for _ in range(idle)]
    try:
        # Both answer although more idle clients than the cap are connected (and were accepted first).
        assert METRICS_TEXT in servers.scrape()
        assert fetch_status(servers.socket)["schema"] == "klpd.status/1"
        assert servers.http("api").open_connections <= cap
        assert servers.http("metrics").open_connections <= cap
        # The clients' own 80 descriptors, and at most the cap on each server's side (no thread, nothing else).
        assert fd_count() - before <= 2 * idle + 2 * cap
        # The connections closed to make room were closed, not left half-open: the client sees EOF.
        assert clients[0].recv(1) == b""
    finally:
        for c in clients:
            c.close()


class _Listener(socket.socket):
    """A listening socket whose accept() fails with EMFILE while ``failing``, counting the attempts."""

    failing = True
    attempts = 0

    def accept(self):  # type: ignore[no-untyped-def]
        type(self).attempts += 1
        if type(self).failing:
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()


def test_accept_failing_with_emfile_backs_off_logs_once_and_recovers(caplog):
    _Listener.failing, _Listener.attempts = True, 0
    sim = SimulatedTime()
    listener = _Listener(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    server = HttpServer(listener, metrics_handler(Exposition(lambda: METRICS_TEXT, process=False)), json_error,
                        "test", clock=sim.clock, selector=sim.selector())  # fmt: skip
    client = socket.create_connection(listener.getsockname(), timeout=5)
    client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        steps = 0
        while sim.now < sim.start + 10 and steps < 1000:  # 10 simulated seconds; a busy loop would use 1000 steps
            server.step()
            steps += 1
        # 0.1 + 0.2 + 0.4 + 0.8 + 1.6 s, then every 2 s: about 8 attempts in 10 s, not one per step.
        assert sim.now >= sim.start + 10
        assert 5 <= _Listener.attempts <= 10
        assert [r.message for r in caplog.records if "cannot accept" in r.message] == [
            "test: cannot accept connections: Too many open files; retrying every 2 s at most"
        ]
        _Listener.failing = False
        for _ in range(5):  # within one back-off period (2 simulated s) the waiting client is served
            server.step()
            if server.open_connections == 0 and _Listener.attempts > 10:
                break
        assert read_all(client).startswith(b"HTTP/1.1 200 OK\r\n")
        assert any("accepting connections again" in r.message for r in caplog.records)
    finally:
        client.close()
        server.close()


def test_a_burst_of_200_scrapers_and_100_api_clients_all_succeed(servers):
    results: list[bool] = []
    start = threading.Barrier(300)

    def scraper() -> None:
        start.wait(10)
        results.append(METRICS_TEXT in servers.scrape())

    def api_client() -> None:
        start.wait(10)
        results.append(fetch_status(servers.socket)["schema"] == "klpd.status/1")

    threads = [threading.Thread(target=scraper) for _ in range(200)]
    threads += [threading.Thread(target=api_client) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results.count(True) == 300


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", "400 Bad Request"),
        (b"GET /v1/status\r\n\r\n", "400 Bad Request"),  # HTTP/0.9
        (b"GET /v1/status HTTP/1.1\r\nno colon here\r\n\r\n", "400 Bad Request"),
        (b"GET /nope HTTP/1.1\r\nHost: klpd\r\n\r\n", "404 Not Found"),
        (b"POST /v1/status HTTP/1.1\r\nHost: klpd\r\nContent-Length: 2\r\n\r\n{}", "405 Method Not Allowed"),
        (b"GET /v1/status HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n", f"413 {HTTPStatus(413).phrase}"),
        (b"GET /v1/status HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "400 Bad Request"),
        (b"GET /v1/status HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n", "400 Bad Request"),  # isdigit() takes it
        (b"GET /v1/status HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", "501 Not Implemented"),
        (b"GET /v1/status HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", "431 Request Header Fields Too Large"),
    ],
)
# 413's phrase is the running Python's: "Content Too Large" (RFC 9110) since 3.13, "Request Entity Too Large" before.
def test_malformed_requests_get_json_errors_on_the_api(servers, request_bytes, status):
    line, headers, body = ask_api(servers, request_bytes)
    assert line == f"HTTP/1.1 {status}"
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    assert isinstance(json.loads(body)["error"], str)


def test_head_gets_the_length_without_the_body(servers):
    line, headers, body = ask_api(servers, b"HEAD /v1/health HTTP/1.1\r\nHost: klpd\r\n\r\n")
    assert line == "HTTP/1.1 200 OK" and body == b""
    assert int(headers["content-length"]) == len(Docs().health_json)


@pytest.mark.parametrize("which", ["api", "metrics"])
def test_a_content_length_of_unicode_digits_does_not_end_the_server(servers, which):
    """'²' passes str.isdigit() and makes int() raise: that request once ended the server thread for good, the
    listener still open and answering nobody. It gets a 400, and the next client is served."""
    with servers.connect(which) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n")
        assert read_all(sock).startswith(b"HTTP/1.1 400 ")
    assert METRICS_TEXT in servers.scrape()
    assert ask_api(servers, b"GET /v1/health HTTP/1.1\r\n\r\n")[0] == "HTTP/1.1 200 OK"


def test_a_request_with_bare_newlines_is_answered(servers):
    """printf 'GET /metrics HTTP/1.0\\n\\n' | nc: what http.server accepted, and a hand-typed request sends."""
    with servers.connect("metrics") as sock:
        sock.sendall(b"GET /metrics HTTP/1.0\n\n")
        assert read_all(sock).startswith(b"HTTP/1.1 200 OK")


def test_the_server_thread_survives_an_unexpected_error(servers, monkeypatch):
    """A bug in one round must not end the thread (the listener would stay open, answering nobody)."""
    server = servers.http("metrics")
    real, failures = server.step, []

    def step_once_broken() -> None:
        if not failures:
            failures.append(1)
            raise RuntimeError("a bug")
        real()

    monkeypatch.setattr(server, "step", step_once_broken)
    with servers.connect("metrics") as sock:  # wakes the server, which then fails once
        sock.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        with contextlib.suppress(ConnectionResetError):  # the failed round drops its connections: maybe this one
            read_all(sock)
    assert servers.scrape()
    assert failures == [1]
