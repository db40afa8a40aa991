"""Would ``insmod`` of the patch file succeed now? The module loader's checks, then klp_enable_patch()'s.

The checks, in the order load_module() makes them (kernel-checks.md rows): modules_disabled (A1), the signature
(B, :mod:`.module_signature`), the struct module layout (C2, C5) and vermagic (C6) (:mod:`.module_version`),
livepatch support (C7), a module of the same name (C9), the imported symbols: exported, with the kernel's CRCs
(D1, D2); then the ``.klp.rela.vmlinux.*`` sections the loader applies (D5, from :mod:`.sections`), and in
klp_enable_patch() the ``livepatch`` modinfo tag (E2) and another patch in transition (E13).

Each is a :class:`~klpd.model_loader.LoadCheck` (``ok``, ``fails``, or ``unknown`` where what it needs could not be
read); every failure is a reason the load fails, quoting the kernel where it logs one. The kernel stops at the
first; all are listed, in its order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from klpd import kernel_messages as msg
from klpd.model import VMLINUX, ObjectStatus, PatchModule, Problem, SectionState, Severity
from klpd.model_loader import CheckResult, LoadCheck, LoadCheckName
from klpd.predict.inputs import PatchInput, SystemState
from klpd.predict.module_signature import signature_check
from klpd.predict.module_version import crc_mismatches, module_layout_check, vermagic_check

_ENOENT = -2


def load_checks(system: SystemState, p: PatchInput, loaded: bool) -> tuple[LoadCheck, ...]:
    """The loader's checks of insmod of ``p``'s file, in the kernel's order (none without a file)."""
    module = p.module
    if module is None:
        return ()
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
    checks.append(_symbols(system, module))
    checks.append(_livepatch_tag(module))
    if not loaded:
        checks.append(_transition(system))
    return tuple(checks)


def load_reasons(
    system: SystemState, p: PatchInput, loaded: bool, objects: Sequence[ObjectStatus], checks: Sequence[LoadCheck]
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
        problems.append(Problem("release_mismatch", Severity.ERROR, message, subject=module.path))
    failing = [c for c in checks if c.result is CheckResult.FAILS]
    before_sections = [c for c in failing if c.check not in _AFTER_SECTIONS]
    reasons.extend(_check_reasons(system, before_sections, module))
    for section in module.sections:
        if section.is_livepatch and section.object is None:
            reasons.append(msg.MALFORMED_SECTION_NAME.format(section=section.name))
    for obj in objects:
        if obj.loaded:
            for result in obj.sections:
                if result.state is SectionState.FAILS:
                    reasons.extend(result.reasons)
    reasons.extend(_check_reasons(system, [c for c in failing if c.check in _AFTER_SECTIONS], module))
    return list(dict.fromkeys(reasons)), problems


# Checks klp_enable_patch() makes, after the loader has applied the vmlinux sections.
_AFTER_SECTIONS = frozenset({LoadCheckName.LIVEPATCH_TAG, LoadCheckName.TRANSITION})


def _check_reasons(system: SystemState, failing: Sequence[LoadCheck], module: PatchModule) -> list[str]:
    out: list[str] = []
    for check in failing:
        if check.check is LoadCheckName.SYMBOLS:
            out.extend(_symbol_lines(system, module))
        else:
            out.append(check.kernel_message or check.detail)
    return out


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


def _symbols(system: SystemState, module: PatchModule) -> LoadCheck:
    """simplify_symbols(): every import must be exported by vmlinux or a loaded module, with the kernel's CRC."""
    check = LoadCheckName.SYMBOLS
    lines = _symbol_lines(system, module)
    mismatches = crc_mismatches(module, system.kernel_build)
    if mismatches:
        names = ", ".join(name for name, _ in mismatches)
        detail = f"built against other symbol versions (CRCs) than this kernel's: {names}"
        return LoadCheck(check, CheckResult.FAILS, detail, lines[0], "EINVAL")
    missing = _missing(system, module)
    if missing is None:
        detail = "the kernel's exports are unknown: no Module.symvers, and /proc/kallsyms lists no __ksymtab_ entries"
        return LoadCheck(check, CheckResult.UNKNOWN, detail)
    if not module.imports:
        return LoadCheck(check, CheckResult.OK, "imports no symbol")
    source = "Module.symvers" if system.kernel_build and system.kernel_build.exports is not None else "/proc/kallsyms"
    if not missing:
        if module.has_versions and (system.kernel_build is None or system.kernel_build.crcs is None):
            detail = f"all {len(module.imports)} imports are exported ({source}), but this kernel's CRCs are unknown"
            return LoadCheck(check, CheckResult.UNKNOWN, detail + " (no Module.symvers): check_version() decides")
        detail = f"all {len(module.imports)} imports are exported by loaded code ({source})"
        return LoadCheck(check, CheckResult.OK, detail)
    exports = system.kernel_build.exports if system.kernel_build else None
    details = [name + _exporter_note(module, exports.get(name) if exports is not None else None) for name in missing]
    detail = f"not exported now ({source}): " + ", ".join(details)
    return LoadCheck(check, CheckResult.FAILS, detail, lines[0], "ENOENT")


def _missing(system: SystemState, module: PatchModule) -> list[str] | None:
    """The imports no loaded object exports; None when that cannot be known (and it imports any)."""
    if not module.imports:
        return []
    exported = _export_test(system)
    if exported is None:
        return None
    return [name for name in module.imports if not exported(name)]


# Every livepatch imports it, and the kernel exports it whenever it has livepatch support (kernel/livepatch/core.c
# EXPORT_SYMBOL_GPL): where /proc/kallsyms lists its __ksymtab_ entry, it lists every export's.
_KSYMTAB_ANCHOR = "__ksymtab_klp_enable_patch"


def _export_test(system: SystemState) -> Callable[[str], bool] | None:
    """Whether a symbol is exported by vmlinux or a loaded module: from Module.symvers, else from the __ksymtab_
    entries /proc/kallsyms lists (with CONFIG_KALLSYMS_ALL; seen on Debian 6.1), else None."""
    exports = system.kernel_build.exports if system.kernel_build else None
    if exports is not None:
        return lambda name: _exported(system, exports.get(name))
    kallsyms = system.kallsyms
    if kallsyms.find(VMLINUX, _KSYMTAB_ANCHOR).matches == 0:
        return None
    modules = tuple(system.modules)
    return lambda name: any(kallsyms.find(obj, f"__ksymtab_{name}").matches for obj in (VMLINUX, *modules))


def _symbol_lines(system: SystemState, module: PatchModule) -> list[str]:
    """What the kernel logs for the imports it cannot resolve: two lines per CRC mismatch (check_version() warns,
    simplify_symbols() reports -EINVAL), one per symbol nobody exports (-ENOENT)."""
    lines = [line for _, pair in crc_mismatches(module, system.kernel_build) for line in pair]
    missing = _missing(system, module) or []
    lines += [msg.UNKNOWN_SYMBOL.format(module=module.name, symbol=name, errno=_ENOENT) for name in missing]
    return lines


def _exported(system: SystemState, exporter: str | None) -> bool:
    return exporter is not None and system.is_loaded(exporter)


def _exporter_note(module: PatchModule, exporter: str | None) -> str:
    if exporter is None:
        return " (exported by nothing this kernel built)"
    if exporter in module.modinfo.depends:
        return f" (exported by '{exporter}', not loaded: modprobe loads it first, insmod does not)"
    return f" (exported by '{exporter}', not loaded)"


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
