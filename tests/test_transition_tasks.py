"""Who holds a transition, as the one-shot commands say: blocking tasks of a patch in transition (patch_state), and
tasks sleeping in a function a patch to be loaded replaces (/proc/<pid>/stack, root only)."""

from __future__ import annotations

import dataclasses

from fixtures import FixtureRoot
from test_predict_functions import desc, fn, judge, vmlinux

from klpd.model import HostStatus
from klpd.model_description import TaskRef
from klpd.outputs.text import render_status
from klpd.sources.tasks import parse_stack, scan_stacks
from klpd.transition_tasks import with_tasks

STACK = "[<0>] do_wait+0x1d6/0x2e0\n[<0>] unique_fn+0x10/0x40\n[<0>] entry_SYSCALL_64+0x99/0x100\n"


def test_parse_stack_reads_core_and_module_frames() -> None:
    text = "[<0>] unique_fn+0x10/0x40\n[<0>] xfs_trans_alloc+0x1/0x2 [xfs]\n[<ffffffffc0001000>] f.cold+0x0/0x8\n"
    assert parse_stack(text) == [("vmlinux", "unique_fn"), ("xfs", "xfs_trans_alloc"), ("vmlinux", "f.cold")]


def test_tasks_sleeping_in_a_replaced_function_are_named(tmp_path) -> None:
    fx = FixtureRoot(tmp_path)
    fx.write("/proc/10/task/10/comm", "sleeper\n")
    fx.write("/proc/10/task/10/stack", STACK)
    fx.write("/proc/11/task/11/comm", "other\n")
    fx.write("/proc/11/task/11/stack", "[<0>] do_wait+0x1d6/0x2e0\n")
    p = judge(desc(vmlinux(fn("unique_fn"))))
    status = with_tasks(fx.root, HostStatus("6.1.0-test", 0, False, True, True, (p,)))
    report = status.patches[0].tasks
    assert report is not None and report.known
    assert (report.kind, report.count, report.tasks) == (
        "sleeping_in_replaced_function",
        1,
        (TaskRef(10, 10, "sleeper", "unique_fn"),),
    )
    assert scan_stacks(fx.root, {("vmlinux", "nope")}).count == 0


def test_without_stacks_the_answer_is_unknown_not_none(tmp_path) -> None:
    fx = FixtureRoot(tmp_path)  # a copied tree: no tasks at all
    p = judge(desc(vmlinux(fn("unique_fn"))))
    report = with_tasks(fx.root, HostStatus("6.1.0-test", 0, False, True, True, (p,))).patches[0].tasks
    assert report is not None and not report.known and "no task's stack" in (report.note or "")


def test_a_patch_in_transition_lists_its_blocking_tasks(tmp_path) -> None:
    fx = FixtureRoot(tmp_path)
    for pid, state in ((1, 1), (20, 0), (30, -1)):
        fx.write(f"/proc/{pid}/task/{pid}/comm", f"task{pid}\n")
        fx.write(f"/proc/{pid}/task/{pid}/patch_state", f"{state}\n", mode=0o400)
    p = dataclasses.replace(judge(desc(vmlinux(fn("unique_fn")))), loaded=True, enabled=True, transition=True)
    report = with_tasks(fx.root, HostStatus("6.1.0-test", 0, False, True, True, (p,))).patches[0].tasks
    assert report is not None and report.known
    assert (report.kind, report.count, report.tasks) == ("blocking", 1, (TaskRef(20, 20, "task20"),))


def test_blocking_tasks_come_with_their_command_line_and_stack_as_klp_blocking_shows(tmp_path) -> None:
    fx = FixtureRoot(tmp_path)
    for pid, state in ((1, 1), (20, 0), (21, 0)):
        fx.write(f"/proc/{pid}/task/{pid}/comm", f"task{pid}\n")
        fx.write(f"/proc/{pid}/task/{pid}/patch_state", f"{state}\n", mode=0o400)
    fx.write("/proc/20/cmdline", "/usr/sbin/busyd\0-f\0--config=/etc/busyd.conf\0")
    fx.write("/proc/20/task/20/stack", STACK)
    fx.write("/proc/21/cmdline", "")  # a kernel thread: an empty command line; its stack unreadable here
    p = dataclasses.replace(judge(desc(vmlinux(fn("unique_fn")))), loaded=True, enabled=True, transition=True)
    host = HostStatus("6.1.0-test", 0, False, True, True, (p,))
    plain = with_tasks(fx.root, host).patches[0].tasks
    assert plain is not None and [(t.cmdline, t.stack) for t in plain.tasks] == [(None, None)] * 2  # only when asked
    status = with_tasks(fx.root, host, details=True)
    report = status.patches[0].tasks
    assert report is not None
    busy, kthread = report.tasks
    assert busy.cmdline == "/usr/sbin/busyd -f --config=/etc/busyd.conf"
    assert busy.stack == ("do_wait+0x1d6/0x2e0", "unique_fn+0x10/0x40", "entry_SYSCALL_64+0x99/0x100")
    assert (kthread.cmdline, kthread.stack) == (None, None)
    verbose = render_status(status, verbose=True)
    assert "cmdline: /usr/sbin/busyd -f --config=/etc/busyd.conf" in verbose
    assert "      unique_fn+0x10/0x40" in verbose
    assert "cmdline: - (a kernel thread, or gone)" in verbose and "stack: unreadable (needs root)" in verbose
    assert "busyd" not in render_status(status)  # the short view names the task only
    assert "pid 20 tid 20 task20" in render_status(status)
