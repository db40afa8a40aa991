"""Tasks blocking a transition, from a fixture /proc, and the tracker's memory of when a transition began."""

from __future__ import annotations

import os
import threading

import pytest

from klpd.daemon.kernel_log import parse_livepatch_message
from klpd.daemon.transitions import TransitionTracker
from klpd.errors import FormatError
from klpd.model import HostStatus, PatchStatus
from klpd.root import SystemRoot
from klpd.sources.tasks import parse_patch_state, scan_blocking_tasks
from tests.fixtures import FixtureRoot


def _tasks(fx, tasks):
    for pid, tid, comm, state in tasks:
        fx.write(f"/proc/{pid}/task/{tid}/comm", comm + "\n")
        if state is not None:
            fx.write(f"/proc/{pid}/task/{tid}/patch_state", f"{state}\n", mode=0o400)


def test_parse_patch_state():
    assert [parse_patch_state(t) for t in ("-1\n", "0\n", "1\n")] == [-1, 0, 1]
    with pytest.raises(FormatError, match="not -1, 0 or 1"):
        parse_patch_state("2\n", "/proc/1/task/1/patch_state")


def test_blocking_tasks_differ_from_the_target_and_are_not_idle(tmp_path):
    fx = FixtureRoot(tmp_path)
    _tasks(fx, [(1, 1, "systemd", 1), (200, 200, "worker", 0), (200, 201, "worker/1", -1), (300, 300, "nfsd", 0)])
    scan = scan_blocking_tasks(fx.root, target=1)
    assert [(t.pid, t.tid, t.comm) for t in scan.tasks] == [(200, 200, "worker"), (300, 300, "nfsd")]
    assert (scan.blocking, scan.scanned, scan.unreadable, scan.complete) == (2, 4, 0, True)
    # Unpatching: the tasks already back at 0 are done, the patched one blocks.
    assert [t.pid for t in scan_blocking_tasks(fx.root, target=0).tasks] == [1]


def test_no_patch_state_files_is_said(tmp_path):
    fx = FixtureRoot(tmp_path)
    _tasks(fx, [(1, 1, "init", None)])
    scan = scan_blocking_tasks(fx.root, 1)
    assert scan.blocking == 0 and not scan.complete and "CONFIG_LIVEPATCH" in scan.reason


def test_unreadable_patch_state_is_said():
    """As an unprivileged daemon sees root's tasks (mode 0400): run the scan as nobody in a child process."""
    import shutil
    import tempfile
    from pathlib import Path

    if os.geteuid() != 0:
        pytest.skip("needs root to switch to another user")
    base = Path(tempfile.mkdtemp(prefix="klpd-test-"))  # pytest's tmp_path is private to root
    try:
        base.chmod(0o755)
        fx = FixtureRoot(base)
        _tasks(fx, [(1, 1, "init", 0), (2, 2, "kthreadd", 0)])
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            try:
                os.close(r)
                os.setgid(65534)
                os.setuid(65534)
                scan = scan_blocking_tasks(fx.root, 1)
                os.write(w, f"{scan.unreadable} {scan.blocking} {scan.reason}".encode())
            finally:
                os._exit(0)
        os.close(w)
        data = os.read(r, 4096).decode()
        os.close(r)
        os.waitpid(pid, 0)
    finally:
        shutil.rmtree(base)
    unreadable, blocking, reason = data.split(" ", 2)
    assert (unreadable, blocking) == ("2", "0")
    assert "permission denied" in reason and "CAP_DAC_READ_SEARCH" in reason


def _status(*patches):
    return HostStatus("6.1.0-test", 0, False, True, True, tuple(patches))


def _patch(name, enabled=True, transition=True):
    return PatchStatus(name, None, True, enabled, transition, None, None, None, None, True, (), (), ())


def test_tracker_dates_a_transition_from_the_kernel_log_and_counts_signals():
    tracker = TransitionTracker()
    tracker.observe(parse_livepatch_message("livepatch: 'p': starting patching transition"), 100.0)
    (t,) = tracker.update(_status(_patch("p")), now=105.0, root=None)
    assert (t.patch, t.target, t.since, t.since_source) == ("p", "patched", 100.0, "kernel_log")
    tracker.observe(parse_livepatch_message("livepatch: signaling remaining tasks"), 110.0)
    tracker.observe(parse_livepatch_message("livepatch: forcing remaining tasks to the patched state"), 120.0)
    (t,) = tracker.update(_status(_patch("p")), now=121.0, root=None)
    assert (t.since, t.signals, t.last_signal, t.forced) == (100.0, 1, 110.0, 120.0)
    assert tracker.update(_status(_patch("p", transition=False)), now=130.0, root=None) == ()


def test_tracker_without_a_log_line_uses_first_seen_and_restarts_on_reversal():
    tracker = TransitionTracker()
    (t,) = tracker.update(_status(_patch("p")), now=50.0, root=None)
    assert (t.since, t.since_source) == (50.0, "first_seen")
    (t,) = tracker.update(_status(_patch("p")), now=60.0, root=None)
    assert t.since == 50.0
    # Writing 0 to enabled during the transition reverses it: a new transition towards "unpatched".
    (t,) = tracker.update(_status(_patch("p", enabled=False)), now=70.0, root=None)
    assert (t.target, t.since) == ("unpatched", 70.0)


def test_a_log_line_read_after_the_evaluation_corrects_first_seen():
    """Seen on 6.1 in QEMU: the evaluation noticed transition=1 before the log line was read; the kernel's time wins."""
    tracker = TransitionTracker()
    (t,) = tracker.update(_status(_patch("p")), now=105.0, root=None)
    assert t.since_source == "first_seen"
    tracker.observe(parse_livepatch_message("livepatch: 'p': starting patching transition"), 101.5)
    (t,) = tracker.update(_status(_patch("p")), now=106.0, root=None)
    assert (t.since, t.since_source) == (101.5, "kernel_log")


def test_a_fifo_planted_as_a_tasks_patch_state_is_skipped_not_waited_on(tmp_path):
    """Under --root the tree is a copy anyone could have made: a FIFO at /proc/<pid>/task/<tid>/patch_state would
    block a plain open() until a writer came. The scan skips it and goes on to the next task."""
    stuck, blocker = tmp_path / "proc/42/task/42", tmp_path / "proc/43/task/43"
    for task in (stuck, blocker):
        task.mkdir(parents=True)
        (task / "comm").write_text(f"{task.name}\n")
    os.mkfifo(stuck / "patch_state")
    (blocker / "patch_state").write_text("0\n")  # still unpatched: blocks a transition to patched (1)
    found: list[object] = []
    scanner = threading.Thread(target=lambda: found.append(scan_blocking_tasks(SystemRoot.at(tmp_path), 1)),
                               daemon=True)  # fmt: skip
    scanner.start()
    scanner.join(timeout=60)  # a bound for a regression to fail on, not a timing verdict
    assert found, "scan_blocking_tasks() is waiting on the FIFO"
    (scan,) = found
    assert (scan.blocking, scan.scanned) == (1, 1)
    assert [t.comm for t in scan.tasks] == ["43"]


def _enabled_file(fx, name, value):
    fx.write(f"/sys/kernel/livepatch/{name}/enabled", f"{value}\n")


def test_an_enable_registering_its_functions_is_transitioning_to_patched_though_enabled_says_0(tmp_path):
    """Seen on 6.12 in QEMU: __klp_enable_patch() sets up the transition (transition=1) and registers the functions
    with ftrace before it logs "starting patching transition" and sets enabled. Meanwhile enabled reads 0, and every
    task is still unpatched: they all stand between the patch and its target."""
    fx = FixtureRoot(tmp_path)
    _tasks(fx, [(1, 1, "init", 0), (50, 50, "kworker/0:1", 0)])
    _enabled_file(fx, "p", 0)
    tracker = TransitionTracker()
    tracker.observe(parse_livepatch_message("livepatch: enabling patch 'p'"), 100.0)
    (t,) = tracker.update(_status(_patch("p", enabled=False)), now=101.0, root=fx.root)
    assert (t.target, t.since, t.since_source) == ("patched", 100.0, "kernel_log")
    assert [task.comm for task in t.scan.tasks] == ["init", "kworker/0:1"]
    # Started: enabled says 1, init switched, the kworker still blocks; the transition is the same one.
    tracker.observe(parse_livepatch_message("livepatch: 'p': starting patching transition"), 103.0)
    _tasks(fx, [(1, 1, "init", 1)])
    _enabled_file(fx, "p", 1)
    (t,) = tracker.update(_status(_patch("p")), now=104.0, root=fx.root)
    assert (t.target, t.since, t.since_source) == ("patched", 100.0, "kernel_log")
    assert [task.comm for task in t.scan.tasks] == ["kworker/0:1"]
    # Written 0 to enabled: reversed, now towards unpatched (the kernel logs that at debug level only).
    _enabled_file(fx, "p", 0)
    (t,) = tracker.update(_status(_patch("p", enabled=False)), now=110.0, root=fx.root)
    assert (t.target, t.since, t.since_source) == ("unpatched", 110.0, "first_seen")
    assert [task.comm for task in t.scan.tasks] == ["init"]


def test_the_starting_line_read_before_enabled_is_set_still_decides_the_target(tmp_path):
    """Seen on 6.12 under multi-threaded TCG: klp_start_transition() logs "starting patching transition" and the
    tasks start switching before __klp_enable_patch() sets enabled. Read then, enabled=0 must not make the switched
    tasks the blockers of an unpatch; likewise a disable's "starting unpatching" with enabled still 1."""
    fx = FixtureRoot(tmp_path)
    _tasks(fx, [(1, 1, "init", 1), (50, 50, "kworker/0:1", 0)])
    _enabled_file(fx, "p", 0)
    tracker = TransitionTracker()
    tracker.observe(parse_livepatch_message("livepatch: enabling patch 'p'"), 100.0)
    tracker.observe(parse_livepatch_message("livepatch: 'p': starting patching transition"), 102.0)
    (t,) = tracker.update(_status(_patch("p", enabled=False)), now=102.5, root=fx.root)
    assert (t.target, t.since) == ("patched", 100.0)
    assert [task.comm for task in t.scan.tasks] == ["kworker/0:1"]

    tracker = TransitionTracker()
    _enabled_file(fx, "p", 1)
    tracker.observe(parse_livepatch_message("livepatch: 'p': starting unpatching transition"), 200.0)
    (t,) = tracker.update(_status(_patch("p", enabled=True)), now=200.5, root=fx.root)
    assert (t.target, t.since, t.since_source) == ("unpatched", 200.0, "kernel_log")
    assert [task.comm for task in t.scan.tasks] == ["init"]


def test_enabled_agreeing_with_the_logged_target_means_started_even_without_the_starting_line():
    """A "starting" line lost (a kmsg overrun) must not pin the target: once enabled said 1, a 0 is a reversal."""
    tracker = TransitionTracker()
    tracker.observe(parse_livepatch_message("livepatch: enabling patch 'p'"), 100.0)
    (t,) = tracker.update(_status(_patch("p", enabled=True)), now=104.0, root=None)
    assert t.target == "patched"
    (t,) = tracker.update(_status(_patch("p", enabled=False)), now=110.0, root=None)
    assert (t.target, t.since) == ("unpatched", 110.0)


def test_enabled_changing_during_the_scan_rescans_for_the_new_target(tmp_path):
    """The evaluation read enabled=0 (no log line to go by), then the transition started: the scan reads enabled
    again and judges the tasks against 1, rather than listing the switched tasks as blocking an unpatch."""
    fx = FixtureRoot(tmp_path)
    _tasks(fx, [(1, 1, "init", 1), (50, 50, "kworker/0:1", 0)])
    _enabled_file(fx, "p", 1)
    (t,) = TransitionTracker().update(_status(_patch("p", enabled=False)), now=5.0, root=fx.root)
    assert t.target == "patched"
    assert [(task.comm, task.patch_state) for task in t.scan.tasks] == [("kworker/0:1", 0)]


def test_a_failed_enables_log_line_does_not_decide_a_later_transition():
    tracker = TransitionTracker()
    tracker.observe(parse_livepatch_message("livepatch: enabling patch 'p'"), 100.0)
    assert tracker.update(_status(), now=101.0, root=None) == ()  # the enable failed: the patch went
    (t,) = tracker.update(_status(_patch("p", enabled=False)), now=200.0, root=None)
    assert (t.target, t.since, t.since_source) == ("unpatched", 200.0, "first_seen")
