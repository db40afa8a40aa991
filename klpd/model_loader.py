"""The model of the module loader's checks: what a file carries, what the running kernel expects, each verdict.

Before the livepatch core sees a patch, ``load_module()`` (kernel/module/main.c, signing.c, version.c) can refuse
it (``../shared/reference/kernel-checks.md`` sections A-D): a signature that is missing or unknown where signatures
are enforced, a vermagic or symbol CRC built for another kernel, a symbol nobody exports, a module of the same name.
Frozen dataclasses and string enums, no I/O; the sources fill the input half, ``klpd.predict.loader`` the verdicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

# ---------------------------------------------------------------------------------------------------------------
# What the patch file carries (klpd/elf)


PKEY_ID_PKCS7 = 2  # struct module_signature id_type: the only one mod_check_sig() accepts


@dataclass(frozen=True, slots=True)
class ModuleSignature:
    """The appended signature (``struct module_signature`` + ``"~Module signature appended~\\n"``, signing.c).

    ``problem`` is set when the trailer is there but malformed: the kernel refuses such a module even where
    signatures are not enforced (mod_check_sig(): EBADMSG). A signature that is not PKCS#7 (``id_type`` != 2) is
    no problem here: the kernel takes it as "unsupported crypto" (ENOPKG), fatal only where signatures are
    enforced or the kernel is locked down, like an unsigned module.
    """

    id_type: int  # PKEY_ID_PKCS7, the only one the kernel verifies
    signer: str | None  # the PKCS#7 SignerInfo's issuer (its CN when it has one); None when named by key id
    key_id: str | None  # hex: the signer's subjectKeyIdentifier (by_key_id), else the certificate serial number
    hash_algorithm: str | None  # e.g. "sha512"
    problem: str | None = None
    # sign-file -k: the SignerInfo names the key by its subjectKeyIdentifier, which /proc/keys descriptions end with.
    # Without it (sign-file's default) by issuer and serial number, which /proc/keys does not show.
    by_key_id: bool = False


@dataclass(frozen=True, slots=True)
class SymbolVersion:
    """One ``__versions`` entry (``struct modversion_info``: CRC, then the NUL-padded name)."""

    name: str
    crc: int


# ---------------------------------------------------------------------------------------------------------------
# What the running kernel expects (klpd/sources)


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A key of a keyring the module signature check consults (/proc/keys, root only)."""

    keyring: str  # ".builtin_trusted_keys", ".secondary_trusted_keys", ".platform", ".machine"
    description: str  # e.g. "Debian Secure Boot CA: 6ccece7e4c6c0d1f6149f3dd27dfcc5cbb419ea1"


@dataclass(frozen=True, slots=True)
class ModuleSigning:
    """The host's module-signature policy. None where the host does not tell (file absent or unreadable)."""

    sig_enforce: bool | None  # /sys/module/module/parameters/sig_enforce (exists iff CONFIG_MODULE_SIG)
    lockdown: str | None  # /sys/kernel/security/lockdown: "none", "integrity" or "confidentiality"
    keys: tuple[TrustedKey, ...] | None  # None: /proc/keys not readable (needs root)
    modules_disabled: bool | None  # /proc/sys/kernel/modules_disabled


@dataclass(frozen=True, slots=True)
class KernelBuild:
    """What the running kernel was built with, read from files of its release. None: no source was readable."""

    vermagic: str | None  # modinfo vermagic= of an in-tree module of the release
    vermagic_source: str | None  # the module it was read from
    this_module_size: int | None  # sh_size of that module's .gnu.linkonce.this_module: sizeof(struct module)
    crcs: Mapping[str, int] | None  # exported symbol -> CRC (Module.symvers, /boot/symvers-<release>.gz)
    crcs_source: str | None  # the file the CRCs were read from
    # exported symbol -> the module exporting it ("vmlinux" for the kernel), from the same file; None: not read
    exports: Mapping[str, str] | None = None


# ---------------------------------------------------------------------------------------------------------------
# The verdicts (klpd/predict)


class CheckResult(StrEnum):
    OK = "ok"
    FAILS = "fails"  # the kernel refuses the insmod here
    UNKNOWN = "unknown"  # what the check needs could not be read


class LoadCheckName(StrEnum):
    """The checks, in the order load_module() and klp_enable_patch() make them (kernel-checks.md rows)."""

    MODULES_DISABLED = "modules_disabled"  # A1
    SIGNATURE = "signature"  # B1-B5
    MODULE_LAYOUT = "module_layout"  # C2 (this_module size, 6.12+), C5 (the module_layout CRC)
    VERMAGIC = "vermagic"  # C6
    LIVEPATCH_SUPPORT = "livepatch_support"  # C7: a livepatch module on a kernel without CONFIG_LIVEPATCH
    NAME = "name"  # C9: a module of the same name is loaded
    SYMBOLS = "symbols"  # D1-D2: every import exported, with the kernel's CRC
    LIVEPATCH_TAG = "livepatch_tag"  # E2: klp_enable_patch() wants modinfo livepatch=Y
    STATES = "states"  # E5: klp_is_patch_compatible() with the states of the loaded patches
    DESCRIPTION = "description"  # E1, E7-E9: the objects and functions themselves (NULL lists, names, duplicates)
    FUNCTIONS = "functions"  # E11, E12, E16: each replaced function of a loaded object resolves and is traceable
    TRANSITION = "transition"  # E13: another patch in transition


@dataclass(frozen=True, slots=True)
class LoadCheck:
    """One check of ``insmod`` of the patch file on this host."""

    check: LoadCheckName
    result: CheckResult
    detail: str  # what was compared, or why it cannot be known
    kernel_message: str | None = None  # what the kernel logs when it refuses (None: it refuses silently)
    errno: str | None = None  # what insmod then sees, e.g. "ENOEXEC"
