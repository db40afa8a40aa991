"""A livepatch module file, read the way the kernel will read it (Documentation/livepatch/module-elf-format.rst).

What matters to livepatch in a patch ``.ko``:

- ``.modinfo``: ``livepatch=Y`` (checked by klp_enable_patch(), 4.5+), ``name=`` and ``vermagic=``;
- the livepatch relocation sections: SHT_RELA + SHF_ALLOC + SHF_RELA_LIVEPATCH, named ``.klp.rela.<object>.<sec>``
  (the flag decides; the name only says which object). Since 5.8 the ``vmlinux`` ones are applied by the module
  loader while the patch loads (klp_apply_section_relocs()), the others when their module is there;
- the livepatch symbols: ``st_shndx == SHN_LIVEPATCH``, named ``.klp.sym.<object>.<name>,<sympos>``.

Everything found here is host-independent; :mod:`klpd.status` adds what the running host says. Each check that
predicts a kernel failure quotes the kernel's message (kernel/livepatch/core.c, "livepatch: " prefix included).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import re
import struct
import sys
import types
from collections.abc import Sequence
from pathlib import Path

from klpd.elf._raw import SHF_ALLOC, SHT_NOBITS, SHT_REL, SHT_RELA, ElfFile, Shdr, cstring, parse_guarded
from klpd.elf.decompress import read_module_file
from klpd.elf.reloc_types import reloc_type_name
from klpd.model import (
    KSYM_NAME_MAX,
    MODULE_NAME_MAX,
    SHF_RELA_LIVEPATCH,
    SHN_LIVEPATCH,
    ElfSymbol,
    KlpSymbolName,
    Modinfo,
    PatchModule,
    Problem,
    RelaSection,
    Relocation,
    Severity,
)
from klpd.names import (
    KLP_RELA_PREFIX,
    canonical_klp_sym_name,
    module_name_from_filename,
    parse_klp_rela_name,
    parse_klp_sym_name,
    rela_object_truncated,
)

# ---------------------------------------------------------------------------------------------------------------
# .modinfo


def _modinfo_from(elf: ElfFile) -> Modinfo:
    # The loader reads the first section called .modinfo (find_sec()); its strings are NUL-separated, with NUL
    # padding between them, and get_next_modinfo() matches "<key>=" prefixes.
    sec = elf.section_by_name(".modinfo")
    if sec is None:
        return Modinfo()
    entries = []
    for raw in bytes(elf.section_data(sec)).split(b"\0"):
        key, sep, value = raw.partition(b"=")
        if sep:
            entries.append((key.decode("utf-8", "replace"), value.decode("utf-8", "replace")))
    return Modinfo(tuple(entries))


def parse_modinfo(data: bytes, path: str) -> Modinfo:
    """The ``.modinfo`` strings of a module file's ELF bytes (cheap: reads only the section headers and .modinfo)."""
    return parse_guarded(lambda d, p: _modinfo_from(ElfFile(d, p)), data, path)


def read_modinfo(path: Path) -> Modinfo:
    """:func:`parse_modinfo` of a (possibly compressed) module file."""
    return parse_modinfo(read_module_file(path), str(path))


# ---------------------------------------------------------------------------------------------------------------
# Symbol names

# The canonical spelling klp-build and kpatch-build write. For a name of this shape the kernel's sscanf reads exactly
# the three groups (no field is cut by its width, no blanks before the digits), so the regex gives the same answer as
# klpd.names.parse_klp_sym_name() at a fraction of its per-character cost; anything else goes to the full grammar.
_CANONICAL_KLP_SYM = re.compile(
    rf"\.klp\.sym\.([^.]{{1,{MODULE_NAME_MAX}}})\.([^,]{{1,{KSYM_NAME_MAX}}}),(0|[1-9][0-9]{{0,18}})", re.DOTALL
)


def _parse_klp_sym_name(name: str) -> KlpSymbolName | None:
    m = _CANONICAL_KLP_SYM.fullmatch(name)
    if m is not None:
        return KlpSymbolName(m[1], m[2], int(m[3]))
    return parse_klp_sym_name(name)


# ---------------------------------------------------------------------------------------------------------------
# Relocations


class _TypeNames(dict[int, str]):
    """reloc_type_name() of one machine, memoised: a module uses a handful of types thousands of times."""

    def __init__(self, machine: str) -> None:
        super().__init__()
        self.machine = machine

    def __missing__(self, rtype: int) -> str:
        name = self[rtype] = reloc_type_name(self.machine, rtype)
        return name


# Relocation is a frozen slots dataclass. Its generated __init__ (five object.__setattr__ calls) was more than half
# the parse time of a 50,000-relocation cumulative patch (benchmarks/bench_parse.py), so relocations are built column
# by column instead: allocate the objects, then fill each slot with map() over its member descriptor, all in C.
# Falls back to the constructor if the model ever stops being a plain slots dataclass; tests compare the two.
_RELOCATION_SLOTS = tuple(f.name for f in dataclasses.fields(Relocation))
_FAST_RELOCATIONS = not hasattr(Relocation, "__post_init__") and all(
    isinstance(Relocation.__dict__.get(name), types.MemberDescriptorType) for name in _RELOCATION_SLOTS
)
_NATIVE_ORDER = "<" if sys.byteorder == "little" else ">"


def _build_relocations(columns: dict[str, Sequence[object]]) -> tuple[Relocation, ...]:
    count = len(columns["offset"])
    if not _FAST_RELOCATIONS:
        return tuple(map(Relocation, *(columns[name] for name in _RELOCATION_SLOTS)))
    objs = list(map(object.__new__, itertools.repeat(Relocation, count)))
    consume = collections.deque[object](maxlen=0).extend
    for name in _RELOCATION_SLOTS:
        consume(map(Relocation.__dict__[name].__set__, objs, columns[name]))
    return tuple(objs)


def _relocation_columns(elf: ElfFile, data: memoryview, as_rela: bool) -> tuple[list[int], list[int], list[int]]:
    """r_offset, r_info and r_addend (0 for REL) of every entry of a relocation section's bytes."""
    word = "Q" if elf.elf_class == 64 else "I"
    fields = 3 if as_rela else 2
    data = data[: len(data) - len(data) % (fields * struct.calcsize(word))]
    if elf.endian == _NATIVE_ORDER:
        # Same byte order as this host: strided views of the words, no per-entry unpacking at all.
        words, signed = (data.cast("Q"), data.cast("q")) if word == "Q" else (data.cast("I"), data.cast("i"))
        addends = signed[2::3].tolist() if as_rela else [0] * (len(words) // 2)
        return words[0::fields].tolist(), words[1::fields].tolist(), addends
    rows = list(struct.iter_unpack(elf.endian + word * 2 + (word.lower() if as_rela else ""), data))
    offsets = [r[0] for r in rows]
    infos = [r[1] for r in rows]
    return offsets, infos, [r[2] for r in rows] if as_rela else [0] * len(rows)


def _relocations(elf: ElfFile, sec: Shdr, as_rela: bool, names: _TypeNames) -> tuple[Relocation, ...]:
    """Decode a relocation section; the count is sh_size / sizeof(Elf_Rel[a]), as in the kernel (sh_entsize unused)."""
    if sec.type == SHT_NOBITS:
        return ()
    offsets, infos, addends = _relocation_columns(elf, elf.section_data(sec), as_rela)
    shift, mask = (32, 0xFFFFFFFF) if elf.elf_class == 64 else (8, 0xFF)
    rtypes = [info & mask for info in infos]
    return _build_relocations(
        {
            "offset": offsets,
            "type": rtypes,
            "type_name": list(map(names.__getitem__, rtypes)),
            "symbol_index": [info >> shift for info in infos],
            "addend": addends,
        }
    )


def _symbol_indexes(elf: ElfFile, sec: Shdr) -> set[int]:
    """The distinct symbol indexes an ordinary REL/RELA section uses (r_info only, for speed)."""
    if sec.type == SHT_NOBITS:
        return set()
    if elf.elf_class == 64:
        fmt, shift = ("8xQ8x" if sec.type == SHT_RELA else "8xQ"), 32
    else:
        fmt, shift = ("4xI4x" if sec.type == SHT_RELA else "4xI"), 8
    fmt = elf.endian + fmt
    size = struct.calcsize(fmt)
    data = elf.section_data(sec)
    data = data[: len(data) - len(data) % size]
    return {info >> shift for (info,) in struct.iter_unpack(fmt, data)}


def _applied_by_loader(elf: ElfFile, sec: Shdr) -> bool:
    """An unflagged REL/RELA section that apply_relocations() (kernel/module/main.c) applies at load time.

    The loader skips relocation sections whose target (sh_info) is out of range or not SHF_ALLOC (debug info).
    """
    if sec.type not in (SHT_REL, SHT_RELA) or sec.flags & SHF_RELA_LIVEPATCH:
        return False
    return 0 < sec.info < len(elf.sections) and bool(elf.sections[sec.info].flags & SHF_ALLOC)


# ---------------------------------------------------------------------------------------------------------------
# Problems


class _Problems:
    """One Problem per (code, subject), in first-found order."""

    def __init__(self) -> None:
        self._found: dict[tuple[str, str | None], Problem] = {}

    def add(self, code: str, message: str, subject: str | None, kernel: str | None = None,
            severity: Severity = Severity.ERROR) -> None:  # fmt: skip
        key = (code, subject)
        if key not in self._found:
            kernel_message = f"livepatch: {kernel}" if kernel is not None else None
            self._found[key] = Problem(code, severity, message, kernel_message, subject)

    def result(self) -> tuple[Problem, ...]:
        return tuple(self._found.values())


def _check_section(problems: _Problems, sec: RelaSection) -> None:
    name = sec.name
    if not sec.is_livepatch:
        problems.add(
            "klp_section_not_flagged",
            f"section {name} is named like a livepatch relocation section but lacks SHF_RELA_LIVEPATCH, so "
            "livepatch never applies it: the module loader either applies it at load time like an ordinary "
            "relocation section, with its livepatch symbols still at address 0, or ignores it; either way the "
            "patched code runs with wrong addresses (NULL dereference)",
            name,
        )
        return
    if sec.object is None:
        problems.add(
            "malformed_section_name",
            f"section {name} is flagged SHF_RELA_LIVEPATCH but its name does not read as "
            f"{KLP_RELA_PREFIX}<object>.<section>: the patch module fails to load",
            name,
            f"section {name} has an incorrectly formatted name",
        )
    if sec.sh_type != SHT_RELA:
        problems.add(
            "klp_section_not_rela",
            f"section {name} is flagged SHF_RELA_LIVEPATCH but is not SHT_RELA (type {sec.sh_type}): the kernel "
            "reads it as Elf_Rela entries all the same",
            name,
        )
    if not sec.sh_flags & SHF_ALLOC:
        # The loader keeps only SHF_ALLOC sections; the others stay in the load image, freed once the patch module
        # is loaded. A vmlinux section is applied while that image still exists (since 5.8), a module one later.
        later = sec.object not in (None, "vmlinux")
        problems.add(
            "klp_section_not_alloc",
            f"section {name} is flagged SHF_RELA_LIVEPATCH but not SHF_ALLOC: its relocations are left in the "
            "module's load image, which is freed once the patch module has loaded"
            + (", so applying them when the module loads reads freed memory" if later else ""),
            name,
            severity=Severity.ERROR if later else Severity.WARNING,
        )


def _check_section_name_width(problems: _Problems, name: str) -> None:
    if rela_object_truncated(name):
        obj = parse_klp_rela_name(name)
        problems.add(
            "section_object_truncated",
            f"section {name}: the object name is longer than the kernel reads (55 characters), so the kernel "
            f"applies it to object '{obj}', which no loadable module can be named",
            name,
        )


def _check_symbol(problems: _Problems, sec: RelaSection, sym: ElfSymbol) -> None:
    """The checks klp_resolve_symbols() makes of each symbol a livepatch relocation uses, in its order."""
    if not sym.is_livepatch:
        problems.add(
            "not_livepatch_symbol",
            f"symbol {sym.name} (index {sym.index}) is used by livepatch relocation section {sec.name} but its "
            f"st_shndx is {sym.shndx:#x}, not SHN_LIVEPATCH",
            sym.name,
            f"symbol {sym.name} is not marked as a livepatch symbol",
        )
        return
    parsed = sym.parsed
    if parsed is None:
        problems.add(
            "malformed_symbol_name",
            f"livepatch symbol {sym.name} (used by {sec.name}) does not read as .klp.sym.<object>.<name>,<sympos>",
            sym.name,
            f"symbol {sym.name} has an incorrectly formatted name",
        )
        return
    if sec.object is not None and sec.object != "vmlinux" and parsed.object == "vmlinux":
        problems.add(
            "vmlinux_from_module_section",
            f"livepatch symbol {sym.name} names vmlinux but is used by the module-specific section {sec.name}",
            sym.name,
            f"invalid access to vmlinux symbol '{parsed.name}' from module-specific livepatch relocation section",
        )
    if sym.name != canonical_klp_sym_name(parsed):
        problems.add(
            "sympos_not_canonical",
            f"livepatch symbol {sym.name} is accepted by the kernel's sscanf but is not in canonical form "
            f"({canonical_klp_sym_name(parsed)}): it reads as sympos {parsed.sympos}",
            sym.name,
            severity=Severity.WARNING,
        )


# ---------------------------------------------------------------------------------------------------------------
# The module


def _symbol(raw_syms: list[tuple[int, int, int, int]], strtab: bytes, index: int) -> ElfSymbol:
    name_off, _info, shndx, value = raw_syms[index]
    name = cstring(strtab, name_off)
    return ElfSymbol(index, name, shndx, value, _parse_klp_sym_name(name))


def _parse_patch_module(data: bytes, path: str) -> PatchModule:
    elf = ElfFile(data, path)
    modinfo = _modinfo_from(elf)
    symtab = elf.symtab_section()
    if symtab is None:
        raise elf.error("no symbol table (stripped?): the module loader refuses such a module")
    strtab = elf.symbol_string_table(symtab)
    raw_syms = elf.raw_symbols(symtab)
    nsyms = len(raw_syms)
    livepatch_idx = [i for i, s in enumerate(raw_syms) if s[2] == SHN_LIVEPATCH]
    type_names = _TypeNames(elf.machine)

    sections: list[RelaSection] = []
    ordinary_uses: dict[int, list[str]] = {}  # livepatch symbol -> ordinary relocation sections using it
    livepatch_set = set(livepatch_idx)
    for sh in elf.sections[1:]:
        flagged = bool(sh.flags & SHF_RELA_LIVEPATCH)
        if flagged or sh.name.startswith(KLP_RELA_PREFIX):
            # The kernel reads a flagged section as Elf_Rela whatever its sh_type; an unflagged one is the
            # loader's, which honours SHT_REL.
            as_rela = flagged or sh.type != SHT_REL
            target = elf.section_name(sh.info)
            relocations = _relocations(elf, sh, as_rela, type_names)
            obj = parse_klp_rela_name(sh.name)
            sections.append(RelaSection(sh.num, sh.name, sh.type, sh.flags, sh.info, target, obj, relocations))
        if livepatch_set and _applied_by_loader(elf, sh):
            for idx in sorted(_symbol_indexes(elf, sh) & livepatch_set):
                ordinary_uses.setdefault(idx, []).append(sh.name)

    symbols = {i: _symbol(raw_syms, strtab, i) for i in livepatch_idx}
    problems = _Problems()
    mod_name = modinfo.name or module_name_from_filename(path)
    if not modinfo.livepatch:
        problems.add(
            "not_livepatch_module",
            f"{path}: modinfo has no livepatch=Y, so the kernel will not enable it as a livepatch",
            path,
            f"module {mod_name} is not marked as a livepatch module",
        )
    # A symbol's checks depend on the section only through "vmlinux or module-specific", and problems are kept
    # per (code, symbol), so each symbol is checked once per kind of section: the first use names the section.
    seen: dict[bool | None, set[int]] = {None: set(), False: set(), True: set()}
    for sec in sections:
        _check_section(problems, sec)
        if sec.name.startswith(KLP_RELA_PREFIX):
            _check_section_name_width(problems, sec.name)
        flagged = sec.is_livepatch
        done = seen[sec.object not in (None, "vmlinux")] if flagged else seen[None]
        for reloc in sec.relocations:
            idx = reloc.symbol_index
            if idx in done:
                continue
            if idx >= nsyms:
                if flagged:
                    problems.add(
                        "relocation_symbol_out_of_range",
                        f"section {sec.name} has a relocation against symbol index {idx}, past the end of the "
                        f"symbol table ({nsyms} entries): the kernel reads whatever lies beyond it",
                        sec.name,
                    )
                continue
            done.add(idx)
            sym = symbols.get(idx)
            if sym is None:
                sym = symbols[idx] = _symbol(raw_syms, strtab, idx)
            if flagged:
                _check_symbol(problems, sec, sym)
    for idx, sec_names in ordinary_uses.items():
        sym = symbols[idx]
        problems.add(
            "livepatch_symbol_in_ordinary_rela",
            f"livepatch symbol {sym.name} is used by the ordinary relocation section(s) {', '.join(sec_names)}: "
            "the module loader does not resolve livepatch symbols, so it relocates against address 0 and the "
            "patched code dereferences NULL",
            sym.name,
        )
    symbols = dict(sorted(symbols.items()))

    return PatchModule(
        path=path,
        name=mod_name,
        elf_class=elf.elf_class,
        little_endian=elf.little_endian,
        machine=elf.machine,
        modinfo=modinfo,
        has_versions=elf.section_by_name("__versions") is not None,
        symtab_index=symtab.num,
        sections=tuple(sections),
        symbols=symbols,
        problems=problems.result(),
    )


def parse_patch_module(data: bytes, path: str) -> PatchModule:
    """Parse the ELF bytes of a (patch) module; ``path`` names it in messages and in ``PatchModule.path``.

    Any file parses unless it is not a well-formed ELF relocatable object (then :class:`ElfFormatError`); a
    module that is not a livepatch module at all parses too, with a ``not_livepatch_module`` problem.
    """
    return parse_guarded(_parse_patch_module, data, path)


def read_patch_module(path: Path, display_path: str | None = None) -> PatchModule:
    """Read, decompress and parse the module file at ``path``; ``display_path`` names it (default: ``path``).

    Unreadable -> :class:`~klpd.errors.SourceError`; malformed -> :class:`ElfFormatError`.
    """
    shown = display_path if display_path is not None else str(path)
    return parse_patch_module(read_module_file(path, shown), shown)
