"""klp_find_object_symbol(), reproduced: what the kernel answers for one name at one sympos in one object.

kernel/livepatch/core.c counts the occurrences of a name in one object (vmlinux in kallsyms order; a module in its
symbol table order, SHN_UNDEF skipped), stops at the sympos-th one (sympos > 0) or at the second one (sympos 0),
and then decides:

    if (args.addr == 0)                           -> "symbol '%s' not found in symbol table"
    else if (args.count > 1 && sympos == 0)       -> "unresolvable ambiguity for symbol '%s' in object '%s'"
    else if (sympos != args.count && sympos > 0)  -> "symbol position %lu for symbol '%s' in object '%s' not found"

``args.addr`` is the address of the last occurrence counted. From user space without CAP_SYSLOG every address in
/proc/kallsyms reads as 0, so the address test is only applied when addresses are visible.

The same lookup serves ``.klp.sym`` symbols and (next) the functions a patch replaces; which symbol table it runs
over — /proc/kallsyms, or a ``.ko``'s full or core symtab (:func:`symtab_pick`) — is the caller's choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from klpd import kernel_messages as msg
from klpd.model import VMLINUX, ModuleSymtab, Occurrences, Problem, SymbolStatus
from klpd.predict.inputs import SymbolIndex


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


@dataclass(frozen=True)
class Pick:
    """What a lookup in a .ko symtab answers, and which entry (index in ModuleSymtab.names) it resolves to."""

    status: SymbolStatus
    count: int
    entry: int | None


def core_bit(kallsyms_all: bool) -> int:
    """The ModuleSymtab flag of the entries the cut-down core symtab keeps under this CONFIG_KALLSYMS_ALL."""
    return ModuleSymtab.CORE_WITH_KALLSYMS_ALL if kallsyms_all else ModuleSymtab.CORE_TEXT_ONLY


def symtab_pick(symtab: ModuleSymtab, name: str, sympos: int, core: int | None) -> Pick:
    """klp_find_object_symbol() over a .ko symtab: the full one (``core`` None) or its core part (``core_bit``)."""
    entries = [i for i in symtab.entries(name) if core is None or symtab.flags[i] & core]
    addresses = tuple(0 if symtab.flags[i] & ModuleSymtab.ZERO_ADDRESS else 1 for i in entries)
    status = lookup(addresses, sympos, True)
    entry = entries[max(sympos, 1) - 1] if status is SymbolStatus.OK else None
    return Pick(status, len(entries), entry)


def lookup_message(status: SymbolStatus, obj: str, name: str, sympos: int) -> str | None:
    """What klp_find_object_symbol() prints for a lookup that fails; None for OK and for non-lookup statuses."""
    match status:
        case SymbolStatus.NOT_FOUND:
            return msg.SYMBOL_NOT_FOUND.format(name=name)
        case SymbolStatus.AMBIGUOUS:
            return msg.AMBIGUOUS_SYMBOL.format(name=name, object="(null)" if obj == VMLINUX else obj)
        case SymbolStatus.SYMPOS_NOT_FOUND:
            return msg.SYMPOS_NOT_FOUND.format(sympos=sympos, name=name, object=obj)
    return None


@dataclass(frozen=True)
class Found:
    """klp_find_object_symbol()'s answer in one object; ``status`` None: its symbol table could not be read."""

    status: SymbolStatus | None
    occurrences: int | None
    load_order_dependent: bool = False
    entry: int | None = None  # the .ko symtab entry it resolves to (ModuleSymtab.names index), where one was read


def find_in_object(
    kallsyms: SymbolIndex, loaded: bool, obj: str, name: str, sympos: int, *, symtab: ModuleSymtab | Problem | None
) -> Found:
    """klp_find_object_symbol() in object ``obj``: /proc/kallsyms when it is loaded (vmlinux always), else the FULL
    symtab of its ``.ko``, which klp_module_coming() searches while the module loads.

    ``load_order_dependent``: the .ko's full symtab (the module loaded after the patch) and its core part (what
    kallsyms shows once it is loaded: the patch loaded after the module) give different answers, or the same answer
    naming different entries (an ``.init.text`` copy, freed after the module's init). ``symtab`` None skips it.
    """
    if loaded:
        found = kallsyms.find(obj, name)
        status = lookup_occurrences(found, sympos, kallsyms.addresses_visible)
        dependent = False
        entry = None
        if obj != VMLINUX and isinstance(symtab, ModuleSymtab):
            full = symtab_pick(symtab, name, sympos, None)
            now = symtab_pick(symtab, name, sympos, core_bit(kallsyms.kallsyms_all))
            dependent = full.status is not status or full.entry != now.entry
            entry = now.entry
        return Found(status, found.matches, dependent, entry)
    if not isinstance(symtab, ModuleSymtab):
        return Found(None, None)  # no readable .ko: what klp_module_coming() will see cannot be known
    full = symtab_pick(symtab, name, sympos, None)
    later = symtab_pick(symtab, name, sympos, core_bit(kallsyms.kallsyms_all))
    return Found(full.status, full.count, full.status is not later.status or full.entry != later.entry, full.entry)
