"""Would ``insmod`` of the patch file succeed now? The module loader's checks, then klp_enable_patch()'s.

What is checked so far (kernel-checks.md rows): the ``livepatch`` modinfo tag (E2) and livepatch support (C7), the
vermagic release word (C6, partly), malformed ``.klp.rela`` section names (D5), the sections applied at load or
enable time (D5, E10), a module of the same name (C9) and another patch in transition (E13).
"""

from __future__ import annotations

from collections.abc import Sequence

from klpd import kernel_messages as msg
from klpd.model import ObjectStatus, Problem, SectionState, Severity
from klpd.predict.inputs import PatchInput, SystemState


def load_reasons(
    system: SystemState, p: PatchInput, loaded: bool, objects: Sequence[ObjectStatus]
) -> tuple[list[str], list[Problem]]:
    """Why insmod of the patch file would fail now, quoting the kernel where it prints a message."""
    module = p.module
    reasons: list[str] = []
    problems: list[Problem] = []
    if module is None:
        if not loaded:
            reasons.append(p.file_problem.message if p.file_problem else "no patch module file")
        return reasons, problems
    if not module.modinfo.livepatch:
        reasons.append(msg.NOT_LIVEPATCH_MODULE.format(module=module.name))
    elif not system.kernel.livepatch_supported:
        reasons.append(msg.LIVEPATCH_DISABLED.format(module=module.name))
    release = module.modinfo.release
    if release is None:
        reasons.append(f"{module.name}: no version magic: the module loader refuses it unless forced")
    elif release != system.kernel.release:
        message = f"built for kernel {release} (vermagic '{module.modinfo.vermagic}'), running {system.kernel.release}"
        problems.append(Problem("release_mismatch", Severity.ERROR, message, subject=module.path))
        # same_magic() skips the release word when the module has __versions (CONFIG_MODVERSIONS): then only
        # symbol CRCs decide, and those klpd does not check.
        if not module.has_versions:
            reasons.append(
                f"{module.name}: version magic '{module.modinfo.vermagic}' should begin with '{system.kernel.release}'"
            )
    for section in module.sections:
        if section.is_livepatch and section.object is None:
            reasons.append(msg.MALFORMED_SECTION_NAME.format(section=section.name))
    for obj in objects:
        if obj.loaded:
            for result in obj.sections:
                if result.state is SectionState.FAILS:
                    reasons.extend(result.reasons)
    if not loaded:
        if p.name in system.modules:
            reasons.append(f"a module named '{p.name}' is already loaded")
        busy = [lp.name for lp in system.livepatches if lp.transition]
        if busy:
            reasons.append(f"patch '{busy[0]}' is in transition: loading another patch now fails with EBUSY")
    return list(dict.fromkeys(reasons)), problems
