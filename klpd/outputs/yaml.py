"""YAML of the JSON documents (``--format yaml``): the same data, for readers who prefer it; no YAML library.

Only what JSON holds is written (mappings with string keys, lists, strings, integers, floats, booleans, null), in
block style. Every string value is double-quoted and escaped, so no string is read back as anything else (``"no"``,
``"1.0"``, ``"null"``); a key is left plain only when no YAML 1.1 or 1.2 reader can take it for anything but a
string. tests/test_yaml.py reads the output back with PyYAML's safe loader.
"""

from __future__ import annotations

import math
import re
from typing import Any

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Plain scalars YAML 1.1 resolves to booleans or null (1.2 keeps only true/false/null of them).
_RESERVED = frozenset({"y", "n", "yes", "no", "true", "false", "on", "off", "null"})
# Characters written as they are inside double quotes: YAML's printable set (c-printable) without the quote and
# backslash, the C1 block (NEL), the BOM and the line and paragraph separators (YAML 1.1 line breaks); everything
# else is escaped.
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _printable(c: str) -> bool:
    o = ord(c)
    if o in (0xFEFF, 0x2028, 0x2029):
        return False
    return 0x20 <= o <= 0x7E or 0xA0 <= o <= 0xD7FF or 0xE000 <= o <= 0xFFFD or o >= 0x10000


def _char(c: str) -> str:
    if c in _ESCAPES:
        return _ESCAPES[c]
    if _printable(c):
        return c
    o = ord(c)
    return f"\\x{o:02x}" if o <= 0xFF else f"\\u{o:04x}"  # a lone surrogate (surrogateescape) too: never raw


def quote(text: str) -> str:
    """A YAML double-quoted scalar of ``text``."""
    return '"' + "".join(_char(c) for c in text) + '"'


def _key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"a mapping key must be a string, not {type(key).__name__}")
    return key if _PLAIN_KEY.match(key) and key.lower() not in _RESERVED else quote(key)


def _float(value: float) -> str:
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value)
    mantissa, e, exponent = text.partition("e")
    # PyYAML's YAML 1.1 float needs a dot (1e-05 would be read as a string) and a signed exponent.
    if "." not in mantissa:
        mantissa += ".0"
    if e and exponent[0] not in "+-":
        exponent = "+" + exponent
    return mantissa + (f"e{exponent}" if e else "")


def scalar(value: Any) -> str:
    """A scalar, or an empty mapping or list (flow style); TypeError for anything JSON does not hold."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, dict | list) and not value:
        return "{}" if isinstance(value, dict) else "[]"
    raise TypeError(f"not JSON data: {type(value).__name__}")


def _nested(value: Any) -> bool:
    return isinstance(value, dict | list) and bool(value)


def _lines(value: Any, indent: int) -> list[str]:
    """The block lines of a non-empty mapping or list, ``indent`` spaces in."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if _nested(item):
                lines.append(f"{pad}{_key(key)}:")
                lines += _lines(item, indent + 2)
            else:
                lines.append(f"{pad}{_key(key)}: {scalar(item)}")
        return lines
    for item in value:
        if _nested(item):
            inner = _lines(item, indent + 2)
            lines.append(f"{pad}- {inner[0].lstrip()}")
            lines += inner[1:]
        else:
            lines.append(f"{pad}- {scalar(item)}")
    return lines


def dumps(doc: Any) -> str:
    """The YAML of a JSON-compatible value, one document, newline-terminated."""
    return "\n".join(_lines(doc, 0) if _nested(doc) else [scalar(doc)]) + "\n"
