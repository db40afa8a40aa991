"""``klpctl list``: the patch modules installed for every kernel release, the running and the next one marked."""

from __future__ import annotations

from typing import Any

from klpd.model_installed import InstalledPatch, InstalledReleases
from klpd.outputs.json import encode
from klpd.outputs.text import escape, table

INSTALLED_SCHEMA = "klpd.installed/1"


def _built_for(p: InstalledPatch) -> str:
    if p.problem is not None:
        return f"unreadable: {p.problem}"
    if p.built_for is None:
        return "- (no vermagic)"
    if p.release_mismatch:
        return f"{p.built_for} (not {p.release}: that kernel's loader refuses it)"
    return p.built_for


def _mark(installed: InstalledReleases, release: str) -> str:
    marks = [m for m, on in (("running", release == installed.running), ("next boot", release == installed.next_boot))
             if on]  # fmt: skip
    return f"{release} ({', '.join(marks)})" if marks else release


def render_installed(installed: InstalledReleases) -> str:
    next_boot = installed.next_boot or "not known (no /vmlinuz or /boot/vmlinuz link)"
    lines = [f"running kernel {installed.running}   next boot {next_boot}", ""]
    rows = [["RELEASE", "PATCH", "LOADED", "BUILT FOR", "FILE"]]
    for p in installed.patches:
        rows.append([_mark(installed, p.release), p.name or "-", "yes" if p.loaded else "-", _built_for(p), p.path])
    lines += table(rows) if len(rows) > 1 else ["no livepatch module installed for any kernel release"]
    if next_kernel_unpatched(installed):
        lines += ["", f"note: the next kernel, {escape(installed.next_boot or '')}, has no livepatch module installed"]
    for problem in installed.problems:
        lines.append(f"problem: {escape(problem.message)}")
    return "\n".join(lines) + "\n"


def installed_document(installed: InstalledReleases) -> dict[str, Any]:
    releases = []
    for release in installed.releases:
        patches = [encode(p) | {"release_mismatch": p.release_mismatch} for p in installed.patches
                   if p.release == release]  # fmt: skip
        releases.append({"release": release, "running": release == installed.running,
                         "next_boot": release == installed.next_boot, "patches": patches})  # fmt: skip
    return {
        "schema": INSTALLED_SCHEMA,
        "running": installed.running,
        "next_boot": installed.next_boot,
        "releases": releases,
        "problems": encode(installed.problems),
    }


def has_problems(installed: InstalledReleases) -> bool:
    """A file that cannot be read, or one built for another kernel than the release it is installed for."""
    return any(p.problem is not None or p.release_mismatch for p in installed.patches)


def next_kernel_unpatched(installed: InstalledReleases) -> bool:
    """The running kernel has patch modules and the next boot's kernel (another one) has none."""
    with_patches = {p.release for p in installed.patches}
    nxt = installed.next_boot
    if nxt is None or nxt == installed.running:
        return False
    return installed.running in with_patches and nxt not in with_patches
