"""The kernel log reader: the livepatch messages as the kernel prints them, /dev/kmsg's record format, and a real
/dev/kmsg where this machine lets us write to it."""

from __future__ import annotations

import os

import pytest

from klpd.daemon.kernel_log import (
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


def test_real_dev_kmsg_reads_new_records_only():
    """Root may write records into the kernel log through /dev/kmsg: the reader sees them, not the old ones."""
    if not os.path.exists("/dev/kmsg") or not os.access("/dev/kmsg", os.R_OK | os.W_OK):
        pytest.skip("/dev/kmsg is not readable and writable here (needs root)")
    source = KmsgSource(__import__("pathlib").Path("/dev/kmsg"))
    try:
        source.read()  # anything that raced in since the seek
        line = "livepatch: patch 'klpd_selftest_patch' failed for module 'klpd_selftest_mod', " \
               "refusing to load module 'klpd_selftest_mod'"
        with open("/dev/kmsg", "w") as kmsg:
            kmsg.write(line + "\n")
        import select

        select.select([source.fileno()], [], [], 5)
        batch = source.read()
        refusals = [e for e in batch.events if e.subject == "klpd_selftest_mod"]
        assert [e.kind for e in refusals] == ["module_load_refused"]
        assert refusals[0].message == line
        assert batch.lost == 0
    finally:
        source.close()
