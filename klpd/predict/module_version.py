"""The module loader's version checks (kernel/module/version.c, main.c; kernel-checks.md C2, C5, C6, D2).

- vermagic: check_modinfo() compares the module's ``vermagic=`` with the kernel's VERMAGIC_STRING through
  same_magic(): with a ``__versions`` section (CONFIG_MODVERSIONS) both strings are compared from their first
  space, so the release word is ignored; without it the whole strings must be equal.
- module layout: check_modstruct_version() checks the CRC of ``module_layout`` (kernels that export it); since 6.12
  the size of ``.gnu.linkonce.this_module`` must equal the running kernel's sizeof(struct module).
(The CRC of each imported symbol, check_version() called from simplify_symbols(), is :mod:`.module_symbols`'.)

The kernel's side comes from files of its release (klpd.sources.kernel_build): the vermagic and the struct module
size of an in-tree module, the CRCs of Module.symvers. Where those are not readable the check is ``unknown``.
"""

from __future__ import annotations

from klpd import kernel_messages as msg
from klpd.kernel_version import KernelSemantics
from klpd.model import PatchModule
from klpd.model_loader import CheckResult, KernelBuild, LoadCheck, LoadCheckName


def same_magic(have: str, want: str, has_crcs: bool) -> bool:
    """kernel/module/version.c same_magic(): with CRCs, compare from the first space (strcspn(amagic, " "))."""
    if has_crcs:
        have = have[len(have.split(" ", 1)[0]) :]
        want = want[len(want.split(" ", 1)[0]) :]
    return have == want


def vermagic_check(module: PatchModule, build: KernelBuild | None, release: str) -> LoadCheck:
    check = LoadCheckName.VERMAGIC
    have = module.modinfo.vermagic
    if have is None:
        # try_to_force_load(mod, "bad vermagic"): loads tainted (F) with CONFIG_MODULE_FORCE_LOAD, else ENOEXEC.
        return LoadCheck(check, CheckResult.UNKNOWN, "no vermagic: refused unless the kernel has MODULE_FORCE_LOAD")
    want = build.vermagic if build is not None else None
    if want is None:
        if not module.has_versions and have.split(" ", 1)[0] != release:
            # Without __versions the whole string must match, and its first word is the kernel's release.
            detail = f"version magic '{have}' should begin with '{release}' (the kernel's whole vermagic is unknown)"
            return LoadCheck(check, CheckResult.FAILS, detail, errno="ENOEXEC")
        detail = "the running kernel's vermagic is unknown: no in-tree module of its release could be read"
        return LoadCheck(check, CheckResult.UNKNOWN, detail)
    compared = "from the first space (the module has __versions)" if module.has_versions else "whole"
    if same_magic(have, want, module.has_versions):
        return LoadCheck(check, CheckResult.OK, f"'{have}' matches '{want}', compared {compared}")
    message = msg.VERMAGIC_MISMATCH.format(module=module.name, have=have, want=want)
    detail = f"'{have}' differs from '{want}', compared {compared}"
    return LoadCheck(check, CheckResult.FAILS, detail, message, "ENOEXEC")


def module_layout_check(module: PatchModule, build: KernelBuild | None, semantics: KernelSemantics) -> LoadCheck:
    check = LoadCheckName.MODULE_LAYOUT
    failures: list[LoadCheck] = []
    unknown: list[str] = []
    compared: list[str] = []
    if semantics.checks_this_module_size:
        size, want = module.this_module_size, build.this_module_size if build is not None else None
        if want is None or size is None:
            unknown.append("the size of struct module" + (" in the file" if size is None else " of this kernel"))
        elif size != want:
            message = msg.THIS_MODULE_SIZE.format(module=module.name)
            detail = f".gnu.linkonce.this_module is {size} bytes, this kernel's struct module {want}"
            failures.append(LoadCheck(check, CheckResult.FAILS, detail, message, "ENOEXEC"))
        else:
            compared.append(f"struct module size {size}")
    crc = _versioned(module).get("module_layout")
    crcs = build.crcs if build is not None else None
    if crc is not None and crcs is not None and "module_layout" in crcs and crcs["module_layout"] != crc:
        message = msg.SYMBOL_VERSION_MISMATCH.format(module=module.name, symbol="module_layout")
        detail = f"module_layout CRC {crc:#010x}, this kernel's {crcs['module_layout']:#010x}: built for another config"
        failures.append(LoadCheck(check, CheckResult.FAILS, detail, message, "ENOEXEC"))
    elif crc is not None and crcs is None:
        unknown.append("the kernel's module_layout CRC")
    elif crc is not None and crcs is not None and "module_layout" in crcs:
        compared.append("module_layout CRC")
    if failures:
        return failures[0]
    if unknown:
        return LoadCheck(check, CheckResult.UNKNOWN, "not readable: " + ", ".join(unknown))
    if compared:
        return LoadCheck(check, CheckResult.OK, "the same as this kernel's: " + ", ".join(compared))
    nothing = "this kernel checks no struct module size (6.12+ do) and no module_layout CRC is to be compared"
    return LoadCheck(check, CheckResult.OK, nothing)


def _versioned(module: PatchModule) -> dict[str, int]:
    return {v.name: v.crc for v in module.versions}
