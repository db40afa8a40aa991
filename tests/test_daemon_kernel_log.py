"""The kernel log reader: the livepatch messages as the kernel prints them, /dev/kmsg's record format, and a real
/dev/kmsg where this machine lets us write to it."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta

import pytest

from klpd.daemon.kernel_log import (
    JournalSource,
    KmsgSource,
    LivepatchEvent,
    parse_kmsg_record,
    parse_livepatch_message,
)

# Lines as kernel/livepatch/core.c and transition.c print them (the refusal pair is from a 6.1 guest and from the
# kernel's own selftests).
REAL = {
    "livepatch: patch 'livepatch_nfsd' failed for module 'nfsd', refusing to load module 'nfsd'":
        (LivepatchEvent.MODULE_LOAD_REFUSED, "livepatch_nfsd", "nfsd", None),
    "livepatch: failed to initialize patch 'livepatch_nfsd' for module 'nfsd' (-8)":
        (LivepatchEvent.PATCH_INIT_FAILED, "livepatch_nfsd", "nfsd", None),
    "livepatch: applying patch 'kpatch_cve' to loading module 'ext4'":
        (LivepatchEvent.APPLYING, "kpatch_cve", "ext4", None),
    "livepatch: reverting patch 'kpatch_cve' on unloading module 'ext4'":
        (LivepatchEvent.REVERTING, "kpatch_cve", "ext4", None),
    "livepatch: enabling patch 'kpatch_cve'": (LivepatchEvent.ENABLING, "kpatch_cve", None, None),
    "livepatch: 'kpatch_cve': initializing patching transition":
        (LivepatchEvent.TRANSITION_INIT, "kpatch_cve", None, "patched"),
    "livepatch: 'kpatch_cve': starting patching transition":
        (LivepatchEvent.TRANSITION_START, "kpatch_cve", None, "patched"),
    "livepatch: 'kpatch_cve': starting unpatching transition":
        (LivepatchEvent.TRANSITION_START, "kpatch_cve", None, "unpatched"),
    "livepatch: 'kpatch_cve': patching complete": (LivepatchEvent.TRANSITION_COMPLETE, "kpatch_cve", None, "patched"),
    "livepatch: 'kpatch_cve': unpatching complete":
        (LivepatchEvent.TRANSITION_COMPLETE, "kpatch_cve", None, "unpatched"),
    "livepatch: signaling remaining tasks": (LivepatchEvent.SIGNALING, None, None, None),
    "livepatch: forcing remaining tasks to the patched state": (LivepatchEvent.FORCING, None, None, None),
}  # fmt: skip


@pytest.mark.parametrize("text", list(REAL))
def test_kernel_messages(text):
    kind, patch, module, target = REAL[text]
    msg = parse_livepatch_message(text + "\n")
    assert msg is not None
    assert (msg.kind, msg.patch, msg.module, msg.target) == (kind, patch, module, target)
    assert msg.text == text


def test_error_code_of_a_failed_initialization():
    msg = parse_livepatch_message("livepatch: failed to initialize patch 'p' for module 'm' (-22)")
    assert msg is not None and msg.error == -22


@pytest.mark.parametrize("text", [
    "x86/modules: Skipping invalid relocation target, existing value is nonzero for type 2",
    "livepatch: 'kpatch_cve': reversing transition from patching",  # pr_debug, carries nothing new
    "livepatch: symbol 'foo' not found in symbol table",
    "patch 'a' failed for module 'b', refusing to load module 'b'",  # not from livepatch
    "livepatch: patch 'a' failed for module 'b', refusing to load module 'b' and more",
])
def test_other_messages_are_not_events(text):  # fmt: skip
    assert parse_livepatch_message(text) is None


def test_kmsg_record_format():
    record = parse_kmsg_record(b"4,1023,51234567,-,caller=T12;livepatch: signaling remaining tasks\n")
    assert record is not None
    assert (record.priority, record.seq, record.usec) == (4, 1023, 51234567)
    assert record.message == "livepatch: signaling remaining tasks"
    assert parse_kmsg_record(b" SUBSYSTEM=module") is None
    assert parse_kmsg_record(b"garbage without a header") is None
    assert parse_kmsg_record(b"a,b,c,-;text") is None


def test_kmsg_fifo_reader_keeps_partial_lines_and_skips_continuations(tmp_path):
    fifo = tmp_path / "kmsg"
    os.mkfifo(fifo)
    source = KmsgSource(fifo, clock=lambda: 123.0)
    try:
        w = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.write(w, b"6,1,10,-;eth0: link up\n4,2,20,-;livepatch: patch 'p' failed for module 'm', refu")
        assert source.read().events == ()
        os.write(w, b"sing to load module 'm'\n SUBSYSTEM=module\n DEVICE=+module:m\n")
        # The same words from user space (facility LOG_USER, 12 = 1 << 3 | 4): not the kernel's refusal.
        os.write(w, b"12,3,30,-;livepatch: patch 'p' failed for module 'u', refusing to load module 'u'\n")
        os.close(w)
        (event,) = source.read().events
        assert (event.time, event.source, event.kind, event.subject) == (123.0, "kmsg", "module_load_refused", "m")
        assert source.read().events == ()  # no end-of-file busy loop once the writer is gone
    finally:
        source.close()


def test_a_regular_file_is_not_a_kernel_log(tmp_path):
    from klpd.errors import SourceError

    path = tmp_path / "kmsg"
    path.write_text("")
    with pytest.raises(SourceError, match="neither the kernel log device nor a FIFO"):
        KmsgSource(path)


def test_real_dev_kmsg_ignores_what_user_space_writes():
    """Root may write records into the kernel log through /dev/kmsg, but the kernel files them under LOG_USER: a
    process imitating the kernel's refusal is not a refusal. The reader gets the record (it is new, not one of the
    old ones) and drops it."""
    if not os.path.exists("/dev/kmsg") or not os.access("/dev/kmsg", os.R_OK | os.W_OK):
        pytest.skip("/dev/kmsg is not readable and writable here (needs root)")
    import select
    from pathlib import Path

    source = KmsgSource(Path("/dev/kmsg"))
    try:
        source.read()  # anything that raced in since the seek
        line = "livepatch: patch 'klpd_selftest_patch' failed for module 'klpd_selftest_mod', " \
               "refusing to load module 'klpd_selftest_mod'"
        with open("/dev/kmsg", "w") as kmsg:
            kmsg.write("<0>" + line + "\n")  # asks for LOG_KERN; the kernel gives it LOG_USER
        assert select.select([source.fileno()], [], [], 5)[0], "the new record never arrived"
        batch = source.read()
        assert not [e for e in batch.events if e.subject == "klpd_selftest_mod"], batch.events
        assert source._last_seq is not None  # the record was read and parsed, then dropped for its facility
        assert batch.lost == 0
        assert not select.select([source.fileno()], [], [], 0)[0], "the record was not consumed"
    finally:
        source.close()


class FakeJournal:
    """What JournalSource needs of a systemd.journal.Reader: new entries on iteration, fileno and process."""

    def __init__(self, entries):
        self.entries = list(entries)
        self.processed = 0

    def fileno(self):
        return 0

    def process(self):
        self.processed += 1

    def __iter__(self):
        entries, self.entries = self.entries, []
        return iter(entries)


def journal_entry(message, usec=None, realtime=None, facility=0):
    """An entry of the kernel transport as journald 252 stores it, read through systemd-python (fields as a 6.1
    guest's journal had them): the kernel's text whole, identifier "kernel", facility 0. What user space wrote to
    /dev/kmsg has facility 1 and its ``prefix: `` split off into SYSLOG_IDENTIFIER."""
    entry = {"_TRANSPORT": "kernel", "MESSAGE": message, "PRIORITY": 4, "SYSLOG_FACILITY": facility,
             "SYSLOG_IDENTIFIER": "kernel"}  # fmt: skip
    if facility != 0:
        ident, _, entry["MESSAGE"] = message.partition(": ")
        entry["SYSLOG_IDENTIFIER"] = ident
    if usec is not None:
        entry["_SOURCE_MONOTONIC_TIMESTAMP"] = timedelta(microseconds=usec)
    if realtime is not None:
        entry["__REALTIME_TIMESTAMP"] = realtime
    return entry


def test_journal_entries_become_the_kernels_messages_again():
    now = 1_800_000_000.0
    boot_usec = int(time.monotonic() * 1e6)
    reader = FakeJournal([
        journal_entry("livepatch: enabling patch 'kpatch_cve'", usec=boot_usec - 3_000_000),
        journal_entry(b"livepatch: patch 'kpatch_cve' failed for module 'nfsd', refusing to load module 'nfsd'",
                      usec=boot_usec - 1_000_000),
        journal_entry("nfsd: some other subsystem"),
        # user space imitating the kernel (as `echo ... > /dev/kmsg` does): not a refusal
        journal_entry("livepatch: patch 'x' failed for module 'forged', refusing to load module 'forged'", facility=1),
        {"_TRANSPORT": "kernel", "MESSAGE": "livepatch: 'kpatch_cve': patching complete"},  # older: no facility field
        {"_TRANSPORT": "kernel", "MESSAGE": [b"binary", b"fields"]},  # a multi-valued field: not a message
    ])  # fmt: skip
    source = JournalSource(reader, clock=lambda: now)
    batch = source.read()
    assert reader.processed == 1
    assert [(e.kind, e.subject) for e in batch.events] == [
        ("enabling", "kpatch_cve"),
        ("module_load_refused", "nfsd"),
        ("transition_complete", "kpatch_cve"),
    ]
    # The text is the kernel's, as /dev/kmsg and dmesg show it.
    refusal = "livepatch: patch 'kpatch_cve' failed for module 'nfsd', refusing to load module 'nfsd'"
    assert batch.events[1].message == refusal
    # The time is the kernel's stamp on the record, not when journald stored it or klpd read it.
    assert batch.events[0].time == pytest.approx(now - 3, abs=0.1)
    assert batch.events[1].time == pytest.approx(now - 1, abs=0.1)
    assert batch.events[2].time == now  # no stamp at all: when klpd read it
    assert batch.lost == 0
    assert source.read().events == ()


def test_journal_entry_time_falls_back_to_when_journald_stored_it():
    now = 1_800_000_000.0
    stored = datetime.fromtimestamp(now - 5, UTC)
    future = datetime.fromtimestamp(now + 60, UTC)  # a clock step: never later than now
    reader = FakeJournal([
        journal_entry("livepatch: enabling patch 'a'", realtime=stored),
        journal_entry("livepatch: enabling patch 'b'", realtime=future),
    ])  # fmt: skip
    batch = JournalSource(reader, clock=lambda: now).read()
    assert [e.time for e in batch.events] == [pytest.approx(now - 5), now]


def test_one_overrun_is_one_lost_event(tmp_path, monkeypatch):
    """/dev/kmsg after an overrun: EPIPE once, then the oldest record still kept, its sequence number jumped."""
    from klpd.daemon import kernel_log

    fifo = tmp_path / "kmsg"
    os.mkfifo(fifo)
    source = KmsgSource(fifo)
    source._record_reads = True  # what the character device sets (a FIFO cannot raise EPIPE)
    reads = iter([b"6,1,10,-;a\n", BrokenPipeError(), b"6,40,20,-;b\n", b"6,41,30,-;c\n", BlockingIOError()])

    def read(fd, size):
        item = next(reads)
        if isinstance(item, BaseException):
            raise item
        return item

    monkeypatch.setattr(kernel_log.os, "read", read)
    try:
        assert source.read().lost == 1
    finally:
        monkeypatch.undo()
        source.close()
