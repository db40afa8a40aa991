"""klp_find_object_symbol(), reproduced: what the kernel answers for one livepatch symbol.

kernel/livepatch/core.c counts the occurrences of a name in one object (vmlinux in kallsyms order; a module in its
symbol table order, SHN_UNDEF skipped), stops at the sympos-th one (sympos > 0) or at the second one (sympos 0),
and then decides:

    if (args.addr == 0)                           -> "symbol '%s' not found in symbol table"
    else if (args.count > 1 && sympos == 0)       -> "unresolvable ambiguity for symbol '%s' in object '%s'"
    else if (sympos != args.count && sympos > 0)  -> "symbol position %lu for symbol '%s' in object '%s' not found"

``args.addr`` is the address of the last occurrence counted. From user space without CAP_SYSLOG every address in
/proc/kallsyms reads as 0, so the address test is only applied when addresses are visible.
"""

from __future__ import annotations

from collections.abc import Sequence

from klpd.model import SymbolStatus


def lookup(addresses: Sequence[int], sympos: int, addresses_visible: bool = True) -> SymbolStatus:
    """Status of ``sympos`` for a name whose occurrences in the object have ``addresses``, in the kernel's order."""
    count = len(addresses)
    if count == 0:
        return SymbolStatus.NOT_FOUND
    # The kernel stops counting at the sympos-th match, or at the second one when sympos is 0.
    counted = min(count, sympos) if sympos > 0 else min(count, 2)
    if addresses_visible and addresses[counted - 1] == 0:
        return SymbolStatus.NOT_FOUND
    if sympos == 0 and counted > 1:
        return SymbolStatus.AMBIGUOUS
    if sympos > 0 and counted != sympos:
        return SymbolStatus.SYMPOS_NOT_FOUND
    return SymbolStatus.OK
