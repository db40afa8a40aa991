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
from typing import NamedTuple

from klpd.model import SymbolStatus


class Occurrences(NamedTuple):
    """What klp_find_object_symbol() can learn of one name in one object: how often it occurs, and which of those
    occurrences sit at address 0. Positions count from 1, in the kernel's search order.

    An index of 100k+ names answers this without keeping every address; ``zero_addresses`` is empty when no address
    is known to be 0, as when addresses are hidden (then every address reads 0 and means nothing).
    """

    matches: int  # occurrences of the name
    zero_addresses: tuple[int, ...] = ()

    @classmethod
    def of(cls, addresses: Sequence[int]) -> Occurrences:
        return cls(len(addresses), tuple(i for i, address in enumerate(addresses, start=1) if address == 0))


def lookup(addresses: Sequence[int], sympos: int, addresses_visible: bool = True) -> SymbolStatus:
    """Status of ``sympos`` for a name whose occurrences in the object have ``addresses``, in the kernel's order."""
    return lookup_occurrences(Occurrences.of(addresses), sympos, addresses_visible)


def lookup_occurrences(found: Occurrences, sympos: int, addresses_visible: bool = True) -> SymbolStatus:
    """Status of ``sympos`` for a name with these occurrences in the object."""
    count = found.matches
    if count == 0:
        return SymbolStatus.NOT_FOUND
    # The kernel stops counting at the sympos-th match, or at the second one when sympos is 0; args.addr is the
    # address of the last one counted.
    counted = min(count, sympos) if sympos > 0 else min(count, 2)
    if addresses_visible and counted in found.zero_addresses:
        return SymbolStatus.NOT_FOUND
    if sympos == 0 and counted > 1:
        return SymbolStatus.AMBIGUOUS
    if sympos > 0 and counted != sympos:
        return SymbolStatus.SYMPOS_NOT_FOUND
    return SymbolStatus.OK
