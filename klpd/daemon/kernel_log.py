"""The kernel log's ``livepatch:`` messages, from ``/dev/kmsg`` (since 3.5) or the journal's kernel transport.

A refused module load (a patch's ``.klp.rela.<module>.*`` relocations failed in klp_module_coming()) sends no
uevent — the module's ``add`` uevent only goes out after its init succeeded (since 5.11) — so these messages are
the only witness of it. They also date the start and end of transitions, and show the kernel signalling or
forcing the tasks that block one.

The texts are those of :mod:`klpd.kernel_messages`, the table the prediction quotes from: klp_module_coming()'s
refusal and failure, applying/reverting a patch on a module's load and removal, enabling a patch, and the
transition's start, end, signals and forcing (stable since the transition code landed in 4.12).

``/dev/kmsg`` records are ``"<prio>,<seq>,<usec>,<flags>[,...];<message>\\n"`` followed by `` KEY=value``
continuation lines (Documentation/ABI/testing/dev-kmsg). A reader that falls behind the ring buffer gets EPIPE
once: messages were lost.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from klpd import kernel_messages as msg
from klpd.daemon.events import Batch, Event
from klpd.errors import SourceError
from klpd.numbers import kernel_decimal

log = logging.getLogger(__name__)

PREFIX = msg.LIVEPATCH
# LOG_KERN. A process writing to /dev/kmsg cannot log with it: the kernel gives user-space records LOG_USER (1)
# when they ask for facility 0 (devkmsg_write()), so a record of facility 0 is the kernel's own.
KERNEL_FACILITY = 0
# A kmsg record is at most about 1 KiB (PRINTK_MESSAGE_MAX, 2048 since 6.1) plus its dictionary; one read() returns
# one record, so a read of this size never truncates one.
_KMSG_READ = 8192
# Bound on the bytes kept of a line that has no newline yet (a FIFO feeding garbage must not grow memory).
_MAX_PARTIAL = 1 << 16


class LivepatchEvent(StrEnum):
    MODULE_LOAD_REFUSED = "module_load_refused"
    PATCH_INIT_FAILED = "patch_init_failed"
    APPLYING = "applying"
    REVERTING = "reverting"
    ENABLING = "enabling"
    TRANSITION_INIT = "transition_init"
    TRANSITION_START = "transition_start"
    TRANSITION_COMPLETE = "transition_complete"
    SIGNALING = "signaling_tasks"
    FORCING = "forcing_tasks"


@dataclass(frozen=True, slots=True)
class LivepatchMessage:
    kind: LivepatchEvent
    text: str  # the whole message, "livepatch: " included
    patch: str | None = None
    module: str | None = None
    target: str | None = None  # "patched" or "unpatched", for transition messages
    error: int | None = None  # the negative errno of "failed to initialize patch"


# Each event and the kernel_messages entry it is read from: the same table the prediction formats its texts with.
_MESSAGES: tuple[tuple[msg.KernelMessage, LivepatchEvent], ...] = (
    (msg.MODULE_LOAD_REFUSED, LivepatchEvent.MODULE_LOAD_REFUSED),
    (msg.PATCH_INIT_FAILED, LivepatchEvent.PATCH_INIT_FAILED),
    (msg.APPLYING, LivepatchEvent.APPLYING),
    (msg.REVERTING, LivepatchEvent.REVERTING),
    (msg.ENABLING, LivepatchEvent.ENABLING),
    (msg.TRANSITION_INIT, LivepatchEvent.TRANSITION_INIT),
    (msg.TRANSITION_START, LivepatchEvent.TRANSITION_START),
    (msg.TRANSITION_COMPLETE, LivepatchEvent.TRANSITION_COMPLETE),
    (msg.SIGNALING, LivepatchEvent.SIGNALING),
    (msg.FORCING, LivepatchEvent.FORCING),
)
_TARGET = {"patching": "patched", "unpatching": "unpatched"}


def parse_livepatch_message(text: str) -> LivepatchMessage | None:
    """The livepatch event a kernel message reports, or None for any other message."""
    text = text.rstrip("\n")
    if not text.startswith(PREFIX):
        return None
    body = text[len(PREFIX) :]
    for message, kind in _MESSAGES:
        fields = message.match(body)
        if fields is None:
            continue
        action = fields.get("action")
        errno = fields.get("errno")
        return LivepatchMessage(
            kind,
            text,
            patch=fields.get("patch"),
            module=fields.get("module"),
            target=_TARGET[action] if action else None,
            error=int(errno) if errno is not None else None,
        )
    return None


@dataclass(frozen=True, slots=True)
class KmsgRecord:
    priority: int  # syslog priority and facility, as the kernel writes them (prio + facility << 3)
    seq: int
    usec: int  # CLOCK_MONOTONIC-like time since boot
    message: str


def parse_kmsg_record(line: bytes) -> KmsgRecord | None:
    """One ``/dev/kmsg`` record line (continuation lines excluded); None when it does not have the format."""
    header, sep, message = line.rstrip(b"\n").partition(b";")
    if not sep:
        return None
    fields = header.split(b",")
    if len(fields) < 4:
        return None
    priority, seq, usec = (kernel_decimal(f) for f in fields[:3])
    if priority is None or seq is None or usec is None:
        return None
    # The kernel escapes non-printable bytes as \xNN; names in livepatch messages never need escaping.
    return KmsgRecord(priority, seq, usec, message.decode("utf-8", "replace"))


def kernel_time(usec: int, now: float) -> float:
    """The wall-clock time of a kernel log record stamped ``usec`` microseconds after boot (the kernel's
    local_clock, which keeps pace with CLOCK_MONOTONIC), never later than ``now``."""
    return min(now, now - (time.monotonic() - usec / 1e6))


def _event(source: str, msg: LivepatchMessage, when: float) -> Event:
    subject = (msg.module if msg.kind is LivepatchEvent.MODULE_LOAD_REFUSED else msg.patch) or ""
    return Event(when, source, msg.kind.value, subject, msg.text, msg)


def _check_pollable(fd: int, path: Path) -> None:
    """SourceError (the fd closed) when the loop's epoll cannot wait on ``fd``: a character device other than
    /dev/kmsg (say /dev/null) refuses with EPERM, which at registration crashed the daemon at start."""
    try:
        with select.epoll() as probe:
            probe.register(fd, select.EPOLLIN)
    except OSError as exc:
        os.close(fd)
        raise SourceError(path, f"cannot be polled: {exc.strerror or exc}") from exc


class KmsgSource:
    """``/dev/kmsg`` read from its end (old messages describe past states, which the first evaluation reads).

    The same reader takes a FIFO in its place (``--root`` fixture trees, tests): it is opened read-write, so the
    FIFO never reports end-of-file when its writer goes away.
    """

    name = "kmsg"

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._partial = b""
        self._last_seq: int | None = None
        try:
            st = os.stat(path)
            if stat.S_ISFIFO(st.st_mode):
                self._fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
                self._record_reads = False
            elif stat.S_ISCHR(st.st_mode):
                self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                self._record_reads = True
                os.lseek(self._fd, 0, os.SEEK_END)  # SEEK_END on /dev/kmsg: the next message to come
            else:
                raise SourceError(path, "neither the kernel log device nor a FIFO")
            _check_pollable(self._fd, path)
        except OSError as exc:
            if isinstance(exc, SourceError):
                raise
            denied = exc.errno in (errno.EPERM, errno.EACCES)
            hint = " (needs CAP_SYSLOG when kernel.dmesg_restrict=1)" if denied else ""
            raise SourceError(path, f"cannot open: {exc.strerror}{hint}") from exc

    def fileno(self) -> int:
        return self._fd

    def read(self) -> Batch:
        events: list[Event] = []
        lost = 0
        while True:
            try:
                chunk = os.read(self._fd, _KMSG_READ)
            except BlockingIOError:
                break
            except BrokenPipeError:
                # EPIPE: the ring buffer overwrote records before we read them; the next read goes on from the
                # oldest record still there, whose sequence number jumps: the same loss, not a second one.
                lost += 1
                self._last_seq = None
                continue
            if not chunk:
                break
            lines = (self._partial + chunk).split(b"\n")
            self._partial = lines.pop()[-_MAX_PARTIAL:]
            lost += self._parse_lines(lines, events)
            if self._record_reads and len(events) > 10_000:
                break  # leave the rest for the next round of the loop
        return Batch(tuple(events), lost)

    def _parse_lines(self, lines: Iterable[bytes], events: list[Event]) -> int:
        lost = 0
        now = self._clock()
        for line in lines:
            if not line or line[:1] == b" ":  # continuation line (" SUBSYSTEM=...")
                continue
            record = parse_kmsg_record(line)
            if record is None:
                continue
            if self._last_seq is not None and record.seq > self._last_seq + 1 and self._record_reads:
                lost += 1  # a gap in sequence numbers is a loss the kernel did not report as EPIPE
            self._last_seq = record.seq
            if record.priority >> 3 != KERNEL_FACILITY:
                continue  # written by user space: not the kernel's word, whatever it says
            msg = parse_livepatch_message(record.message)
            if msg is not None:
                when = now
                if self._record_reads:
                    # The record's own time (microseconds since boot, the kernel's local_clock), so a transition's
                    # start is when the kernel logged it, not when an evaluation let us read it.
                    when = kernel_time(record.usec, now)
                events.append(_event(self.name, msg, when))
        return lost

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


class JournalSource:
    """The journal's kernel transport (``_TRANSPORT=kernel``) through systemd-python, from its tail.

    Used under the shipped unit, whose ProtectKernelLogs=yes hides /dev/kmsg. Reading the journal files needs
    group systemd-journal or CAP_DAC_READ_SEARCH.
    """

    name = "journal"

    def __init__(self, reader: Any = None, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        if reader is None:
            try:  # optional at import time: only this source needs it
                import systemd.journal  # noqa: PLC0415
            except ImportError as exc:
                raise SourceError("journal", "systemd-python is not installed") from exc
            journal = systemd.journal
            try:
                reader = journal.Reader(flags=journal.LOCAL_ONLY)
                reader.this_boot()
                reader.add_match(_TRANSPORT="kernel")
                reader.seek_tail()
                reader.get_previous()  # leaves the cursor on the last entry, so iteration yields only new ones
            except OSError as exc:
                raise SourceError("journal", f"cannot open: {exc.strerror or exc}") from exc
        self._reader = reader
        self._fd = int(reader.fileno())

    def fileno(self) -> int:
        return self._fd

    def read(self) -> Batch:
        self._reader.process()  # acknowledges the wake-up; entries are read below either way
        events: list[Event] = []
        for entry in self._reader:
            text = journal_kernel_text(entry)
            if text is None:
                continue
            msg = parse_livepatch_message(text)
            if msg is None:
                continue
            events.append(_event(self.name, msg, _entry_time(entry, self._clock())))
        return Batch(tuple(events))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._reader.close()


def journal_kernel_text(entry: Mapping[str, Any]) -> str | None:
    """The text of a journal entry of the kernel transport that the kernel itself logged, or None.

    journald keeps a kernel message whole (SYSLOG_IDENTIFIER=kernel, SYSLOG_FACILITY=0). What user space wrote to
    /dev/kmsg comes in on the same transport with another facility, and journald has split its ``prefix: `` off
    into SYSLOG_IDENTIFIER: such a line is never the kernel's word, whatever it says.
    """
    facility = entry.get("SYSLOG_FACILITY")
    if facility is not None and str(facility) != str(KERNEL_FACILITY):
        return None
    return _text(entry.get("MESSAGE"))


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _entry_time(entry: Mapping[str, Any], now: float) -> float:
    """When the kernel logged a journal entry of its transport: the record's own stamp (journald keeps it as
    _SOURCE_MONOTONIC_TIMESTAMP), not when journald stored it, which is later when journald starts after the kernel
    logged (at boot) or falls behind."""
    source = entry.get("_SOURCE_MONOTONIC_TIMESTAMP")
    if isinstance(source, timedelta):
        return kernel_time(source // timedelta(microseconds=1), now)
    if isinstance(source, (bytes, str)) and (usec := kernel_decimal(source)) is not None:
        return kernel_time(usec, now)
    stamp = entry.get("__REALTIME_TIMESTAMP")
    if isinstance(stamp, datetime):
        return min(now, stamp.timestamp())
    return now
