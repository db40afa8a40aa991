"""simplify_symbols() (kernel/module/main.c), reproduced: every symbol the patch imports must be exported by vmlinux
or a loaded module, and where the patch has ``__versions``, with the kernel's CRC (kernel-checks.md D1, D2).

The kernel walks the symbol table in order; for each import resolve_symbol() finds the export (a symbol nobody
exports: "Unknown symbol %s (err -2)"), then check_version() compares the CRCs (a mismatch: "disagrees about version
of symbol %s", then "Unknown symbol %s (err -22)"; a missing __versions entry only warns). It goes on after a
failure and returns the error of the last symbol that failed.

Which symbols are exported, and by which module, comes from Module.symvers (klpd.sources.kernel_build); a symbol it
does not list (an out-of-tree module's export), or every symbol on a host without it, from the ``__ksymtab_<name>``
lines /proc/kallsyms shows where CONFIG_KALLSYMS_ALL is set (seen on Debian 6.1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from klpd import kernel_messages as msg
from klpd.model import VMLINUX, PatchModule
from klpd.model_loader import CheckResult, LoadCheck, LoadCheckName
from klpd.predict.inputs import SystemState

_ENOENT, _EINVAL = -2, -22
# Every livepatch imports it, and a kernel with livepatch support exports it (kernel/livepatch/core.c): where
# /proc/kallsyms lists its __ksymtab_ line, it lists every export's.
_KSYMTAB_ANCHOR = "__ksymtab_klp_enable_patch"

# Whether a symbol is exported by loaded code (None: cannot be told), and the note explaining a "no".
ExportTest = Callable[[str], tuple[bool | None, str]]


@dataclass(frozen=True)
class SymbolsVerdict:
    check: LoadCheck
    lines: tuple[str, ...]  # what the kernel logs, in symbol table order


def symbols_check(system: SystemState, module: PatchModule) -> SymbolsVerdict:
    check = LoadCheckName.SYMBOLS
    if not module.imports:
        return SymbolsVerdict(LoadCheck(check, CheckResult.OK, "imports no symbol"), ())
    exported = _export_test(system, module)
    build = system.kernel_build
    crcs = build.crcs if build is not None else None
    versioned = {v.name: v.crc for v in module.versions} if module.has_versions else {}
    lines: list[str] = []
    failed: list[str] = []
    errno: str | None = None
    unknown: list[str] = []
    for name in module.imports:
        present, note = exported(name)
        if present is None:
            unknown.append(f"{name}: {note}")
            continue
        if not present:
            lines.append(msg.UNKNOWN_SYMBOL.format(module=module.name, symbol=name, errno=_ENOENT))
            failed.append(f"{name} is not exported ({note})")
            errno = "ENOENT"
            continue
        crc = versioned.get(name)
        if crc is None:
            continue  # no __versions entry: check_version() warns once and lets it go
        kernel_crc = crcs.get(name) if crcs is not None else None
        if crcs is None:
            unknown.append(f"{name}: this kernel's CRC is unknown (no Module.symvers)")
        elif kernel_crc not in (None, 0) and kernel_crc != crc:  # 0: a kernel built without MODVERSIONS
            lines.append(msg.SYMBOL_VERSION_MISMATCH.format(module=module.name, symbol=name))
            lines.append(msg.UNKNOWN_SYMBOL.format(module=module.name, symbol=name, errno=_EINVAL))
            failed.append(f"{name} has CRC {crc:#010x}, this kernel {kernel_crc:#010x}")
            errno = "EINVAL"
    if failed:
        return SymbolsVerdict(LoadCheck(check, CheckResult.FAILS, "; ".join(failed), lines[0], errno), tuple(lines))
    if unknown:
        return SymbolsVerdict(LoadCheck(check, CheckResult.UNKNOWN, "; ".join(unknown)), ())
    detail = f"all {len(module.imports)} imports are exported by loaded code, with this kernel's CRCs"
    return SymbolsVerdict(LoadCheck(check, CheckResult.OK, detail), ())


def _export_test(system: SystemState, module: PatchModule) -> ExportTest:
    build = system.kernel_build
    exports = build.exports if build is not None else None
    kallsyms = system.kallsyms
    listed = kallsyms.find(VMLINUX, _KSYMTAB_ANCHOR).matches > 0
    loaded = (VMLINUX, *system.modules)
    # Module.symvers lists what vmlinux and the in-tree modules export; only an out-of-tree module ('O' in
    # /proc/modules; loaded livepatches aside, which export nothing) can export what it does not list.
    patches = {lp.name for lp in system.livepatches}
    out_of_tree = [n for n, m in system.modules.items() if "O" in m.taint and n not in patches]

    def in_kallsyms(name: str) -> tuple[bool | None, str]:
        if listed:
            found = any(kallsyms.find(obj, f"__ksymtab_{name}").matches for obj in loaded)
            return found, "no __ksymtab_ line in /proc/kallsyms"
        if exports is None:
            return None, "no Module.symvers, and /proc/kallsyms lists no __ksymtab_ lines"
        if out_of_tree:
            return None, f"not in Module.symvers; out-of-tree modules are loaded ({', '.join(out_of_tree)})"
        return False, "not in Module.symvers, and no out-of-tree module is loaded"

    def test(name: str) -> tuple[bool | None, str]:
        exporter = exports.get(name) if exports is not None else None
        if exporter is None:  # not in Module.symvers (an out-of-tree module's export), or no Module.symvers
            return in_kallsyms(name)
        if system.is_loaded(exporter):
            return True, f"exported by {exporter}"
        if exporter in module.modinfo.depends:
            return False, f"exported by '{exporter}', not loaded: modprobe loads it first, insmod does not"
        return False, f"exported by '{exporter}', not loaded"

    return test
