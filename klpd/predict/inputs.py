"""What the prediction is given: the system as read (:class:`SystemState`) and the patches (:class:`PatchInput`).

``klpd/collect.py`` builds both from the sources; tests build them by hand. Nothing here does I/O.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from klpd.kernel_version import KernelSemantics, semantics_for
from klpd.model import (
    KernelInfo,
    LoadedModule,
    ModuleSymtab,
    Occurrences,
    PatchModule,
    Problem,
    RunningPatch,
    SysfsPatch,
)
from klpd.model_description import PatchDescription
from klpd.model_loader import KernelBuild, ModuleSigning


class SymbolIndex(Protocol):
    """What the prediction needs of /proc/kallsyms (klpd.sources.kallsyms.Kallsyms provides it)."""

    @property
    def addresses_visible(self) -> bool: ...

    @property
    def kallsyms_all(self) -> bool: ...

    def find(self, obj: str, name: str) -> Occurrences:
        """How often ``name`` occurs in object ``obj`` as klp_find_object_symbol() searches it."""
        ...


class TraceIndex(Protocol):
    """What the prediction needs of tracefs available_filter_functions (klpd.sources.ftrace.FtraceIndex)."""

    def count(self, obj: str, name: str) -> int:
        """How many ftrace records the functions named ``name`` in object ``obj`` have."""
        ...


@dataclass(frozen=True)
class SystemState:
    """Everything read from the running system (or a fixture root) that the prediction needs."""

    kernel: KernelInfo
    kallsyms: SymbolIndex
    modules: Mapping[str, LoadedModule]  # /proc/modules
    livepatches: tuple[SysfsPatch, ...]  # /sys/kernel/livepatch
    known_modules: frozenset[str]  # module names that modules.dep of the running release knows
    modules_dep_read: bool = True  # False: modules.dep is missing or unreadable, so known_modules says nothing
    loaded_srcversions: Mapping[str, str | None] = field(default_factory=dict)  # /sys/module/<patch>/srcversion
    running_patches: Mapping[str, RunningPatch] = field(default_factory=dict)  # loaded patches, as the kernel shows
    problems: tuple[Problem, ...] = ()  # sources that could not be read (or only partly)
    kernel_semantics: KernelSemantics | None = None  # default: the rules of kernel.release
    kernel_build: KernelBuild | None = None  # vermagic, struct module size, symbol CRCs of the running kernel
    module_signing: ModuleSigning | None = None  # sig_enforce, lockdown, trusted keys, modules_disabled
    ftrace: TraceIndex | None = None  # available_filter_functions; None: not readable, traceability not checked
    # The descriptions of the loaded patches, read from their files (their states: klp_is_patch_compatible())
    loaded_descriptions: Mapping[str, PatchDescription] = field(default_factory=dict)

    @functools.cached_property
    def semantics(self) -> KernelSemantics:
        """The rules of the running kernel's version, which every version-dependent verdict consults."""
        return self.kernel_semantics or semantics_for(self.kernel.release)

    @functools.cached_property
    def patch_stack(self) -> tuple[str, ...]:
        """The loaded patches, bottom first: by ``stack_order`` (6.14+), else by load order, which /proc/modules
        gives newest first (a patch is enabled by its own init, so the orders agree)."""
        patches = self.livepatches
        if patches and all(p.stack_order is not None for p in patches):
            return tuple(p.name for p in sorted(patches, key=lambda p: p.stack_order or 0))
        age = {name: i for i, name in enumerate(self.modules)}
        return tuple(p.name for p in sorted(patches, key=lambda p: -age.get(p.name, len(age))))

    @functools.cached_property
    def function_owners(self) -> Mapping[tuple[str, str, int], str]:
        """(object, function, sympos as sysfs shows it) -> the loaded patch whose version runs: the top of the
        kernel's func stack, which is the newest patch listing the function."""
        by_name = {p.name: p for p in self.livepatches}
        owners: dict[tuple[str, str, int], str] = {}
        for name in self.patch_stack:
            for obj in by_name[name].objects:
                for func in obj.functions:
                    owners[(obj.name, func.name, func.sympos)] = name
        return owners

    def is_loaded(self, obj: str) -> bool:
        """vmlinux, or a module /proc/modules lists."""
        return obj == "vmlinux" or obj in self.modules


@dataclass(frozen=True)
class PatchInput:
    """One patch to evaluate: an installed or checked file, a loaded patch, or both (same module name)."""

    name: str
    module: PatchModule | None  # None: a loaded patch whose file was not found, or a file that did not parse
    # symbol tables of the target modules that are not loaded, by module name; a Problem where the .ko is unusable
    target_symtabs: Mapping[str, ModuleSymtab | Problem] = field(default_factory=dict)
    file_problem: Problem | None = None  # the file could not be read or parsed
    path: str | None = None
    # A file given to klpctl check: will_load is about insmod of it now, a loaded module of its name included.
    # Otherwise a loaded patch's will_load says whether its checks pass, ignoring that it is loaded (EEXIST).
    candidate: bool = False
