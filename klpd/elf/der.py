"""A small, strict, bounds-checked reader of ASN.1 BER/DER: just what a module signature's PKCS#7 needs.

It accepts what the kernel's decoder (lib/asn1_decoder.c asn1_ber_decoder(), which parses the signature for
crypto/asymmetric_keys/pkcs7_parser.c) accepts and rejects the same forms: single-byte tags only (the kernel has no
long tags), definite lengths of up to four length bytes, and indefinite lengths on constructed elements only (BER;
``openssl cms`` and sign-file write DER, but the kernel would take either). Every fault is a :class:`DerError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

SEQUENCE = 0x30
SET = 0x31
INTEGER = 0x02
OCTET_STRING = 0x04
OID = 0x06
CONSTRUCTED = 0x20

_LONG_TAG = 0x1F
_INDEFINITE = 0x80
_MAX_DEPTH = 32  # PKCS#7 nests 10 deep; a bound keeps hostile nesting from exhausting the stack


class DerError(ValueError):
    """The bytes are not the ASN.1 expected; the message says where and why."""


class Element(NamedTuple):
    """One element: its identifier byte and the [start, end) of its contents within the buffer."""

    tag: int
    start: int
    end: int


def context(number: int, constructed: bool = True) -> int:
    """The identifier byte of context-specific tag ``[number]``."""
    return 0x80 | (CONSTRUCTED if constructed else 0) | number


def read(buf: bytes, pos: int, end: int, depth: int = 0) -> tuple[Element, int]:
    """The element at ``pos`` (which must end by ``end``) and the offset just after it."""
    if pos + 2 > end:
        raise DerError(f"element at offset {pos} runs past the end ({end})")
    tag, first = buf[pos], buf[pos + 1]
    if tag & _LONG_TAG == _LONG_TAG:
        raise DerError(f"multi-byte tag at offset {pos}")
    pos += 2
    if first == _INDEFINITE:
        if not tag & CONSTRUCTED:
            raise DerError(f"indefinite length on a primitive element at offset {pos - 2}")
        return _indefinite(buf, tag, pos, end, depth)
    length = first
    if first > _INDEFINITE:
        count = first - _INDEFINITE
        if count > 4 or pos + count > end:
            raise DerError(f"bad length encoding at offset {pos - 1}")
        length = int.from_bytes(buf[pos : pos + count], "big")
        pos += count
    if pos + length > end:
        raise DerError(f"element at offset {pos} of length {length} runs past the end ({end})")
    return Element(tag, pos, pos + length), pos + length


def _indefinite(buf: bytes, tag: int, start: int, end: int, depth: int) -> tuple[Element, int]:
    if depth >= _MAX_DEPTH:
        raise DerError(f"nesting deeper than {_MAX_DEPTH} at offset {start}")
    pos = start
    while True:
        if pos + 2 > end:
            raise DerError(f"indefinite-length element at offset {start} has no end-of-contents")
        if buf[pos] == 0 and buf[pos + 1] == 0:
            return Element(tag, start, pos), pos + 2
        _, pos = read(buf, pos, end, depth + 1)


def children(buf: bytes, parent: Element) -> Iterator[Element]:
    """The elements inside a constructed element, in order."""
    pos = parent.start
    while pos < parent.end:
        child, pos = read(buf, pos, parent.end)
        yield child


def expect(buf: bytes, pos: int, end: int, tag: int, what: str) -> tuple[Element, int]:
    """:func:`read`, failing unless the element has identifier ``tag``."""
    element, after = read(buf, pos, end)
    if element.tag != tag:
        raise DerError(f"{what}: expected tag {tag:#04x}, found {element.tag:#04x} at offset {pos}")
    return element, after


_ARC_BYTES = 9  # 63 bits: every arc of a real OID fits, and str() of it stays far below Python's digit limit


def oid(buf: bytes, element: Element) -> str:
    """An OBJECT IDENTIFIER's contents in dotted form."""
    body = buf[element.start : element.end]
    if not body or body[-1] & 0x80:
        raise DerError(f"malformed object identifier at offset {element.start}")
    arcs: list[int] = []
    value = length = 0
    for byte in body:
        value = (value << 7) | (byte & 0x7F)
        length += 1
        if length > _ARC_BYTES:  # no registered algorithm has such an arc; a hostile one would cost quadratic time
            raise DerError(f"object identifier arc longer than {_ARC_BYTES} bytes at offset {element.start}")
        if not byte & 0x80:
            arcs.append(value)
            value = length = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(map(str, [first, arcs[0] - 40 * first, *arcs[1:]]))


# The string types a Name's attribute values come in (X.520 DirectoryString, plus IA5String for emailAddress).
_STRING_CODECS = {0x0C: "utf-8", 0x13: "ascii", 0x14: "latin-1", 0x16: "ascii", 0x1A: "ascii", 0x1E: "utf-16-be",
                  0x1C: "utf-32-be"}  # fmt: skip


def text(buf: bytes, element: Element) -> str:
    """A string element's value (undecodable bytes replaced); any other type as ``#`` and its contents in hex."""
    body = buf[element.start : element.end]
    codec = _STRING_CODECS.get(element.tag)
    if codec is None:
        return "#" + body.hex()
    return body.decode(codec, errors="replace")
