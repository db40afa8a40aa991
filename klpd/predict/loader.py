"""Would ``insmod`` of the patch file succeed now? The module loader's checks, then klp_enable_patch()'s.

The checks, in the order load_module() makes them (kernel-checks.md rows): modules_disabled (A1), the signature
(B, :mod:`.module_signature`), the struct module layout (C2, C5) and vermagic (C6) (:mod:`.module_version`),
livepatch support (C7), a module of the same name (C9), the imported symbols: exported, with the kernel's CRCs
(D1, D2); then the ``.klp.rela.vmlinux.*`` sections the loader applies (D5, from :mod:`.sections`), and in
klp_enable_patch() the ``livepatch`` modinfo tag (E2), the states of the loaded patches (E5, :mod:`.states`), the
description itself and the functions it replaces in the objects that are there now (E1, E7-E12, E16,
:mod:`.functions`), and another patch in transition (E13).

Each is a :class:`~klpd.model_loader.LoadCheck` (``ok``, ``fails``, or ``unknown`` where what it needs could not be
read); every failure is a reason the load fails, quoting the kernel where it logs one. The kernel stops at the
first; all are listed, in its order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from klpd import kernel_messages as msg
from klpd.model import ObjectStatus, PatchModule, Problem, SectionState, Severity
from klpd.model_description import FunctionStatus
from klpd.model_loader import CheckResult, LoadCheck, LoadCheckName
from klpd.predict.functions import DescriptionFaults, enable_refusals
from klpd.predict.inputs import PatchInput, SystemState
from klpd.predict.module_signature import signature_check
from klpd.predict.module_symbols import symbols_check
from klpd.predict.module_version import module_layout_check, vermagic_check
from klpd.predict.states import states_check


@dataclass(frozen=True)
class LoaderVerdict:
    checks: tuple[LoadCheck, ...]
    # What the kernel logs for a check that fails on several things (the imports it refuses, the functions), in its
    # order; a check not here has its one kernel_message.
    lines: dict[LoadCheckName, tuple[str, ...]] = field(default_factory=dict)


def load_checks(
    system: SystemState,
    p: PatchInput,
    loaded: bool,
    objects: Sequence[ObjectStatus] = (),
    faults: DescriptionFaults | None = None,
) -> LoaderVerdict:
    """The loader's checks of insmod of ``p``'s file, in the kernel's order (none without a file)."""
    module = p.module
    if module is None:
        return LoaderVerdict(())
    build = system.kernel_build
    checks = [
        _modules_disabled(system),
        signature_check(module, system.module_signing),
        module_layout_check(module, build, system.semantics),
        vermagic_check(module, build, system.kernel.release),
        _livepatch_support(system, module),
    ]
    if not loaded:  # a loaded patch: will_load means "its checks pass", ignoring that it is loaded already
        checks.append(_name(system, p))
    symbols = symbols_check(system, module)
    checks.append(symbols.check)
    checks.append(_livepatch_tag(module))
    lines = {LoadCheckName.SYMBOLS: symbols.lines}
    if module.description is not None and faults is not None:
        checks.append(states_check(system, module, p.name))
        checks.append(_description(faults, system.semantics.init_eexist_becomes_ebusy))
        lines[LoadCheckName.DESCRIPTION] = faults.refusals
        functions, lines[LoadCheckName.FUNCTIONS] = _functions(system, p.name, objects)
        checks.append(functions)
    if not loaded:
        checks.append(_transition(system))
    return LoaderVerdict(tuple(checks), lines)


def load_reasons(
    system: SystemState, p: PatchInput, loaded: bool, objects: Sequence[ObjectStatus], verdict: LoaderVerdict
) -> tuple[list[str], list[Problem]]:
    """Why insmod of the patch file would fail now, quoting the kernel where it prints a message."""
    module = p.module
    reasons: list[str] = []
    problems: list[Problem] = []
    if module is None:
        if not loaded:
            reasons.append(p.file_problem.message if p.file_problem else "no patch module file")
        return reasons, problems
    release = module.modinfo.release
    if release is not None and release != system.kernel.release:
        message = f"built for kernel {release} (vermagic '{module.modinfo.vermagic}'), running {system.kernel.release}"
        # The loader takes it where same_magic() skips the release (it has __versions) and the CRCs agree; a patch
        # built for another release still replaces that release's functions: worth a warning, not a refusal.
        vermagic = next((c for c in verdict.checks if c.check is LoadCheckName.VERMAGIC), None)
        severity = Severity.WARNING if vermagic is not None and vermagic.result is CheckResult.OK else Severity.ERROR
        problems.append(Problem("release_mismatch", severity, message, subject=module.path))
    failing = [c for c in verdict.checks if c.result is CheckResult.FAILS]
    before_sections = [c for c in failing if c.check not in _AFTER_SECTIONS]
    reasons.extend(_check_reasons(verdict, before_sections))
    for section in module.sections:
        if section.is_livepatch and section.object is None:
            reasons.append(msg.MALFORMED_SECTION_NAME.format(section=section.name))
    for obj in objects:
        if obj.loaded:
            for result in obj.sections:
                if result.state is SectionState.FAILS:
                    reasons.extend(result.reasons)
    reasons.extend(_check_reasons(verdict, [c for c in failing if c.check in _AFTER_SECTIONS]))
    return list(dict.fromkeys(reasons)), problems


# Checks klp_enable_patch() makes, after the loader has applied the vmlinux sections.
_AFTER_SECTIONS = frozenset(
    {
        LoadCheckName.LIVEPATCH_TAG,
        LoadCheckName.STATES,
        LoadCheckName.DESCRIPTION,
        LoadCheckName.FUNCTIONS,
        LoadCheckName.TRANSITION,
    }
)


def _check_reasons(verdict: LoaderVerdict, failing: Sequence[LoadCheck]) -> list[str]:
    out: list[str] = []
    for check in failing:
        lines = verdict.lines.get(check.check)
        if lines:
            out.extend(lines)
        else:
            out.append(check.kernel_message or check.detail)
    return out


def _description(faults: DescriptionFaults, eexist_becomes_ebusy: bool) -> LoadCheck:
    """klp_enable_patch()'s refusal of the description; a duplicate's -EEXIST reaches insmod as EBUSY since 7.1."""
    check = LoadCheckName.DESCRIPTION
    first = faults.first_refusal
    if first is None:
        return LoadCheck(check, CheckResult.OK, "every object and function is well formed")
    duplicate = "EBUSY" if eexist_becomes_ebusy else "EEXIST"
    errno = duplicate if first.code.endswith("_duplicated") else "EINVAL"
    return LoadCheck(check, CheckResult.FAILS, first.message, first.kernel_message, errno)


def _functions(system: SystemState, patch: str, objects: Sequence[ObjectStatus]) -> tuple[LoadCheck, tuple[str, ...]]:
    """The replaced functions of the objects that are there now: klp_init_object_loaded(), klp_patch_func()."""
    check = LoadCheckName.FUNCTIONS
    here = [o for o in objects if o.loaded]
    lines: list[str] = []
    for obj in here:
        lines += enable_refusals(patch, obj.name, obj.functions)
    if lines:
        obj, bad = next((o, f) for o in here for f in o.functions if f.status not in (None, FunctionStatus.OK))
        detail = f"function '{bad.name}' (sympos {bad.sympos}) of object '{obj.name}': {bad.status}"
        return LoadCheck(check, CheckResult.FAILS, detail, lines[0], "EINVAL"), tuple(dict.fromkeys(lines))
    unchecked = [f.name for o in here for f in o.functions if f.status is FunctionStatus.OK and f.traceable is None]
    if unchecked and system.ftrace is None:
        detail = (
            f"{len(unchecked)} function(s) resolve; their ftrace locations were not checked: tracefs"
            " available_filter_functions is not readable (root only)"
        )
        return LoadCheck(check, CheckResult.UNKNOWN, detail), ()
    count = sum(len(o.functions) for o in here)
    return LoadCheck(check, CheckResult.OK, f"{count} function(s) of loaded objects resolve and are traceable"), ()


def _modules_disabled(system: SystemState) -> LoadCheck:
    check = LoadCheckName.MODULES_DISABLED
    disabled = system.module_signing.modules_disabled if system.module_signing else None
    if disabled is None:
        return LoadCheck(check, CheckResult.UNKNOWN, "/proc/sys/kernel/modules_disabled could not be read")
    if disabled:
        detail = "kernel.modules_disabled is 1: no module loads until the next boot"
        return LoadCheck(check, CheckResult.FAILS, detail, errno="EPERM")
    return LoadCheck(check, CheckResult.OK, "module loading is enabled")


def _livepatch_support(system: SystemState, module: PatchModule) -> LoadCheck:
    check = LoadCheckName.LIVEPATCH_SUPPORT
    if module.modinfo.livepatch and not system.kernel.livepatch_supported:
        message = msg.LIVEPATCH_DISABLED.format(module=module.name)
        detail = "no /sys/kernel/livepatch: this kernel has no CONFIG_LIVEPATCH"
        return LoadCheck(check, CheckResult.FAILS, detail, message, "ENOEXEC")
    return LoadCheck(check, CheckResult.OK, "the kernel supports livepatch")


def _name(system: SystemState, p: PatchInput) -> LoadCheck:
    check = LoadCheckName.NAME
    if p.name in system.modules:
        return LoadCheck(check, CheckResult.FAILS, f"a module named '{p.name}' is already loaded", errno="EEXIST")
    return LoadCheck(check, CheckResult.OK, f"no module named '{p.name}' is loaded")


def _livepatch_tag(module: PatchModule) -> LoadCheck:
    check = LoadCheckName.LIVEPATCH_TAG
    if module.modinfo.livepatch:
        return LoadCheck(check, CheckResult.OK, "modinfo livepatch=Y")
    message = msg.NOT_LIVEPATCH_MODULE.format(module=module.name)
    return LoadCheck(check, CheckResult.FAILS, "modinfo has no livepatch=Y", message, "EINVAL")


def _transition(system: SystemState) -> LoadCheck:
    check = LoadCheckName.TRANSITION
    busy = [lp.name for lp in system.livepatches if lp.transition]
    if busy:
        detail = f"patch '{busy[0]}' is in transition: loading another patch now fails with EBUSY"
        return LoadCheck(check, CheckResult.FAILS, detail, errno="EBUSY")
    return LoadCheck(check, CheckResult.OK, "no patch is in transition")
