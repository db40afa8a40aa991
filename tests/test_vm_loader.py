"""``klpctl check`` against the real kernel's module loader: refusals before the livepatch core sees the patch.

Each patch (tests/vm/loader.py) is the same plain livepatch of cmdline_proc_show with one thing changed. klpd is
asked first (``klpctl check --json``, the patch not loaded), then ``insmod`` runs and the kernel judges: the
failing check klpd names must carry the kernel's errno and quote the line the kernel logged, and a patch the kernel
loads must have no failing check. The first assertions of each case pin what the kernel did, so that a variant
that stops tripping its check shows up as that, not as a klpd bug.

Two boots, side by side (Environment.run_many): "loader", a guest as the suite always boots it, where the refused
insmods leave no state behind and the patches that load then stack on one another; and "enforcing", booted with
``module.sig_enforce=1``. kmod's insmod words ENOEXEC "Invalid module format", ENOENT "Unknown symbol in module"
and EINVAL "Invalid parameters" (its mod_strerror()); other errnos as strerror().
"""

from dataclasses import dataclass

import pytest
from vm import compare, loader
from vm.harness import session_environment

pytestmark = pytest.mark.vm

# What the guest's insmod (kmod 30) prints after "insmod: ERROR: could not insert module FILE: ".
INSMOD_SAYS = {
    "ENOEXEC": "Invalid module format",
    "EINVAL": "Invalid parameters",
    "ENOENT": "Unknown symbol in module",
    "EKEYREJECTED": "Key was rejected by service",
    "EEXIST": "File exists",
}


@dataclass(frozen=True)
class Refusal:
    boot: str
    step: str  # the insmod's step; the boot's "check" step asked klpd before any of them
    module: str
    check: str  # the klpd load check that must fail
    errno: str
    messages: tuple[str, ...]  # what the kernel logs for it, taint notices aside (compare.loader_lines)
    check_step: str = "check"


@pytest.fixture(scope="module")
def env():
    return session_environment()


@pytest.fixture(scope="module")
def vermagic(env):
    return loader.modinfo(env.built.loader_patch("klpvm_ld_plain").read_bytes())["vermagic"]


def refusals(vermagic: str) -> dict[str, Refusal]:
    flagless = vermagic.replace(f" {loader.DROPPED_FLAG}", " ")
    crc, unexported = loader.CRC_SYMBOL, loader.UNEXPORTED_SYMBOL
    return {
        "vermagic_flags": Refusal(
            "loader", "insmod_vermagic_flags", "klpvm_ld_vermagic_flags", "vermagic", "ENOEXEC",
            (f"klpvm_ld_vermagic_flags: version magic '{flagless}' should be '{vermagic}'",),
        ),
        "crc": Refusal(
            "loader", "insmod_crc", "klpvm_ld_crc", "symbols", "EINVAL",
            (f"klpvm_ld_crc: disagrees about version of symbol {crc}", f"klpvm_ld_crc: Unknown symbol {crc} (err -22)"),
        ),
        "unexported": Refusal(
            "loader", "insmod_unexported", "klpvm_ld_unexported", "symbols", "ENOENT",
            (f"klpvm_ld_unexported: Unknown symbol {unexported} (err -2)",),
        ),
        "name_clash": Refusal(
            "loader", "insmod_clash", "klpvm_ld_plain", "name", "EEXIST", (), check_step="check_clash"
        ),
        "unsigned_enforced": Refusal(
            "enforcing", "insmod_unsigned", "klpvm_ld_plain", "signature", "EKEYREJECTED",
            ("Loading of unsigned module is rejected",),
        ),
        "foreign_key_enforced": Refusal(
            "enforcing", "insmod_foreign_keyid", "klpvm_ld_foreign_keyid", "signature", "EKEYREJECTED",
            ("Loading of module with unavailable key is rejected",),
        ),
    }  # fmt: skip


CASES = ("vermagic_flags", "crc", "unexported", "name_clash", "unsigned_enforced", "foreign_key_enforced")
# Loaded in this order on the "loader" boot, after the refused ones: each stacks on the previous one.
LOADS = ["klpvm_ld_vermagic_release", "klpvm_ld_foreign_key", "klpvm_ld_plain"]


@pytest.fixture(scope="module")
def runs(env):
    ko = env.built.loader_patch
    refused_first = ["vermagic_flags", "crc", "unexported"]
    checked = " ".join(str(ko(m)) for m in ["klpvm_ld_vermagic_flags", "klpvm_ld_crc", "klpvm_ld_unexported", *LOADS])
    refused = "\n".join(f"step insmod_{c} insmod {ko('klpvm_ld_' + c)}" for c in refused_first)
    loads = "\n".join(f"step insmod_{m} insmod {ko(m)}\nklp_wait" for m in LOADS)
    scripts = {
        "loader": f"""
            step check klpctl check --json {checked}
            # A host without its kernel's headers (the usual fleet host): Module.symvers out of sight.
            step hide_headers mount -t tmpfs -o ro tmpfs "$(readlink -f /lib/modules/$(uname -r)/build)"
            step check_headless klpctl check --json {ko("klpvm_ld_crc")} {ko("klpvm_ld_unexported")}
            step show_headers umount "$(readlink -f /lib/modules/$(uname -r)/build)"
            {refused}
            {loads}
            step check_clash klpctl check --json {ko("klpvm_ld_plain")}
            step insmod_clash insmod {ko("klpvm_ld_plain")}
        """,
        "enforcing": f"""
            step sig_enforce cat /sys/module/module/parameters/sig_enforce
            step keys cat /proc/keys
            step check klpctl check --json {ko("klpvm_ld_plain")} {ko("klpvm_ld_foreign_key")} \
                {ko("klpvm_ld_foreign_keyid")}
            step insmod_unsigned insmod {ko("klpvm_ld_plain")}
            step insmod_foreign_key insmod {ko("klpvm_ld_foreign_key")}
            step insmod_foreign_keyid insmod {ko("klpvm_ld_foreign_keyid")}
        """,
    }
    return env.run_many(scripts, kernel_args={"enforcing": ["module.sig_enforce=1"]})


def kernel_refused(runs, case: Refusal, path) -> list[str]:
    """Assert the kernel refused ``case`` as the variant was built to be refused; its lines (taints aside)."""
    insmod = runs[case.boot].step(case.step)
    lines = compare.loader_lines(insmod.dmesg)
    print(f"{case.step}: rc {insmod.rc}, stderr {insmod.err.strip()!r}, dmesg {list(insmod.dmesg)}")
    assert insmod.rc != 0, (insmod.err, insmod.dmesg)
    assert insmod.err.strip() == f"insmod: ERROR: could not insert module {path}: {INSMOD_SAYS[case.errno]}", (
        insmod.err,
        insmod.dmesg,
    )
    assert lines == list(case.messages), insmod.dmesg
    return lines


@pytest.mark.parametrize("case", CASES)
def test_check_predicts_loader_refusal(env, runs, vermagic, case):
    """What the kernel (Debian 6.1.0-57-amd64, kmod 30 insmod) printed, taint notices aside (the first module to get
    past check_modinfo() in a boot, here klpvm_ld_crc, also logs ``<name>: loading out-of-tree module taints
    kernel.``, ``<name>: tainting kernel with TAINT_LIVEPATCH`` and ``<name>: module verification failed: signature
    and/or required key missing - tainting kernel``, in that order, before its refusal):

    - vermagic_flags: ``klpvm_ld_vermagic_flags: version magic '6.1.0-57-amd64 SMP mod_unload modversions ' should
      be '6.1.0-57-amd64 SMP preempt mod_unload modversions '``; insmod: Invalid module format (ENOEXEC)
    - crc: ``klpvm_ld_crc: disagrees about version of symbol _printk``, then ``klpvm_ld_crc: Unknown symbol _printk
      (err -22)``; insmod: Invalid parameters (EINVAL)
    - unexported: ``klpvm_ld_unexported: Unknown symbol kallsyms_lookup_name (err -2)``; insmod: Unknown symbol in
      module (ENOENT)
    - name_clash (klpvm_ld_plain again, while loaded): nothing; insmod: File exists (EEXIST)
    - unsigned_enforced (``module.sig_enforce=1``): ``Loading of unsigned module is rejected``; insmod: Key was
      rejected by service (EKEYREJECTED)
    - foreign_key_enforced (signed with ``sign-file -k``: the key named by its subjectKeyIdentifier): ``Loading of
      module with unavailable key is rejected``; insmod: Key was rejected by service (EKEYREJECTED)
    """
    refusal = refusals(vermagic)[case]
    lines = kernel_refused(runs, refusal, env.built.loader_patch(refusal.module))

    check = runs[refusal.boot].step(refusal.check_step)
    assert check.rc == 1, check.err
    compare.assert_load_refusal_predicted(check.json(), refusal.module, refusal.check, refusal.errno, lines)


def test_enforcing_guest_enforces(runs):
    """The harness booted the "enforcing" guest with module.sig_enforce=1, and the kernel took it."""
    assert runs["enforcing"].step("sig_enforce").out.strip() == "Y"


@pytest.mark.parametrize("module", LOADS)
def test_check_predicts_loader_accepts(runs, module):
    """The kernel loads these (each stacks on the previous one), and klpd says so before.

    - klpvm_ld_vermagic_release: vermagic ``6.1.0-56-amd64 SMP preempt mod_unload modversions `` on
      6.1.0-57-amd64 — with ``__versions`` present, same_magic() skips the release.
    - klpvm_ld_foreign_key: signed with a key no keyring holds, on a guest that does not enforce signatures.
    """
    result = runs["loader"]
    insmod = result.step(f"insmod_{module}")
    assert insmod.rc == 0, (insmod.err, insmod.dmesg)
    assert f"{module}: loaded" in insmod.dmesg, insmod.dmesg  # its init ran
    assert f"livepatch: '{module}': patching complete" in insmod.dmesg, insmod.dmesg

    compare.assert_load_predicted(result.step("check").json(), module)


def test_a_signer_named_by_issuer_and_serial_is_unknown_not_guessed(env, runs):
    """sign-file's default names the key by issuer and serial number; /proc/keys shows neither, so klpd cannot tell
    whether a trusted keyring holds it and says unknown. The kernel, which can, refuses this one."""
    insmod = runs["enforcing"].step("insmod_foreign_key")
    assert insmod.rc != 0 and "Loading of module with unavailable key is rejected" in insmod.dmesg, insmod.dmesg
    assert runs["enforcing"].step("keys").rc == 0  # klpctl ran as root: the keys were readable
    doc = runs["enforcing"].step("check").json()
    signature = compare.load_check(compare.patch(doc, "klpvm_ld_foreign_key"), "signature")
    assert signature["result"] == "unknown" and "issuer and serial" in signature["detail"], signature


def test_signature_read_from_the_file(env, runs):
    """klpd reads the signature sign-file appended: PKCS#7, the signer's CN, its serial (no SKID in the
    SignerInfo without ``sign-file -k``), sha256; and none for the unsigned patch."""
    doc = runs["enforcing"].step("check").json()
    assert compare.patch(doc, "klpvm_ld_plain")["signature"] is None
    signature = compare.patch(doc, "klpvm_ld_foreign_key")["signature"]
    assert signature is not None
    assert signature["id_type"] == 2
    assert signature["signer"] == loader.FOREIGN_SIGNER
    assert signature["hash_algorithm"] == "sha256"
    assert signature["problem"] is None
    serial = loader.cert_serial(loader.foreign_cert(env.built.loader))
    assert int(signature["key_id"], 16) == serial and signature["by_key_id"] is False, signature
    by_key_id = compare.patch(doc, "klpvm_ld_foreign_keyid")["signature"]
    assert by_key_id["key_id"] == loader.cert_skid(loader.foreign_cert(env.built.loader)), by_key_id
    assert by_key_id["by_key_id"] is True and by_key_id["signer"] is None, by_key_id


def test_without_headers_exports_come_from_kallsyms_and_crcs_are_unknown(env, runs, vermagic):
    """With Module.symvers out of sight, klpd finds the exports in the __ksymtab_ entries /proc/kallsyms lists
    (Debian 6.1 lists them), so the import nobody exports is still refused with the kernel's line; the CRC the
    kernel refuses cannot be known without the kernel's CRCs, and klpd says unknown rather than ok."""
    assert runs["loader"].step("hide_headers").rc == 0
    doc = runs["loader"].step("check_headless").json()
    unexported = refusals(vermagic)["unexported"]
    lines = kernel_refused(runs, unexported, env.built.loader_patch(unexported.module))
    compare.assert_load_refusal_predicted(doc, unexported.module, "symbols", "ENOENT", lines)
    symbols = {c["check"]: c for c in compare.patch(doc, unexported.module)["load_checks"]}["symbols"]
    assert "/proc/kallsyms" in symbols["detail"], symbols
    crc = {c["check"]: c for c in compare.patch(doc, "klpvm_ld_crc")["load_checks"]}["symbols"]
    assert crc["result"] == "unknown", crc
    assert "this kernel's CRC is unknown" in crc["detail"], crc
