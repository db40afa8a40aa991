"""A livepatch module file, read the way the kernel will read it (Documentation/livepatch/module-elf-format.rst).

What matters to livepatch in a patch ``.ko``:

- ``.modinfo`` (:mod:`klpd.elf.modinfo`): ``livepatch=Y`` (checked by klp_enable_patch(), 4.5+), ``name=`` and
  ``vermagic=``;
- the livepatch relocation sections (:mod:`klpd.elf.relocations`): SHT_RELA + SHF_ALLOC + SHF_RELA_LIVEPATCH, named
  ``.klp.rela.<object>.<sec>`` (the flag decides; the name only says which object). Since 5.8 the ``vmlinux`` ones
  are applied by the module loader while the patch loads (klp_apply_section_relocs()), the others when their module
  is there;
- the livepatch symbols: ``st_shndx == SHN_LIVEPATCH``, named ``.klp.sym.<object>.<name>,<sympos>``.

Everything found here is host-independent (:mod:`klpd.elf.klp_checks` lists what the file alone shows to be wrong);
:mod:`klpd.predict` adds what the running host says.
"""

from __future__ import annotations

import re

from klpd import kernel_messages as msg
from klpd.decompress import read_module_bytes
from klpd.elf._raw import SHT_REL, ElfFile, cstring, parse_guarded
from klpd.elf.description import describe
from klpd.elf.klp_checks import Problems, check_section, check_section_name_width, check_symbol
from klpd.elf.load_info import imports, modversions, this_module_size
from klpd.elf.modinfo import modinfo_from
from klpd.elf.relocations import TypeNames, applied_by_loader, relocations, symbol_indexes
from klpd.elf.signature import parse_module_signature
from klpd.model import (
    KSYM_NAME_MAX,
    MODULE_NAME_MAX,
    SHF_RELA_LIVEPATCH,
    SHN_LIVEPATCH,
    ElfSymbol,
    KlpSymbolName,
    PatchModule,
    RelaSection,
)
from klpd.names import KLP_RELA_PREFIX, module_name_from_filename, parse_klp_rela_name, parse_klp_sym_name
from klpd.root import HostPath

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


def _symbol(raw_syms: list[tuple[int, int, int, int]], strtab: bytes, index: int) -> ElfSymbol:
    name_off, _info, shndx, value = raw_syms[index]
    name = cstring(strtab, name_off)
    return ElfSymbol(index, name, shndx, value, _parse_klp_sym_name(name))


def _parse_patch_module(data: bytes, path: str) -> PatchModule:
    # The loader checks the ELF without the signature (mod_verify_sig() shortens the image first), so a section
    # reaching into the trailer is as truncated to klpd as to the kernel.
    signature, elf_len = parse_module_signature(data)
    elf = ElfFile(data[:elf_len] if elf_len < len(data) else data, path)
    modinfo = modinfo_from(elf)
    symtab = elf.symtab_section()
    if symtab is None:
        raise elf.error("no symbol table (stripped?): the module loader refuses such a module")
    strtab = elf.symbol_string_table(symtab)
    raw_syms = elf.raw_symbols(symtab)
    nsyms = len(raw_syms)
    livepatch_idx = [i for i, s in enumerate(raw_syms) if s[2] == SHN_LIVEPATCH]
    type_names = TypeNames(elf.machine)

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
            relocs = relocations(elf, sh, as_rela, type_names)
            obj = parse_klp_rela_name(sh.name)
            sections.append(RelaSection(sh.num, sh.name, sh.type, sh.flags, sh.info, target, obj, relocs))
        if livepatch_set and applied_by_loader(elf, sh):
            for idx in sorted(symbol_indexes(elf, sh) & livepatch_set):
                ordinary_uses.setdefault(idx, []).append(sh.name)

    symbols = {i: _symbol(raw_syms, strtab, i) for i in livepatch_idx}
    problems = Problems()
    mod_name = modinfo.name or module_name_from_filename(path)
    if not modinfo.livepatch:
        problems.add(
            "not_livepatch_module",
            f"{path}: modinfo has no livepatch=Y, so the kernel will not enable it as a livepatch",
            path,
            msg.NOT_LIVEPATCH_MODULE.format(module=mod_name),
        )
    # A symbol's checks depend on the section only through "vmlinux or module-specific", and problems are kept
    # per (code, symbol), so each symbol is checked once per kind of section: the first use names the section.
    seen: dict[bool | None, set[int]] = {None: set(), False: set(), True: set()}
    for sec in sections:
        check_section(problems, sec)
        if sec.name.startswith(KLP_RELA_PREFIX):
            check_section_name_width(problems, sec.name)
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
                check_symbol(problems, sec, sym)
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
    description = describe(elf, problems, modinfo.livepatch)

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
        signature=signature,
        versions=modversions(elf),
        imports=imports(elf, raw_syms, strtab),
        this_module_size=this_module_size(elf),
        description=description,
    )


def parse_patch_module(data: bytes, path: str) -> PatchModule:
    """Parse the ELF bytes of a (patch) module; ``path`` names it in messages and in ``PatchModule.path``.

    Any file parses unless it is not a well-formed ELF relocatable object (then :class:`ElfFormatError`); a
    module that is not a livepatch module at all parses too, with a ``not_livepatch_module`` problem.
    """
    return parse_guarded(_parse_patch_module, data, path)


def read_patch_module(where: HostPath) -> PatchModule:
    """Read, decompress and parse the module file ``where``; messages and ``PatchModule.path`` name ``where.host``.

    Unreadable -> :class:`~klpd.errors.SourceError`; malformed -> :class:`~klpd.errors.ElfFormatError`.
    """
    return parse_patch_module(read_module_bytes(where), where.host)
