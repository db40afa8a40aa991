"""The bytes of one /proc/kallsyms line as kernel/kallsyms.c s_show() prints it, and the token helpers.

A vmlinux line is ``ADDRESS TYPE NAME\\n`` and a module line ``ADDRESS TYPE NAME\\t[MODULE]\\n``: the separators
alone, without their tokens, are ``"  \\n"`` and ``"  \\t\\n"``. The parsers prove a whole block of lines against
these patterns at once (see :mod:`.vmlinux` and :mod:`.modules`).
"""

from __future__ import annotations

import re

HEX_DIGITS = b"0123456789abcdefABCDEF"
HEX_DIGITS_NEWLINE = HEX_DIGITS + b"\n"
# bytes.split() separates at these; every other byte belongs to a token.
_WHITESPACE = b" \t\n\r\x0b\x0c"
NON_WHITESPACE = bytes(b for b in range(256) if b not in _WHITESPACE)
# The separators of one line, as s_show() prints them.
VMLINUX_LINE = b"  \n"
MODULE_LINE = b"  \t\n"
# Symbol types of data, bss and read-only data. Without CONFIG_KALLSYMS_ALL, scripts/kallsyms.c (symbol_valid())
# keeps only symbols in the text ranges plus the __start_*/__stop_* section markers, so vmlinux then shows a few
# dozen markers and a stray boundary symbol or two (__init_begin) of these types; with it, tens of thousands.
DATA_TYPES = b"dDbBrR"
DATA_TYPE = re.compile(b"[" + DATA_TYPES + b"]")
SECTION_MARKERS = (b"__start_", b"__stop_")
KALLSYMS_ALL_MIN = 16  # data symbols other than section markers
# The most /proc/kallsyms may hold: a distribution kernel's is ~10 MiB (200k lines with CONFIG_KALLSYMS_ALL).
KALLSYMS_LIMIT = 256 * 1024 * 1024


def encode(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def is_hex(token: bytes) -> bool:
    return bool(token) and not token.translate(None, HEX_DIGITS)


def split_lines(raw: bytes) -> list[bytes]:
    """The lines of ``raw``, without their newlines (and without an empty last one)."""
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def module_part_start(data: bytes) -> int:
    """Offset of the first line that names a module (``[...]``), or len(data) when none does."""
    bracket = data.find(b"[")
    return len(data) if bracket < 0 else data.rfind(b"\n", 0, bracket) + 1
