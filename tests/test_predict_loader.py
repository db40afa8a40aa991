"""The module loader's checks of insmod of a patch file, on hand-made hosts (kernel-checks.md A-D).

The files' own signature, __versions and imports are set on the parsed module here (tests/test_elf_signature.py
reads them from real files); the kernel's side is what klpd.sources.kernel_build and module_signing read.
"""

from __future__ import annotations

import dataclasses

import pytest
from elfwriter import patch_using
from status_fixture import KALLSYMS, RELEASE, system

from klpd.elf import parse_patch_module
from klpd.kernel_version import semantics_for
from klpd.model import PatchModule, PatchStatus
from klpd.model_loader import (
    CheckResult,
    KernelBuild,
    LoadCheck,
    LoadCheckName,
    ModuleSignature,
    ModuleSigning,
    SymbolVersion,
    TrustedKey,
)
from klpd.predict import PatchInput, SystemState, compute_status

VERMAGIC = f"{RELEASE} SMP preempt mod_unload modversions "
KEY_ID = "14011249c2675ea8e5148542202005810584b25f"
DEBIAN_KEY = TrustedKey(".builtin_trusted_keys", f"Debian Secure Boot Signer 2022 - linux: {KEY_ID}")
SIGNED = ModuleSignature(2, None, KEY_ID, "sha256", by_key_id=True)  # sign-file -k: the key by its SKID
BY_SERIAL = ModuleSignature(2, "Debian Secure Boot CA", "00a1b2", "sha256")  # sign-file's default: issuer, serial
OPEN = ModuleSigning(sig_enforce=False, lockdown="none", keys=(DEBIAN_KEY,), modules_disabled=False)
ENFORCING = dataclasses.replace(OPEN, sig_enforce=True)
BUILD = KernelBuild(VERMAGIC, "/lib/modules/6.1.0-test/kernel/fs/xfs/xfs.ko", 1344,
                    {"_printk": 0x92997ED8, "module_layout": 0x1234}, "/usr/src/Module.symvers",
                    {"_printk": "vmlinux", "module_layout": "vmlinux", "xfs_sym": "xfs"})  # fmt: skip


def patch(*, vermagic: str = VERMAGIC, has_versions: bool = True, **fields: object) -> PatchModule:
    module = parse_patch_module(
        patch_using("lp_loader", vermagic, ("vmlinux", "unique_fn", 0)).build(versions=has_versions), "/x/lp_loader.ko"
    )
    # The fixture has no patch description; the loader checks are what these tests are about, so its
    # description_not_found warning (tests/test_elf_description.py) is left out.
    problems = tuple(p for p in module.problems if p.code != "description_not_found")
    defaults: dict[str, object] = {"imports": ("_printk",), "versions": (SymbolVersion("_printk", 0x92997ED8),),
                                   "problems": problems}  # fmt: skip
    return dataclasses.replace(module, **{**defaults, **fields})  # type: ignore[arg-type]


def host(build: KernelBuild | None = BUILD, signing: ModuleSigning | None = OPEN, **kw: object) -> SystemState:
    return dataclasses.replace(system(**kw), kernel_build=build, module_signing=signing)  # type: ignore[arg-type]


def judge(module: PatchModule, state: SystemState) -> tuple[PatchStatus, dict[LoadCheckName, LoadCheck]]:
    status = compute_status(state, [PatchInput(module.name, module, candidate=True)]).patches[0]
    return status, {c.check: c for c in status.load_checks}


def test_a_patch_built_for_this_kernel_passes_every_check() -> None:
    status, checks = judge(patch(signature=SIGNED), host())
    assert status.will_load and status.reasons == ()
    assert {c.result for c in checks.values()} == {CheckResult.OK}
    assert list(checks) == [  # the order load_module() and klp_enable_patch() check in
        LoadCheckName.MODULES_DISABLED, LoadCheckName.SIGNATURE, LoadCheckName.MODULE_LAYOUT, LoadCheckName.VERMAGIC,
        LoadCheckName.LIVEPATCH_SUPPORT, LoadCheckName.NAME, LoadCheckName.SYMBOLS, LoadCheckName.LIVEPATCH_TAG,
        LoadCheckName.TRANSITION,
    ]  # fmt: skip
    assert status.signature == SIGNED


@pytest.mark.parametrize(
    ("vermagic", "has_versions", "result"),
    [
        (f"{RELEASE} SMP mod_unload modversions ", True, CheckResult.FAILS),  # flags differ: always compared
        ("6.1.0-other SMP preempt mod_unload modversions ", True, CheckResult.OK),  # release skipped with CRCs
        ("6.1.0-other SMP preempt mod_unload modversions ", False, CheckResult.FAILS),  # whole string without
    ],
)
def test_vermagic_is_compared_as_same_magic_does(vermagic: str, has_versions: bool, result: CheckResult) -> None:
    status, checks = judge(patch(vermagic=vermagic, has_versions=has_versions), host())
    check = checks[LoadCheckName.VERMAGIC]
    assert check.result is result
    if result is CheckResult.FAILS:
        expected = f"lp_loader: version magic '{vermagic}' should be '{VERMAGIC}'"
        assert (check.kernel_message, check.errno) == (expected, "ENOEXEC")
        assert not status.will_load and expected in status.reasons


def test_without_the_kernels_vermagic_only_a_release_mismatch_is_certain() -> None:
    _, checks = judge(patch(vermagic="5.10.0-x SMP ", has_versions=False), host(build=None))
    assert checks[LoadCheckName.VERMAGIC].result is CheckResult.FAILS
    _, checks = judge(patch(vermagic=f"{RELEASE} SMP "), host(build=None))
    assert checks[LoadCheckName.VERMAGIC].result is CheckResult.UNKNOWN
    assert checks[LoadCheckName.SYMBOLS].result is CheckResult.UNKNOWN


@pytest.mark.parametrize(
    ("signature", "signing", "result", "message", "errno"),
    [
        (None, dataclasses.replace(OPEN, sig_enforce=True), CheckResult.FAILS,
         "Loading of unsigned module is rejected", "EKEYREJECTED"),
        (dataclasses.replace(SIGNED, key_id="00ff"), dataclasses.replace(OPEN, sig_enforce=True), CheckResult.FAILS,
         "Loading of module with unavailable key is rejected", "EKEYREJECTED"),
        (None, dataclasses.replace(OPEN, lockdown="integrity"), CheckResult.FAILS,
         "Lockdown: insmod: unsigned module loading is restricted; see man kernel_lockdown.7", "EPERM"),
        (None, OPEN, CheckResult.OK, None, None),  # loads, tainted E
        (SIGNED, dataclasses.replace(OPEN, sig_enforce=True), CheckResult.OK, None, None),
        (SIGNED, dataclasses.replace(OPEN, sig_enforce=True, keys=None), CheckResult.UNKNOWN, None, None),
        (None, None, CheckResult.UNKNOWN, None, None),
        (dataclasses.replace(SIGNED, problem="sig_len 4096 past the file"), OPEN, CheckResult.FAILS, None, "EBADMSG"),
        # without sig_enforce (no CONFIG_MODULE_SIG, or unreadable) nothing says the trailer is even looked at
        (dataclasses.replace(SIGNED, problem="sig_len 4096 past the file"),
         dataclasses.replace(OPEN, sig_enforce=None), CheckResult.UNKNOWN, None, None),
        # issuer and serial: /proc/keys shows neither, so which key signed it cannot be told
        (BY_SERIAL, ENFORCING, CheckResult.UNKNOWN, None, None),
        # the key is there, but only in .platform (trusted by Debian's kernels, not upstream's) or a keyring klpd
        # could not place: no verdict either way
        (SIGNED, dataclasses.replace(ENFORCING, keys=(dataclasses.replace(DEBIAN_KEY, keyring=".platform"),)),
         CheckResult.UNKNOWN, None, None),
        (SIGNED, dataclasses.replace(ENFORCING, keys=(dataclasses.replace(DEBIAN_KEY, keyring=""),)),
         CheckResult.UNKNOWN, None, None),
        # not PKCS#7: "unsupported crypto", fatal where enforced
        (ModuleSignature(1, None, None, None), ENFORCING, CheckResult.FAILS,
         "Loading of module with unsupported crypto is rejected", "EKEYREJECTED"),
        (None, dataclasses.replace(OPEN, lockdown="confidentiality"), CheckResult.FAILS,
         "Lockdown: insmod: unsigned module loading is restricted; see man kernel_lockdown.7", "EPERM"),
    ],
)  # fmt: skip
def test_signature_policy(signature, signing, result, message, errno) -> None:
    status, checks = judge(patch(signature=signature), host(signing=signing))
    check = checks[LoadCheckName.SIGNATURE]
    assert (check.result, check.kernel_message, check.errno) == (result, message, errno)
    assert status.will_load is (result is not CheckResult.FAILS)


def test_a_changed_crc_is_refused_with_the_kernels_two_lines() -> None:
    status, checks = judge(patch(versions=(SymbolVersion("_printk", 0xDEADBEEF),)), host())
    check = checks[LoadCheckName.SYMBOLS]
    assert (check.result, check.errno) == (CheckResult.FAILS, "EINVAL")
    assert check.kernel_message == "lp_loader: disagrees about version of symbol _printk"
    assert status.reasons == (
        "lp_loader: disagrees about version of symbol _printk",
        "lp_loader: Unknown symbol _printk (err -22)",
    )


def test_an_import_nobody_loaded_exports_is_an_unknown_symbol() -> None:
    status, checks = judge(patch(imports=("_printk", "not_exported", "xfs_sym")), host())
    check = checks[LoadCheckName.SYMBOLS]
    assert (check.result, check.errno) == (CheckResult.FAILS, "ENOENT")
    assert check.kernel_message == "lp_loader: Unknown symbol not_exported (err -2)"
    assert "xfs_sym is not exported (exported by 'xfs', not loaded)" in check.detail
    assert status.reasons == (
        "lp_loader: Unknown symbol not_exported (err -2)",
        "lp_loader: Unknown symbol xfs_sym (err -2)",
    )
    _, loaded = judge(patch(imports=("_printk", "xfs_sym")), host(modules=("loaded_mod", "xfs")))
    assert loaded[LoadCheckName.SYMBOLS].result is CheckResult.OK


def test_this_module_size_is_checked_from_6_12() -> None:
    module = patch(this_module_size=1280)
    _, old = judge(module, host())
    assert old[LoadCheckName.MODULE_LAYOUT].result is CheckResult.OK  # 6.1 does not compare it
    _, new = judge(module, host(release="6.12.48+deb13-amd64", semantics=semantics_for("6.12.48+deb13-amd64")))
    check = new[LoadCheckName.MODULE_LAYOUT]
    assert (check.result, check.errno) == (CheckResult.FAILS, "ENOEXEC")
    assert check.kernel_message == (
        "module lp_loader: .gnu.linkonce.this_module section size must match the kernel's built struct module size"
        " at run time"
    )


def test_a_module_of_that_name_and_disabled_loading() -> None:
    state = host(modules=("loaded_mod", "lp_loader"))
    status, checks = judge(patch(), state)
    assert (checks[LoadCheckName.NAME].result, checks[LoadCheckName.NAME].errno) == (CheckResult.FAILS, "EEXIST")
    assert not status.will_load and "a module named 'lp_loader' is already loaded" in status.reasons
    # klpctl status of the loaded patch itself: will_load means "its checks pass", so no EEXIST there
    loaded = compute_status(state, [PatchInput("lp_loader", patch())]).patches[0]
    assert loaded.will_load and LoadCheckName.NAME not in {c.check for c in loaded.load_checks}
    _, checks = judge(patch(), host(signing=dataclasses.replace(OPEN, modules_disabled=True)))
    assert (checks[LoadCheckName.MODULES_DISABLED].result, checks[LoadCheckName.MODULES_DISABLED].errno) == (
        CheckResult.FAILS,
        "EPERM",
    )


def test_without_module_symvers_the_exports_come_from_kallsyms_ksymtab_entries() -> None:
    """A host without its kernel's headers: /proc/kallsyms lists __ksymtab_<symbol> for every export (Debian 6.1,
    CONFIG_KALLSYMS_ALL), anchored on klp_enable_patch's, which every livepatch kernel exports."""
    vmlinux, modules = KALLSYMS.split("ffffffffc0001000", 1)  # vmlinux lines come first, then the modules'
    ksymtab = "".join(f"ffffffff82{i:06x} r __ksymtab_{n}\n" for i, n in enumerate(("klp_enable_patch", "_printk")))
    module_export = "ffffffffc0004000 r __ksymtab_mod_export\t[loaded_mod]\n"
    kallsyms = vmlinux + ksymtab + "ffffffffc0001000" + modules + module_export
    headless = dataclasses.replace(BUILD, crcs=None, exports=None, crcs_source=None)
    status, checks = judge(patch(imports=("_printk", "mod_export", "kallsyms_lookup_name")),
                           host(build=headless, kallsyms=kallsyms))  # fmt: skip
    check = checks[LoadCheckName.SYMBOLS]
    assert (check.result, check.errno) == (CheckResult.FAILS, "ENOENT")
    assert check.detail == "kallsyms_lookup_name is not exported (no __ksymtab_ line in /proc/kallsyms)"
    assert status.reasons == ("lp_loader: Unknown symbol kallsyms_lookup_name (err -2)",)
    # No __ksymtab_ entries at all (no CONFIG_KALLSYMS_ALL, or a kernel that lists none): unknown, not a guess.
    _, checks = judge(patch(imports=("_printk",)), host(build=headless))
    assert checks[LoadCheckName.SYMBOLS].result is CheckResult.UNKNOWN


def test_simplify_symbols_order_and_errno() -> None:
    """The kernel walks the imports in symtab order, goes on after a failure and returns the last failure's error;
    a changed CRC counts only for a symbol it found exported (an unexported one is -ENOENT, CRC or not)."""
    module = patch(
        imports=("_printk", "xfs_sym", "not_exported"),
        versions=(SymbolVersion("_printk", 0xDEADBEEF), SymbolVersion("xfs_sym", 0xBAD)),
    )
    status, checks = judge(module, host())
    check = checks[LoadCheckName.SYMBOLS]
    assert (check.kernel_message, check.errno) == ("lp_loader: disagrees about version of symbol _printk", "ENOENT")
    assert status.reasons == (
        "lp_loader: disagrees about version of symbol _printk",
        "lp_loader: Unknown symbol _printk (err -22)",
        "lp_loader: Unknown symbol xfs_sym (err -2)",  # xfs not loaded: its CRC is never compared
        "lp_loader: Unknown symbol not_exported (err -2)",
    )


def test_an_export_module_symvers_does_not_list_is_unknown_while_out_of_tree_modules_are_loaded() -> None:
    state = host(modules=("loaded_mod", "dkms_driver"))
    state = dataclasses.replace(
        state, modules={**state.modules, "dkms_driver": dataclasses.replace(state.modules["dkms_driver"], taint="OE")}
    )
    _, checks = judge(patch(imports=("_printk", "dkms_export")), state)
    assert checks[LoadCheckName.SYMBOLS].result is CheckResult.UNKNOWN
    assert "out-of-tree modules are loaded (dkms_driver)" in checks[LoadCheckName.SYMBOLS].detail


def test_a_missing_dependency_is_what_modprobe_would_have_loaded() -> None:
    module = patch(imports=("_printk", "xfs_sym"))
    module = dataclasses.replace(module, modinfo=dataclasses.replace(
        module.modinfo, entries=(*module.modinfo.entries, ("depends", "xfs"))))  # fmt: skip
    _, checks = judge(module, host())
    assert "modprobe loads it first, insmod does not" in checks[LoadCheckName.SYMBOLS].detail


def test_release_mismatch_is_a_warning_when_the_loader_takes_the_file() -> None:
    status, _ = judge(patch(vermagic="6.1.0-other SMP preempt mod_unload modversions "), host())
    assert status.will_load
    assert [(p.code, p.severity.value) for p in status.problems] == [("release_mismatch", "warning")]


def test_any_livepatch_modinfo_value_marks_a_livepatch_module() -> None:
    """check_modinfo_livepatch() tests get_modinfo(info, "livepatch") alone: "livepatch=N" marks it too."""
    module = patch()
    entries = tuple((k, "N" if k == "livepatch" else v) for k, v in module.modinfo.entries)
    module = dataclasses.replace(module, modinfo=dataclasses.replace(module.modinfo, entries=entries))
    _, checks = judge(module, host())
    assert checks[LoadCheckName.LIVEPATCH_TAG].result is CheckResult.OK
