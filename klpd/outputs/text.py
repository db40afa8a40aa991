"""Human output of ``klpctl``: a compact table first, details only where something needs a look."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from klpd.model import (
    HostStatus,
    ModuleLoad,
    ObjectStatus,
    PatchModule,
    PatchStatus,
    Problem,
    SectionState,
    SymbolStatus,
)
from klpd.status import patch_has_problems


def _yn(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def _object_summary(obj: ObjectStatus) -> str:
    states = Counter(s.state for s in obj.sections)
    if obj.loaded:
        text = f"{obj.name}"
        if states[SectionState.FAILS]:
            text += " FAILS"
        return text
    verdict = obj.module_load.value if obj.module_load else "?"
    return (
        f"{obj.name}(pending, load {verdict})"
        if obj.module_load is not ModuleLoad.REFUSED
        else (f"{obj.name}(load REFUSED)")
    )


def _problem_line(problem: Problem) -> str:
    line = f"{problem.severity.value}: {problem.message}"
    if problem.kernel_message:
        line += f"\n      kernel: {problem.kernel_message}"
    return line


def render_status(status: HostStatus, verbose: bool = False) -> str:
    taint = "-" if status.tainted is None else str(status.tainted)
    if status.livepatch_tainted:
        taint += " (K: a livepatch was loaded since boot)"
    lines = [
        f"kernel {status.kernel_release}   livepatch {'supported' if status.livepatch_supported else 'NOT supported'}"
        f"   tainted {taint}   kallsyms addresses {'visible' if status.kallsyms_addresses_visible else 'hidden'}",
        "",
    ]
    if status.patches:
        rows = [["PATCH", "LOADED", "ENABLED", "TRANSITION", "WILL LOAD", "OBJECTS", "PROBLEMS"]]
        for p in status.patches:
            n_err = sum(1 for x in p.problems if x.severity.value == "error")
            n_warn = len(p.problems) - n_err
            probs = ", ".join(
                t for t in (f"{n_err} error(s)" if n_err else "", f"{n_warn} warning(s)" if n_warn else "") if t
            )
            rows.append(
                [
                    p.name,
                    _yn(p.loaded),
                    _yn(p.enabled),
                    _yn(p.transition),
                    "yes" if p.will_load else "NO",
                    ", ".join(_object_summary(o) for o in p.objects) or "-",
                    probs or "-",
                ]
            )
        lines += _table(rows)
    else:
        lines.append("no livepatch loaded or installed")
    for p in status.patches:
        if verbose or patch_has_problems(p) or p.problems:
            lines += ["", *render_patch_details(p, verbose)]
    if status.problems:
        lines += ["", "host problems:"]
        lines += [f"  {_problem_line(x)}" for x in status.problems]
    return "\n".join(lines) + "\n"


def render_patch_details(p: PatchStatus, verbose: bool = False) -> list[str]:
    lines = [f"{p.name}: {p.path or '(no file)'}"]
    if not p.will_load:
        lines.append("  will NOT load:")
        lines += [f"    {r}" for r in p.reasons]
    for x in p.problems:
        lines.append(f"  {_problem_line(x)}")
    for obj in p.objects:
        states = Counter(s.state for s in obj.sections)
        statuses = Counter(s.status for s in obj.symbols)
        sec_text = " / ".join(f"{states[s]} {s.value}" for s in SectionState if states[s])
        sym_text = ", ".join(f"{n} {'undetermined' if st is None else st.value}" for st, n in statuses.items())
        head = f"  {obj.name:<20} {'loaded' if obj.loaded else 'not loaded'}"
        if obj.patched is not None:
            head += f", patched={int(obj.patched)}"
        if obj.module_load is not None:
            head += f", module load: {obj.module_load.value}"
        head += f"   sections: {sec_text or 'none'}   symbols: {sym_text or 'none'}"
        lines.append(head)
        lines += [f"      {r}" for r in obj.reasons]
        for sym in obj.symbols:
            if verbose or (sym.status is not SymbolStatus.OK) or sym.load_order_dependent:
                status = "undetermined" if sym.status is None else sym.status.value
                extra = "  LOAD-ORDER DEPENDENT" if sym.load_order_dependent else ""
                lines.append(f"    {status:<28} {sym.elf_name}{extra}")
                if sym.kernel_message:
                    lines.append(f"      kernel: {sym.kernel_message}")
        for sec in obj.sections:
            if verbose or sec.state is SectionState.FAILS:
                lines.append(
                    f"    section {sec.name} -> {sec.target_section}: {sec.state.value}, {sec.relocations} relocations"
                )
    return lines


def render_inspect(modules: Iterable[PatchModule], problems: Iterable[Problem], relocations: bool = True) -> str:
    lines: list[str] = []
    for m in modules:
        endian = "little" if m.little_endian else "big"
        lines += [f"{m.path}: module {m.name}, ELF{m.elf_class} {endian}-endian {m.machine}"]
        lines.append("  modinfo:")
        lines += [f"    {k}={v}" for k, v in m.modinfo.entries]
        lines.append(f"  livepatch relocation sections ({len(m.sections)}):")
        for sec in m.sections:
            flags = "klp" if sec.is_livepatch else "NOT FLAGGED"
            lines.append(
                f"    [{sec.index}] {sec.name}  object={sec.object}  target={sec.target_name}  {flags}"
                f"  {len(sec.relocations)} relocations"
            )
            if relocations:
                for r in sec.relocations:
                    sym = m.symbols.get(r.symbol_index)
                    sym_name = sym.name if sym else f"#{r.symbol_index}"
                    lines.append(f"      {r.offset:#010x} {r.type_name:<22} {sym_name} {r.addend:+#x}")
        lines.append(f"  livepatch symbols ({len(m.symbols)}):")
        for idx, s in sorted(m.symbols.items()):
            where = "SHN_LIVEPATCH" if s.is_livepatch else f"shndx={s.shndx:#x}"
            parsed = (
                f"object={s.parsed.object} name={s.parsed.name} sympos={s.parsed.sympos}" if s.parsed else "MALFORMED"
            )
            lines.append(f"    [{idx}] {s.name}  {where}  {parsed}")
        if m.problems:
            lines.append(f"  problems ({len(m.problems)}):")
            lines += [f"    {_problem_line(x)}" for x in m.problems]
        else:
            lines.append("  problems: none")
        lines.append("")
    for x in problems:
        lines.append(_problem_line(x))
    return "\n".join(lines).rstrip("\n") + "\n"


def render_daemon(daemon: dict[str, object]) -> str:
    """What only the daemon knows (source health, refusals seen, last events), as ``key: value`` lines."""
    if not daemon:
        return ""
    lines = ["", "daemon:"]
    for key, value in daemon.items():
        lines.append(f"  {key}: {value}")
    return "\n".join(lines) + "\n"
