"""Verdicts over a computed status, shared by ``klpctl`` (exit codes), text output and the daemon (STATUS=, health).

Imports nothing but the model, so a ``klpctl status`` answered by the daemon does not load the prediction.
"""

from __future__ import annotations

from klpd.model import HostStatus, ModuleLoad, PatchStatus, SectionState, Severity, SymbolStatus
from klpd.model_loader import CheckResult, LoadCheckName


def held_by_transition(patch: PatchStatus) -> bool:
    """The patch will not load only because another patch is in transition (EBUSY, kernel-checks.md E13): every
    reason is that check's. Once the transition ends the answer is the other checks'."""
    busy = {
        c.detail for c in patch.load_checks if c.check is LoadCheckName.TRANSITION and c.result is CheckResult.FAILS
    }
    return bool(busy) and bool(patch.reasons) and set(patch.reasons) <= busy


def patch_has_problems(patch: PatchStatus, *, while_transition: bool = False) -> bool:
    """True when a user must act: the patch will not load, a module load will be refused, a symbol fails...
    ``while_transition``: a patch held up only by another patch's transition is no problem of its own."""
    will_load = patch.will_load or (while_transition and held_by_transition(patch))
    if not will_load or any(p.severity is Severity.ERROR for p in patch.problems):
        return True
    for obj in patch.objects:
        if obj.module_load is ModuleLoad.REFUSED:
            return True
        if any(s.state is SectionState.FAILS for s in obj.sections):
            return True
        if any(s.status is not None and s.status is not SymbolStatus.OK for s in obj.symbols):
            return True
    return False


def has_problems(status: HostStatus, *, while_transition: bool = False) -> bool:
    return any(patch_has_problems(p, while_transition=while_transition) for p in status.patches)


def in_transition(status: HostStatus) -> bool:
    """A patch is being enabled or disabled: tasks are still switching (``transition`` 1 in sysfs)."""
    return any(p.transition for p in status.patches)


def undetermined(status: HostStatus) -> bool:
    """True when a source klpd needs could not be read, so the answer may be incomplete."""
    return any(p.severity is Severity.ERROR for p in status.problems)
