"""klpd.elf.signature: module signatures made by openssl the way scripts/sign-file makes them, and broken ones."""

from __future__ import annotations

import dataclasses
import lzma
import struct
import subprocess
from pathlib import Path

import pytest
from elfwriter import R_X86_64_PC32, KlpModule

from klpd.elf import decompress, parse_patch_module
from klpd.elf.signature import MAGIC, parse_module_signature
from klpd.errors import ElfFormatError
from klpd.model_loader import ModuleSignature

DATA = Path(__file__).parent / "data"
SERIAL_SHA512 = (DATA / "pkcs7-sha512-issuer-serial.der").read_bytes()
KEYID_SHA256 = (DATA / "pkcs7-sha256-keyid.der").read_bytes()
# The certificate the files in tests/data were made with (tests/data/README.md).
FIXTURE_SERIAL = "4c19a69bcbb7e2501501f97988fd1115da651e4a"
FIXTURE_SKID = "e85964fb886cb628080b4ed3089f9aec263c6903"
PKCS7_DATA_OID = bytes.fromhex("06092a864886f70d010701")


def patch_module() -> bytes:
    m = KlpModule("livepatch_signed")
    text = m.function("cmdline_proc_show")
    m.klp_rela("vmlinux", text, [(0x10, m.klp_sym("vmlinux", "saved_command_line", 0), R_X86_64_PC32, -4)])
    return m.build()


def append(module: bytes, pkcs7: bytes, *, sig_len: int | None = None, id_type: int = 2, algo: int = 0,
           hash_: int = 0, signer_len: int = 0, key_id_len: int = 0, pad: bytes = b"\0\0\0") -> bytes:  # fmt: skip
    """``module`` signed as sign-file appends a signature: PKCS#7, struct module_signature, the marker."""
    size = len(pkcs7) if sig_len is None else sig_len
    return module + pkcs7 + struct.pack(">BBBBB3sI", algo, hash_, id_type, signer_len, key_id_len, pad, size) + MAGIC


class Signer:
    """A fresh key and self-signed certificate, and ``openssl cms`` with sign-file's options."""

    def __init__(self, directory: Path, subject: str) -> None:
        self.dir = directory
        self.key, self.cert = directory / "key.pem", directory / "cert.pem"
        run("req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", self.key, "-out", self.cert,
            "-days", "36500", "-subj", subject)  # fmt: skip
        self.serial = run("x509", "-in", self.cert, "-noout", "-serial").decode().strip().split("=")[1].lower()
        skid = run("x509", "-in", self.cert, "-noout", "-ext", "subjectKeyIdentifier").decode().split("\n")[1]
        self.skid = skid.strip().replace(":", "").lower()

    def sign(self, module: bytes, md: str = "sha512", keyid: bool = False) -> bytes:
        src, out = self.dir / "module.ko", self.dir / "module.p7s"
        src.write_bytes(module)
        run("cms", "-sign", "-in", src, "-binary", "-noattr", "-outform", "DER", "-nocerts", "-md", md,
            "-signer", self.cert, "-inkey", self.key, "-out", out, *(["-keyid"] if keyid else []))  # fmt: skip
        return out.read_bytes()


def run(*args: object) -> bytes:
    # openssl is a test requirement (dev.sh installs it): a missing binary fails here rather than skipping.
    return subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True).stdout


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    return Signer(tmp_path_factory.mktemp("key"), "/O=klpd tests/CN=Livepatch signing key 2025")


def test_unsigned_module_has_no_signature():
    pm = parse_patch_module(patch_module(), "lp.ko")
    assert pm.signature is None
    assert parse_module_signature(MAGIC) == (None, len(MAGIC))  # the kernel wants more than the marker


@pytest.mark.parametrize("md", ["sha1", "sha224", "sha256", "sha384", "sha512"])
def test_signed_with_issuer_and_serial(signer, md):
    module = patch_module()
    pm = parse_patch_module(append(module, signer.sign(module, md)), "lp.ko")
    sig = pm.signature
    assert (sig.id_type, sig.signer, sig.hash_algorithm, sig.problem) == (2, "Livepatch signing key 2025", md, None)
    # The serial's DER contents, with the sign byte a high first bit needs, as the kernel's key ids hold it.
    assert sig.key_id in (signer.serial, "00" + signer.serial)


def test_signed_with_subject_key_identifier(signer):
    module = patch_module()
    sig = parse_patch_module(append(module, signer.sign(module, "sha256", keyid=True)), "lp.ko").signature
    assert (sig.signer, sig.key_id, sig.hash_algorithm, sig.problem) == (None, signer.skid, "sha256", None)


def test_issuer_without_common_name_is_spelled_out(tmp_path):
    nameless = Signer(tmp_path, "/C=DE/O=klpd tests/OU=kernel team")
    sig = parse_module_signature(append(b"\x7fELF", nameless.sign(b"\x7fELF")))[0]
    assert sig.signer == "C=DE, O=klpd tests, OU=kernel team"


def test_committed_signatures_read_as_made():
    sig, elf_len = parse_module_signature(append(b"module", SERIAL_SHA512))
    assert (sig.signer, sig.key_id, sig.hash_algorithm, elf_len) == ("klpd test signing key", FIXTURE_SERIAL,
                                                                     "sha512", 6)  # fmt: skip
    sig, _ = parse_module_signature(append(b"module", KEYID_SHA256))
    assert (sig.signer, sig.key_id, sig.hash_algorithm) == (None, FIXTURE_SKID, "sha256")


def test_indefinite_lengths_are_read_as_the_kernel_reads_them(signer, tmp_path):
    # `openssl cms -stream` writes BER with indefinite lengths; the kernel's asn1_ber_decoder() accepts them.
    (tmp_path / "m").write_bytes(b"module")
    run("cms", "-sign", "-in", tmp_path / "m", "-binary", "-noattr", "-outform", "DER", "-nocerts", "-md", "sha384",
        "-signer", signer.cert, "-inkey", signer.key, "-stream", "-out", tmp_path / "s")  # fmt: skip
    ber = (tmp_path / "s").read_bytes()
    assert ber[1] == 0x80  # indefinite
    sig, _ = parse_module_signature(append(b"module", ber))
    assert (sig.signer, sig.hash_algorithm, sig.problem) == ("Livepatch signing key 2025", "sha384", None)


def test_signature_does_not_change_the_elf_parse():
    module = patch_module()
    signed = parse_patch_module(append(module, SERIAL_SHA512), "lp.ko")
    assert dataclasses.replace(signed, signature=None) == parse_patch_module(module, "lp.ko")


def test_a_section_reaching_into_the_signature_is_truncated():
    # mod_verify_sig() cuts the image before the PKCS#7, so the ELF checks see a shorter file.
    module = patch_module()
    assert parse_patch_module(module + SERIAL_SHA512, "lp.ko").signature is None  # unsigned: trailing bytes pass
    # The same bytes, but the trailer counts the last section header as part of the PKCS#7.
    signed = append(module, SERIAL_SHA512, sig_len=64 + len(SERIAL_SHA512))
    with pytest.raises(ElfFormatError, match="truncated: section header table"):
        parse_patch_module(signed, "lp.ko")


def test_signature_of_a_compressed_module_is_read_after_decompression():
    signed = append(patch_module(), KEYID_SHA256)
    pm = parse_patch_module(decompress(lzma.compress(signed), "lp.ko.xz"), "lp.ko.xz")
    assert pm.signature is not None and pm.signature.key_id == FIXTURE_SKID


@pytest.mark.parametrize(
    ("kw", "expect"),
    [
        ({"sig_len": 10**6}, "PKCS#7 is 1000000 bytes, but only"),
        ({"sig_len": 0xFFFFFFFF}, "(EBADMSG)"),
        ({"algo": 1, "hash_": 4}, "non-zero algo=1, hash=4: the kernel logs 'module: PKCS#7 signature info has"),
        ({"signer_len": 5, "key_id_len": 20}, "non-zero signer_len=5, key_id_len=20"),
        ({"pad": b"\0\1\0"}, "non-zero __pad[1]=1"),
        ({"sig_len": len(SERIAL_SHA512) - 40}, "cannot be decoded"),  # starts inside the PKCS#7
    ],
)
def test_malformed_trailer_is_a_problem(kw, expect):
    module = patch_module()
    pm = parse_patch_module(append(module, SERIAL_SHA512, **kw), "lp.ko")
    assert expect in pm.signature.problem
    assert pm.signature.signer is None and pm.signature.key_id is None


@pytest.mark.parametrize("id_type", [0, 1, 3, 255])
def test_signature_that_is_not_pkcs7_is_no_problem_of_the_file(id_type):
    # mod_check_sig(): ENOPKG, which only refuses the module where signatures are enforced (the prediction's call).
    sig, elf_len = parse_module_signature(append(b"module", SERIAL_SHA512, id_type=id_type, algo=1))
    assert sig == ModuleSignature(id_type, None, None, None, None)
    assert elf_len == len(b"module") + len(SERIAL_SHA512) + 12  # only the marker is cut
    # The length check comes first: EBADMSG.
    assert "(EBADMSG)" in parse_module_signature(append(b"m", SERIAL_SHA512, id_type=1, sig_len=10**6))[0].problem


@pytest.mark.parametrize(
    "blob",
    [
        b"\x30\x03\x02\x01\x01",  # a SEQUENCE too short for a ContentInfo
        b"garbage that is not DER at all",
        b"\x30\x80\x06\x09" + bytes(9),  # indefinite length without end-of-contents
        b"\x3f\x00",  # a multi-byte tag: the kernel's decoder has none
        b"\x30\x85\xff\xff\xff\xff\xff",  # five length bytes
        b"\x30\x0b\x06\x09" + bytes.fromhex("2a864886f70d010702"),  # signedData without its content
    ],
)
def test_garbage_pkcs7_is_a_problem(blob):
    sig, _ = parse_module_signature(append(b"module", blob))
    assert "the PKCS#7 signature cannot be decoded" in sig.problem


def test_signed_content_that_is_not_data_is_refused():
    blob = SERIAL_SHA512.replace(PKCS7_DATA_OID, PKCS7_DATA_OID[:-1] + b"\x05")  # pkcs7-digestedData
    sig, _ = parse_module_signature(append(b"module", blob))
    assert "not data: the kernel logs 'PKCS7: Invalid module sig (not pkcs7-data)'" in sig.problem


def test_only_a_marker_and_a_few_bytes():
    sig, elf_len = parse_module_signature(b"\x7fELF" + MAGIC)
    assert "too few for struct module_signature" in sig.problem and elf_len == 4


@pytest.mark.parametrize("blob", [SERIAL_SHA512, KEYID_SHA256])
def test_every_truncation_and_byte_of_the_pkcs7_gives_a_result_not_an_exception(blob):
    for cut in range(len(blob)):
        sig, _ = parse_module_signature(append(b"module", blob[:cut]))
        assert sig is not None and sig.problem is not None, cut
    for i in range(0, len(blob), 3):
        broken = bytearray(blob)
        broken[i] ^= 0xFF
        sig, _ = parse_module_signature(append(b"module", bytes(broken)))
        assert sig is not None


def test_a_hostile_object_identifier_is_a_problem_not_an_exception() -> None:
    """An OID arc of thousands of digits: Python's int-to-str limit would raise, and shifting costs quadratic time."""
    from klpd.elf import der

    body = b"\x2a" + b"\xff" * 20_000 + b"\x01"
    element = der.Element(der.OID, 2, 2 + len(body))
    with pytest.raises(der.DerError, match="arc longer than"):
        der.oid(b"\x06\x00" + body, element)
