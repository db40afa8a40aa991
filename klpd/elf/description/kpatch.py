"""kpatch-build's description: ``.kpatch.funcs`` and ``.kpatch.callbacks.*`` (dynup/kpatch, kmod/patch).

kpatch's hook (``kmod/patch/livepatch-patch-hook.c:patch_init``) builds the klp_patch on the heap at init, so the
file holds only its inputs: one ``struct kpatch_patch_func`` per changed function (new_addr @0, sympos @4p, name
@5p, objname @6p; 56 bytes on 64-bit) and ``{ callback, objname }`` entries per callback kind, followed by the
linker script's 8-byte ``QUAD(0)``. Objects are keyed by objname ("vmlinux" becomes a NULL name), functions first,
then the callbacks in the order pre_patch, post_patch, pre_unpatch, post_unpatch.

Order: the hook adds objects and functions with list_add(), i.e. at the head, so the kernel registers them in the
*reverse* of the order kept here (first appearance in the file). Only the creation order of sysfs directories
shows it; the prediction does not depend on it.

``replace`` is a compile-time constant in the hook (KLP_REPLACE_ENABLE, on unless ``kpatch-build -R``), not data:
None. kpatch never sets ``states``.
"""

from __future__ import annotations

from klpd.elf._raw import ElfFile
from klpd.elf.description.layout import CALLBACK_SLOTS
from klpd.elf.description.pointers import Corrupt, Image, entry_count
from klpd.model_description import (
    VMLINUX_OBJECT,
    FoundBy,
    FunctionDescription,
    ObjectDescription,
    PatchDescription,
)

FUNCS_SECTION = ".kpatch.funcs"
_CALLBACK_SECTION = ".kpatch.callbacks."


class _Object:
    def __init__(self) -> None:
        self.functions: list[FunctionDescription] = []
        self.callbacks: list[str] = []


def _section(elf: ElfFile, name: str) -> int | None:
    sec = elf.section_by_name(name)
    return sec.num if sec is not None else None


def _objname(image: Image, sec: int, offset: int) -> str | None:
    """An entry's objname: None for "vmlinux" (patch_find_object_by_name() stores NULL for it)."""
    target = image.pointer(sec, offset)
    if target is None:
        raise Corrupt(image.where(sec, offset), "objname is NULL: the hook's strcmp() dereferences it at init")
    name = image.string(target, sec, offset)
    return None if name == VMLINUX_OBJECT else name


def read_kpatch(image: Image) -> PatchDescription | None:
    """The description kpatch's hook will build; None when the module has no ``.kpatch.funcs``."""
    funcs = _section(image.elf, FUNCS_SECTION)
    if funcs is None:
        return None
    objects: dict[str | None, _Object] = {}
    p = image.layout.pointer
    entry = image.layout.kpatch_func_size
    for off in range(0, entry_count(image, funcs, entry, "kpatch_patch_func") * entry, entry):
        obj = objects.setdefault(_objname(image, funcs, off + 6 * p), _Object())
        name_ptr = image.pointer(funcs, off + 5 * p)
        new_ptr = image.pointer(funcs, off)
        old_name = None if name_ptr is None else image.string(name_ptr, funcs, off + 5 * p)
        new_func = None if new_ptr is None else image.function_name(new_ptr, funcs, off)
        obj.functions.append(FunctionDescription(old_name, image.word(funcs, off + 4 * p), new_func,
                                                 new_func is not None))  # fmt: skip
    for slot in CALLBACK_SLOTS:
        _read_callbacks(image, slot, objects)
    return PatchDescription(
        found_by=FoundBy.KPATCH,
        where=f"section {FUNCS_SECTION}",
        replace=None,
        states=(),
        objects=tuple(ObjectDescription(name, tuple(o.functions), tuple(o.callbacks)) for name, o in objects.items()),
    )


def _read_callbacks(image: Image, slot: str, objects: dict[str | None, _Object]) -> None:
    sec = _section(image.elf, _CALLBACK_SECTION + slot)
    if sec is None:
        return
    entry = image.layout.kpatch_callback_size
    # The linker script pads with QUAD(0): half an entry on 64-bit (dropped by the floor), a NULL entry on 32-bit.
    for off in range(0, image.section_size(sec) // entry * entry, entry):
        if image.pointer(sec, off) is None:
            continue
        objects.setdefault(_objname(image, sec, off + image.layout.pointer), _Object()).callbacks.append(slot)
