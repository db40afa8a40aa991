"""Tasks and livepatch transitions: ``/proc/<pid>/task/<tid>/patch_state`` and ``/proc/<pid>/task/<tid>/stack``.

``patch_state`` (since 4.12, CONFIG_LIVEPATCH) is ``-1`` (KLP_UNDEFINED: no transition concerns the task), ``0``
(unpatched) or ``1`` (patched). During a transition every task starts in the initial state and is switched when it
is found outside the patched functions; a task BLOCKS the transition while its state differs from the target, and
the target is the transitioning patch's ``enabled`` (kernel/livepatch/transition.c). The file is mode 0400 and
owned by the task's user: reading other users' tasks needs root or CAP_DAC_READ_SEARCH, so a scan says how many
tasks it could not read, and why.

``stack`` (proc_pid_stack(), CAP_SYS_ADMIN) lists a sleeping task's kernel frames as ``[<addr>] name+0xoff/0xsize``
with `` [module]`` for a module's function: a task sleeping inside a function a patch replaces will hold that
patch's transition (klp_check_stack_func(), kernel-checks.md F1) until it leaves the function.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Collection
from dataclasses import dataclass

from klpd.errors import FormatError
from klpd.model import VMLINUX
from klpd.model_description import TaskRef
from klpd.numbers import kernel_decimal
from klpd.regular_file import read_regular
from klpd.root import SystemRoot

KLP_UNDEFINED = -1
KLP_UNPATCHED = 0
KLP_PATCHED = 1
# Tasks listed by name in the snapshot; the count covers all of them.
MAX_LISTED_TASKS = 50


def parse_patch_state(text: str, path: str = "patch_state") -> int:
    """The value of a patch_state file; FormatError if it is not -1, 0 or 1."""
    value = text.strip()
    if value not in ("-1", "0", "1"):
        raise FormatError(path, f"patch_state is {value[:20]!r}, not -1, 0 or 1")
    return int(value)


@dataclass(frozen=True, slots=True)
class BlockingTask:
    pid: int
    tid: int
    comm: str
    patch_state: int


@dataclass(frozen=True, slots=True)
class TaskScan:
    """The tasks blocking a transition to ``target``: the first MAX_LISTED_TASKS and how many in all."""

    target: int
    tasks: tuple[BlockingTask, ...]
    blocking: int  # every blocking task found (may exceed len(tasks))
    scanned: int  # tasks whose patch_state was read
    unreadable: int  # tasks whose patch_state could not be read (EACCES)
    reason: str | None = None  # why some or all could not be read, or why nothing could be scanned

    @property
    def complete(self) -> bool:
        return self.unreadable == 0 and self.reason is None


def _numeric_entries(path: str) -> list[int]:
    try:
        with os.scandir(path) as it:
            return [n for e in it if (n := kernel_decimal(e.name)) is not None]
    except OSError:
        return []  # the process exited while we looked


def _read_comm(task_dir: str) -> str:
    try:
        return read_regular(f"{task_dir}/comm", 64).rstrip(b"\n").decode("utf-8", "replace")
    except OSError:
        return "?"


MAX_CMDLINE = 4096  # bytes of /proc/<pid>/cmdline shown; the kernel has no limit (the argument area)


def read_cmdline(root: SystemRoot, pid: int) -> str | None:
    """The task's command line, arguments joined by spaces; None for a kernel thread (empty) or an unreadable one."""
    try:
        raw = read_regular(f"{root.proc}/{pid}/cmdline", MAX_CMDLINE)
    except OSError:
        return None
    words = raw.rstrip(b"\0").split(b"\0")
    text = " ".join(w.decode("utf-8", "replace") for w in words)
    return text or None


def read_stack(root: SystemRoot, pid: int, tid: int) -> tuple[str, ...] | None:
    """The task's kernel stack, one frame per entry as the kernel prints it less the address ("do_wait+0x1d6/0x2e0",
    "xfs_trans_alloc+0x1/0x2 [xfs]"); None when unreadable (proc_pid_stack() wants CAP_SYS_ADMIN)."""
    try:
        raw = read_regular(f"{root.proc}/{pid}/task/{tid}/stack", 64 << 10)
    except OSError:
        return None
    lines = raw.decode("utf-8", "replace").splitlines()
    return tuple(line.split("] ", 1)[1] if "] " in line else line for line in lines if line.strip())


def scan_blocking_tasks(root: SystemRoot, target: int) -> TaskScan:
    """Every task under ``root``'s /proc whose patch_state is neither ``target`` nor idle (-1)."""
    proc = str(root.proc)
    tasks: list[BlockingTask] = []
    blocking = scanned = unreadable = missing = 0
    for pid in sorted(_numeric_entries(proc)):
        for tid in sorted(_numeric_entries(f"{proc}/{pid}/task")):
            task_dir = f"{proc}/{pid}/task/{tid}"
            try:
                # Regular files only: under --root a FIFO planted here must not hang the scan.
                raw = read_regular(f"{task_dir}/patch_state", 16)
            except PermissionError:
                unreadable += 1
                continue
            except OSError as exc:
                missing += exc.errno == errno.ENOENT
                continue  # ESRCH and friends: the task exited
            try:
                state = parse_patch_state(raw.decode("ascii", "replace"), task_dir)
            except FormatError:
                continue
            scanned += 1
            if state not in (target, KLP_UNDEFINED):
                blocking += 1
                if len(tasks) < MAX_LISTED_TASKS:
                    tasks.append(BlockingTask(pid, tid, _read_comm(task_dir), state))
    reason = None
    if unreadable:
        reason = f"{unreadable} tasks' patch_state unreadable (permission denied: needs root or CAP_DAC_READ_SEARCH)"
    elif scanned == 0 and missing:
        reason = "no /proc/<pid>/task/<tid>/patch_state files (kernel without CONFIG_LIVEPATCH, or before 4.12)"
    return TaskScan(target, tuple(tasks), blocking, scanned, unreadable, reason)


_FRAME = re.compile(r"\] ([^\s+]+)\+0x[0-9a-f]+/0x[0-9a-f]+(?: \[([^\]\s]+)\])?")


@dataclass(frozen=True, slots=True)
class StackScan:
    """Tasks whose kernel stack holds one of the asked functions; ``reason`` set when stacks could not be read."""

    tasks: tuple[TaskRef, ...]
    count: int  # every such task found (may exceed len(tasks))
    scanned: int  # stacks read
    reason: str | None = None


def parse_stack(text: str) -> list[tuple[str, str]]:
    """The (object, function) of each frame of a /proc/<pid>/stack."""
    return [(m[2] or VMLINUX, m[1]) for m in _FRAME.finditer(text)]


def scan_stacks(root: SystemRoot, functions: Collection[tuple[str, str]]) -> StackScan:
    """Every task under ``root``'s /proc sleeping inside one of ``functions`` ((object, name) pairs)."""
    proc = str(root.proc)
    tasks: list[TaskRef] = []
    count = scanned = 0
    for pid in sorted(_numeric_entries(proc)):
        for tid in sorted(_numeric_entries(f"{proc}/{pid}/task")):
            task_dir = f"{proc}/{pid}/task/{tid}"
            try:
                raw = read_regular(f"{task_dir}/stack", 64 << 10)
            except PermissionError:
                return StackScan((), 0, scanned, "reading /proc/<pid>/stack needs root (CAP_SYS_ADMIN)")
            except OSError:
                continue  # the task exited
            scanned += 1
            frames = parse_stack(raw.decode("utf-8", "replace"))
            hit = next((f for f in frames if f in functions), None)
            if hit is not None:
                count += 1
                if len(tasks) < MAX_LISTED_TASKS:
                    name = hit[1] if hit[0] == VMLINUX else f"{hit[1]} [{hit[0]}]"
                    tasks.append(TaskRef(pid, tid, _read_comm(task_dir), name))
    return StackScan(tuple(tasks), count, scanned)
