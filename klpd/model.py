"""The model every part of klpd shares: frozen dataclasses and string enums, no I/O.

Sources (``klpd/elf``, ``klpd/sources``) produce the input half; the prediction (``klpd/predict``) turns it into
the output half (:class:`HostStatus`), which the outputs (JSON, text, metrics) render. Fields that an older
kernel cannot provide are optional (``None`` = the kernel does not expose it).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

from klpd.model_description import FunctionResult, PatchDescription, TaskReport
from klpd.model_loader import LoadCheck, ModuleSignature, SymbolVersion

# ELF constants of the livepatch module format (Documentation/livepatch/module-elf-format.rst).
SHF_RELA_LIVEPATCH = 0x00100000
SHN_LIVEPATCH = 0xFF20
SHN_UNDEF = 0
SHN_ABS = 0xFFF1
# The kernel's object name for the core kernel (klp_object.name NULL; "vmlinux" in .klp.rela/.klp.sym names).
VMLINUX = "vmlinux"
# MODULE_NAME_LEN is 56 on 64-bit (64 - sizeof(unsigned long)), so a module name has at most 55 characters; the
# kernel's sscanf formats use the same width ("%55[^.]").
MODULE_NAME_MAX = 55
# KSYM_NAME_LEN - 1 of the newest kernels (511 since 6.1, 127 before): the widest symbol field any kernel reads.
# What the running kernel reads is its KernelSemantics.ksym_name_max (klpd.kernel_version).
KSYM_NAME_MAX = 511
# Bit 15 of /proc/sys/kernel/tainted: TAINT_LIVEPATCH ('K').
TAINT_LIVEPATCH = 1 << 15


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


class SymbolStatus(StrEnum):
    """What klp_find_object_symbol() (or the checks before it) will say of one livepatch symbol."""

    OK = "ok"
    NOT_FOUND = "not_found"
    AMBIGUOUS = "ambiguous"
    SYMPOS_NOT_FOUND = "sympos_not_found"
    MALFORMED_NAME = "malformed_name"
    NOT_LIVEPATCH_SYMBOL = "not_livepatch_symbol"
    VMLINUX_FROM_MODULE_SECTION = "vmlinux_from_module_section"


class SectionState(StrEnum):
    """Where a ``.klp.rela.<object>.<section>`` section stands on this host."""

    APPLIED = "applied"
    PENDING = "pending"  # its object's module is not loaded; klp_module_coming() will apply it
    FAILS = "fails"  # applying it will fail (the patch load, or the module load, is refused)


class ModuleLoad(StrEnum):
    """Verdict for loading the target module of an object whose module is not loaded now."""

    OK = "ok"
    REFUSED = "refused"
    UNKNOWN = "unknown"  # no .ko found for it: cannot tell


@dataclass(frozen=True, slots=True)
class Problem:
    """Something wrong, with the kernel's own message where the kernel will print one."""

    code: str  # stable identifier, e.g. "malformed_section_name"
    severity: Severity
    message: str  # klpd's explanation, naming the thing at fault
    kernel_message: str | None = None  # e.g. "livepatch: symbol foo is not marked as a livepatch symbol"
    subject: str | None = None  # the section, symbol or file at fault


# --------------------------------------------------------------------------------------------------------------
# Input half: a parsed livepatch module (klpd/elf)


@dataclass(frozen=True, slots=True)
class KlpSymbolName:
    """The three fields the kernel reads from ``.klp.sym.<object>.<name>,<sympos>``."""

    object: str
    name: str
    sympos: int


@dataclass(frozen=True, slots=True)
class ElfSymbol:
    """A symbol table entry of a patch module that matters to livepatch."""

    index: int
    name: str
    shndx: int
    value: int
    # The name as the newest kernels' sscanf reads it (None: it does not parse). Older kernels read a shorter symbol
    # field: the prediction re-reads it with the host's KernelSemantics (klpd.predict.symbols.host_parse).
    parsed: KlpSymbolName | None

    @property
    def is_livepatch(self) -> bool:
        return self.shndx == SHN_LIVEPATCH


@dataclass(frozen=True, slots=True)
class Relocation:
    offset: int
    type: int
    type_name: str
    symbol_index: int
    addend: int


@dataclass(frozen=True, slots=True)
class RelaSection:
    """A livepatch relocation section: flagged SHF_RELA_LIVEPATCH or named ``.klp.rela.*`` (or both)."""

    index: int
    name: str
    sh_type: int
    sh_flags: int
    target_index: int  # sh_info
    target_name: str | None  # name of the section sh_info points at; None if out of range
    object: str | None  # what the kernel's sscanf(".klp.rela.%55[^.]") reads; None when it fails
    relocations: tuple[Relocation, ...]

    @property
    def is_livepatch(self) -> bool:
        """True when the kernel treats it as a livepatch section (the flag decides, not the name)."""
        return bool(self.sh_flags & SHF_RELA_LIVEPATCH)

    def symbol_indexes(self) -> tuple[int, ...]:
        """Distinct symbol indexes used by its relocations, in first-use order (the kernel's order)."""
        return tuple(dict.fromkeys(r.symbol_index for r in self.relocations))


@dataclass(frozen=True, slots=True)
class Modinfo:
    """The ``.modinfo`` key=value strings, in file order (a key may repeat)."""

    entries: tuple[tuple[str, str], ...] = ()

    def get(self, key: str) -> str | None:
        for k, v in self.entries:
            if k == key:
                return v
        return None

    @property
    def livepatch(self) -> bool:
        # check_modinfo_livepatch(): get_modinfo(info, "livepatch") marks it, whatever the value (kpatch and
        # klp-build write "Y").
        return self.get("livepatch") is not None

    @property
    def name(self) -> str | None:
        return self.get("name")

    @property
    def vermagic(self) -> str | None:
        return self.get("vermagic")

    @property
    def srcversion(self) -> str | None:
        return self.get("srcversion")

    @property
    def depends(self) -> tuple[str, ...]:
        value = self.get("depends")
        return tuple(d for d in value.split(",") if d) if value else ()

    @property
    def release(self) -> str | None:
        """The kernel release a module was built for: the first word of vermagic."""
        value = self.vermagic
        return value.split(" ", 1)[0] if value else None


@dataclass(frozen=True)
class PatchModule:
    """A livepatch module file, parsed. Host-independent: the same file gives the same object everywhere."""

    path: str
    name: str  # module name: modinfo name=, else the file name with '-' as '_'
    elf_class: int  # 32 or 64
    little_endian: bool
    machine: str  # e_machine as pyelftools names it, e.g. "EM_X86_64"
    modinfo: Modinfo
    has_versions: bool  # a __versions section (CONFIG_MODVERSIONS): the loader then ignores vermagic's release
    symtab_index: int  # section index of .symtab (6.19+ kernels name it in "not marked as a livepatch symbol")
    sections: tuple[RelaSection, ...]  # livepatch relocation sections, in section header order
    symbols: Mapping[int, ElfSymbol]  # by symtab index: every SHN_LIVEPATCH symbol and every one a klp section uses
    problems: tuple[Problem, ...]  # what the kernel (or the patched code) will trip over, host-independent
    # What the module loader checks (klpd.model_loader): None / () where the file has none.
    signature: ModuleSignature | None = None  # the appended signature
    versions: tuple[SymbolVersion, ...] = ()  # __versions: the CRC of each symbol the patch imports
    imports: tuple[str, ...] = ()  # SHN_UNDEF, non-weak symbols the loader must resolve (simplify_symbols())
    this_module_size: int | None = None  # sh_size of .gnu.linkonce.this_module (sizeof(struct module) it was built for)
    description: PatchDescription | None = None  # the klp_patch it hands to klp_enable_patch(); None: not found


@dataclass(frozen=True)
class ModuleSymtab:
    """The ``.symtab`` of a target module file as klp_module_coming() will see it.

    ``names`` is the full symbol table in ELF order with SHN_UNDEF entries skipped (the kernel's iteration);
    ``flags`` holds, per entry, the CORE_* bits below, saying whether the entry survives into the cut-down core
    symtab that /proc/kallsyms shows once the module is loaded.
    """

    path: str
    names: tuple[str, ...]
    flags: bytes
    mcount: bool = False  # the file has __mcount_loc (ftrace's call sites): TRACEABLE means something

    CORE_WITH_KALLSYMS_ALL = 1  # kept when CONFIG_KALLSYMS_ALL=y
    CORE_TEXT_ONLY = 2  # kept when CONFIG_KALLSYMS_ALL=n (executable sections only)
    ZERO_ADDRESS = 4  # resolves to address 0 (an absolute symbol of value 0): "not found" to the kernel
    TRACEABLE = 8  # a function with an ftrace call site inside it (klp_patch_func() finds its location)

    def entries(self, name: str) -> tuple[int, ...]:
        """Indexes (into ``names``) of the entries named ``name``, in order; the index is built on first use and
        lives as long as this object (the daemon's ModuleCache keeps it across evaluations)."""
        return self._by_name.get(name, ())

    @functools.cached_property
    def _by_name(self) -> dict[str, tuple[int, ...]]:
        index: dict[str, list[int]] = {}
        for i, entry in enumerate(self.names):
            index.setdefault(entry, []).append(i)
        return {entry: tuple(found) for entry, found in index.items()}


# --------------------------------------------------------------------------------------------------------------
# Input half: the running system (klpd/sources)


class Occurrences(NamedTuple):
    """What klp_find_object_symbol() can learn of one name in one object: how often it occurs, and which of those
    occurrences sit at address 0. Positions count from 1, in the kernel's search order.

    An index of 100k+ names answers this without keeping every address; ``zero_addresses`` is empty when no address
    is known to be 0, as when addresses are hidden (then every address reads 0 and means nothing).
    """

    matches: int  # occurrences of the name
    zero_addresses: tuple[int, ...] = ()

    @classmethod
    def of(cls, addresses: Sequence[int]) -> Occurrences:
        return cls(len(addresses), tuple(i for i, address in enumerate(addresses, start=1) if address == 0))


@dataclass(frozen=True, slots=True)
class KernelInfo:
    release: str
    tainted: int | None  # None when /proc/sys/kernel/tainted is unreadable
    livepatch_supported: bool  # /sys/kernel/livepatch exists (CONFIG_LIVEPATCH)

    @property
    def livepatch_tainted(self) -> bool | None:
        return None if self.tainted is None else bool(self.tainted & TAINT_LIVEPATCH)


@dataclass(frozen=True, slots=True)
class LoadedModule:
    """One line of /proc/modules."""

    name: str
    size: int
    refcount: int | None  # '-' when the kernel has no module unload support
    used_by: tuple[str, ...]
    state: str  # Live, Loading, Unloading
    taint: str  # the "(OE)" letters, '' when none


@dataclass(frozen=True, slots=True)
class SysfsFunction:
    """``/sys/kernel/livepatch/<patch>/<object>/<function,sympos>/`` (sympos 0 shows as 1)."""

    name: str
    sympos: int


@dataclass(frozen=True, slots=True)
class SysfsObject:
    name: str
    patched: bool | None  # since 6.1
    functions: tuple[SysfsFunction, ...]


@dataclass(frozen=True, slots=True)
class RunningPatch:
    """What the running kernel shows of a loaded patch module's livepatch ELF, for when its file is not found.

    /sys/module/<patch>/sections lists its ``.klp.rela.*`` sections (SHF_ALLOC, kept for klp_module_coming()), and
    /proc/kallsyms every symbol of a livepatch module, its ``.klp.sym.*`` ones included (type ``?``). Neither shows
    which section uses which symbol, nor how many relocations a section holds.
    """

    sections: tuple[str, ...]  # .klp.rela.* section names
    symbols: tuple[str, ...]  # .klp.sym.* symbol names, in kallsyms order
    # Objects whose .klp.sym.<object>.* symbols have a non-zero address: the kernel has resolved them, and applied
    # the object's sections, at least once since the patch loaded (klp_resolve_symbols() writes st_value, and
    # nothing clears it when the object goes). None: addresses are hidden from this reader.
    resolved_objects: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class SysfsPatch:
    """``/sys/kernel/livepatch/<patch>/``; attributes absent on older kernels are None."""

    name: str
    enabled: bool | None
    transition: bool | None  # since 4.12
    force_present: bool  # since 4.15 (write-only)
    replace: bool | None  # since 6.11
    stack_order: int | None  # since 6.14
    objects: tuple[SysfsObject, ...]


# --------------------------------------------------------------------------------------------------------------
# Output half (klpd/predict)


@dataclass(frozen=True, slots=True)
class SymbolResult:
    """One livepatch symbol as the kernel will resolve it on this host."""

    object: str | None  # the object the kernel will search; None when the name is malformed
    name: str  # the symbol name inside .klp.sym (the whole ELF name when malformed)
    sympos: int | None
    status: SymbolStatus | None  # None: cannot be determined (the target module's .ko is missing or unreadable)
    elf_name: str  # the full ELF symbol name
    occurrences: int | None = None  # how many times the name occurs where the kernel looks; None if not searched
    load_order_dependent: bool = False  # full and core symtab give different answers
    kernel_message: str | None = None  # what the kernel will print when status is not ok


@dataclass(frozen=True, slots=True)
class SectionResult:
    name: str
    object: str | None
    target_section: str | None
    relocations: int | None  # None: not known (a loaded patch seen only through the running kernel)
    state: SectionState
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ObjectStatus:
    name: str  # "vmlinux" or a module name
    loaded: bool
    patched: bool | None  # sysfs <object>/patched (6.1+); None when not known
    module_load: ModuleLoad | None  # only for a module that is not loaded
    target_path: str | None  # the .ko that klpd read for a module that is not loaded
    reasons: tuple[str, ...]
    sections: tuple[SectionResult, ...]
    symbols: tuple[SymbolResult, ...]
    functions: tuple[FunctionResult, ...] = ()  # from the patch's description; else sysfs (status None)


@dataclass(frozen=True, slots=True)
class PatchStatus:
    name: str
    path: str | None  # the installed file, if one was found
    loaded: bool
    enabled: bool | None
    transition: bool | None
    replace: bool | None
    stack_order: int | None
    vermagic: str | None
    srcversion: str | None
    will_load: bool  # would insmod of this file succeed now (for a loaded patch: its checks, ignoring EEXIST)
    reasons: tuple[str, ...]  # why will_load is False
    objects: tuple[ObjectStatus, ...]
    problems: tuple[Problem, ...]
    load_checks: tuple[LoadCheck, ...] = ()  # the module loader's checks of insmod of the file, in its order
    signature: ModuleSignature | None = None  # the file's appended signature (None: unsigned, or no file)
    replaces: tuple[str, ...] = ()  # a replace patch not loaded yet: the loaded patches it will replace
    tasks: TaskReport | None = None  # who holds (or will hold) its transition; None: not looked (the daemon)


@dataclass(frozen=True, slots=True)
class HostStatus:
    kernel_release: str
    tainted: int | None
    livepatch_tainted: bool | None
    livepatch_supported: bool
    kallsyms_addresses_visible: bool
    patches: tuple[PatchStatus, ...]
    problems: tuple[Problem, ...] = field(default=())  # sources that could not be read, files that did not parse
    candidates: tuple[PatchStatus, ...] = field(default=())  # staging directories' patches: insmod of each now
