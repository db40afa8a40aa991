"""A static ``struct klp_patch`` (samples, selftests, SUSE kernel-livepatch, hand-written patches), found by shape.

The symbol of the patch has no fixed name, so it is found structurally (patch-formats.md §2.2): every pointer to
``__this_module`` in a writable data section is a candidate ``patch.mod``; a candidate is a klp_patch when ``objs``
(@p) leads to a klp_object array, every object's ``funcs`` to a klp_func array, each ending at the kernel's
terminator (include/linux/livepatch.h: klp_for_each_object_static / klp_for_each_func_static), with the internal
fields (kobjects, lists: zero in the image, written by the kernel) zero and free of relocations. The strides depend
on the kernel the module was built for, so both known layouts are tried: 5.5+ (unchanged up to 7.2) and 4.16-5.0;
a wrong stride lands either inside an element's zero internals or on a relocated pointer, and is rejected.

When several candidates pass, the one whose address the init code loads just before calling klp_enable_patch()
(klp_register_patch() before 5.1) wins: the relocation preceding the call's is the address load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from klpd.elf._raw import SHF_ALLOC, SHF_EXECINSTR, SHF_WRITE, SHT_PROGBITS
from klpd.elf.description.layout import CALLBACK_SLOTS, MAX_ENTRIES, STATIC_STRIDES
from klpd.elf.description.pointers import Corrupt, Image, Target
from klpd.model_description import (
    FoundBy,
    FunctionDescription,
    ObjectDescription,
    PatchDescription,
    StateDescription,
)

_ENABLE_FUNCTIONS = ("klp_enable_patch", "klp_register_patch")
_CALL_SLACK = 4  # PC-relative address loads carry small addend adjustments (x86 -4, s390 larl +2)


class TooLarge(Corrupt):
    """The search as a whole visited more entries than any real patch has: stop, whatever the candidate."""


@dataclass(frozen=True, slots=True)
class _Stride:
    version: str
    patch: int
    obj: int
    func: int


@dataclass(frozen=True, slots=True)
class Found:
    """The outcome of the search: the description, and a note for the reader (ambiguity, rejected candidates)."""

    description: PatchDescription | None
    note: str | None


class _Walker:
    """Reads one candidate with one stride; raises Corrupt when it is not a klp_patch of that layout."""

    def __init__(self, image: Image, stride: _Stride, budget: list[int]) -> None:
        self.image = image
        self.p = image.layout.pointer
        self.stride = stride
        self.budget = budget

    def _spend(self, sec: int, off: int, index: int) -> None:
        """Count one array entry: more than MAX_ENTRIES in one array is corruption, and the search as a whole
        stops after a few times that (every candidate's arrays walked once per layout), so it stays linear."""
        if index >= MAX_ENTRIES:
            raise Corrupt(self.image.where(sec, off), f"more than {MAX_ENTRIES} entries in one array")
        self.budget[0] -= 1
        if self.budget[0] < 0:
            raise TooLarge(self.image.where(sec, off), f"more than {4 * MAX_ENTRIES} array entries searched")

    def _zero(self, sec: int, start: int, end: int, what: str) -> None:
        """The internal fields of an element: all zero, no relocation (else: wrong stride, or not this struct)."""
        image = self.image
        if any(image.read(sec, start, end - start)) or image.has_relocation(sec, start, end):
            raise Corrupt(image.where(sec, start), f"{what}'s internal fields are not zero")

    def _scalar(self, sec: int, off: int) -> int:
        if self.image.has_relocation(sec, off, off + self.p):
            raise Corrupt(self.image.where(sec, off), "a relocation where a number is expected")
        return self.image.word(sec, off)

    def _array(self, target: Target | None, where: str, what: str) -> tuple[int, int]:
        if target is None or target.section is None:
            raise Corrupt(where, f"{what} does not point into the module")
        return target.section, target.offset

    def _check_size(self, sec: int, base: int, count: int, stride: int, what: str) -> None:
        """st_size of a symbol naming the array, when there is one, must be (entries + terminator) * stride."""
        for sym in self.image.symbols.symbols_at(sec, base):
            if sym.size and sym.size != (count + 1) * stride:
                raise Corrupt(self.image.where(sec, base), f"{what} symbol {sym.name} has size {sym.size}, "
                              f"not {count + 1} x {stride}")  # fmt: skip

    def patch(self, sec: int, off: int) -> PatchDescription:
        image, p = self.image, self.p
        where = image.where(sec, off)
        # The bool replace sits after states (5.5+) or objs (5.1-5.4); 4.16-5.0 has neither: no atomic replace.
        replace_at = {"5.5+": 3 * p, "5.1-5.4": 2 * p}.get(self.stride.version)
        size = self.stride.patch
        if off + size > image.section_size(sec):
            raise Corrupt(where, "the section ends inside the klp_patch")
        if replace_at is not None and (any(image.read(sec, off + replace_at + 1, p - 1))
                                       or image.has_relocation(sec, off + replace_at, off + replace_at + p)):
            raise Corrupt(where, "no bool replace where this layout has it")  # e.g. 5.5+'s states pointer
        self._zero(sec, off + (replace_at or p) + p, off + size, "klp_patch")
        objs_sec, objs_off = self._array(image.pointer(sec, off + p), where, "objs")
        states: tuple[StateDescription, ...] = ()
        if self.stride.version == "5.5+":
            states = self._states(image.pointer(sec, off + 2 * p), image.where(sec, off + 2 * p))
        replace = bool(image.read(sec, off + replace_at, 1)[0]) if replace_at is not None else False
        objects = self._objects(objs_sec, objs_off)
        sym, section = image.symbols.name_at(sec, off) or image.where(sec, off), image.elf.section_name(sec)
        where = f"{sym} in {section}, {self.stride.version} layout"
        return PatchDescription(FoundBy.STATIC, where, replace, states, objects)

    def _states(self, target: Target | None, where: str) -> tuple[StateDescription, ...]:
        if target is None:
            return ()
        image = self.image
        sec, base = self._array(target, where, "states")
        step = image.layout.state_size
        out: list[StateDescription] = []
        for off in range(base, image.section_size(sec) - step + 1, step):
            self._spend(sec, off, len(out))
            state_id = self._scalar(sec, off)
            if state_id == 0:
                self._check_size(sec, base, len(out), step, "klp_state array")
                return tuple(out)
            out.append(StateDescription(state_id, image.u32(sec, off + self.p)))
        raise Corrupt(image.where(sec, base), "klp_state array has no terminator (id 0) before the section end")

    def _objects(self, sec: int, base: int) -> tuple[ObjectDescription, ...]:
        image, p, stride = self.image, self.p, self.stride.obj
        out: list[ObjectDescription] = []
        off = base
        while off + 2 * p <= image.section_size(sec):
            self._spend(sec, off, len(out))
            name_ptr, funcs_ptr = image.pointer(sec, off), image.pointer(sec, off + p)
            if name_ptr is None and funcs_ptr is None:
                self._check_size(sec, base, len(out), stride, "klp_object array")
                return tuple(out)
            if off + stride > image.section_size(sec):
                break
            self._zero(sec, off + 6 * p, off + stride, "klp_object")
            name = None if name_ptr is None else image.string(name_ptr, sec, off)
            callbacks = tuple(s for i, s in enumerate(CALLBACK_SLOTS) if image.pointer(sec, off + (2 + i) * p))
            funcs = None
            if funcs_ptr is not None:
                funcs = self._functions(*self._array(funcs_ptr, image.where(sec, off + p), "funcs"))
            out.append(ObjectDescription(name, funcs, callbacks))
            off += stride
        raise Corrupt(image.where(sec, base), "klp_object array has no terminator before the section end")

    def _functions(self, sec: int, base: int) -> tuple[FunctionDescription, ...]:
        image, p, stride = self.image, self.p, self.stride.func
        out: list[FunctionDescription] = []
        off = base
        while off + 3 * p <= image.section_size(sec):
            self._spend(sec, off, len(out))
            name_ptr, new_ptr = image.pointer(sec, off), image.pointer(sec, off + p)
            sympos = self._scalar(sec, off + 2 * p)
            if name_ptr is None and new_ptr is None and sympos == 0:
                self._check_size(sec, base, len(out), stride, "klp_func array")
                return tuple(out)
            if off + stride > image.section_size(sec):
                break
            self._zero(sec, off + 3 * p, off + stride, "klp_func")
            old_name = None if name_ptr is None else image.string(name_ptr, sec, off)
            new_func = None if new_ptr is None else image.function_name(new_ptr, sec, off + p)
            out.append(FunctionDescription(old_name, sympos, new_func, new_func is not None))
            off += stride
        raise Corrupt(image.where(sec, base), "klp_func array has no terminator before the section end")


def _candidates(image: Image) -> list[tuple[int, int]]:
    """(section, offset) of every absolute pointer to __this_module in a writable data section."""
    this_module = set(image.symbols.index("__this_module"))
    if not this_module:
        return []
    out = []
    for sh in image.elf.sections[1:]:
        if sh.type != SHT_PROGBITS or sh.flags & (SHF_WRITE | SHF_ALLOC) != SHF_WRITE | SHF_ALLOC:
            continue
        for off, (rtype, sym, _addend) in sorted(image.relocations(sh.num).items()):
            if rtype == image.layout.absolute and sym in this_module:
                out.append((sh.num, off))
    return out


def _call_sites(image: Image) -> list[tuple[int, int]]:
    """What the init code loads right before each call to klp_enable_patch() / klp_register_patch()."""
    callees = {i for name in _ENABLE_FUNCTIONS for i in image.symbols.index(name)}
    nsyms = image.symbols.count
    out = []
    for sh in image.elf.sections[1:]:
        if not callees or not sh.flags & SHF_EXECINSTR:
            continue
        previous: tuple[int, int, int] | None = None
        for _off, reloc in sorted(image.relocations(sh.num).items()):
            if reloc[1] in callees and previous is not None and 0 <= previous[1] < nsyms:
                sym = image.symbols.get(previous[1])
                out.append((sym.shndx, sym.value + previous[2]))
            previous = reloc
    return out


def read_static(image: Image) -> Found:
    """The static klp_patch of the module, if any; raises Corrupt when the patch klp_enable_patch() gets is bad."""
    candidates = _candidates(image)
    if not candidates:
        return Found(None, None)
    calls = _call_sites(image)

    def called(sec: int, off: int) -> bool:
        return any(s == sec and abs(o - off) <= _CALL_SLACK for s, o in calls)

    budget = [4 * MAX_ENTRIES]
    valid: list[tuple[int, int, PatchDescription]] = []
    rejected: list[tuple[int, int, Corrupt]] = []
    for sec, off in candidates:
        error: Corrupt | None = None
        for sizes in STATIC_STRIDES[image.layout.pointer]:
            try:
                valid.append((sec, off, _Walker(image, _Stride(*sizes), budget).patch(sec, off)))
                break
            except TooLarge:
                raise
            except Corrupt as exc:
                error = error or exc
        else:
            assert error is not None
            rejected.append((sec, off, error))
    return _choose(image, valid, rejected, called)


def _choose(image: Image, valid: list[tuple[int, int, PatchDescription]], rejected: list[tuple[int, int, Corrupt]],
            is_called: Callable[[int, int], bool]) -> Found:  # fmt: skip
    if not valid:
        for sec, off, error in rejected:
            if is_called(sec, off):
                raise Corrupt(error.where, f"the klp_patch at {image.where(sec, off)} passed to klp_enable_patch(): "
                              f"{error.reason}")  # fmt: skip
        first = rejected[0][2]
        return Found(None, f"{len(rejected)} pointer(s) to __this_module, none of them a klp_patch "
                     f"(first: {first})")  # fmt: skip
    if len(valid) == 1:
        return Found(valid[0][2], None)
    chosen = [v for v in valid if is_called(v[0], v[1])]
    if len(chosen) == 1:
        return Found(chosen[0][2], None)
    pick = (chosen or valid)[0]
    names = ", ".join(image.where(s, o) for s, o, _ in (chosen or valid))
    return Found(pick[2], f"{len(chosen or valid)} static klp_patch candidates ({names}) and no call to "
                 f"klp_enable_patch() that tells them apart; described the first")  # fmt: skip
