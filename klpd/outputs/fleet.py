"""``klpctl check --root DIR --root DIR ... FILE``: the same patch files judged on many captured hosts at once.

One row per host and patch, then a summary per patch (on how many hosts it loads, fails, or cannot be judged);
the JSON document ``klpd.fleet-check/1`` holds each host's ``klpd.status/1`` document. A host that could not be
evaluated at all (its capture lacks /proc/kallsyms, say) is a row with the reason, never the end of the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from klpd.model import HostStatus, ModuleLoad, PatchStatus
from klpd.outputs import json as json_out
from klpd.outputs.text import escape, table
from klpd.predict.verdicts import has_problems, undetermined

FLEET_SCHEMA = "klpd.fleet-check/1"


@dataclass(frozen=True)
class HostCheck:
    """One host's answer: its status, or why there is none."""

    root: str  # the capture directory
    hostname: str | None  # the capture's /proc/sys/kernel/hostname
    status: HostStatus | None
    error: str | None = None

    @property
    def label(self) -> str:
        return f"{self.hostname} ({self.root})" if self.hostname else self.root


def _verdict(p: PatchStatus, status: HostStatus) -> str:
    if p.will_load:
        return "loads"
    return "undetermined" if undetermined(status) and not p.reasons else "fails"


def summary(checks: Sequence[HostCheck]) -> dict[str, dict[str, int]]:
    """Per patch name: on how many hosts it loads, fails, or cannot be judged."""
    names = {p.name for c in checks if c.status for p in c.status.patches}
    out = {name: {"loads": 0, "fails": 0, "undetermined": 0} for name in sorted(names)}
    for c in checks:
        judged = {p.name: _verdict(p, c.status) for p in c.status.patches} if c.status else {}
        for name, counts in out.items():
            counts[judged.get(name, "undetermined")] += 1
    return out


def exit_kind(checks: Sequence[HostCheck]) -> str:
    """"problems" when a patch fails on some host, else "undetermined" when some host could not be judged."""
    if any(c.status is not None and has_problems(c.status) for c in checks):
        return "problems"
    if any(c.status is None or undetermined(c.status) for c in checks):
        return "undetermined"
    return "ok"


def render_fleet(checks: Sequence[HostCheck]) -> str:
    rows = [["HOST", "KERNEL", "PATCH", "WILL LOAD", "WOULD REFUSE MODULE LOADS", "FIRST REASON"]]
    for c in checks:
        if c.status is None:
            rows.append([c.label, "-", "-", "?", "-", f"cannot evaluate: {c.error or ''}"])
            continue
        for p in c.status.patches:
            refused = ", ".join(o.name for o in p.objects if o.module_load is ModuleLoad.REFUSED) or "-"
            will = {"loads": "yes", "fails": "NO", "undetermined": "?"}[_verdict(p, c.status)]
            reason = p.reasons[0] if p.reasons else "-"
            rows.append([c.label, c.status.kernel_release, p.name, will, refused, reason])
    lines = table(rows)
    lines.append("")
    for name, counts in summary(checks).items():
        lines.append(
            f"{escape(name)}: loads on {counts['loads']} of {len(checks)} hosts, fails on {counts['fails']},"
            f" undetermined on {counts['undetermined']}"
        )
    return "\n".join(lines) + "\n"


def fleet_document(checks: Sequence[HostCheck]) -> dict[str, Any]:
    hosts: list[dict[str, Any]] = []
    for c in checks:
        doc = json_out.status_document(c.status, "check") if c.status is not None else None
        hosts.append({"root": c.root, "hostname": c.hostname, "status": doc, "error": c.error})
    return {"schema": FLEET_SCHEMA, "hosts": hosts, "summary": summary(checks)}
