"""Installed livepatch module files: the patch directories of a kernel release, walked for module files.

The directories come from :meth:`SystemRoot.patch_dirs_for` (kpatch, SUSE kernel-livepatch, klp-build and
DKMS-style layouts); the walk is recursive and follows symbolic links to directories, each directory visited once
(no loop can trap it). Only the file name is looked at here (``.ko``, ``.ko.xz``, ``.ko.gz``, ``.ko.zst``): the
caller reads modinfo to keep those that say ``livepatch=Y``. A missing directory is the normal case.
"""

from __future__ import annotations

import os
from pathlib import Path

from klpd.model import Problem
from klpd.root import HostPath, SystemRoot
from klpd.sources.modules_dep import MODULE_SUFFIXES
from klpd.sources.result import Read, unreadable


def _walk(top: Path, root: SystemRoot, seen_dirs: set[tuple[int, int]], problems: list[Problem]) -> list[Path]:
    found: list[Path] = []

    def report(error: OSError) -> None:
        if not isinstance(error, FileNotFoundError):
            where = Path(error.filename) if error.filename else top
            problems.append(unreadable(root.under(where).host, error))

    for directory, subdirectories, files in os.walk(top, onerror=report, followlinks=True):
        try:
            status = os.stat(directory)
        except OSError:
            subdirectories.clear()
            continue
        identity = (status.st_dev, status.st_ino)
        if identity in seen_dirs:  # a symlink loop, or a directory reached twice: walk it once
            subdirectories.clear()
            continue
        seen_dirs.add(identity)
        subdirectories.sort()
        found.extend(Path(directory, name) for name in sorted(files) if name.endswith(MODULE_SUFFIXES))
    return found


def find_patch_files(root: SystemRoot, release: str, *, staging: bool = False) -> Read[tuple[HostPath, ...]]:
    """Module files under the patch directories of ``release`` (``staging``: its staging directories), sorted by
    where they are under ``root``.

    A file reached twice (through a symlinked directory or a link to it) is listed once, by its first path in
    configured directory order.
    """
    problems: list[Problem] = []
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[tuple[int, int]] = set()
    files: list[Path] = []
    for top in root.staging_dirs_for(release) if staging else root.patch_dirs_for(release):
        for path in _walk(top, root, seen_dirs, problems):
            try:
                status = path.stat()
            except OSError:
                continue  # a dangling symlink, or removed meanwhile: nothing to load
            identity = (status.st_dev, status.st_ino)
            if identity not in seen_files and path.is_file():
                seen_files.add(identity)
                files.append(path)
    return Read(tuple(root.under(path) for path in sorted(files)), tuple(problems))
