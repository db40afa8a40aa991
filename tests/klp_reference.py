"""The tests' reference model of the kernel: klp_find_object_symbol(), transcribed as literally as Python allows,
for the property tests of klpd's resolver and of its kallsyms index to compare with."""

from __future__ import annotations

from klpd.model import SymbolStatus


def kernel_find_object_symbol(table: list[tuple[str, int]], name: str, sympos: int) -> SymbolStatus:
    """kernel/livepatch/core.c: klp_find_callback() + klp_find_object_symbol(), line by line."""
    count = 0
    addr = 0
    for sym_name, sym_addr in table:
        if sym_name != name:
            continue
        count += 1
        addr = sym_addr
        if (sympos and count == sympos) or (not sympos and count > 1):
            break
    if addr == 0:
        return SymbolStatus.NOT_FOUND
    if count > 1 and sympos == 0:
        return SymbolStatus.AMBIGUOUS
    if sympos != count and sympos > 0:
        return SymbolStatus.SYMPOS_NOT_FOUND
    return SymbolStatus.OK
