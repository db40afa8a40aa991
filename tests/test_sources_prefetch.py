"""Prefetching /proc/kallsyms through a cat child into a memfd: the same bytes, or None and the caller reads."""

from __future__ import annotations

import os
import signal

import pytest

from klpd.root import HostPath
from klpd.sources import prefetch


def _file(tmp_path, data: bytes) -> HostPath:
    path = tmp_path / "kallsyms"
    path.write_bytes(data)
    return HostPath("/proc/kallsyms", path)


def test_the_prefetched_bytes_are_the_file(tmp_path) -> None:
    data = b"".join(b"ffffffff81%06x T sym_%d\n" % (i, i) for i in range(50_000))
    early = prefetch.start(_file(tmp_path, data))
    assert early is not None
    assert early.take() == data
    assert early.take() is None  # taken once
    early.close()  # after take: nothing left to stop


def test_an_empty_file_is_empty_bytes(tmp_path) -> None:
    early = prefetch.start(_file(tmp_path, b""))
    assert early is not None and early.take() == b""


def test_a_fifo_or_a_missing_file_is_not_prefetched(tmp_path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert prefetch.start(HostPath("/proc/kallsyms", fifo)) is None  # cat would block on it for ever
    assert prefetch.start(HostPath("/proc/kallsyms", tmp_path / "absent")) is None


@pytest.mark.parametrize("ending", ["exit 3", "kill -KILL $$"])
def test_a_cat_that_fails_gives_none(tmp_path, monkeypatch: pytest.MonkeyPatch, ending: str) -> None:
    cat = tmp_path / "cat"
    cat.write_text(f"#!/bin/sh\nprintf 'half a fi'\n{ending}\n")
    cat.chmod(0o755)
    monkeypatch.setattr(prefetch, "_CATS", (str(cat),))
    early = prefetch.start(_file(tmp_path, b"x\n"))
    assert early is not None
    assert early.take() is None  # what it wrote vouches for nothing


def test_an_ignored_sigchld_disables_it(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signal, "getsignal", lambda _sig: signal.SIG_IGN)
    assert prefetch.start(_file(tmp_path, b"x\n")) is None


def test_close_stops_a_child_that_was_never_taken(tmp_path) -> None:
    early = prefetch.start(_file(tmp_path, b"x\n" * 1000))
    assert early is not None
    early.close()
    with pytest.raises(ChildProcessError):
        os.waitpid(early._pid, os.WNOHANG)  # reaped: no zombie left
