"""An in-memory ELF writer for synthetic kernel modules (after drgn's tests/elfwriter.py).

Two levels:

- :func:`create_elf_file` lays out any relocatable object from :class:`Section` and :class:`Symbol` lists: ELF32 or
  ELF64, either byte order, any e_machine, any section type/flags/link/info/data, REL/RELA sections built from
  :class:`Reloc` lists (symbols named or indexed), and knobs to break the header (e_shnum, e_shstrndx, e_shentsize,
  extended numbering, section offset/size/name overrides). ``.symtab``, ``.strtab`` and ``.shstrtab`` are added
  last, in that order; the null section 0 and the null symbol 0 are added first.
- :class:`KlpModule` builds a livepatch module: ``.modinfo`` (livepatch=Y, name, vermagic), functions,
  ``.klp.sym.<obj>.<sym>,<pos>`` symbols (st_shndx = SHN_LIVEPATCH) and ``.klp.rela.<obj>.<sec>`` sections
  (SHT_RELA | SHF_ALLOC | SHF_RELA_LIVEPATCH). Every default can be overridden to build malformed variants: wrong
  flags or type, wrong shndx, bad names, ordinary ``.rela`` sections using livepatch symbols, no modinfo...

Example::

    from elfwriter import KlpModule, R_X86_64_PC32

    m = KlpModule("livepatch_demo")                       # modinfo livepatch=Y name=livepatch_demo vermagic=...
    text = m.function("livepatch_cmdline_proc_show")      # section .text.livepatch_cmdline_proc_show + FUNC symbol
    sym = m.klp_sym("vmlinux", "saved_command_line", 0)   # .klp.sym.vmlinux.saved_command_line,0
    m.klp_rela("vmlinux", text, [(0x10, sym, R_X86_64_PC32, -4)])   # .klp.rela.vmlinux.text.livepatch_cmdline...
    m.klp_rela("ext4", text, [(0x20, m.klp_sym("ext4", "ext4_attr_store", 1), R_X86_64_PC32, -4)],
               flags=SHF_ALLOC)                           # malformed: SHF_RELA_LIVEPATCH missing
    data: bytes = m.build()                               # or m.build(elf_class=32, little_endian=False, ...)

    # A plain target module:
    data = create_elf_file(
        [Section(".text", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, b"\\0" * 16)],
        [Symbol("foo", value=0, shndx=".text", type=STT_FUNC)],
    )
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

ET_REL = 1
EM_386 = 3
EM_PPC = 20
EM_PPC64 = 21
EM_S390 = 22
EM_ARM = 40
EM_X86_64 = 62
EM_AARCH64 = 183

SHT_NULL = 0
SHT_PROGBITS = 1
SHT_SYMTAB = 2
SHT_STRTAB = 3
SHT_RELA = 4
SHT_NOBITS = 8
SHT_REL = 9

SHF_WRITE = 0x1
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4
SHF_INFO_LINK = 0x40
SHF_RELA_LIVEPATCH = 0x00100000

SHN_UNDEF = 0
SHN_LIVEPATCH = 0xFF20
SHN_ABS = 0xFFF1
SHN_COMMON = 0xFFF2
SHN_XINDEX = 0xFFFF

STB_LOCAL = 0
STB_GLOBAL = 1
STB_WEAK = 2
STT_NOTYPE = 0
STT_OBJECT = 1
STT_FUNC = 2
STT_SECTION = 3

R_X86_64_64 = 1
R_X86_64_PC32 = 2
R_X86_64_PLT32 = 4
R_AARCH64_CALL26 = 283
R_386_PC32 = 2
R_PPC64_REL24 = 10
R_390_PC32DBL = 19


@dataclass
class Reloc:
    """One relocation; ``symbol`` is a symbol name (first symbol of that name) or a raw symbol index."""

    offset: int
    symbol: int | str
    type: int
    addend: int = 0


RelocLike = Reloc | tuple[int, int | str, int] | tuple[int, int | str, int, int]


@dataclass
class Section:
    """One section. ``link``/``info`` may name another section. With ``relocs`` the data is built from them.

    ``size``/``offset``/``name_offset`` override sh_size, sh_offset and sh_name (malformed files).
    """

    name: str
    type: int = SHT_PROGBITS
    flags: int = 0
    data: bytes = b""
    link: int | str = 0
    info: int | str = 0
    addralign: int = 1
    entsize: int = 0
    relocs: Sequence[RelocLike] | None = None
    size: int | None = None
    offset: int | None = None
    name_offset: int | None = None


@dataclass
class Symbol:
    """One symbol. ``shndx`` may name a section. ``name_offset`` overrides st_name (0 makes it unnamed)."""

    name: str
    value: int = 0
    size: int = 0
    bind: int = STB_GLOBAL
    type: int = STT_NOTYPE
    shndx: int | str = SHN_UNDEF
    other: int = 0
    name_offset: int | None = None


def _as_reloc(r: RelocLike) -> Reloc:
    return r if isinstance(r, Reloc) else Reloc(*r)


def _resolve(value: int | str, table: dict[str, int], what: str) -> int:
    if isinstance(value, int):
        return value
    if value not in table:
        raise KeyError(f"elfwriter: no {what} named {value!r}")
    return table[value]


def _reloc_data(sec: Section, sym_index: dict[str, int], elf_class: int, endian: str) -> bytes:
    rela = sec.type != SHT_REL
    fmt = endian + {(64, True): "QQq", (64, False): "QQ", (32, True): "IIi", (32, False): "II"}[elf_class, rela]
    out = bytearray()
    for r in map(_as_reloc, sec.relocs or ()):
        sym = _resolve(r.symbol, sym_index, "symbol")
        info = (sym << 32) | (r.type & 0xFFFFFFFF) if elf_class == 64 else (sym << 8) | (r.type & 0xFF)
        out += struct.pack(fmt, r.offset, info, r.addend) if rela else struct.pack(fmt, r.offset, info)
    return bytes(out)


def create_elf_file(
    sections: Sequence[Section],
    symbols: Sequence[Symbol] = (),
    *,
    elf_class: int = 64,
    little_endian: bool = True,
    machine: int = EM_X86_64,
    e_type: int = ET_REL,
    symtab: bool = True,
    e_shnum: int | None = None,
    e_shstrndx: int | None = None,
    e_shentsize: int | None = None,
    extended_numbering: bool = False,
) -> bytes:
    """The bytes of an ELF file with ``sections`` (after the null section) and ``symbols`` (after the null symbol).

    ``symtab=False`` leaves out .symtab/.strtab. ``e_shnum``/``e_shstrndx``/``e_shentsize`` write those header
    fields as given; ``extended_numbering`` writes e_shnum 0 and e_shstrndx SHN_XINDEX with the real values in
    section 0's sh_size and sh_link.
    """
    endian = "<" if little_endian else ">"
    is64 = elf_class == 64
    all_secs = [Section("", SHT_NULL), *sections]
    if symtab:
        all_secs += [Section(".symtab", SHT_SYMTAB), Section(".strtab", SHT_STRTAB)]
    all_secs.append(Section(".shstrtab", SHT_STRTAB))
    sec_index: dict[str, int] = {}
    for i, s in enumerate(all_secs):
        sec_index.setdefault(s.name, i)
    sym_index: dict[str, int] = {}
    for i, sym in enumerate(symbols, 1):
        sym_index.setdefault(sym.name, i)

    shstrtab = bytearray(b"\0")
    name_offsets = []
    for s in all_secs:
        if s.name:
            name_offsets.append(len(shstrtab))
            shstrtab += s.name.encode() + b"\0"
        else:
            name_offsets.append(0)

    datas: list[bytes] = []
    for s in all_secs:
        if s.name == ".symtab" and symtab and s.type == SHT_SYMTAB:
            datas.append(b"")  # filled below
        elif s.relocs is not None:
            datas.append(_reloc_data(s, sym_index, elf_class, endian))
        else:
            datas.append(s.data)
    datas[-1] = bytes(shstrtab)

    symtab_info = 1
    if symtab:
        strtab = bytearray(b"\0")
        entries = [struct.pack(endian + ("IBBHQQ" if is64 else "IIIBBH"), *([0] * 6))]
        leading_locals = True
        for sym in symbols:
            st_name = len(strtab) if sym.name else 0
            if sym.name:
                strtab += sym.name.encode() + b"\0"
            if sym.name_offset is not None:
                st_name = sym.name_offset
            info = (sym.bind << 4) | (sym.type & 0xF)
            shndx = _resolve(sym.shndx, sec_index, "section")
            if is64:
                entries.append(struct.pack(endian + "IBBHQQ", st_name, info, sym.other, shndx, sym.value, sym.size))
            else:
                entries.append(struct.pack(endian + "IIIBBH", st_name, sym.value, sym.size, info, sym.other, shndx))
            if leading_locals and sym.bind == STB_LOCAL:
                symtab_info += 1
            else:
                leading_locals = False
        symtab_idx = sec_index[".symtab"]
        datas[symtab_idx] = b"".join(entries)
        datas[symtab_idx + 1] = bytes(strtab)

    ehsize = 64 if is64 else 52
    shentsize = 64 if is64 else 40
    out = bytearray(ehsize)
    offsets = []
    for s, data in zip(all_secs, datas, strict=True):
        align = max(s.addralign, 1)
        if s.type != SHT_NOBITS:
            out += b"\0" * (-len(out) % align)
        offsets.append(len(out))
        if s.type != SHT_NOBITS:
            out += data
    out += b"\0" * (-len(out) % 8)
    shoff = len(out)
    nsec = len(all_secs)
    shstrndx = nsec - 1
    word = "Q" if is64 else "I"
    shdr_fmt = f"{endian}II{word}{word}{word}{word}II{word}{word}"
    for i, (s, data) in enumerate(zip(all_secs, datas, strict=True)):
        link = _resolve(s.link, sec_index, "section")
        info = _resolve(s.info, sec_index, "section")
        entsize = s.entsize
        if s.type == SHT_SYMTAB and s.name == ".symtab" and symtab:
            link = link or sec_index[".strtab"]
            info = info or symtab_info
            entsize = entsize or (24 if is64 else 16)
        if s.relocs is not None:
            link = link or sec_index.get(".symtab", 0)
            if not entsize:
                entsize = (24 if is64 else 12) if s.type != SHT_REL else (16 if is64 else 8)
        size = len(data) if s.size is None else s.size
        offset = offsets[i] if s.offset is None else s.offset
        name = name_offsets[i] if s.name_offset is None else s.name_offset
        if i == 0:
            offset = 0
            if extended_numbering:
                size, link = nsec, shstrndx
        out += struct.pack(shdr_fmt, name, s.type, s.flags, 0, offset, size, link, info, max(s.addralign, 0),
                           entsize)  # fmt: skip
    hdr_shnum = nsec if e_shnum is None else e_shnum
    hdr_shstrndx = shstrndx if e_shstrndx is None else e_shstrndx
    if extended_numbering:
        hdr_shnum, hdr_shstrndx = 0, SHN_XINDEX
    ident = b"\x7fELF" + bytes([2 if is64 else 1, 1 if little_endian else 2, 1, 0]) + b"\0" * 8
    header = struct.pack(
        f"{endian}HHI{word}{word}{word}IHHHHHH",
        e_type, machine, 1, 0, 0, shoff, 0, ehsize, 0, 0,
        shentsize if e_shentsize is None else e_shentsize, hdr_shnum, hdr_shstrndx,
    )  # fmt: skip
    out[:ehsize] = ident + header
    return bytes(out)


def modinfo_data(entries: Sequence[tuple[str, str]]) -> bytes:
    """The bytes of a .modinfo section: ``key=value\\0`` for each entry, in order."""
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in entries)


@dataclass
class KlpModule:
    """A livepatch module under construction; see the module docstring for an example.

    ``modinfo`` is the list of .modinfo entries written, in order (edit it freely; ``None`` drops the section).
    ``sections``/``symbols`` are the :class:`Section`/:class:`Symbol` lists, in file order, also free to edit.
    """

    name: str = "livepatch_test"
    livepatch: bool = True
    vermagic: str = "6.1.0-test SMP preempt mod_unload modversions "
    modinfo: list[tuple[str, str]] | None = None
    sections: list[Section] = field(default_factory=list)
    symbols: list[Symbol] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.modinfo is None:
            self.modinfo = [("license", "GPL")]
            if self.livepatch:
                self.modinfo.append(("livepatch", "Y"))
            self.modinfo += [("name", self.name), ("vermagic", self.vermagic)]

    def section(self, name: str, **kw: object) -> Section:
        """Append any section (keyword arguments as in :class:`Section`)."""
        sec = Section(name, **kw)  # type: ignore[arg-type]
        self.sections.append(sec)
        return sec

    def symbol(self, name: str, **kw: object) -> str:
        """Append any symbol (keyword arguments as in :class:`Symbol`); returns its name."""
        self.symbols.append(Symbol(name, **kw))  # type: ignore[arg-type]
        return name

    def has_section(self, name: str) -> bool:
        return any(s.name == name for s in self.sections)

    def function(self, name: str, size: int = 64, section: str | None = None) -> str:
        """A function ``name`` in its own section (``.text.<name>``, AX); returns the section name."""
        sec = section or f".text.{name}"
        if not self.has_section(sec):
            self.section(sec, type=SHT_PROGBITS, flags=SHF_ALLOC | SHF_EXECINSTR, data=b"\xcc" * size, addralign=16)
        self.symbol(name, shndx=sec, type=STT_FUNC, size=size)
        return sec

    def klp_sym(self, obj: str, name: str, sympos: int = 0, *, elf_name: str | None = None,
                shndx: int | str = SHN_LIVEPATCH, bind: int = STB_GLOBAL) -> str:  # fmt: skip
        """A livepatch symbol ``.klp.sym.<obj>.<name>,<sympos>`` (or ``elf_name``), added once; returns its name."""
        full = elf_name if elf_name is not None else f".klp.sym.{obj}.{name},{sympos}"
        if not any(s.name == full for s in self.symbols):
            self.symbol(full, shndx=shndx, bind=bind)
        return full

    def klp_rela(self, obj: str, target: str, relocs: Sequence[RelocLike], *, name: str | None = None,
                 flags: int = SHF_ALLOC | SHF_RELA_LIVEPATCH | SHF_INFO_LINK, type: int = SHT_RELA,
                 info: int | str | None = None) -> Section:  # fmt: skip
        """A livepatch relocation section ``.klp.rela.<obj><target>`` applying ``relocs`` to section ``target``.

        ``target`` is created (AX PROGBITS) if missing. ``name``, ``flags``, ``type``, ``info`` override.
        """
        if not self.has_section(target):
            self.section(target, type=SHT_PROGBITS, flags=SHF_ALLOC | SHF_EXECINSTR, data=b"\xcc" * 64)
        sec_name = name if name is not None else f".klp.rela.{obj}{target}"
        return self.section(sec_name, type=type, flags=flags, info=target if info is None else info,
                            relocs=list(relocs), addralign=8)  # fmt: skip

    def rela(self, target: str, relocs: Sequence[RelocLike], *, name: str | None = None, type: int = SHT_RELA,
             flags: int = SHF_INFO_LINK) -> Section:  # fmt: skip
        """An ordinary relocation section (``.rela<target>``, or ``.rel<target>`` for SHT_REL)."""
        if not self.has_section(target):
            self.section(target, type=SHT_PROGBITS, flags=SHF_ALLOC | SHF_EXECINSTR, data=b"\xcc" * 64)
        default = (".rel" if type == SHT_REL else ".rela") + target
        return self.section(name or default, type=type, flags=flags, info=target, relocs=list(relocs), addralign=8)

    def build(self, *, versions: bool = False, **kw: object) -> bytes:
        """The module's bytes. ``versions`` adds a __versions section; ``kw`` go to :func:`create_elf_file`."""
        secs = []
        if self.modinfo is not None:
            secs.append(Section(".modinfo", SHT_PROGBITS, SHF_ALLOC, modinfo_data(self.modinfo)))
        if versions:
            secs.append(Section("__versions", SHT_PROGBITS, SHF_ALLOC, b"\0" * 64, addralign=8))
        secs += self.sections
        return create_elf_file(secs, self.symbols, **kw)  # type: ignore[arg-type]


def patch_using(name: str, vermagic: str, *uses: tuple[str, str, int]) -> KlpModule:
    """A livepatch whose one function uses each (object, symbol, sympos) through a ``.klp.rela.<object>`` section.

    The usual shape of a kpatch/klp-build module; relocation i sits at offset 8*i of ``.text.patched_fn``.
    """
    m = KlpModule(name, vermagic=vermagic)
    text = m.function("patched_fn")
    by_obj: dict[str, list[RelocLike]] = {}
    for i, (obj, sym, pos) in enumerate(uses):
        by_obj.setdefault(obj, []).append((i * 8, m.klp_sym(obj, sym, pos), R_X86_64_PC32, -4))
    for obj, relocs in by_obj.items():
        m.klp_rela(obj, text, relocs)
    return m


def target_module(*funcs: tuple[str, str]) -> bytes:
    """A plain (target) module defining functions given as (name, section); sections are AX PROGBITS."""
    sections = sorted({sec for _, sec in funcs})
    return create_elf_file(
        [Section(s, SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, b"\xcc" * 64) for s in sections],
        [Symbol(n, shndx=sec, type=STT_FUNC) for n, sec in funcs],
    )
