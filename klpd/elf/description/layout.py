"""Per-architecture facts a patch description is read with: pointer size, byte order, the absolute relocation type
that fills a pointer, and the sizes of the structs each producer lays out.

Every architecture with HAVE_LIVEPATCH is RELA, so a pointer in a relocatable module is a zero word carrying one
absolute relocation (``R_X86_64_64``, ``R_AARCH64_ABS64``, ``R_PPC64_ADDR64``, ``R_390_64``, ``R_LARCH_64``; ppc32
``R_PPC_ADDR32``). Struct offsets are multiples of the pointer size in every layout used here (no 64-bit scalar
sits in a 32-bit struct), so one table per pointer size covers ELF32 and ELF64 alike.
"""

from __future__ import annotations

from dataclasses import dataclass

# e_machine -> (pointer size, absolute relocation type). EM_PPC64 is both ppc64le and big-endian ppc64: the byte
# order comes from the ELF header.
_ABSOLUTE: dict[int, tuple[int, int]] = {
    62: (8, 1),  # EM_X86_64: R_X86_64_64
    183: (8, 257),  # EM_AARCH64: R_AARCH64_ABS64 (7.2+)
    21: (8, 38),  # EM_PPC64: R_PPC64_ADDR64
    22: (8, 22),  # EM_S390 (s390x): R_390_64
    258: (8, 2),  # EM_LOONGARCH: R_LARCH_64 (6.12+)
    20: (4, 1),  # EM_PPC (ppc32 with DYNAMIC_FTRACE_WITH_REGS): R_PPC_ADDR32
    3: (4, 1),  # EM_386: R_386_32. i386 has no HAVE_LIVEPATCH, but a hand-built module reads the same way
}

# Sizes of the static structs (patch-formats.md §1.2), newest first: (name, klp_patch, klp_object, klp_func) by
# pointer size. 5.5+ is byte-identical up to 7.2; 5.1-5.4 has replace but no states (a 5.1-5.4 patch with replace
# false reads the same either way); 4.16-5.0 (upstream 4.18; RHEL 8's 4.18.0 carries the 5.5 layout) has neither.
# Only distribution configs are covered: CONFIG_DEBUG_KOBJECT_RELEASE or LOCKDEP grow the structs.
STATIC_STRIDES: dict[int, tuple[tuple[str, int, int, int], ...]] = {
    8: (("5.5+", 200, 168, 152), ("5.1-5.4", 192, 168, 152), ("4.16-5.0", 136, 136, 136)),
    4: (("5.5+", 104, 88, 80), ("5.1-5.4", 100, 88, 80), ("4.16-5.0", 72, 72, 72)),
}
MAX_ENTRIES = 65536  # more objects, functions or states than this in one description is corruption, not a patch
MAX_STRING = 4096  # bytes read for one name; longer names are cut (the prediction flags what the kernel refuses)
CALLBACK_SLOTS = ("pre_patch", "post_patch", "pre_unpatch", "post_unpatch")  # struct klp_callbacks, in order


@dataclass(frozen=True, slots=True)
class Layout:
    """How pointers and scalars are stored in one module file."""

    machine: str
    pointer: int  # bytes: 8 or 4
    endian: str  # struct byte order character, "<" or ">"
    absolute: int  # the relocation type of a pointer-sized absolute address

    @property
    def word(self) -> str:
        return self.endian + ("Q" if self.pointer == 8 else "I")

    # kpatch-build: struct kpatch_patch_func (kmod/patch/kpatch-patch.h) and the callback entries.
    @property
    def kpatch_func_size(self) -> int:
        return 7 * self.pointer  # new_addr, new_size, old_addr, old_size, sympos, name, objname

    @property
    def kpatch_callback_size(self) -> int:
        return 2 * self.pointer  # { callback, objname }

    # upstream klp-build: struct klp_object_ext / klp_func_ext (include/linux/livepatch_external.h).
    @property
    def klp_object_ext_size(self) -> int:
        return 8 * self.pointer  # name, funcs, 4 callbacks, post_unpatch_enabled (padded), nr_funcs (padded)

    @property
    def klp_func_ext_size(self) -> int:
        return 3 * self.pointer  # old_name, new_func, sympos

    @property
    def state_size(self) -> int:
        return 3 * self.pointer  # struct klp_state { unsigned long id; unsigned int version; void *data; }


def layout_for(e_machine: int, machine: str, elf_class: int, little_endian: bool) -> Layout | None:
    """The layout of a module for ``e_machine``; None for a machine without livepatch (or a class mismatch)."""
    known = _ABSOLUTE.get(e_machine)
    if known is None or known[0] * 8 != elf_class:
        return None
    return Layout(machine, known[0], "<" if little_endian else ">", known[1])
