"""Which tasks hold a patch's transition, for the one-shot commands (``klpctl status --direct``, ``klpctl check``).

A patch in transition: the tasks whose ``patch_state`` is not its target (:func:`klpd.sources.tasks.
scan_blocking_tasks`, the same scan the daemon makes). A patch checked before its load: the tasks now sleeping
inside a function it will patch (:func:`klpd.sources.tasks.scan_stacks`, root only), which will hold its
transition until they leave it (klp_check_stack_func()). The daemon keeps its own, timed, account
(``klpd/daemon/transitions.py``).
"""

from __future__ import annotations

import dataclasses

from klpd.model import HostStatus, PatchStatus
from klpd.model_description import FunctionStatus, TaskRef, TaskReport
from klpd.root import SystemRoot
from klpd.sources.tasks import KLP_PATCHED, KLP_UNPATCHED, read_cmdline, read_stack, scan_blocking_tasks, scan_stacks

BLOCKING = "blocking"
SLEEPING = "sleeping_in_replaced_function"


def _blocking(root: SystemRoot, patch: PatchStatus, details: bool) -> TaskReport:
    scan = scan_blocking_tasks(root, KLP_PATCHED if patch.enabled else KLP_UNPATCHED)
    # details (-v): what `klp blocking -vv` shows of each: the command line, and (root only) the kernel stack it
    # sleeps in. Only when asked: a command line can carry secrets, and klpctl capture copies what status reads.
    tasks = tuple(
        TaskRef(t.pid, t.tid, t.comm, None, read_cmdline(root, t.pid), read_stack(root, t.pid, t.tid))
        if details
        else TaskRef(t.pid, t.tid, t.comm)
        for t in scan.tasks
    )
    if scan.scanned == 0:  # a copied tree has no tasks: "none blocking" would be a guess
        return TaskReport(
            BLOCKING, False, 0, (), scan.reason or "no task's patch_state could be read in /proc"
        )
    return TaskReport(BLOCKING, True, scan.blocking, tasks, scan.reason)


def _sleeping(root: SystemRoot, patch: PatchStatus) -> TaskReport | None:
    functions = {
        (obj.name, f.name)
        for obj in patch.objects
        if obj.loaded
        for f in obj.functions
        if f.status is FunctionStatus.OK
    }
    if not functions:
        return None
    scan = scan_stacks(root, functions)
    if scan.reason or scan.scanned == 0:
        return TaskReport(SLEEPING, False, 0, (), scan.reason or "no task's stack could be read in /proc")
    return TaskReport(SLEEPING, True, scan.count, scan.tasks)


def with_tasks(root: SystemRoot, status: HostStatus, *, details: bool = False) -> HostStatus:
    """``status`` with each patch's TaskReport: blocking tasks of a transition, or tasks in replaced functions of a
    patch that is not loaded; ``details``: each blocking task's command line and kernel stack too."""
    patches = []
    for patch in status.patches:
        report = None
        if patch.transition:
            report = _blocking(root, patch, details)
        elif not patch.loaded and patch.will_load:
            report = _sleeping(root, patch)
        patches.append(dataclasses.replace(patch, tasks=report) if report else patch)
    return dataclasses.replace(status, patches=tuple(patches))
