"""The host's module-signature policy: what ``module_sig_check()`` (kernel/module/signing.c) will demand of a patch.

- ``/sys/module/module/parameters/sig_enforce``: ``Y``/``N`` (param_get_bool()); exists iff CONFIG_MODULE_SIG
  (3.7+). Absent (no CONFIG_MODULE_SIG) or unreadable: None; only unreadable is a problem. The prediction cannot
  tell them apart from the value alone and says unknown.
- ``/sys/kernel/security/lockdown``: ``none [integrity] confidentiality``, the current level in brackets
  (security/lockdown/lockdown.c lockdown_read(), 5.4+). Absent: no lockdown LSM, or securityfs not mounted.
- ``/proc/keys`` (security/keys/proc.c proc_keys_show(), CONFIG_KEYS): the keys the reader may view, which for the
  system keyrings means root (their keys give "view" to their owner, uid 0, only).
- ``/proc/sys/kernel/modules_disabled``: ``0``/``1`` (kernel/sysctl.c, 2.6.31+); 1 refuses every load until reboot.

Which keyring a key is in, from /proc/keys
-------------------------------------------
proc_keys_show() prints each key on its own line: ``%08x`` serial, 7 flag letters, usage, expiry, ``%08x``
permission mask, uid, gid, the type name cut to 9 characters (``asymmetri``) and the type's describe() text. A
keyring's describe() (keyring_describe()) gives its description and how many links it holds (``: 3``, ``: empty``),
never which; serials are random (key_alloc_serial()). So /proc/keys alone cannot tell which keyring holds a key.

What it does tell: the permission mask each key was created with, and that is fixed by the code that fills each
keyring. certs/system_keyring.c gives the built-in certificates ``1f030000`` ((KEY_POS_ALL & ~KEY_POS_SETATTR) |
KEY_USR_VIEW | KEY_USR_READ; so do the wireless regdb and IMA's built-in key, in their own keyrings);
add_to_platform_keyring() (UEFI db, ``.platform``, 4.20+) and add_to_machine_keyring() (MOK, ``.machine``, 5.18+)
give ``1f010000``; a key added at run time (``keyctl padd ... %:.secondary_trusted_keys``) has whatever its creator
asked for. A key is therefore attributed to a keyring only when its mask has one visible candidate keyring *and*
the number of such keys equals that keyring's link count; every other asymmetric key is listed with keyring
:data:`KEYRING_UNKNOWN`, so a signer that is present is never reported missing. (The exact answer needs
keyctl(KEYCTL_READ) on each keyring, a system call a copied tree cannot answer.)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from klpd.errors import FormatError
from klpd.model import Problem, Severity
from klpd.model_loader import ModuleSigning, TrustedKey
from klpd.numbers import kernel_decimal
from klpd.regular_file import ATTRIBUTE_LIMIT, read_regular_text
from klpd.root import HostPath, SystemRoot
from klpd.sources.result import Read, malformed_lines, unreadable

T = TypeVar("T")

BUILTIN = ".builtin_trusted_keys"
SECONDARY = ".secondary_trusted_keys"
PLATFORM = ".platform"
MACHINE = ".machine"
TRUSTED_KEYRINGS = (BUILTIN, SECONDARY, PLATFORM, MACHINE)  # what mod_verify_sig() may consult
KEYRING_UNKNOWN = ""  # TrustedKey.keyring of a key /proc/keys does not place

_PERM_BUILTIN = 0x1F030000
_PERM_FIRMWARE = 0x1F010000  # .platform and .machine alike
_KEYS_SIZE_LIMIT = 16 << 20  # key_quota_root_maxkeys is 1,000,000 keys; past this size something is wrong

# "%08x %c%c%c%c%c%c%c %5d %4s %08x %5d %5d %-9.9s " then describe()
_KEY_LINE = re.compile(
    r"(?P<serial>[0-9a-f]{8}) (?P<flags>[-IRDQUNi]{7}) +-?[0-9]+ +\S{1,4} (?P<perm>[0-9a-f]{8})"
    r" +(?P<uid>-?[0-9]+) +-?[0-9]+ (?P<type>.{9}) (?P<describe>.*)",
    re.DOTALL,
)


@dataclass(frozen=True, slots=True)
class ProcKey:
    """One /proc/keys line, as far as the signature check cares."""

    serial: int
    flags: str  # I R D Q U N i, or '-' in each position
    perm: int
    uid: int
    type: str  # cut to 9 characters by the kernel: "asymmetri", "keyring"
    describe: str

    @property
    def usable(self) -> bool:
        """Instantiated, and not revoked, dead, negative or invalidated."""
        return self.flags[0] == "I" and not any(c in self.flags for c in "RDNi")


# ----------------------------------------------------------------------------------------------------------------
# pure parsing


def parse_sig_enforce(text: str, path: str) -> bool:
    value = text.strip()
    if value not in ("Y", "N"):
        raise FormatError(path, f"expected Y or N, found {value[:40]!r}")
    return value == "Y"


def parse_lockdown(text: str, path: str) -> str:
    """The bracketed level of ``none [integrity] confidentiality``."""
    found = re.fullmatch(r"(?:[a-z]+ )*\[([a-z]+)\](?: [a-z]+)*", text.strip())
    if found is None:
        raise FormatError(path, f"expected the levels with the current one in brackets, found {text[:60]!r}")
    return found[1]


def parse_modules_disabled(text: str, path: str) -> bool:
    value = kernel_decimal(text.strip())
    if value not in (0, 1):
        raise FormatError(path, f"expected 0 or 1, found {text.strip()[:40]!r}")
    return value == 1


def parse_proc_keys(text: str, path: str) -> Read[tuple[ProcKey, ...]]:
    """Every well-formed /proc/keys line; odd lines are skipped and reported in one Problem."""
    keys: list[ProcKey] = []
    skipped = 0
    first: tuple[int, str] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        found = _KEY_LINE.fullmatch(line)
        uid = kernel_decimal(found["uid"], signed=True) if found else None
        if found is None or uid is None:
            skipped += 1
            first = first or (number, line)
            continue
        serial, perm = int(found["serial"], 16), int(found["perm"], 16)
        keys.append(ProcKey(serial, found["flags"], perm, uid, found["type"].rstrip(" "), found["describe"]))
    problems = () if first is None else (malformed_lines(path, skipped, *first),)
    return Read(tuple(keys), problems)


def _keyring(describe: str) -> tuple[str, int]:
    """Name and link count from keyring_describe(): ``<name>: <links>``, ``<name>: empty``, or the bare name (a
    keyring not instantiated)."""
    name, colon, count = describe.rpartition(": ")
    return (name, kernel_decimal(count) or 0) if colon else (describe, 0)


def key_description(describe: str) -> str:
    """An asymmetric key's description from asymmetric_key_describe()'s ``<description>: X509.rsa 27dfcc5c []``."""
    if not describe.endswith(" []"):
        return describe  # no subtype: the description alone
    return describe[: -len(" []")].rpartition(": ")[0] or describe


def trusted_keys(keys: tuple[ProcKey, ...]) -> tuple[TrustedKey, ...] | None:
    """The asymmetric keys, each in the keyring its permission mask and the link counts place it in (see the module
    docstring), else in :data:`KEYRING_UNKNOWN`. None when no keyring of :data:`TRUSTED_KEYRINGS` is visible: the
    reader is not root (or the kernel has none), so absence of a key means nothing."""
    links = dict(_keyring(k.describe) for k in keys if k.type == "keyring" and k.usable)
    links = {name: count for name, count in links.items() if name in TRUSTED_KEYRINGS}
    if not links:
        return None
    asymmetric = [k for k in keys if k.type == "asymmetri" and k.usable]
    by_perm: dict[int, list[ProcKey]] = {}
    for key in asymmetric:
        by_perm.setdefault(key.perm, []).append(key)
    placed: dict[int, str] = {}
    for perm, candidates in ((_PERM_BUILTIN, (BUILTIN,)), (_PERM_FIRMWARE, (PLATFORM, MACHINE))):
        holding = [name for name in candidates if links.get(name)]
        members = by_perm.get(perm, [])
        if len(holding) == 1 and len(members) == links[holding[0]]:
            placed.update((k.serial, holding[0]) for k in members)
    return tuple(TrustedKey(placed.get(k.serial, KEYRING_UNKNOWN), key_description(k.describe)) for k in asymmetric)


# ----------------------------------------------------------------------------------------------------------------
# reading


def _read(path: HostPath, limit: int, problems: list[Problem]) -> str | None:
    """The file's text; None when absent (silently) or unreadable (with a Problem)."""
    try:
        return read_regular_text(path, limit)
    except FileNotFoundError:
        return None
    except OSError as error:
        problems.append(unreadable(path.host, error))
        return None


def _attribute(path: HostPath, parse: Callable[[str, str], T], problems: list[Problem]) -> T | None:
    text = _read(path, ATTRIBUTE_LIMIT, problems)
    if text is None:
        return None
    try:
        return parse(text, path.host)
    except FormatError as error:
        problems.append(Problem("attribute_malformed", Severity.WARNING, str(error), subject=path.host))
        return None


def _keys(root: SystemRoot, sig_enforce: bool | None, problems: list[Problem]) -> tuple[TrustedKey, ...] | None:
    path = root.keys
    text = _read(path, _KEYS_SIZE_LIMIT, problems)
    if text is None:
        return None  # no CONFIG_KEYS, or unreadable (reported)
    parsed = parse_proc_keys(text, path.host)
    problems += parsed.problems
    keys = trusted_keys(parsed.value)
    if keys is None and sig_enforce is not None:
        # CONFIG_MODULE_SIG selects SYSTEM_TRUSTED_KEYRING: .builtin_trusted_keys exists but is hidden from us.
        problems.append(
            Problem(
                "keys_not_visible",
                Severity.WARNING,
                f"{path.host}: no trusted keyring visible (reading the module signing keys needs root): whether a"
                " patch's signing key is known cannot be told",
                subject=path.host,
            )
        )
    return keys


def read_module_signing(root: SystemRoot) -> Read[ModuleSigning]:
    """sig_enforce, lockdown, the trusted keys and modules_disabled under ``root``; each None when its file is
    absent or unreadable, an unreadable or malformed file being a Problem."""
    problems: list[Problem] = []
    sig_enforce = _attribute(root.sig_enforce, parse_sig_enforce, problems)
    signing = ModuleSigning(
        sig_enforce=sig_enforce,
        lockdown=_attribute(root.lockdown, parse_lockdown, problems),
        keys=_keys(root, sig_enforce, problems),
        modules_disabled=_attribute(root.modules_disabled, parse_modules_disabled, problems),
    )
    return Read(signing, tuple(problems))
