"""module_sig_check() (kernel/module/signing.c), reproduced for one patch file on this host (kernel-checks.md B).

The kernel verifies an appended signature against its trusted keyrings; what it does when that fails depends on
why and on the host's policy:

- a signature that is present but malformed or does not verify is fatal even where signatures are not enforced
  ("All other errors are fatal"), except:
- ENODATA (unsigned), ENOPKG (not PKCS#7) and ENOKEY (signed with a key no trusted keyring holds): with
  ``sig_enforce`` the load is refused ("Loading of %s is rejected", EKEYREJECTED); without it, a kernel locked down
  to integrity or confidentiality refuses it (EPERM, the lockdown LSM's message); else it loads and taints ``E``.

What user space cannot check is whether the signature verifies cryptographically: klpd only knows whether a trusted
keyring holds a key with the signer's subjectKeyIdentifier (``sign-file -k``; /proc/keys descriptions end with it).
A signer named by issuer and serial (sign-file's default) cannot be matched from /proc/keys: unknown, not a guess.
"""

from __future__ import annotations

from klpd import kernel_messages as msg
from klpd.model import PatchModule
from klpd.model_loader import PKEY_ID_PKCS7, CheckResult, LoadCheck, LoadCheckName, ModuleSignature, ModuleSigning

_CHECK = LoadCheckName.SIGNATURE
# Keyrings mod_verify_sig() consults (VERIFY_USE_SECONDARY_KEYRING: the secondary and the builtin one it links;
# .machine is linked into the secondary keyring since 5.18). .platform only on Debian's kernels (B7), so a key
# found only there, or in no keyring klpd could place, proves nothing either way.
_TRUSTED = frozenset({".builtin_trusted_keys", ".secondary_trusted_keys", ".machine"})


def signature_check(module: PatchModule, signing: ModuleSigning | None) -> LoadCheck:
    """What module_sig_check() decides for ``module`` under ``signing`` (None: the policy was not read)."""
    signature = module.signature
    enforce = signing.sig_enforce if signing is not None else None
    if signature is not None and signature.problem is not None:
        detail = f"malformed signature: {signature.problem}"
        if enforce is None:  # without CONFIG_MODULE_SIG nothing is checked, and absent and unreadable look alike
            return LoadCheck(_CHECK, CheckResult.UNKNOWN, f"{detail}; fatal only where the kernel checks signatures")
        return LoadCheck(_CHECK, CheckResult.FAILS, f"{detail}: fatal even where signatures are not enforced",
                         errno="EBADMSG")  # fmt: skip
    why = _why_unverified(signature, signing)
    if why is None:
        return LoadCheck(_CHECK, CheckResult.OK, f"{_signed_by(signature)}, a key a trusted keyring holds")
    reason, known = why
    if signing is None or enforce is None:
        detail = f"{reason}; whether this kernel enforces module signatures could not be read"
        return LoadCheck(_CHECK, CheckResult.UNKNOWN, detail)
    if enforce:
        if not known:
            return LoadCheck(_CHECK, CheckResult.UNKNOWN, f"{reason}, and module.sig_enforce is set")
        message = msg.SIGNATURE_REJECTED.format(what=_KERNEL_REASON[reason.split(":", 1)[0]])
        return LoadCheck(_CHECK, CheckResult.FAILS, f"{reason}, and module.sig_enforce is set", message, "EKEYREJECTED")
    if signing.lockdown in ("integrity", "confidentiality"):
        detail = f"{reason}, and the kernel is locked down ({signing.lockdown})"
        if not known:
            return LoadCheck(_CHECK, CheckResult.UNKNOWN, detail)
        # lockdown_reasons[LOCKDOWN_MODULE_SIGNATURE]; "%s" is the loading command: insmod, modprobe, kpatch's insmod
        message = msg.LOCKED_DOWN.format(comm="insmod", what="unsigned module loading")
        return LoadCheck(_CHECK, CheckResult.FAILS, detail, message, "EPERM")
    if signing.lockdown is None:
        return LoadCheck(_CHECK, CheckResult.UNKNOWN, f"{reason}; the lockdown state could not be read")
    return LoadCheck(_CHECK, CheckResult.OK, f"{reason}: signatures are not enforced nor the kernel locked down")


# The kernel's words for each reason a signature is not verified (module_sig_check()'s switch).
_KERNEL_REASON = {
    "unsigned": "unsigned module",
    "not PKCS#7": "module with unsupported crypto",
    "unknown key": "module with unavailable key",
}


def _why_unverified(signature: ModuleSignature | None, signing: ModuleSigning | None) -> tuple[str, bool] | None:
    """Why the kernel will not accept the signature as verified (ENODATA, ENOPKG, ENOKEY) and whether that is
    known for sure, or None when it is signed with a key a trusted keyring holds."""
    if signature is None:
        return "unsigned", True
    if signature.id_type != PKEY_ID_PKCS7:
        return f"not PKCS#7: signature id_type {signature.id_type}", True
    keys = signing.keys if signing is not None else None
    if keys is None:
        return f"{_signed_by(signature)}; the trusted keys could not be read (/proc/keys needs root)", False
    if not signature.by_key_id or not signature.key_id:
        # sign-file's default: the SignerInfo names issuer and serial number, which /proc/keys does not show.
        return f"{_signed_by(signature)}, by issuer and serial, which /proc/keys cannot be matched against", False
    holders = {key.keyring for key in keys if key.description.lower().endswith(f": {signature.key_id.lower()}")}
    if holders & _TRUSTED:
        return None
    if holders:
        places = ", ".join(sorted(h or "a keyring klpd could not tell" for h in holders))
        return f"{_signed_by(signature)}, a key held in {places} only", False
    return f"unknown key: {_signed_by(signature)}, a key no trusted keyring holds", True


def _signed_by(signature: ModuleSignature | None) -> str:
    """How the signature names its signer (as klpctl prints it too)."""
    if signature is None:
        return "unsigned"
    who = signature.signer or "an unnamed signer"
    return f"signed by {who}" + (f" (key {signature.key_id})" if signature.key_id else "")
