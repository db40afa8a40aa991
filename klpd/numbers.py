"""Numbers as the kernel prints them in /proc and /sys files, and as config and the environment give them.

One parser for every decimal klpd reads from text it does not control: ``str.isdigit()`` followed by ``int()`` lets
through digits int() refuses ('²') and lengths that make int() raise (past 4,300 digits).
"""

from __future__ import annotations

import re

_DECIMAL = re.compile(r"-?[0-9]{1,20}")


def kernel_decimal(text: str | bytes, *, signed: bool = False) -> int | None:
    """A number as the kernel prints one (``%d``, ``%u``, ``%lu``: ASCII digits, a '-' only when ``signed``, at
    most 20 digits), else None."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    if _DECIMAL.fullmatch(text) is None or (not signed and text.startswith("-")):
        return None
    return int(text)
