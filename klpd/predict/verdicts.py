"""Verdicts over a computed status, shared by ``klpctl`` (exit codes), text output and the daemon (STATUS=, health).

Imports nothing but the model, so a ``klpctl status`` answered by the daemon does not load the prediction.
"""

from __future__ import annotations

from klpd.model import HostStatus, ModuleLoad, PatchStatus, SectionState, Severity, SymbolStatus


def patch_has_problems(patch: PatchStatus) -> bool:
    """True when a user must act: the patch will not load, a module load will be refused, a symbol fails..."""
    if not patch.will_load or any(p.severity is Severity.ERROR for p in patch.problems):
        return True
    for obj in patch.objects:
        if obj.module_load is ModuleLoad.REFUSED:
            return True
        if any(s.state is SectionState.FAILS for s in obj.sections):
            return True
        if any(s.status is not None and s.status is not SymbolStatus.OK for s in obj.symbols):
            return True
    return False


def has_problems(status: HostStatus) -> bool:
    return any(patch_has_problems(p) for p in status.patches)


def undetermined(status: HostStatus) -> bool:
    """True when a source klpd needs could not be read, so the answer may be incomplete."""
    return any(p.severity is Severity.ERROR for p in status.problems)
