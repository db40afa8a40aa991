"""module_sig_check() (kernel/module/signing.c), reproduced for one patch file on this host (kernel-checks.md B).

The kernel verifies an appended signature against its trusted keyrings; what it does when that fails depends on
why and on the host's policy:

- a signature that is present but malformed or does not verify is fatal even where signatures are not enforced
  ("All other errors are fatal"), except:
- ENODATA (unsigned), ENOPKG (not PKCS#7) and ENOKEY (signed with a key no trusted keyring holds): with
  ``sig_enforce`` the load is refused ("Loading of %s is rejected", EKEYREJECTED); without it, a kernel locked down
  to integrity or confidentiality refuses it (EPERM, the lockdown LSM's message); else it loads and taints ``E``.

What user space cannot check is whether the signature verifies cryptographically: klpd only knows whether a trusted
key with the signer's key id is there, and says so.
"""

from __future__ import annotations

from klpd import kernel_messages as msg
from klpd.model import PatchModule
from klpd.model_loader import CheckResult, LoadCheck, LoadCheckName, ModuleSignature, ModuleSigning, TrustedKey

_PKCS7 = 2  # PKEY_ID_PKCS7: the only id_type mod_check_sig() accepts
_CHECK = LoadCheckName.SIGNATURE


def signature_check(module: PatchModule, signing: ModuleSigning | None) -> LoadCheck:
    """What module_sig_check() decides for ``module`` under ``signing`` (None: the policy was not read)."""
    signature = module.signature
    if signature is not None and signature.problem is not None:
        return LoadCheck(_CHECK, CheckResult.FAILS, f"malformed signature: {signature.problem}", errno="EBADMSG")
    why = _why_unverified(signature, signing)
    if why is None:
        return LoadCheck(_CHECK, CheckResult.OK, _signed_by(signature))
    reason, known = why
    if signing is None or signing.sig_enforce is None:
        detail = f"{reason}; whether this kernel enforces module signatures could not be read"
        return LoadCheck(_CHECK, CheckResult.UNKNOWN, detail)
    if signing.sig_enforce:
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
    return LoadCheck(_CHECK, CheckResult.OK, f"{reason}: signatures are not enforced, so it loads and taints (E)")


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
    if signature.id_type != _PKCS7:
        return f"not PKCS#7: signature id_type {signature.id_type}", True
    keys = signing.keys if signing is not None else None
    if keys is None:
        return f"{_signed_by(signature)}; the trusted keys could not be read (/proc/keys needs root)", False
    if any(_holds(key, signature) for key in keys):
        return None
    return f"unknown key: {_signed_by(signature)}, a key no trusted keyring holds", True


def _holds(key: TrustedKey, signature: ModuleSignature) -> bool:
    """Whether a keyring key is the signer's. X.509 keys are described "<subject CN>: <subjectKeyIdentifier hex>"
    (crypto/asymmetric_keys/x509_public_key.c); the PKCS#7 signer names its key by that identifier."""
    description = key.description.lower()
    if signature.key_id and description.endswith(signature.key_id.lower()):
        return True
    return bool(signature.signer) and not signature.key_id and description.startswith(f"{signature.signer}:".lower())


def _signed_by(signature: ModuleSignature | None) -> str:
    if signature is None:
        return "unsigned"
    who = signature.signer or "an unnamed signer"
    return f"signed by {who}" + (f" (key {signature.key_id})" if signature.key_id else "")
