"""Builders of synthetic patch descriptions (klpd/elf/description) on top of elfwriter.KlpModule, for every
livepatch architecture and producer: a static ``struct klp_patch`` (5.5+ or 4.16-5.0 layout), kpatch-build's
``.kpatch.funcs`` and upstream klp-build's ``klp_object_ext`` arrays. Pointers are written as real modules have
them: a zero word with an absolute RELA relocation against a section symbol plus an addend.

Shapes (None = NULL pointer)::

    Func = (old_name, new_func, sympos)                 # new_func: a function symbol this builder defines
    Obj  = (name, [Func, ...] or None, [callback slot, ...])

Every builder returns the KlpModule; edit its sections (e.g. ``relocs_of(m, ".data")``) for malformed variants,
then ``build(m, arch)``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from elfwriter import (
    EM_386,
    EM_AARCH64,
    EM_PPC,
    EM_PPC64,
    EM_S390,
    EM_X86_64,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_INFO_LINK,
    SHF_WRITE,
    SHT_PROGBITS,
    SHT_RELA,
    STB_LOCAL,
    STT_OBJECT,
    STT_SECTION,
    KlpModule,
    Reloc,
    Section,
)

Func = tuple[str | None, str | None, int]
Obj = tuple[str | None, list[Func] | None, list[str]]
SLOTS = ("pre_patch", "post_patch", "pre_unpatch", "post_unpatch")


@dataclass(frozen=True)
class Arch:
    name: str
    machine: int
    little_endian: bool
    absolute: int  # the pointer relocation type
    elf_class: int = 64

    @property
    def p(self) -> int:
        return self.elf_class // 8

    @property
    def word(self) -> str:
        return ("<" if self.little_endian else ">") + ("Q" if self.p == 8 else "I")


ARCHES = {
    a.name: a
    for a in (
        Arch("x86_64", EM_X86_64, True, 1),
        Arch("aarch64", EM_AARCH64, True, 257),
        Arch("ppc64le", EM_PPC64, True, 38),
        Arch("ppc64", EM_PPC64, False, 38),
        Arch("s390x", EM_S390, False, 22),
    )
}
PPC32 = Arch("ppc32", EM_PPC, False, 1, 32)
I386 = Arch("i386", EM_386, True, 1, 32)
X86_64 = ARCHES["x86_64"]


@dataclass
class Blob:
    """The bytes of one section being written, with the relocations that fill its pointers."""

    arch: Arch
    data: bytearray = field(default_factory=bytearray)
    relocs: list[Reloc] = field(default_factory=list)

    def ptr(self, target: tuple[str, int] | None) -> None:
        """A pointer to (symbol, addend), or NULL."""
        if target is not None:
            self.relocs.append(Reloc(len(self.data), target[0], self.arch.absolute, target[1]))
        self.data += bytes(self.arch.p)

    def word(self, value: int) -> None:
        self.data += struct.pack(self.arch.word, value)

    def u32(self, value: int) -> None:
        self.data += struct.pack(self.arch.word[0] + "I", value)

    def zeros_to(self, size: int) -> None:
        assert len(self.data) <= size, (len(self.data), size)
        self.data += bytes(size - len(self.data))


class Writer:
    """Sections of a module under construction: strings, functions and data blobs with their .rela sections."""

    def __init__(self, arch: Arch, name: str = "livepatch_test") -> None:
        self.arch = arch
        self.module = KlpModule(name)
        self.strings = bytearray()
        self.blobs: dict[str, tuple[Blob, int]] = {}

    def string(self, text: str | None) -> tuple[str, int] | None:
        if text is None:
            return None
        off = len(self.strings)
        self.strings += text.encode() + b"\0"
        return (".rodata.str1.1", off)

    def func(self, name: str | None) -> tuple[str, int] | None:
        if name is None:
            return None
        if not any(s.name == name for s in self.module.symbols):
            self.module.function(name, section=".text")
            text = next(s for s in self.module.sections if s.name == ".text")
            sym = self.module.symbols[-1]
            sym.value = len(text.data)
            text.data += b"\xcc" * 64
        return (name, 0)

    def blob(self, section: str, flags: int = SHF_ALLOC | SHF_WRITE) -> Blob:
        if section not in self.blobs:
            self.blobs[section] = (Blob(self.arch), flags)
        return self.blobs[section][0]

    def finish(self) -> KlpModule:
        m = self.module
        if not any(s.name == ".text" for s in m.sections):
            m.section(".text", type=SHT_PROGBITS, flags=SHF_ALLOC | SHF_EXECINSTR, data=b"", addralign=16)
        m.section(".rodata.str1.1", type=SHT_PROGBITS, flags=SHF_ALLOC, data=bytes(self.strings))
        for name, (blob, flags) in self.blobs.items():
            m.section(name, type=SHT_PROGBITS, flags=flags, data=bytes(blob.data), addralign=8)
            m.section(".rela" + name, type=SHT_RELA, flags=SHF_INFO_LINK, info=name, relocs=blob.relocs, addralign=8)
        # Section symbols first (locals lead the symbol table), named after their section for the tests' sake.
        secsyms = [s.name for s in m.sections if s.type == SHT_PROGBITS]
        from elfwriter import Symbol

        m.symbols[:0] = [Symbol(n, type=STT_SECTION, bind=STB_LOCAL, shndx=n) for n in secsyms]
        return m


def build(m: KlpModule, arch: Arch = X86_64) -> bytes:
    return m.build(elf_class=arch.elf_class, little_endian=arch.little_endian, machine=arch.machine)


def relocs_of(m: KlpModule, section: str) -> list[Reloc]:
    """The (editable) relocation list of ``.rela<section>``."""
    sec = next(s for s in m.sections if s.name == ".rela" + section)
    assert isinstance(sec.relocs, list)
    return sec.relocs  # type: ignore[return-value]


def section_of(m: KlpModule, name: str) -> Section:
    return next(s for s in m.sections if s.name == name)


# -- static struct klp_patch -------------------------------------------------------------------------------------
STATIC_SIZES = {(8, "5.5+"): (200, 168, 152), (8, "5.1-5.4"): (192, 168, 152), (8, "4.16-5.0"): (136, 136, 136),
                (4, "5.5+"): (104, 88, 80), (4, "5.1-5.4"): (100, 88, 80), (4, "4.16-5.0"): (72, 72, 72)}  # fmt: skip


def static_patch(arch: Arch, objects: list[Obj], *, states: list[tuple[int, int]] | None = None,
                 replace: bool = False, layout: str = "5.5+", call_site: bool = True, terminate: bool = True,
                 patch_offset: int = 0, symbols: bool = True) -> KlpModule:  # fmt: skip
    """A module with ``static struct klp_patch patch`` in .data at ``patch_offset``, as gcc lays it out."""
    w = Writer(arch)
    p = arch.p
    psize, osize, fsize = STATIC_SIZES[p, layout]
    data = w.blob(".data")
    objs_off = patch_offset + psize
    funcs_off = objs_off + (len(objects) + 1) * osize
    func_offsets = []
    for _name, funcs, _cb in objects:
        func_offsets.append(funcs_off)
        funcs_off += 0 if funcs is None else (len(funcs) + 1) * fsize
    states_off = funcs_off
    # the patch
    data.zeros_to(patch_offset)
    data.ptr(("__this_module", 0))
    data.ptr((".data", objs_off))
    if layout == "5.5+":
        data.ptr((".data", states_off) if states is not None else None)
    if layout != "4.16-5.0":
        data.data += bytes([int(replace)])
    data.zeros_to(objs_off)
    for (name, funcs, callbacks), f_off in zip(objects, func_offsets, strict=True):
        start = len(data.data)
        data.ptr(w.string(name))
        data.ptr((".data", f_off) if funcs is not None else None)
        for slot in SLOTS:
            data.ptr(w.func(f"lp_{slot}") if slot in callbacks else None)
        data.zeros_to(start + osize)
    if terminate:
        data.zeros_to(len(data.data) + osize)
    for _name, funcs, _cb in objects:
        if funcs is None:
            continue
        for old_name, new_func, sympos in funcs:
            start = len(data.data)
            data.ptr(w.string(old_name))
            data.ptr(w.func(new_func))
            data.word(sympos)
            data.zeros_to(start + fsize)
        data.zeros_to(len(data.data) + fsize)
    for state_id, version in states or ():
        data.word(state_id)
        data.u32(version)
        data.zeros_to(len(data.data) + (p - 4) + p)
    if states is not None:
        data.zeros_to(len(data.data) + 3 * p)
    m = w.module
    m.section(".gnu.linkonce.this_module", type=SHT_PROGBITS, flags=SHF_ALLOC | SHF_WRITE, data=bytes(0x380))
    m.symbol("__this_module", shndx=".gnu.linkonce.this_module", size=0x380, type=STT_OBJECT)
    if symbols:
        m.symbol("patch", shndx=".data", value=patch_offset, size=psize, type=STT_OBJECT, bind=STB_LOCAL)
        m.symbol("objs", shndx=".data", value=objs_off, size=(len(objects) + 1) * osize, type=STT_OBJECT,
                 bind=STB_LOCAL)  # fmt: skip
    if call_site:
        init = w.blob(".init.text", SHF_ALLOC | SHF_EXECINSTR)
        init.data += b"\x90" * 32
        init.relocs += [Reloc(0x10, ".data", arch.absolute, patch_offset), Reloc(0x15, "klp_enable_patch", 4, -4)]
        m.symbol("klp_enable_patch")
    return w.finish()


# -- kpatch-build ------------------------------------------------------------------------------------------------
def kpatch_patch(arch: Arch, funcs: list[tuple[str | None, str | None, str | None, int]],
                 callbacks: dict[str, list[tuple[str, str | None]]] | None = None) -> KlpModule:  # fmt: skip
    """``.kpatch.funcs`` entries (objname, old name, new function, sympos) and ``.kpatch.callbacks.<slot>`` entries
    (callback function, objname), each callback section padded with QUAD(0) as kpatch.lds.S does."""
    w = Writer(arch)
    blob = w.blob(".kpatch.funcs", SHF_ALLOC)
    strings = w.blob(".kpatch.strings", SHF_ALLOC)

    def kstring(text: str | None) -> tuple[str, int] | None:
        if text is None:
            return None
        off = len(strings.data)
        strings.data += text.encode() + b"\0"
        return (".kpatch.strings", off)

    for objname, name, new_func, sympos in funcs:
        blob.ptr(w.func(new_func))
        for value in (64, 0, 64, sympos):  # new_size, old_addr, old_size, sympos
            blob.word(value)
        blob.ptr(kstring(name))
        blob.ptr(kstring(objname))
    for slot, entries in (callbacks or {}).items():
        cb = w.blob(f".kpatch.callbacks.{slot}", SHF_ALLOC)
        for fn, objname in entries:
            cb.ptr(w.func(fn))
            cb.ptr(kstring(objname))
        cb.data += bytes(8)
    return w.finish()


# -- upstream klp-build ------------------------------------------------------------------------------------------
def klp_build_patch(arch: Arch, objects: list[Obj], *, sections: tuple[str, str] = (".init.klp_objects",
                    ".init.klp_funcs")) -> KlpModule:  # fmt: skip
    """One klp_object_ext per object (name NULL for vmlinux) and its klp_func_ext entries."""
    w = Writer(arch)
    objs = w.blob(sections[0], SHF_ALLOC)
    funcs_blob = w.blob(sections[1], SHF_ALLOC)
    p = arch.p
    for name, funcs, callbacks in objects:
        start = len(objs.data)
        objs.ptr(w.string(name))
        objs.ptr((sections[1], len(funcs_blob.data)) if funcs is not None else None)
        for slot in SLOTS:
            objs.ptr(w.func(f"lp_{slot}") if slot in callbacks else None)
        objs.zeros_to(start + 7 * p)
        objs.u32(len(funcs or ()))
        objs.zeros_to(start + 8 * p)
        for old_name, new_func, sympos in funcs or ():
            funcs_blob.ptr(w.string(old_name))
            funcs_blob.ptr(w.func(new_func))
            funcs_blob.word(sympos)
    return w.finish()
