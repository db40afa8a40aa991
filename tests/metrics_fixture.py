"""A hand-built snapshot that exercises every klpd metric (shared by the metrics, alert and dashboard tests)."""

from __future__ import annotations

from klpd.daemon.stats import DaemonStats
from klpd.model import (
    HostStatus,
    ModuleLoad,
    ObjectStatus,
    PatchStatus,
    Problem,
    SectionResult,
    SectionState,
    Severity,
    SymbolResult,
    SymbolStatus,
)
from klpd.model_description import FunctionResult, FunctionStatus
from klpd.model_loader import CheckResult, LoadCheck, LoadCheckName
from klpd.outputs.metrics import MetricsSnapshot

RELEASE = "6.1.0-18-amd64"
T0 = 1_700_000_000.0


def _sym(obj: str, name: str, status: SymbolStatus | None, sympos: int = 0) -> SymbolResult:
    return SymbolResult(obj, name, sympos, status, f".klp.sym.{obj}.{name},{sympos}", occurrences=1)


def _sec(obj: str, section: str, state: SectionState) -> SectionResult:
    return SectionResult(f".klp.rela.{obj}.{section}", obj, section, 2, state)


def _patch(name: str, path: str | None, objects: tuple[ObjectStatus, ...], **kw: object) -> PatchStatus:
    fields: dict[str, object] = {
        "loaded": True,
        "enabled": True,
        "transition": False,
        "replace": None,
        "stack_order": None,
        "vermagic": f"{RELEASE} SMP preempt mod_unload modversions",
        "srcversion": "0123456789ABCDEF0123456",
        "will_load": True,
        "reasons": (),
        "problems": (),
    }
    fields.update(kw)
    return PatchStatus(name=name, path=path, objects=objects, **fields)


def basic_status() -> HostStatus:
    vmlinux_ok = ObjectStatus(
        "vmlinux",
        loaded=True,
        patched=True,
        module_load=None,
        target_path=None,
        reasons=(),
        sections=(_sec("vmlinux", "text", SectionState.APPLIED),),
        symbols=(_sym("vmlinux", "printk", SymbolStatus.OK), _sym("vmlinux", "copy_from_user", SymbolStatus.OK)),
        functions=(FunctionResult("cmdline_proc_show", 0, FunctionStatus.OK),),
    )
    in_transition = _patch(
        "livepatch_cve_2024_1",
        f"/var/lib/kpatch/{RELEASE}/livepatch-cve-2024-1.ko",
        (
            vmlinux_ok,
            ObjectStatus(
                "nf_tables",
                loaded=True,
                patched=True,
                module_load=None,
                target_path=None,
                reasons=(),
                sections=(_sec("nf_tables", "text", SectionState.APPLIED),),
                symbols=(_sym("nf_tables", "nft_lookup", SymbolStatus.OK),),
            ),
        ),
        transition=True,
        replace=True,
        stack_order=1,
    )
    refused_module = _patch(
        "livepatch_xfs",
        f"/lib/modules/{RELEASE}/livepatch/livepatch-xfs.ko",
        (
            vmlinux_ok,
            ObjectStatus(
                "xfs",
                loaded=False,
                patched=False,
                module_load=ModuleLoad.REFUSED,
                target_path=f"/lib/modules/{RELEASE}/kernel/fs/xfs/xfs.ko",
                reasons=("symbol xfs_trans_alloc not found",),
                sections=(_sec("xfs", "text", SectionState.FAILS), _sec("xfs", "data", SectionState.PENDING)),
                symbols=(
                    _sym("xfs", "xfs_trans_alloc", SymbolStatus.NOT_FOUND),
                    _sym("xfs", "xfs_iget", SymbolStatus.OK),
                    _sym("xfs", "xfs_log_force", SymbolStatus.OK),
                    _sym("xfs", "xfs_bmapi", None),
                ),
                functions=(
                    FunctionResult("xfs_fs_fill_super", 0, FunctionStatus.OK),
                    FunctionResult("xfs_gone", 0, FunctionStatus.NOT_FOUND),
                    FunctionResult("xfs_maybe", 0, None),
                ),
            ),
        ),
        stack_order=2,
        replace=False,
        problems=(
            Problem(
                "symbol_not_found",
                Severity.ERROR,
                "xfs_trans_alloc is not in xfs.ko",
                "livepatch: symbol 'xfs_trans_alloc' not found in symbol table",
                "xfs_trans_alloc",
            ),
            Problem("load_order_dependent", Severity.WARNING, "xfs_iget resolves differently once xfs is loaded"),
        ),
    )
    installed_only = _patch(
        "kpatch_old",
        f"/var/lib/kpatch/{RELEASE}/kpatch-old.ko",
        (
            ObjectStatus(
                "vmlinux",
                loaded=True,
                patched=None,
                module_load=None,
                target_path=None,
                reasons=(),
                sections=(_sec("vmlinux", "text", SectionState.FAILS),),
                symbols=(_sym("vmlinux", "do_sys_open", SymbolStatus.AMBIGUOUS),),
            ),
        ),
        loaded=False,
        enabled=None,
        transition=None,
        will_load=False,
        reasons=("symbol do_sys_open is ambiguous",),
        load_checks=(
            LoadCheck(LoadCheckName.SIGNATURE, CheckResult.OK, "signed by Debian"),
            LoadCheck(LoadCheckName.VERMAGIC, CheckResult.FAILS, "flags", "kpatch_old: version magic ...", "ENOEXEC"),
            LoadCheck(LoadCheckName.SYMBOLS, CheckResult.UNKNOWN, "no Module.symvers"),
        ),
    )
    # The same module name installed twice: the first, in patch directory order, stands for the name.
    duplicate = _patch(
        "kpatch_old",
        f"/usr/lib/kpatch/{RELEASE}/kpatch-old.ko",
        (),
        loaded=False,
        enabled=None,
        transition=None,
        srcversion="FEDCBA9876543210FEDCBA9",
        vermagic="5.10.0-28-amd64 SMP mod_unload",
    )
    disabled_unknown_order = _patch(
        "livepatch_disabled",
        None,
        (vmlinux_ok,),
        enabled=False,
        vermagic=None,
        srcversion=None,
    )
    return HostStatus(
        kernel_release=RELEASE,
        tainted=(1 << 15) | (1 << 12),
        livepatch_tainted=True,
        livepatch_supported=True,
        kallsyms_addresses_visible=False,
        patches=(in_transition, refused_module, installed_only, duplicate, disabled_unknown_order),
        problems=(Problem("unreadable_source", Severity.WARNING, "/proc/1234/task/1234/patch_state: EACCES"),),
    )


def basic_stats() -> DaemonStats:
    return DaemonStats(
        events={"udev": 12, "journal": 3, "inotify": 1, "kmsg": 0},
        lost_events={"udev": 1},
        evaluations=5,
        evaluation_duration_seconds=0.042,
        evaluation_timestamp_seconds=T0 + 30.5,
        source_up={"udev": True, "journal": True, "inotify": True, "kmsg": False, "kallsyms": True},
        refusals={("livepatch_xfs", "xfs"): 2},
        transition_start={"livepatch_cve_2024_1": T0},
        transition_blocking_tasks={"livepatch_cve_2024_1": 3},
    )


def basic_snapshot() -> MetricsSnapshot:
    return MetricsSnapshot(basic_status(), basic_stats())
