"""klp_is_patch_compatible() (kernel/livepatch/state.c, 5.5+) and atomic replace, against the loaded patches.

For each state of every active patch (enabled or in transition), the new patch must carry a state of the same id
with a version at least as high; a missing state is accepted only when the new patch does not replace the others
("A cumulative livepatch must handle all already modified states"). Otherwise klp_enable_patch() refuses it with
-EINVAL: "Livepatch patch (%s) is not compatible with the already installed livepatches."

The loaded patches' states are not in sysfs: they come from their files (``SystemState.loaded_descriptions``).
A replace patch, once its transition completes, replaces every loaded patch (klp_free_replaced_patches_async()).
"""

from __future__ import annotations

from klpd import kernel_messages as msg
from klpd.model import PatchModule
from klpd.model_loader import CheckResult, LoadCheck, LoadCheckName
from klpd.predict.inputs import SystemState


def states_check(system: SystemState, module: PatchModule, name: str) -> LoadCheck:
    check = LoadCheckName.STATES
    desc = module.description
    others = [p for p in system.patch_stack if p != name]
    if not others:
        return LoadCheck(check, CheckResult.OK, "no other patch is loaded")
    if desc is None:
        return LoadCheck(check, CheckResult.UNKNOWN, "the patch's description (its states) was not found in the file")
    unknown = [p for p in others if p not in system.loaded_descriptions]
    mine = {s.id: s.version for s in desc.states}
    for other in others:
        if other in unknown:
            continue
        for state in system.loaded_descriptions[other].states:
            have = mine.get(state.id)
            if have is None and desc.replace is None:
                detail = (
                    f"loaded patch '{other}' has state {state.id} (version {state.version}), which this patch lacks:"
                    " refused if this patch replaces the others, which its file does not say"
                )
                return LoadCheck(check, CheckResult.UNKNOWN, detail)
            if (have is None and desc.replace) or (have is not None and have < state.version):
                given = "lacks it and replaces the others" if have is None else f"has version {have}"
                detail = f"loaded patch '{other}' has state {state.id} version {state.version}; this patch {given}"
                return LoadCheck(
                    check, CheckResult.FAILS, detail, msg.NOT_COMPATIBLE.format(patch=module.name), "EINVAL"
                )
    if unknown:
        detail = f"the states of loaded patch(es) {', '.join(unknown)} are unknown: no file found for them"
        return LoadCheck(check, CheckResult.UNKNOWN, detail)
    return LoadCheck(check, CheckResult.OK, "compatible with the states of the loaded patches")


def replaced_by(system: SystemState, name: str, replace: bool | None) -> tuple[str, ...]:
    """The loaded patches a replace patch will replace once its transition completes (none otherwise)."""
    if not replace:
        return ()
    return tuple(p for p in system.patch_stack if p != name)
