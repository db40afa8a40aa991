"""Will a later load of a patched module succeed? klp_module_coming() applies the patch's ``.klp.rela.<mod>.*``
sections before the module's init runs, and a failure refuses the module's load (kernel/livepatch/core.c).

A module loaded and removed while the patch stayed is a second case: on x86, kernels before 0c05e7bd2d01
"livepatch,x86: Clear relocation targets on a module removal" (6.3) leave the targets written, and the next
apply_relocate_add() refuses them (ENOEXEC). Seen on Debian's 5.10 and 6.1; 6.12 and 7.2 patch the module again.
"""

from __future__ import annotations

from collections.abc import Sequence

from klpd import kernel_messages as msg
from klpd.model import ModuleLoad, ModuleSymtab, Problem, SectionResult, SectionState
from klpd.model_description import FunctionResult, FunctionStatus
from klpd.predict.functions import failing as failing_functions
from klpd.predict.inputs import SystemState

_EINVAL, _ENOEXEC = -22, -8


def module_load(
    patch: str,
    obj: str,
    sections: Sequence[SectionResult],
    system: SystemState,
    symtab: ModuleSymtab | Problem | None,
    *,
    functions: Sequence[FunctionResult] = (),
) -> tuple[ModuleLoad, tuple[str, ...]]:
    """Verdict for loading module ``obj`` later, when klp_module_coming() applies the sections of ``obj``, then
    looks up the functions the patch replaces in it (klp_init_object_loaded())."""
    release = system.kernel.release
    if not system.modules_dep_read:
        return ModuleLoad.UNKNOWN, (
            f"modules.dep of {release} could not be read: the .ko of module '{obj}' cannot be located",
        )
    if obj not in system.known_modules:
        return ModuleLoad.UNKNOWN, (
            f"no module '{obj}' in modules.dep of {release}: the kernel will never apply these sections",
        )
    if isinstance(symtab, Problem):
        return ModuleLoad.UNKNOWN, (symtab.message,)
    if symtab is None:
        return ModuleLoad.UNKNOWN, (f"the .ko of module '{obj}' was not read",)
    running = system.running_patches.get(patch)
    reloaded = running is not None and obj in (running.resolved_objects or ())
    if reloaded and not system.semantics.clears_relocs_on_module_removal:
        return ModuleLoad.REFUSED, (
            f"module '{obj}' was loaded and removed since patch '{patch}' was: kernel {release} does not clear "
            "the relocation targets it wrote then, so applying them again fails: "
            + msg.RELOCATION_TARGET_NONZERO.format(type="<type>", loc="<loc>", val="<val>"),
            msg.PATCH_INIT_FAILED.format(patch=patch, module=obj, errno=_ENOEXEC),
            msg.MODULE_LOAD_REFUSED.format(patch=patch, module=obj),
        )
    failing = [s for s in sections if s.state is SectionState.FAILS]
    bad = [f for f in failing_functions(functions) if f.kernel_message]
    lookups = [f.kernel_message or "" for f in bad if f.status is not FunctionStatus.NOT_TRACEABLE]
    if not failing and not bad:
        return ModuleLoad.OK, ()
    # The kernel stops at the first failure: klp_init_object_loaded() (the relocations, then the lookups), else
    # klp_patch_object() (the ftrace locations), which it reports in its own words.
    if failing or lookups:
        reasons = [reason for s in failing for reason in s.reasons] if failing else lookups[:1]
        reasons.append(msg.PATCH_INIT_FAILED.format(patch=patch, module=obj, errno=_EINVAL))
    else:
        reasons = [
            msg.APPLYING.format(patch=patch, module=obj),
            bad[0].kernel_message or "",
            msg.APPLY_TO_MODULE_FAILED.format(patch=patch, module=obj, errno=_EINVAL),
        ]
    reasons.append(msg.MODULE_LOAD_REFUSED.format(patch=patch, module=obj))
    return ModuleLoad.REFUSED, tuple(dict.fromkeys(reasons))
