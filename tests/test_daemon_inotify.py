"""inotify on the patch directories, through the real kernel interface."""

from __future__ import annotations

import os
import select
import struct

import pytest

from klpd.daemon.inotify import IN_CREATE, IN_Q_OVERFLOW, PatchDirWatcher, parse_inotify_events
from klpd.errors import FormatError


def _raw(wd, mask, name=b""):
    padded = name + b"\0" * (16 - len(name) % 16) if name else b""
    return struct.pack("=iIII", wd, mask, 0, len(padded)) + padded


def test_parse_events():
    events = parse_inotify_events(_raw(1, IN_CREATE, b"livepatch-fix.ko") + _raw(-1, IN_Q_OVERFLOW))
    assert [(e.wd, e.mask, e.name) for e in events] == [(1, IN_CREATE, "livepatch-fix.ko"), (-1, IN_Q_OVERFLOW, "")]
    with pytest.raises(FormatError, match="runs past"):
        parse_inotify_events(struct.pack("=iIII", 1, IN_CREATE, 0, 64) + b"short")


def wait_batch(watcher):
    select.select([watcher.fileno()], [], [], 5)
    return watcher.read()


def test_created_and_removed_files_are_events(tmp_path):
    watcher = PatchDirWatcher(clock=lambda: 1.0)
    try:
        patches = tmp_path / "kpatch"
        watcher.set_dirs([tmp_path])  # the patch directory does not exist yet: its parent is watched
        patches.mkdir()
        assert [(e.kind, e.subject) for e in wait_batch(watcher).events] == [("created", str(patches))]
        watcher.set_dirs([patches])
        assert watcher.watched == (patches,)
        (patches / "livepatch-fix.ko").write_bytes(b"x")
        kinds = [e.kind for e in wait_batch(watcher).events]
        assert kinds[0] == "created" and "written" in kinds
        os.unlink(patches / "livepatch-fix.ko")
        assert [e.kind for e in wait_batch(watcher).events] == ["removed"]
        os.rmdir(patches)
        assert "directory_gone" in [e.kind for e in wait_batch(watcher).events]
        assert watcher.watched == ()
    finally:
        watcher.close()


def test_missing_directory_is_not_an_error(tmp_path):
    watcher = PatchDirWatcher()
    try:
        watcher.set_dirs([tmp_path / "nope", tmp_path])
        assert watcher.watched == (tmp_path,) and watcher.failed == {}
    finally:
        watcher.close()


def drain(watcher, until):
    """Batches until ``until(events, lost)`` holds; each wait bounded (5 s), at most 10 of them."""
    events, lost = [], 0
    for _ in range(10):
        batch = wait_batch(watcher)
        events += batch.events
        lost += batch.lost
        if until(events, lost):
            break
    return events, lost


@pytest.mark.parametrize("how", ["rename over", "move away, then in"])
def test_a_directory_replaced_by_rename_is_watched_again(tmp_path, how):
    """`mv new dir` (rename(2) over an empty directory), or a package manager's `mv dir old; mv new dir`: the
    watch was on the old inode, and new files went unseen until the resync."""
    patches, new = tmp_path / "kpatch", tmp_path / "kpatch.new"
    patches.mkdir()
    new.mkdir()
    (new / "livepatch-a.ko").write_bytes(b"x")
    watcher = PatchDirWatcher(clock=lambda: 1.0)
    try:
        watcher.set_dirs([patches])
        if how == "rename over":
            os.rename(new, patches)
        else:
            os.rename(patches, tmp_path / "kpatch.old")
            os.rename(new, patches)
        events, lost = drain(watcher, lambda ev, lost: lost > 0)
        assert lost == 1  # a loss: the loop resyncs at once
        assert "directory_gone" in [e.kind for e in events]
        # The next evaluation may come too late for the first file: the path is watched again already.
        (patches / "livepatch-b.ko").write_bytes(b"y")
        events, _ = drain(watcher, lambda ev, lost: any(e.subject.endswith("livepatch-b.ko") for e in ev))
        assert ("created", str(patches / "livepatch-b.ko")) in [(e.kind, e.subject) for e in events]
        assert watcher.watched == (patches,)
        if how != "rename over":  # the old inode, now kpatch.old, is no longer reported as the patch directory
            (tmp_path / "kpatch.old" / "stale.ko").write_bytes(b"z")
            (patches / "marker").write_bytes(b"")  # queued after anything stale.ko would have caused
            events, _ = drain(watcher, lambda ev, lost: any(e.subject.endswith("marker") for e in ev))
            assert not any("stale.ko" in e.subject for e in events)
    finally:
        watcher.close()
