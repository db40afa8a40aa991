"""The livepatch modules of the module-loader cases: one plain patch, copied and rewritten to trip one check each.

Every variant is ``modules/klpvm_loader_patch.h`` under its own name, built by kbuild with the suite's other
modules (modules.py), then changed here the way a real mistake would change it, and nothing else:

- ``klpvm_ld_vermagic_flags``: ``.modinfo vermagic=`` without ``preempt `` (a patch built for another preemption
  model). The module has ``__versions``, so same_magic() compares from the first space: refused.
- ``klpvm_ld_vermagic_release``: ``vermagic=`` naming the previous ABI's release, flags intact: same_magic()
  ignores the release when ``__versions`` is present, and the CRCs are this kernel's: loads.
- ``klpvm_ld_crc``: the ``__versions`` CRC of ``_printk`` changed (a patch built against other headers).
- ``klpvm_ld_unexported``: calls ``kallsyms_lookup_name()``, which vmlinux does not export.
- ``klpvm_ld_foreign_key``: signed by the kernel's ``scripts/sign-file`` with a key made here, which no keyring
  of the guest holds; the SignerInfo names it by issuer and serial (sign-file's default).
- ``klpvm_ld_foreign_keyid``: the same patch under its own name, signed with the same key by ``sign-file -k``: the
  SignerInfo names the key by its subjectKeyIdentifier, which /proc/keys descriptions end with.
- ``klpvm_ld_plain``: untouched (and unsigned).

The ``.modinfo`` rewrite goes through ``objcopy --update-section`` (a relocatable .ko: nothing refers to the
section's size); the CRC is patched in place.
"""

from __future__ import annotations

import io
import re
import shutil
import struct
from pathlib import Path

from elftools.elf.elffile import ELFFile

from .kernel import KernelImage, run

# variant -> the lines its .c has before the #include
SOURCES = {
    "klpvm_ld_plain": "",
    "klpvm_ld_vermagic_flags": "",
    "klpvm_ld_vermagic_release": "",
    "klpvm_ld_crc": "",
    "klpvm_ld_unexported": "#define KLPVM_UNEXPORTED\n",
    "klpvm_ld_foreign_key": "",
    "klpvm_ld_foreign_keyid": "",
}
TEMPLATE = "klpvm_loader_patch.h"
CRC_SYMBOL = "_printk"
UNEXPORTED_SYMBOL = "kallsyms_lookup_name"
DROPPED_FLAG = "preempt "
FOREIGN_SIGNER = "klpvm untrusted key"
# struct modversion_info on 64-bit: unsigned long crc; char name[MODULE_NAME_LEN = 64 - sizeof(unsigned long)].
_VERSION = struct.Struct("<Q56s")


def write_sources(src: Path) -> None:
    for name, defines in SOURCES.items():
        (src / f"{name}.c").write_text(f'{defines}#include "{TEMPLATE}"\n')


def modinfo(data: bytes) -> dict[str, str]:
    section = ELFFile(io.BytesIO(data)).get_section_by_name(".modinfo")
    pairs = (entry.split(b"=", 1) for entry in section.data().split(b"\0") if b"=" in entry)
    return {k.decode(): v.decode() for k, v in pairs}


def with_vermagic(ko: Path, vermagic: str, dest: Path) -> None:
    section = ELFFile(io.BytesIO(ko.read_bytes())).get_section_by_name(".modinfo").data()
    old = f"vermagic={modinfo(ko.read_bytes())['vermagic']}\0".encode()
    assert section.count(old) == 1, section
    new_section = dest.with_suffix(".modinfo")
    new_section.write_bytes(section.replace(old, f"vermagic={vermagic}\0".encode()))
    run(["objcopy", f"--update-section=.modinfo={new_section}", ko, dest])
    new_section.unlink()


def with_crc(data: bytes, symbol: str) -> bytes:
    """``data`` with the ``__versions`` CRC of ``symbol`` changed (low bit flipped; the kernel compares 32 bits)."""
    section = ELFFile(io.BytesIO(data)).get_section_by_name("__versions")
    start = section["sh_offset"]
    for offset in range(start, start + section["sh_size"], _VERSION.size):
        crc, name = _VERSION.unpack_from(data, offset)
        if name.split(b"\0", 1)[0] == symbol.encode():
            out = bytearray(data)
            _VERSION.pack_into(out, offset, crc ^ 1, name)
            return bytes(out)
    raise ValueError(f"no __versions entry for {symbol}")


def other_release(vermagic: str) -> str:
    """The same vermagic with the release of the previous Debian ABI or upload, e.g. 6.1.0-57-amd64 ->
    6.1.0-56-amd64, 6.12.118+deb13-amd64 -> 6.12.117+deb13-amd64."""
    release, flags = vermagic.split(" ", 1)
    m = re.fullmatch(r"(\d+\.\d+\.\d+-)(\d+)(-.*)", release) or re.fullmatch(r"(\d+\.\d+\.)(\d+)(\+.*)", release)
    assert m, release
    return f"{m[1]}{int(m[2]) - 1}{m[3]} {flags}"


def foreign_cert(loader: Path) -> Path:
    """The certificate of the key ``klpvm_ld_foreign_key`` is signed with (never in a guest keyring)."""
    return loader / "untrusted_cert.pem"


def cert_serial(cert: Path) -> int:
    out = run(["openssl", "x509", "-noout", "-serial", "-in", cert])  # "serial=1A2B..."
    return int(out.strip().split("=", 1)[1], 16)


def _sign(kernel: KernelImage, ko: Path, dest: Path, keys: Path, *, key_id: bool = False) -> None:
    key, cert = keys / "untrusted_key.pem", foreign_cert(keys)
    if not key.exists():
        run([
            "openssl", "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "36500", "-batch",
            "-subj", f"/CN={FOREIGN_SIGNER}", "-addext", "keyUsage=digitalSignature",
            "-keyout", key, "-out", cert,
        ])  # fmt: skip
    run([kernel.headers / "scripts" / "sign-file", *(["-k"] if key_id else []), "sha256", key, cert, ko, dest])


def cert_skid(cert: Path) -> str:
    """The certificate's subjectKeyIdentifier, lower-case hex without colons."""
    out = run(["openssl", "x509", "-noout", "-ext", "subjectKeyIdentifier", "-in", cert])
    return out.strip().splitlines()[-1].strip().replace(":", "").lower()


def derive(kernel: KernelImage, src: Path, dest: Path) -> None:
    """Write every variant's final ``<name>.ko`` into ``dest`` from the kbuild output in ``src``."""
    dest.mkdir()
    built = {name: src / f"{name}.ko" for name in SOURCES}
    vermagic = modinfo(built["klpvm_ld_plain"].read_bytes())["vermagic"]
    # 5.10's vermagic has no preempt word (CONFIG_PREEMPT unset): drop another flag the kernel compares.
    dropped = DROPPED_FLAG if f" {DROPPED_FLAG}" in vermagic else "mod_unload "
    shutil.copy2(built["klpvm_ld_plain"], dest)
    shutil.copy2(built["klpvm_ld_unexported"], dest)
    with_vermagic(
        built["klpvm_ld_vermagic_flags"], vermagic.replace(f" {dropped}", " "), dest / "klpvm_ld_vermagic_flags.ko"
    )
    with_vermagic(built["klpvm_ld_vermagic_release"], other_release(vermagic), dest / "klpvm_ld_vermagic_release.ko")
    crc_data = built["klpvm_ld_crc"].read_bytes()
    versions = ELFFile(io.BytesIO(crc_data)).get_section_by_name("__versions")
    # Only where the kernel checks it: Debian's 7.x has no CONFIG_MODVERSIONS, 5.10 calls printk, not _printk. The
    # klpvm_ld_crc case runs on 6.1 and 6.12 (tests/conftest.py).
    if versions is not None and f"\0{CRC_SYMBOL}\0".encode() in b"\0" + versions.data():
        (dest / "klpvm_ld_crc.ko").write_bytes(with_crc(crc_data, CRC_SYMBOL))
    _sign(kernel, built["klpvm_ld_foreign_key"], dest / "klpvm_ld_foreign_key.ko", dest)
    _sign(kernel, built["klpvm_ld_foreign_keyid"], dest / "klpvm_ld_foreign_keyid.ko", dest, key_id=True)
