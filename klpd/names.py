"""The kernel's livepatch name grammar, reproduced to the byte.

kernel/livepatch/core.c parses names with the kernel's own vsscanf() (lib/vsprintf.c):

- sections: ``sscanf(name, ".klp.rela.%55[^.]", sec_objname)`` in klp_write_section_relocs();
- symbols: ``sscanf(name, ".klp.sym.%55[^.].%511[^,],%lu", sym_objname, sym_name, &sympos)`` in
  klp_resolve_symbols() (``%127[^,]`` before 6.1, when KSYM_NAME_LEN was 128).

The kernel's vsscanf differs from libc's: ``%[`` must match at least one character and never matches NUL; ``%lu``
skips leading white space, then needs a decimal digit (no sign), reads digits and ignores whatever follows them.
"""

from __future__ import annotations

from klpd.model import KSYM_NAME_MAX, MODULE_NAME_MAX, KlpSymbolName

KLP_RELA_PREFIX = ".klp.rela."
KLP_SYM_PREFIX = ".klp.sym."
_ULONG_MASK = (1 << 64) - 1
_SPACES = " \t\n\v\f\r"


def _scan_set_except(text: str, start: int, stop_char: str, width: int) -> int:
    """End index of a ``%<width>[^<stop_char>]`` match starting at ``start`` (== start when it matches nothing)."""
    end = start
    limit = min(len(text), start + width)
    while end < limit and text[end] != stop_char and text[end] != "\0":
        end += 1
    return end


def parse_klp_rela_name(name: str) -> str | None:
    """The object name the kernel reads from a livepatch relocation section name, or None when sscanf fails.

    Like the kernel, an object name longer than 55 characters is cut to its first 55; see
    :func:`rela_object_truncated`.
    """
    if not name.startswith(KLP_RELA_PREFIX):
        return None
    start = len(KLP_RELA_PREFIX)
    end = _scan_set_except(name, start, ".", MODULE_NAME_MAX)
    return name[start:end] if end > start else None


def rela_object_truncated(name: str) -> bool:
    """True when the section's object field is longer than the kernel reads (it silently takes 55 chars)."""
    obj = parse_klp_rela_name(name)
    if obj is None:
        return False
    rest = name[len(KLP_RELA_PREFIX) + len(obj) :]
    return bool(rest) and rest[0] not in ".\0"


def parse_klp_sym_name(name: str, ksym_name_max: int = KSYM_NAME_MAX) -> KlpSymbolName | None:
    """The (object, symbol, sympos) the kernel reads from a ``.klp.sym`` name, or None unless all three parse."""
    if not name.startswith(KLP_SYM_PREFIX):
        return None
    pos = len(KLP_SYM_PREFIX)
    obj_end = _scan_set_except(name, pos, ".", MODULE_NAME_MAX)
    if obj_end == pos or name[obj_end : obj_end + 1] != ".":
        return None
    sym_start = obj_end + 1
    sym_end = _scan_set_except(name, sym_start, ",", ksym_name_max)
    if sym_end == sym_start or name[sym_end : sym_end + 1] != ",":
        return None
    digits_start = sym_end + 1
    while digits_start < len(name) and name[digits_start] in _SPACES:
        digits_start += 1
    digits_end = digits_start
    while digits_end < len(name) and "0" <= name[digits_end] <= "9":
        digits_end += 1
    if digits_end == digits_start:
        return None
    # simple_strntoull() wraps silently on overflow; unsigned long is 64-bit on every livepatch architecture but
    # 32-bit ppc, where so many occurrences cannot exist anyway.
    sympos = int(name[digits_start:digits_end]) & _ULONG_MASK
    return KlpSymbolName(name[pos:obj_end], name[sym_start:sym_end], sympos)


def canonical_klp_sym_name(parsed: KlpSymbolName) -> str:
    """The name klp-build and kpatch-build write for these fields."""
    return f"{KLP_SYM_PREFIX}{parsed.object}.{parsed.name},{parsed.sympos}"


def module_name_from_filename(filename: str) -> str:
    """The module name a file will load as: basename without .ko[.xz|.gz|.zst], '-' read as '_'."""
    base = filename.rsplit("/", 1)[-1]
    for suffix in (".ko.xz", ".ko.gz", ".ko.zst", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")
