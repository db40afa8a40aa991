"""Human output of ``klpctl``: a compact table first, details only where something needs a look.

Everything shown comes from files, sysfs, the kernel log or the daemon's socket, any of which may carry terminal
escape sequences (a patch named ``\x1b]0;...``, a path with a newline): every line is passed through
:func:`escape` before it reaches the terminal. The JSON output needs nothing of the kind (json.dumps escapes).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

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
from klpd.model_description import FunctionResult, FunctionStatus
from klpd.model_loader import PKEY_ID_PKCS7, CheckResult
from klpd.predict.verdicts import patch_has_problems


def _escape_table() -> dict[int, str]:
    # C0 controls, DEL and C1 controls (0x9b is a one-byte CSI to some terminals), and the Unicode bidirectional
    # overrides and isolates, which reorder what follows them on the screen.
    codes = [*range(0x20), 0x7F, *range(0x80, 0xA0)]
    table = {c: f"\\x{c:02x}" for c in codes}
    table.update({c: f"\\u{c:04x}" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))})
    # No surrogate may reach a strict stdout (UnicodeEncodeError). Bytes that were not UTF-8 (file names, sysfs),
    # kept by surrogateescape as U+DC80-U+DCFF, are shown as their byte, so a raw 0x9b never reaches the terminal;
    # any other surrogate (a lone "\ud800" in a peer's JSON) as its code point.
    table.update({c: f"\\u{c:04x}" for c in range(0xD800, 0xE000)})
    table.update({0xDC00 + b: f"\\x{b:02x}" for b in range(0x80, 0x100)})
    return table


_ESCAPES = _escape_table()


def escape(text: str) -> str:
    """``text`` with every control character spelt out (ESC as ``\\x1b``, a newline as ``\\x0a``); a backslash is
    left as it is, so escaping twice changes nothing and paths stay readable."""
    return text.translate(_ESCAPES)


def _join(lines: Iterable[str]) -> str:
    """The lines of a rendering as terminal text: each escaped, each ended by a newline."""
    return "".join(escape(line) + "\n" for line in lines)


def _yn(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def table(rows: list[list[str]]) -> list[str]:
    rows = [[escape(cell) for cell in row] for row in rows]  # widths as they will show
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


def _problem_lines(problem: Problem, indent: str) -> list[str]:
    lines = [f"{indent}{problem.severity.value}: {problem.message}"]
    if problem.kernel_message:
        lines.append(f"      kernel: {problem.kernel_message}")
    return lines


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
        lines += table(rows)
    else:
        lines.append("no livepatch loaded or installed")
    for p in status.patches:
        if verbose or patch_has_problems(p) or p.problems:
            lines += ["", *render_patch_details(p, verbose)]
    if status.candidates:
        lines += ["", "candidates (staging directories; judged as insmod of each now, never loaded by klpd):"]
        rows = [["PATCH", "FILE", "WOULD LOAD", "WOULD REFUSE MODULE LOADS"]]
        for p in status.candidates:
            refused = [o.name for o in p.objects if o.module_load is ModuleLoad.REFUSED]
            rows.append([p.name, p.path or "-", "yes" if p.will_load else "NO", ", ".join(refused) or "-"])
        lines += ["  " + row for row in table(rows)]
        for p in status.candidates:
            if verbose or not p.will_load or p.problems:
                lines += ["", *render_patch_details(p, verbose)]
    if status.problems:
        lines += ["", "host problems:"]
        for x in status.problems:
            lines += _problem_lines(x, "  ")
    return _join(lines)


def _load_check_lines(p: PatchStatus, verbose: bool) -> list[str]:
    """The module loader's checks: those that fail or cannot be known (all of them with -v), and the signer."""
    shown = [c for c in p.load_checks if verbose or c.result is not CheckResult.OK]
    lines = [f"  insmod check {c.check.value:<18} {c.result.value:<8} {c.detail}" for c in shown]
    if p.signature is not None and (verbose or shown):
        who = p.signature.signer or "an unnamed signer"
        lines.append(f"  signed by {who}" + (f", key {p.signature.key_id}" if p.signature.key_id else ""))
    return lines


def render_patch_details(p: PatchStatus, verbose: bool = False) -> list[str]:
    lines = [f"{p.name}: {p.path or '(no file)'}"]
    if not p.will_load:
        lines.append("  will NOT load:")
        lines += [f"    {r}" for r in p.reasons]
    for x in p.problems:
        lines += _problem_lines(x, "  ")
    lines += _load_check_lines(p, verbose)
    if p.replaces:
        lines.append(f"  replaces (atomic replace): {', '.join(p.replaces)}")
    lines += _task_lines(p, verbose)
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
        if obj.functions:
            judged = Counter("undetermined" if f.status is None else f.status.value for f in obj.functions)
            head += "   functions: " + ", ".join(f"{n} {st}" for st, n in judged.items())
        lines.append(head)
        lines += [f"      {r}" for r in obj.reasons]
        lines += _function_lines(obj.functions, verbose)
        for sym in obj.symbols:
            if verbose or (sym.status is not SymbolStatus.OK) or sym.load_order_dependent:
                status = "undetermined" if sym.status is None else sym.status.value
                extra = "  LOAD-ORDER DEPENDENT" if sym.load_order_dependent else ""
                lines.append(f"    {status:<28} {sym.elf_name}{extra}")
                if sym.kernel_message:
                    lines.append(f"      kernel: {sym.kernel_message}")
        for sec in obj.sections:
            if verbose or sec.state is SectionState.FAILS:
                count = "relocations unknown" if sec.relocations is None else f"{sec.relocations} relocations"
                lines.append(f"    section {sec.name} -> {sec.target_section}: {sec.state.value}, {count}")
    return lines


def _task_lines(p: PatchStatus, verbose: bool) -> list[str]:
    report = p.tasks
    if report is None:
        return []
    if report.kind == "blocking":
        what = "tasks blocking the transition"
    else:
        what = "tasks sleeping in a function it replaces (they will hold its transition)"
    if not report.known:
        return [f"  {what}: unknown ({report.note})"]
    lines = [f"  {what}: {report.count}"]
    for task in report.tasks[:10]:
        where = f" in {task.function}" if task.function else ""
        lines.append(f"    pid {task.pid} tid {task.tid} {task.comm}{where}")
        if verbose:
            cmdline = task.cmdline if task.cmdline is not None else "- (a kernel thread, or gone)"
            lines.append(f"      cmdline: {cmdline}")
            if task.stack is None:
                lines.append("      stack: unreadable (needs root)")
            lines += [f"      {frame}" for frame in task.stack or ()]
    if report.count > 10:
        lines.append(f"    ... and {report.count - 10} more")
    return lines


def _function_lines(functions: Iterable[FunctionResult], verbose: bool) -> list[str]:
    """The replaced functions: those the kernel will refuse or that depend on the load order (all with -v)."""
    lines = []
    for f in functions:
        bad = f.status not in (None, FunctionStatus.OK)
        if verbose or bad or f.load_order_dependent:
            status = "undetermined" if f.status is None else f.status.value
            extra = "  LOAD-ORDER DEPENDENT" if f.load_order_dependent else ""
            owner = f"  now: {f.owner}" if f.owner else ""
            if f.owner_after and f.owner_after != f.owner:
                owner += f", after: {f.owner_after}"
            lines.append(f"    function {status:<19} {f.name},{f.sympos} -> {f.new_func or '?'}{owner}{extra}")
            if f.kernel_message:
                lines.append(f"      kernel: {f.kernel_message}")
    return lines


def render_inspect(modules: Iterable[PatchModule], problems: Iterable[Problem], relocations: bool = True) -> str:
    lines: list[str] = []
    for m in modules:
        endian = "little" if m.little_endian else "big"
        lines += [f"{m.path}: module {m.name}, ELF{m.elf_class} {endian}-endian {m.machine}"]
        lines.append("  modinfo:")
        lines += [f"    {k}={v}" for k, v in m.modinfo.entries]
        lines.append(f"  signature: {_signature_text(m)}")
        size = "none" if m.this_module_size is None else f"{m.this_module_size} bytes"
        lines.append(f"  loader: {len(m.versions)} symbol versions, {len(m.imports)} imports, this_module {size}")
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
        lines += _description_lines(m)
        if m.problems:
            lines.append(f"  problems ({len(m.problems)}):")
            for x in m.problems:
                lines += _problem_lines(x, "    ")
        else:
            lines.append("  problems: none")
        lines.append("")
    for x in problems:
        lines += _problem_lines(x, "")
    while lines and not lines[-1]:
        lines.pop()
    return _join(lines) if lines else "\n"


def _description_lines(m: PatchModule) -> list[str]:
    """The patch's own description: each object and each ``old_name,sympos -> new_func`` it replaces."""
    desc = m.description
    if desc is None:
        return ["  Description: none read (see problems)"]
    replace = "decided at init" if desc.replace is None else _yn(desc.replace)
    lines = [f"  Description (found by {desc.found_by.value}: {desc.where}), replace {replace}:"]
    if desc.states:
        lines.append("    states: " + ", ".join(f"id {s.id} version {s.version}" for s in desc.states))
    for obj in desc.objects:
        callbacks = f", callbacks {', '.join(obj.callbacks)}" if obj.callbacks else ""
        count = "funcs NULL" if obj.functions is None else f"{len(obj.functions)} functions"
        lines.append(f"    object {obj.name if obj.name is not None else 'vmlinux (NULL name)'}: {count}{callbacks}")
        for f in obj.functions or ():
            old = f.old_name if f.old_name is not None else "(NULL)"
            new = f.new_func if f.new_func is not None else "(NULL)"
            lines.append(f"      {old},{f.old_sympos} -> {new}")
    return lines


def _signature_text(m: PatchModule) -> str:
    sig = m.signature
    if sig is None:
        return "unsigned"
    if sig.problem is not None:
        return f"MALFORMED: {sig.problem}"
    if sig.id_type != PKEY_ID_PKCS7:
        return f"not PKCS#7 (id_type {sig.id_type}): the kernel cannot verify it"
    return f"signer {sig.signer or '-'}, key id {sig.key_id or '-'}, {sig.hash_algorithm or '-'}"


def _when(value: object) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
    except (OverflowError, OSError, ValueError):  # a peer's 1e300 or NaN
        return "-"


def _dicts(value: object) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def render_daemon(daemon: Mapping[str, Any], events: int = 5) -> str:
    """What only the daemon knows: transitions and their blocking tasks, refusals seen, source health, last events."""
    if not daemon or not isinstance(daemon, Mapping):
        return ""
    lines = [
        "",
        f"daemon: klpd {daemon.get('version', '?')} pid {daemon.get('pid', '?')},"
        f" up since {_when(daemon.get('started'))}, {daemon.get('evaluations', 0)} evaluations,"
        f" last {_when(daemon.get('last_evaluation'))}",
    ]
    for t in _dicts(daemon.get("transitions")):
        lines.append(
            f"  TRANSITION {t.get('patch')}: to {'patched' if t.get('target') else 'unpatched'}"
            f" since {_when(t.get('since'))}, {t.get('blocking_count', '?')} task(s) blocking"
        )
        for task in _dicts(t.get("blocking_tasks"))[:10]:
            lines.append(f"    pid {task.get('pid')} tid {task.get('tid')} {task.get('comm')}")
        if t.get("tasks_note"):
            lines.append(f"    {t['tasks_note']}")
        signals = t.get("signals")
        for signal in signals if isinstance(signals, list) else []:
            lines.append(f"    kernel: {signal}")
    for r in _dicts(daemon.get("refusals")):
        lines.append(f"  REFUSED {_when(r.get('time'))}: module '{r.get('module')}' by patch '{r.get('patch')}'")
        lines.append(f"    kernel: {r.get('message')}")
    sources = daemon.get("sources")
    if isinstance(sources, dict) and sources:
        parts = []
        for name, raw in sources.items():
            info = raw if isinstance(raw, dict) else {}
            state = "up" if info.get("up") else "DOWN"
            lost = f", {info['lost']} lost" if info.get("lost") else ""
            parts.append(f"{name} {state}{lost}")
        lines.append("  sources: " + ", ".join(parts))
    recent = _dicts(daemon.get("events"))[:events]
    if recent:
        lines.append("  last events:")
        lines += [f"    {_when(e.get('time'))} {e.get('source')}: {e.get('message') or e.get('kind')}" for e in recent]
    return _join(lines)
