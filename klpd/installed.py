"""Patch modules for every installed kernel release, as ``kpatch list`` shows them: what a reboot into another
kernel finds, the next kernel's included (``klpctl list``).

The releases are the entries of the directories the patch directories live in (``/lib/modules/*``,
``/var/lib/kpatch/*``, ``/usr/lib/kpatch/*`` by default: :meth:`SystemRoot.release_parents`), and each release's
patch directories are walked as the running kernel's are. Only modinfo is read. Whether a patch will load on a
kernel that is not running cannot be judged without that kernel's symbols, so for those this says what each file
is and which kernel it was built for (vermagic's first word), and flags a file whose vermagic names another
release than the one it is installed for: that kernel's module loader refuses it ("version magic ... should be
..."), unless it is force-loaded.

The next kernel is the one Debian's default-kernel links (``/vmlinuz``, ``/boot/vmlinuz``, kept by linux-base)
point to; without them (Fedora, RHEL: the boot loader's own configuration) it is not known and says so.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from klpd.elf import read_modinfo
from klpd.errors import FormatError, KlpdError, SourceError
from klpd.model import Problem, Severity
from klpd.model_installed import InstalledPatch, InstalledReleases
from klpd.root import SystemRoot
from klpd.sources import kernel as kernel_source
from klpd.sources import patch_files, proc_modules

_VMLINUZ = re.compile(r"vmlinuz-(.+)")


def installed_releases(root: SystemRoot) -> tuple[str, ...]:
    found: set[str] = set()
    for parent in root.release_parents():
        try:
            entries = list(os.scandir(parent))
        except OSError:
            continue  # a missing /var/lib/kpatch is the normal case
        found.update(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    return tuple(sorted(found, key=_version_key))


def next_boot_release(root: SystemRoot) -> str | None:
    for link in root.default_kernel_links:
        try:
            target = os.readlink(link.local)
        except OSError:
            continue
        match = _VMLINUZ.fullmatch(Path(target).name)
        if match:
            return match.group(1)
    return None


def _version_key(release: str) -> list[tuple[int, object]]:
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-+~]", release)]


def read_installed(root: SystemRoot) -> InstalledReleases:
    """Every release's patch modules; SourceError only when the running release itself is unknown."""
    problems: list[Problem] = []
    kernel = kernel_source.read_kernel_info(root)
    running = kernel.value.release
    modules = proc_modules.read_proc_modules(root)
    problems.extend(p for p in modules.problems if p.severity is Severity.ERROR)
    loaded = set(modules.value)
    releases = set(installed_releases(root)) | {running}
    patches: list[InstalledPatch] = []
    for release in sorted(releases, key=_version_key):
        found = patch_files.find_patch_files(root, release)
        problems.extend(found.problems)
        for where in found.value:
            try:
                info = read_modinfo(where)
            except (KlpdError, OSError) as exc:
                reason = exc.reason if isinstance(exc, FormatError | SourceError) else str(exc)
                patches.append(InstalledPatch(release, None, where.host, None, False, reason))
                continue
            if not info.livepatch:
                continue  # an ordinary module in extra/ or updates/
            built_for = info.vermagic.split(" ", 1)[0] if info.vermagic else None
            name = info.name
            is_loaded = release == running and name is not None and name in loaded
            patches.append(InstalledPatch(release, name, where.host, built_for, is_loaded))
    return InstalledReleases(running, next_boot_release(root), tuple(sorted(releases, key=_version_key)),
                             tuple(patches), tuple(problems))  # fmt: skip



def find_by_name(installed: InstalledReleases, name: str, *, any_release: bool = False) -> tuple[str, ...]:
    """The files of the patch module ``name`` (as modinfo names it, '-' read as '_', as modprobe and kpatch do):
    the running kernel's first; with ``any_release``, every release's when the running one has none."""
    wanted = name.replace("-", "_")
    matching = [p for p in installed.patches if p.name is not None and p.name.replace("-", "_") == wanted]
    running = [p.path for p in matching if p.release == installed.running]
    if running or not any_release:
        return tuple(running)
    return tuple(p.path for p in matching)
