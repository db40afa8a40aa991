"""The appended module signature, read as module_sig_check() (kernel/module/signing.c) and mod_check_sig()
(kernel/module_signature.c) read it; scripts/sign-file.c writes it.

A signed module ends with ``"~Module signature appended~\\n"``, preceded by ``struct module_signature`` (algo, hash,
id_type, signer_len, key_id_len, pad[3], __be32 sig_len) and, before that, sig_len bytes of PKCS#7 (CMS SignedData,
detached, DER). Everything before the PKCS#7 is the module the kernel then checks as ELF. The signature is read from
the decompressed bytes: kmod signs before compressing, and the kernel checks the decompressed image.

What klpd takes from the PKCS#7 (crypto/asymmetric_keys/pkcs7_parser.c reads the same fields) is what names the key
in a keyring: the first SignerInfo's issuer and serial number, or its subjectKeyIdentifier (sign-file -k), and its
digest algorithm. Nothing is verified cryptographically: whether the key is known is the prediction's question.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

from klpd.elf import der
from klpd.model_loader import PKEY_ID_PKCS7, ModuleSignature

MAGIC = b"~Module signature appended~\n"
_STRUCT = struct.Struct(">BBBBB3sI")  # struct module_signature

_OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
_OID_DATA = "1.2.840.113549.1.7.1"
_OID_CN = "2.5.4.3"
DIGESTS = {"1.3.14.3.2.26": "sha1", "2.16.840.1.101.3.4.2.1": "sha256", "2.16.840.1.101.3.4.2.2": "sha384",
           "2.16.840.1.101.3.4.2.3": "sha512", "2.16.840.1.101.3.4.2.4": "sha224"}  # fmt: skip
# Short names for the attributes certificate subjects use, as openssl prints them; others print dotted.
_ATTRIBUTES = {_OID_CN: "CN", "2.5.4.6": "C", "2.5.4.7": "L", "2.5.4.8": "ST", "2.5.4.10": "O", "2.5.4.11": "OU",
               "1.2.840.113549.1.9.1": "emailAddress"}  # fmt: skip


def parse_module_signature(data: bytes) -> tuple[ModuleSignature | None, int]:
    """The signature appended to a module's (decompressed) bytes, and how many bytes before it are the module.

    None (and the whole length) when there is no marker: the module is unsigned. A trailer that mod_check_sig() or
    the PKCS#7 parser refuses fatally is a ModuleSignature with ``problem`` set; one that is not PKCS#7 has only
    its ``id_type`` (the kernel's ENOPKG, "unsupported crypto", is not fatal by itself). This never raises.
    """
    if len(data) <= len(MAGIC) or not data.endswith(MAGIC):
        return None, len(data)
    modlen = len(data) - len(MAGIC)  # module_sig_check() drops the marker before anything else
    if modlen <= _STRUCT.size:
        return _broken(0, f"only {modlen} bytes precede the signature marker, too few for struct "
                          "module_signature: the kernel refuses the module (EBADMSG)"), modlen  # fmt: skip
    ms = _ModuleSignature._make(_STRUCT.unpack_from(data, modlen - _STRUCT.size))
    if ms.id_type != PKEY_ID_PKCS7 and ms.sig_len < modlen - _STRUCT.size:
        # mod_check_sig() -> ENOPKG ("module: not signed with expected PKCS#7 message"), which module_sig_check()
        # treats as "unsupported crypto": refused only where signatures are enforced or the kernel is locked down.
        # So it is no problem of the file; id_type tells the prediction.
        return ModuleSignature(ms.id_type, None, None, None), modlen
    problem = _check_sig(ms, modlen)
    if problem is not None:
        return _broken(ms.id_type, problem), modlen
    # mod_verify_sig(): from here on the module is the bytes before the PKCS#7.
    elf_len = modlen - _STRUCT.size - ms.sig_len
    return _from_pkcs7(data[elf_len : modlen - _STRUCT.size]), elf_len


def _broken(id_type: int, problem: str) -> ModuleSignature:
    return ModuleSignature(id_type, None, None, None, problem)


class _ModuleSignature(NamedTuple):
    """struct module_signature, as _STRUCT unpacks it."""

    algo: int
    hash: int
    id_type: int
    signer_len: int
    key_id_len: int
    pad: bytes
    sig_len: int


def _check_sig(ms: _ModuleSignature, modlen: int) -> str | None:
    """mod_check_sig()'s fatal tests (EBADMSG), in its order, as a problem message (None: they pass)."""
    if ms.sig_len >= modlen - _STRUCT.size:
        return (f"the signature trailer says its PKCS#7 is {ms.sig_len} bytes, but only {modlen - _STRUCT.size} "
                "bytes precede the trailer: the kernel refuses the module (EBADMSG)")  # fmt: skip
    fields = {"algo": ms.algo, "hash": ms.hash, "signer_len": ms.signer_len, "key_id_len": ms.key_id_len}
    fields.update((f"__pad[{i}]", b) for i, b in enumerate(ms.pad))
    nonzero = [f"{name}={value}" for name, value in fields.items() if value]
    if nonzero:
        return (f"the signature trailer has non-zero {', '.join(nonzero)}: the kernel logs 'module: PKCS#7 "
                "signature info has unexpected non-zero params' and refuses the module (EBADMSG)")  # fmt: skip
    return None


def _from_pkcs7(blob: bytes) -> ModuleSignature:
    try:
        signer, key_id, digest = _signer_info(blob)
    except der.DerError as exc:
        return _broken(PKEY_ID_PKCS7, f"the PKCS#7 signature cannot be decoded ({exc}): the kernel refuses the "
                                      "module (EBADMSG)")  # fmt: skip
    except _NotData as exc:
        return _broken(PKEY_ID_PKCS7, f"the PKCS#7 signature signs content of type {exc}, not data: the kernel logs "
                                      "'PKCS7: Invalid module sig (not pkcs7-data)' and refuses the module "
                                      "(EKEYREJECTED)")  # fmt: skip
    return ModuleSignature(PKEY_ID_PKCS7, signer, key_id, digest, by_key_id=signer is None)


class _NotData(Exception):
    """The SignedData's encapsulated content type is not id-data (pkcs7_verify(), VERIFYING_MODULE_SIGNATURE)."""


def _next(items: Iterator[der.Element], what: str) -> der.Element:
    element = next(items, None)
    if element is None:
        raise der.DerError(f"{what} is missing")
    return element


def _signer_info(buf: bytes) -> tuple[str | None, str, str]:
    """(issuer, key id, digest) of the first SignerInfo of a ContentInfo holding SignedData (RFC 5652 5.1, 5.3)."""
    # Bytes after the ContentInfo are not looked at, by the kernel's decoder either (it stops when its grammar is done).
    info, _ = der.expect(buf, 0, len(buf), der.SEQUENCE, "ContentInfo")
    parts = der.children(buf, info)
    content_type = der.oid(buf, _tagged(buf, _next(parts, "contentType"), der.OID, "contentType"))
    if content_type != _OID_SIGNED_DATA:
        raise der.DerError(f"content type {content_type} is not signedData")
    explicit = _tagged(buf, _next(parts, "content"), der.context(0), "content")
    signed_data = _tagged(buf, _next(der.children(buf, explicit), "SignedData"), der.SEQUENCE, "SignedData")
    fields = der.children(buf, signed_data)
    _tagged(buf, _next(fields, "SignedData version"), der.INTEGER, "SignedData version")
    _tagged(buf, _next(fields, "digestAlgorithms"), der.SET, "digestAlgorithms")
    encap = _tagged(buf, _next(fields, "encapContentInfo"), der.SEQUENCE, "encapContentInfo")
    encap_type = der.oid(buf, _tagged(buf, _next(der.children(buf, encap), "eContentType"), der.OID, "eContentType"))
    signer_infos = _next(fields, "signerInfos")
    while signer_infos.tag in (der.context(0), der.context(1)):  # certificates, crls: sign-file writes neither
        signer_infos = _next(fields, "signerInfos")
    _tagged(buf, signer_infos, der.SET, "signerInfos")
    signer = _tagged(buf, _next(der.children(buf, signer_infos), "SignerInfo"), der.SEQUENCE, "SignerInfo")
    items = der.children(buf, signer)
    _tagged(buf, _next(items, "SignerInfo version"), der.INTEGER, "SignerInfo version")
    issuer, key_id = _signer_identifier(buf, _next(items, "sid"))
    algorithm = _tagged(buf, _next(items, "digestAlgorithm"), der.SEQUENCE, "digestAlgorithm")
    digest = der.oid(buf, _tagged(buf, _next(der.children(buf, algorithm), "algorithm"), der.OID, "algorithm"))
    if encap_type != _OID_DATA:
        raise _NotData(encap_type)
    return issuer, key_id, DIGESTS.get(digest, digest)


def _tagged(buf: bytes, element: der.Element, tag: int, what: str) -> der.Element:
    if element.tag != tag:
        raise der.DerError(f"{what}: expected tag {tag:#04x}, found {element.tag:#04x} at offset {element.start}")
    return element


def _signer_identifier(buf: bytes, sid: der.Element) -> tuple[str | None, str]:
    """(issuer, key id) of a SignerIdentifier. The key id is the subjectKeyIdentifier, or else the serial number's
    raw DER contents (sign byte included): both as the kernel's x509 parser keeps them (raw_skid, raw_serial), so
    they read as the hex in a keyring's key description."""
    if sid.tag == der.context(0, constructed=False):  # subjectKeyIdentifier [0] IMPLICIT OCTET STRING
        return None, buf[sid.start : sid.end].hex()
    _tagged(buf, sid, der.SEQUENCE, "issuerAndSerialNumber")
    parts = der.children(buf, sid)
    name = _tagged(buf, _next(parts, "issuer"), der.SEQUENCE, "issuer")
    serial = _tagged(buf, _next(parts, "serialNumber"), der.INTEGER, "serialNumber")
    if serial.start == serial.end:
        raise der.DerError("empty serialNumber")
    return _issuer_text(buf, name), buf[serial.start : serial.end].hex()


def _issuer_text(buf: bytes, name: der.Element) -> str:
    """The issuer's (first) CN; without one, every attribute as ``O=…, OU=…`` in order."""
    attributes: list[tuple[str, str]] = []
    for rdn in der.children(buf, name):
        _tagged(buf, rdn, der.SET, "RelativeDistinguishedName")
        for pair in der.children(buf, rdn):
            parts = der.children(buf, _tagged(buf, pair, der.SEQUENCE, "AttributeTypeAndValue"))
            kind = der.oid(buf, _tagged(buf, _next(parts, "attribute type"), der.OID, "attribute type"))
            attributes.append((kind, der.text(buf, _next(parts, "attribute value"))))
    for kind, value in attributes:
        if kind == _OID_CN:
            return value
    return ", ".join(f"{_ATTRIBUTES.get(kind, kind)}={value}" for kind, value in attributes)
