"""The model of a patch's own description: the klp_patch / klp_object / klp_func / klp_state it hands to
klp_enable_patch(), as read from the file, and the verdict on each function it replaces.

Three producers lay the description out differently (``../shared/reference/patch-formats.md``): a static
``struct klp_patch`` (samples, selftests, SUSE kernel-livepatch, hand-written patches), kpatch-build's
``.kpatch.funcs`` (the hook builds the structs on the heap at init) and upstream klp-build's ``__klp_objects`` /
``.init.klp_objects`` (its init.c does the same). The parsers in ``klpd/elf/description`` fill the input half;
``klpd/predict/functions.py`` the verdicts. Frozen dataclasses and string enums, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# ---------------------------------------------------------------------------------------------------------------
# What the patch file describes (klpd/elf/description)

VMLINUX_OBJECT = "vmlinux"  # the sysfs and .klp.rela name of the object whose klp_object.name is NULL


class FoundBy(StrEnum):
    """How the description was found in the file."""

    STATIC = "static"  # a static struct klp_patch, followed through the module's own relocations
    KPATCH = "kpatch"  # kpatch-build's .kpatch.funcs / .kpatch.strings (+ .kpatch.callbacks.*)
    KLP_BUILD = "klp-build"  # upstream klp-build: __klp_objects (6.19) or .init.klp_objects (later)


@dataclass(frozen=True, slots=True)
class FunctionDescription:
    """One ``struct klp_func`` (or the kpatch / klp-build record it is built from)."""

    old_name: str | None  # None: a NULL old_name (klp_init_func() refuses it: -EINVAL, nothing logged)
    old_sympos: int
    new_func: str | None  # the replacing symbol's name; None when the pointer is NULL
    new_func_set: bool = True  # False: new_func is NULL (refused like a NULL old_name)

    @property
    def sysfs_name(self) -> str:
        """The directory klp_init_func() creates: ``"%s,%lu", old_name, old_sympos ? old_sympos : 1``."""
        return f"{self.old_name},{self.old_sympos or 1}"


@dataclass(frozen=True, slots=True)
class ObjectDescription:
    """One ``struct klp_object``: ``name`` None is vmlinux; any other name is compared with strcmp() against
    module names (which never contain '-' or end in '.ko') and the ``<obj>`` of ``.klp.rela.<obj>.*``."""

    name: str | None
    functions: tuple[FunctionDescription, ...] | None  # None: funcs is NULL (klp_enable_patch(): -EINVAL)
    callbacks: tuple[str, ...] = ()  # which of pre_patch, post_patch, pre_unpatch, post_unpatch are set

    @property
    def kernel_name(self) -> str:
        """The name sysfs shows and ``.klp.rela`` sections must carry: ``name ?: "vmlinux"``."""
        return self.name if self.name is not None else VMLINUX_OBJECT


@dataclass(frozen=True, slots=True)
class StateDescription:
    """One ``struct klp_state`` (kernel/livepatch/state.c): the array ends at id 0."""

    id: int
    version: int


@dataclass(frozen=True, slots=True)
class PatchDescription:
    """What the patch module hands to klp_enable_patch()."""

    found_by: FoundBy
    where: str  # how it was found, for a reader: e.g. "symbol 'patch' in .data", "section .kpatch.funcs"
    replace: bool | None  # None: decided by code at init (kpatch, klp-build build flags), not readable as data
    states: tuple[StateDescription, ...]
    objects: tuple[ObjectDescription, ...]


# ---------------------------------------------------------------------------------------------------------------
# The verdict on each function (klpd/predict/functions.py)


class FunctionStatus(StrEnum):
    """What klp_init_object_loaded() / klp_patch_func() will say of one klp_func on this host."""

    OK = "ok"
    NOT_FOUND = "not_found"  # klp_find_object_symbol(): "symbol '%s' not found in symbol table"
    AMBIGUOUS = "ambiguous"  # sympos 0 and more than one occurrence
    SYMPOS_NOT_FOUND = "sympos_not_found"  # sympos past the count
    NOT_TRACEABLE = "not_traceable"  # resolves, but ftrace has no location for it: "failed to find location ..."
    INVALID = "invalid"  # NULL old_name or new_func, a name too long: klp_init_func() refuses it, nothing logged


@dataclass(frozen=True, slots=True)
class FunctionResult:
    """One function a patch replaces, as this host's kernel will judge it.

    ``sympos`` is the value the patch gives (sysfs prints 0 as 1). ``status`` None: cannot be determined (the
    target module's ``.ko`` is missing, or the patch was seen only through sysfs). ``owner`` is the loaded patch
    whose version of the function runs now (the top of the kernel's func stack); ``owner_after`` the one that will
    after this patch loads (the patch itself once it is enabled).
    """

    name: str
    sympos: int
    status: FunctionStatus | None = None  # None also in a document from a daemon older than this field
    new_func: str | None = None
    occurrences: int | None = None
    load_order_dependent: bool = False
    kernel_message: str | None = None
    traceable: bool | None = None  # has an ftrace location (tracefs); None: not checked (not root, not loaded)
    owner: str | None = None
    owner_after: str | None = None


@dataclass(frozen=True, slots=True)
class TaskRef:
    """A task that holds a transition: blocking one in progress, or sleeping in a function a patch replaces."""

    pid: int
    tid: int
    comm: str
    function: str | None = None  # the replaced function it sleeps in ("name" or "name [module]")
    cmdline: str | None = None  # /proc/<pid>/cmdline, arguments joined by spaces (None: unreadable, a kernel thread)
    stack: tuple[str, ...] | None = None  # /proc/<pid>/task/<tid>/stack frames (None: unreadable; needs root)


@dataclass(frozen=True, slots=True)
class TaskReport:
    """The tasks that hold (``blocking``: a transition in progress, from patch_state) or will hold
    (``sleeping_in_replaced_function``: a patch checked before its load, from /proc/<pid>/stack) a transition."""

    kind: str  # "blocking" | "sleeping_in_replaced_function"
    known: bool  # False: could not be read (``note`` says why); tasks and count are then empty
    count: int
    tasks: tuple[TaskRef, ...]  # the first 50
    note: str | None = None
