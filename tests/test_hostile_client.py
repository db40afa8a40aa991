"""klpctl against a hostile peer on the daemon's socket, and hostile strings on the terminal.

A peer that drips bytes, sends more than any status document, or nests brackets without end must make klpctl
compute the status itself, with a message and never a traceback or exit code 1; whatever a file, sysfs or the
peer says reaches the terminal with its control characters spelt out. Unix sockets only; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fixtures import RELEASE, FixtureRoot, one_symbol_root

from klpd import api_client
from klpd.api_client import decode_json, fetch_status
from klpd.cli import ExitCode, main
from klpd.errors import DaemonUnavailable
from klpd.model import HostStatus, PatchStatus, Problem, Severity
from klpd.outputs.text import escape, render_daemon, render_status

OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n"


@contextlib.contextmanager
def peer(path: Path, behave: Callable[[socket.socket, threading.Event], None]) -> Iterator[str]:
    """A Unix socket whose server runs ``behave(conn, stop)`` for each connection, in a thread, until the end."""
    stop = threading.Event()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    listener.settimeout(0.1)

    def run() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.recv(4096)
                behave(conn, stop)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield str(path)
    finally:
        stop.set()
        thread.join(10)
        listener.close()


def drip(conn: socket.socket, stop: threading.Event) -> None:
    """A byte every 20 ms, for ever: each read succeeds, only an overall deadline ends it."""
    conn.sendall(OK_HEAD + b"{")
    while not stop.wait(0.02):
        conn.sendall(b" ")


def flood(conn: socket.socket, stop: threading.Event) -> None:
    """An endless body (the 1.5 GB reply of the probe, not sent in full: the client must stop reading first)."""
    conn.sendall(OK_HEAD + b'{"a": "')
    block = b"x" * (1 << 16)
    while not stop.is_set():
        conn.sendall(block)


def nested(conn: socket.socket, stop: threading.Event) -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


def escapes(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 500 \x1b]0;owned\x07\x1b[2J\r\nContent-Length: 0\r\n\r\n")


def test_a_dripping_peer_meets_the_overall_deadline(tmp_path: Path) -> None:
    with peer(tmp_path / "s", drip) as path:
        started = time.monotonic()
        with pytest.raises(DaemonUnavailable, match=r"no complete reply within 0\.5 s"):
            fetch_status(path, deadline=0.5)
        assert time.monotonic() - started < 5  # 25 reads succeeded in that time: a per-read timeout never fires


def test_an_endless_reply_stops_at_the_size_cap(tmp_path: Path) -> None:
    with peer(tmp_path / "s", flood) as path, pytest.raises(DaemonUnavailable, match="reply larger than 1 MiB"):
        fetch_status(path, deadline=30, limit=1 << 20)


def test_the_default_cap_is_far_above_a_real_document() -> None:
    assert api_client.MAX_REPLY_BYTES >= 64 << 20 and api_client.MAX_JSON_DEPTH >= 32


def test_deep_nesting_is_a_bad_answer_not_a_recursion_error(tmp_path: Path) -> None:
    with peer(tmp_path / "s", nested) as path, pytest.raises(DaemonUnavailable, match="nested deeper than 64"):
        fetch_status(path)


@pytest.mark.parametrize(
    ("body", "ok"),
    [
        (b'{"a": [[{"b": "]]]]]]"}]], "c": "\\"[["}', True),  # brackets in strings, an escaped quote
        (b"[" * 64 + b"]" * 64, True),
        (b"[" * 65 + b"]" * 65, False),
        (b"{" * 30 + b"[" * 35 + b"]" * 35 + b"}" * 30, False),
        (b"[[[", False),
    ],
)
def test_nesting_bound(body: bytes, ok: bool) -> None:
    if ok:
        decode_json(body)
    else:
        with pytest.raises(DaemonUnavailable):
            decode_json(body)


@pytest.fixture
def fx(tmp_path: Path) -> FixtureRoot:
    return one_symbol_root(tmp_path / "root")


@pytest.mark.parametrize("behave", [drip, flood, nested, escapes])
def test_klpctl_falls_back_to_computing_directly(
    behave: Callable[[socket.socket, threading.Event], None],
    fx: FixtureRoot,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(api_client, "DEFAULT_DEADLINE", 0.5)
    monkeypatch.setattr(api_client, "MAX_REPLY_BYTES", 1 << 20)
    with peer(tmp_path / "s", behave) as path:
        code = main(["status", "--root", str(fx.path), "--socket", path])
    captured = capsys.readouterr()
    assert code == ExitCode.OK
    assert "computing directly" in captured.err and "Traceback" not in captured.err
    assert "\x1b" not in captured.err and "\x07" not in captured.err
    assert f"kernel {RELEASE}" in captured.out
    if behave is escapes:
        assert "HTTP 500 \\x1b]0;owned\\x07\\x1b[2J" in captured.err


# -- the terminal ----------------------------------------------------------------------------------------------


def test_escape_spells_out_control_characters() -> None:
    assert escape("a\x1b[31mb\x07\nc\x9b\x7f\u202e/d\\x") == "a\\x1b[31mb\\x07\\x0ac\\x9b\\x7f\\u202e/d\\x"
    assert escape(escape("\x1b")) == "\\x1b"
    assert escape("é 雪 /var/lib/kpatch") == "é 雪 /var/lib/kpatch"


def test_escape_spells_out_bytes_that_were_not_utf8() -> None:
    name = b"/lib/modules/lp-\x9b31m-\xff.ko".decode("utf-8", "surrogateescape")  # a file name off the disk
    shown = escape(name)
    assert shown == "/lib/modules/lp-\\x9b31m-\\xff.ko"
    shown.encode("utf-8")  # a strict stdout takes it: no UnicodeEncodeError
    assert escape("\ud800 \udc00 \udc7f \udfff") == "\\ud800 \\udc00 \\udc7f \\udfff"  # lone ones from a peer's JSON


def test_status_text_escapes_names_paths_and_messages() -> None:
    evil = "lp\x1b]0;pwned\x07"
    patch = PatchStatus(
        name=evil, path=f"/lib/{evil}\n.ko", loaded=True, enabled=True, transition=False, replace=None,
        stack_order=None, vermagic=None, srcversion=None, will_load=False, reasons=(f"because \x1b[2J{evil}",),
        objects=(),
        problems=(Problem("x", Severity.ERROR, f"bad \x1b[1m{evil}", kernel_message="k\x1b[0m"),),
    )  # fmt: skip
    status = HostStatus("6.1\x1b[31m", 0, False, True, True, (patch,), (Problem("y", Severity.WARNING, "\x1bz"),))
    text = render_status(status, verbose=True)
    assert "\x1b" not in text and "\x07" not in text
    assert "lp\\x1b]0;pwned\\x07" in text and "/lib/lp\\x1b]0;pwned\\x07\\x0a.ko" in text


def test_daemon_strings_are_escaped_and_odd_values_do_not_crash() -> None:
    daemon = {
        "version": "\x1b[2J", "started": 1e300, "last_evaluation": float("nan"),
        "transitions": [{"patch": "p\x1b", "signals": 5, "tasks_note": "\x07",
                         "blocking_tasks": [{"pid": 1, "tid": 1, "comm": "evil\x1b]0;x\x07"}]}],
        "events": [{"time": True, "source": "kmsg", "message": "\x1b[1;1H"}],
    }  # fmt: skip
    text = render_daemon(daemon)
    assert "\x1b" not in text and "\x07" not in text and "evil\\x1b]0;x\\x07" in text
    assert render_daemon([1, 2]) == ""  # type: ignore[arg-type]
