"""The one place that knows how kernel versions differ: a release parser and the rules of each version.

A rule of klpd that depends on the running kernel's version asks the :class:`KernelSemantics` built once per
evaluation from ``/proc/sys/kernel/osrelease`` (carried in the system state) instead of testing the version
itself. Each entry of the table names the first release a rule holds for and cites the kernel commit or release it
comes from (``../shared/reference/kernel-checks.md`` §4). A release newer than the newest entry is judged with the
newest rules, and one older than the oldest with the oldest; both say so as a problem, as does a release klpd cannot
read a version from.

Consulted so far: the symbol-name width (``ksym_name_max``), the "not marked as a livepatch symbol" variant,
whether a patched module removed and loaded again is refused (``clears_relocs_on_module_removal``) and the errno
insmod sees when the patch's init returns -EEXIST (``init_eexist_becomes_ebusy``) and the prefix of kobject's
messages (``kobject_messages_prefixed``).
The other fields record what the checked trees showed, for the verdicts that need them (the module loader's checks,
a patched module's reload, the sysfs attributes each kernel creates); they are not consulted yet.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from enum import StrEnum

from klpd.model import Problem, Severity

Version = tuple[int, int]

# "6.1.0-57-amd64", "5.14.0-427.13.1.el9_4.x86_64", "7.2.13+deb14-amd64": major.minor, then anything.
_RELEASE = re.compile(r"(\d{1,4})\.(\d{1,4})")


def parse_release(release: str) -> Version | None:
    """The (major, minor) version a kernel release string starts with, or None."""
    m = _RELEASE.match(release)
    return (int(m[1]), int(m[2])) if m else None


class VermagicPreempt(StrEnum):
    """Which config option puts the preempt word into vermagic (include/linux/vermagic.h)."""

    PREEMPT = "CONFIG_PREEMPT"  # "preempt " iff CONFIG_PREEMPT, else "preempt_rt " iff PREEMPT_RT (5.10)
    PREEMPT_BUILD = "CONFIG_PREEMPT_BUILD"  # "preempt " iff PREEMPT_BUILD, checked before RT (6.1, 6.12)
    RT_FIRST = "CONFIG_PREEMPT_RT first"  # "preempt_rt " first, then "preempt " for PREEMPT_BUILD (7.x)


@dataclass(frozen=True, slots=True)
class KernelSemantics:
    """The rules of one kernel version that klpd reproduces. Built by :func:`semantics_for`."""

    since: Version  # the table entry's first version
    release: str  # the release judged (the host's)
    # KSYM_NAME_LEN - 1: the width of "%<n>[^,]" in klp_resolve_symbols()'s sscanf of a .klp.sym name.
    ksym_name_max: int
    # .klp.rela.vmlinux.* applied by the module loader while the patch loads (klp_apply_section_relocs(), 5.8+);
    # before, by klp_init_object_loaded() when the patch is registered.
    vmlinux_relocs_by_loader: bool
    # x86: klp_module_going() clears a patched module's relocation targets, so it can be loaded again.
    clears_relocs_on_module_removal: bool
    # the printk of klp_resolve_symbols() for a symbol that is not SHN_LIVEPATCH names the rela section and index
    not_livepatch_symbol_names_position: bool
    # /sys/kernel/livepatch attributes this version creates
    sysfs_object_patched: bool
    sysfs_replace: bool
    sysfs_stack_order: bool
    # klp_get_ftrace_location(): ftrace_location() maps sym+0 to the first record inside the symbol
    ftrace_location_maps_sym0: bool
    # elf_validity_cache_index_mod(): .gnu.linkonce.this_module must be sizeof(struct module)
    checks_this_module_size: bool
    vermagic_preempt: VermagicPreempt
    # do_init_module(): an init that returns -EEXIST (klp_enable_patch() on a duplicate sysfs name) reaches insmod
    # as -EBUSY, EEXIST being reserved for "a module of this name is loaded"
    init_eexist_becomes_ebusy: bool
    # lib/kobject.c has pr_fmt "kobject: " (kobject_add_internal()'s "failed for %s with -EEXIST" line)
    kobject_messages_prefixed: bool
    problems: tuple[Problem, ...] = ()  # why these rules may not be the host's (release unknown or out of range)


# The rules by first version. A field changes only in the entry of the version that changed it.
_TABLE: tuple[KernelSemantics, ...] = (
    KernelSemantics(
        since=(5, 8),
        release="",
        # 7c8e2bdd5f0d "livepatch: Apply vmlinux-specific KLP relocations early" (5.8)
        vmlinux_relocs_by_loader=True,
        ksym_name_max=127,  # KSYM_NAME_LEN 128
        clears_relocs_on_module_removal=False,
        not_livepatch_symbol_names_position=False,
        sysfs_object_patched=False,
        sysfs_replace=False,
        sysfs_stack_order=False,
        ftrace_location_maps_sym0=False,  # the identity on x86 (klp_get_ftrace_location())
        checks_this_module_size=False,
        vermagic_preempt=VermagicPreempt.PREEMPT,
        init_eexist_becomes_ebusy=False,
        kobject_messages_prefixed=False,
    ),
)


def _entry(base: KernelSemantics, since: Version, **changes: object) -> KernelSemantics:
    return replace(base, since=since, **changes)  # type: ignore[arg-type]


def _build_table() -> tuple[KernelSemantics, ...]:
    # Where a change is only known to lie between two checked trees (Debian's 5.10, 6.1, 6.12, 7.2), the entry sits
    # at the first checked tree that has it and the comment says "[I]": the real-kernel suite settles it.
    t = list(_TABLE)
    t.append(
        _entry(
            t[-1],
            (6, 1),
            # b8a94bfb3395 "kallsyms: increase maximum kernel symbol length to 512" (6.1): "%511[^,]".
            ksym_name_max=511,
            # "livepatch: add sysfs entry 'patched' for each klp_object" (6.1)
            sysfs_object_patched=True,
            # klp_get_ftrace_location(): 5.10's is the identity on x86, 6.1's ftrace_location() maps sym+0 to the
            # record inside the symbol (kernel-checks.md E16).
            ftrace_location_maps_sym0=True,
            # vermagic.h: 5.10 tests CONFIG_PREEMPT, 6.1 CONFIG_PREEMPT_BUILD (so PREEMPT_DYNAMIC kernels, Debian's
            # 6.1 among them, say "preempt") [I: changed between 5.10 and 6.1].
            vermagic_preempt=VermagicPreempt.PREEMPT_BUILD,
        )
    )
    # 0c05e7bd2d01 "livepatch,x86: Clear relocation targets on a module removal": before it, a patched module removed
    # and loaded again is refused ("Skipping invalid relocation target, existing value is nonzero"; seen on 6.1).
    # clear_relocate_add() is absent in 6.2 and present in 6.5 (DepSurf's index of Ubuntu kernels) [I: 6.3].
    t.append(_entry(t[-1], (6, 3), clears_relocs_on_module_removal=True))
    # "kobject: define common logging prefix" (posted March 2023, the 6.4 cycle): 6.1 prints kobject_add_internal()'s
    # line bare, 7.2 with "kobject: " [I: 6.4].
    t.append(_entry(t[-1], (6, 4), kobject_messages_prefixed=True))
    # "livepatch: Add "replace" sysfs attribute" (6.11, Documentation/ABI/testing/sysfs-kernel-livepatch)
    t.append(_entry(t[-1], (6, 11), sysfs_replace=True))
    # The this_module size check ("... section size must match the kernel's built struct module size at run time")
    # is in 6.12's elf_validity_cache_index_mod(), absent in 6.1's elf_validity_check() [I: between 6.1 and 6.12].
    t.append(_entry(t[-1], (6, 12), checks_this_module_size=True))
    # "livepatch: Add stack_order sysfs attribute" (6.14, Documentation/ABI/testing/sysfs-kernel-livepatch)
    t.append(_entry(t[-1], (6, 14), sysfs_stack_order=True))
    # klp_resolve_symbols() prints "symbol %s at rela sec %u idx %d is not marked as a livepatch symbol", a change
    # posted with the klp-build series that 6.19 merged (7.2 has it, 6.12 the short form) [I: 6.19].
    t.append(_entry(t[-1], (6, 19), not_livepatch_symbol_names_position=True))
    # vermagic.h tests CONFIG_PREEMPT_RT before CONFIG_PREEMPT_BUILD (7.2) [I: between 6.12 and 7.2].
    t.append(_entry(t[-1], (7, 0), vermagic_preempt=VermagicPreempt.RT_FIRST))
    # 743f8cae549a "module: Override -EEXIST module return" (7.1 merge window; 7.2 refuses a klp-build patch with
    # two vmlinux objects with "Device or resource busy", 6.1 a static one with "File exists"). Offered to the
    # stable branches back to 5.15, so an older kernel's point release may carry it: klpd cannot tell.
    t.append(_entry(t[-1], (7, 1), init_eexist_becomes_ebusy=True))
    return tuple(t)


TABLE: tuple[KernelSemantics, ...] = _build_table()
NEWEST = TABLE[-1]


def semantics_for(release: str) -> KernelSemantics:
    """The rules klpd applies to a host running ``release``."""
    version = parse_release(release)
    if version is None:
        problem = Problem(
            "kernel_version_unknown",
            Severity.WARNING,
            f"kernel release '{release}' does not start with a version: judged with the rules of "
            f"{_shown(NEWEST.since)} and later",
            subject=release,
        )
        return replace(NEWEST, release=release, problems=(problem,))
    entry = TABLE[0]
    for candidate in TABLE:
        if candidate.since <= version:
            entry = candidate
    problems: tuple[Problem, ...] = ()
    if version < TABLE[0].since:
        problems = (
            Problem(
                "kernel_version_unsupported",
                Severity.WARNING,
                f"kernel {release} is older than {_shown(TABLE[0].since)}, the oldest version klpd knows the rules"
                f" of (upstream kernels before 5.8 applied .klp.rela.vmlinux.* sections when the patch was"
                f" registered; backports such as RHEL 8's differ): judged with {_shown(TABLE[0].since)}'s rules",
                subject=release,
            ),
        )
    elif version > _NEWEST_KNOWN:
        problems = (
            Problem(
                "kernel_version_newer",
                Severity.WARNING,
                f"kernel {release} is newer than {_shown(_NEWEST_KNOWN)}, the newest version klpd was checked "
                f"against: judged with the rules of {_shown(NEWEST.since)} and later",
                subject=release,
            ),
        )
    return replace(entry, release=release, problems=problems)


# The newest version whose source the table was checked against (kernel-checks.md: Debian's 7.2).
_NEWEST_KNOWN: Version = (7, 2)


def _shown(version: Version) -> str:
    return f"{version[0]}.{version[1]}"
