"""Upstream klp-build's description: ``struct klp_object_ext`` / ``klp_func_ext`` arrays (Linux 6.19+).

``tools/objtool/klp-diff.c:create_klp_sections`` writes one klp_object_ext (name @0, funcs @p, callbacks @2p..5p,
nr_funcs @7p; 64 bytes on 64-bit) per diffed object and one klp_func_ext (old_name @0, new_func @p, sympos @2p)
per changed function. 6.19 names the sections ``__klp_objects`` / ``__klp_funcs``; later kernels (7.2 checked)
``.init.klp_objects`` / ``.init.klp_funcs``. ``scripts/livepatch/init.c`` copies them into heap klp_objects at init:
every object gets a funcs array of nr_funcs entries, ``replace`` comes from a build flag (KLP_NO_REPLACE), and
states are never set.
"""

from __future__ import annotations

from klpd.elf.description.layout import CALLBACK_SLOTS, MAX_ENTRIES
from klpd.elf.description.pointers import Corrupt, Image, entry_count
from klpd.model_description import FoundBy, FunctionDescription, ObjectDescription, PatchDescription

OBJECT_SECTIONS = (".init.klp_objects", "__klp_objects")  # 7.x first, then 6.19


def read_klp_build(image: Image) -> PatchDescription | None:
    """The description klp-build's init.c will build; None when the module has no klp_object_ext section."""
    for name in OBJECT_SECTIONS:
        shdr = image.elf.section_by_name(name)
        if shdr is not None:
            return _read(image, shdr.num, name)
    return None


def _read(image: Image, sec: int, sec_name: str) -> PatchDescription:
    entry = image.layout.klp_object_ext_size
    count = entry_count(image, sec, entry, "klp_object_ext")
    budget = [MAX_ENTRIES]
    objects = tuple(_object(image, sec, i * entry, budget) for i in range(count))
    return PatchDescription(FoundBy.KLP_BUILD, f"section {sec_name}", None, (), objects)


def _object(image: Image, sec: int, off: int, budget: list[int]) -> ObjectDescription:
    p = image.layout.pointer
    name_ptr = image.pointer(sec, off)
    name = None if name_ptr is None else image.string(name_ptr, sec, off)
    callbacks = tuple(slot for i, slot in enumerate(CALLBACK_SLOTS) if image.pointer(sec, off + (2 + i) * p))
    nr_funcs = image.u32(sec, off + 7 * p)
    budget[0] -= nr_funcs
    if budget[0] < 0:
        raise Corrupt(image.where(sec, off + 7 * p), f"nr_funcs {nr_funcs}: more than {MAX_ENTRIES} functions")
    funcs_ptr = image.pointer(sec, off + p)
    if funcs_ptr is None:
        if nr_funcs:
            raise Corrupt(image.where(sec, off + p), f"funcs is NULL but nr_funcs is {nr_funcs}: init.c reads NULL")
        return ObjectDescription(name, (), callbacks)
    where = image.where(sec, off + p)
    if funcs_ptr.section is None:
        raise Corrupt(where, f"funcs points at symbol {funcs_ptr.symbol!r}, outside the module")
    stride = image.layout.klp_func_ext_size
    fsec, base = funcs_ptr.section, funcs_ptr.offset
    if base < 0 or base + nr_funcs * stride > image.section_size(fsec):
        raise Corrupt(where, f"{nr_funcs} klp_func_ext entries at {image.where(fsec, base)} run past the section")
    functions = tuple(_function(image, fsec, base + i * stride) for i in range(nr_funcs))
    return ObjectDescription(name, functions, callbacks)


def _function(image: Image, sec: int, off: int) -> FunctionDescription:
    p = image.layout.pointer
    name_ptr = image.pointer(sec, off)
    new_ptr = image.pointer(sec, off + p)
    old_name = None if name_ptr is None else image.string(name_ptr, sec, off)
    new_func = None if new_ptr is None else image.function_name(new_ptr, sec, off + p)
    return FunctionDescription(old_name, image.word(sec, off + 2 * p), new_func, new_func is not None)
