"""``klpctl capture``: a copy of exactly the files ``klpctl status`` reads, for ``klpctl status --root`` elsewhere.

What to copy is listed nowhere: the status is computed once on the source root while a Python audit hook (PEP 578)
records every file opened, every directory listed and every path probed (:data:`klpd.root.PROBE_EVENT`) under it,
so the copy follows the readers as they change. Then:

- each file opened is copied with its content (procfs and sysfs files read to their end: their size says 0);
- each directory listed is created, and its entries too, empty: a listing's names are what klpd reads of it (the
  section names in ``/sys/module/<patch>/sections/``, the pids in ``/proc``), never the entries' content;
- a probed path that exists (``/sys/kernel/livepatch/<patch>/force``) is created empty.

Nothing else is copied: no ``/proc/<pid>/environ`` or ``cmdline``; ``/proc/<pid>/task/<tid>/patch_state``,
``comm`` and ``stack`` only when the status reads them (a patch in transition, a patch that will load). A file
that vanishes or cannot be read meanwhile is reported and left out. The copy is then read back with the same code,
and its status must equal the one just computed: a host that changed while it was copied is copied again once.
"""

from __future__ import annotations

import os
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import FrameType
from typing import Any

from klpd.collect import evaluate_host
from klpd.errors import UsageError
from klpd.model import HostStatus
from klpd.outputs.json import status_document
from klpd.outputs.text import escape
from klpd.regular_file import read_regular
from klpd.root import PROBE_EVENT, SystemRoot
from klpd.transition_tasks import with_tasks

# A module file or /proc/kallsyms is far smaller; a file larger than this under a root is no system file.
FILE_LIMIT = 1 << 30
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


@dataclass
class Reads:
    """What one status computation looked at under a root: absolute local paths."""

    files: set[str] = field(default_factory=set)  # opened for reading, there when opened
    listed: set[str] = field(default_factory=set)  # directories listed (os.scandir, os.listdir, os.walk)
    probed: set[str] = field(default_factory=set)  # looked at without opening (HostPath.exists)


class _Recording:
    """The process's one recording: an audit hook cannot be removed, so it is added once and does nothing while
    ``reads`` is None."""

    hook_added = False
    root = "/"
    reads: Reads | None = None


def _by_import(frame: FrameType | None) -> bool:
    """An open by Python's import system (a lazily imported module's source or bytecode): not a system file."""
    return frame is not None and frame.f_code.co_filename.startswith("<frozen ")


def _hook(event: str, args: tuple[Any, ...]) -> None:
    reads = _Recording.reads
    if reads is None or event not in ("open", "os.listdir", "os.scandir", PROBE_EVENT):
        return
    target = args[0] if args else None
    if target is None or isinstance(target, int):  # os.listdir() of the cwd, or an open by descriptor
        return
    if event == "open" and (args[2] or 0) & _WRITE_FLAGS:
        return
    path = os.path.abspath(os.fsdecode(target))
    root = _Recording.root
    if (path != root and not path.startswith(root.rstrip("/") + "/")) or _by_import(sys._getframe(1)):
        return
    if event == "open":
        if os.path.lexists(path):  # the open is yet to come: a file that is not there is not there in the copy
            reads.files.add(path)
    else:
        (reads.probed if event == PROBE_EVENT else reads.listed).add(path)


@contextmanager
def record(root: SystemRoot) -> Iterator[Reads]:
    """Record what the code run inside reads under ``root``."""
    if not _Recording.hook_added:
        sys.addaudithook(_hook)
        _Recording.hook_added = True
    reads = Reads()
    _Recording.root, _Recording.reads = os.path.abspath(root.root), reads
    try:
        yield reads
    finally:
        _Recording.reads = None


def compute_status(root: SystemRoot) -> HostStatus:
    """What ``klpctl status --root`` computes (cli._run_status without a daemon)."""
    return with_tasks(root, evaluate_host(root))


@dataclass(frozen=True)
class Skipped:
    host: str  # the host path, as status names it
    reason: str


def _reason(error: OSError) -> str:
    if isinstance(error, FileNotFoundError):
        return "gone since status read it"
    return error.strerror or str(error)


def _entries(directory: str) -> list[tuple[str, bool]]:
    """A listed directory's entries and whether each is a directory; none if it is gone."""
    try:
        with os.scandir(directory) as it:
            return [(e.path, e.is_dir()) for e in it]
    except OSError:
        return []


class _Tree:
    """The copy being written under ``out``: files by content, one inode reached twice as a hard link."""

    def __init__(self, root: SystemRoot, out: Path) -> None:
        self.root = root
        self.out = out
        self.skipped: list[Skipped] = []
        self._copied: dict[tuple[int, int], Path] = {}

    def target(self, local: str) -> Path:
        return self.out / self.root.host_path(Path(local)).lstrip("/")

    def directory(self, local: str) -> None:
        self.target(local).mkdir(parents=True, exist_ok=True)

    def empty(self, local: str) -> None:
        target = self.target(local)
        if not os.path.lexists(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()

    def copy(self, local: str) -> None:
        target = self.target(local)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            st = os.stat(local)
            first = self._copied.get((st.st_dev, st.st_ino))
            if first is not None:  # one file under two names (a symlinked patch directory): klpd counts it once
                os.link(first, target)
                return
            data = read_regular(local, FILE_LIMIT)
        except OSError as error:
            self.skipped.append(Skipped(self.root.host_path(Path(local)), _reason(error)))
            return
        target.write_bytes(data)
        self._copied[(st.st_dev, st.st_ino)] = target


def write_tree(root: SystemRoot, reads: Reads, out: Path) -> list[Skipped]:
    """Copy what ``reads`` names from ``root`` into the directory ``out``; what could not be copied."""
    tree = _Tree(root, out)
    out.mkdir(parents=True, exist_ok=True)
    placeholders = []
    for directory in sorted(reads.listed):
        if os.path.isdir(directory):
            tree.directory(directory)
            for path, is_dir in _entries(directory):
                if is_dir:
                    tree.directory(path)
                elif path not in reads.files:
                    placeholders.append(path)
    for path in sorted(reads.files):
        tree.copy(path)
    for path in sorted(reads.probed):
        if os.path.isdir(path):
            tree.directory(path)
        elif os.path.lexists(path):
            placeholders.append(path)
    for path in placeholders:
        tree.empty(path)
    return tree.skipped


@dataclass(frozen=True)
class Capture:
    status: HostStatus  # the source root's status, as the copy reproduces it
    skipped: tuple[Skipped, ...]
    reproduced: bool  # the copy's status equals the source's
    difference: str | None = None  # the first field where they differ, if not


def _difference(a: Any, b: Any, where: str = "") -> str | None:
    """The first path (``patches[0].enabled``) where two JSON values differ, None when they are equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            found = _difference(a.get(key), b.get(key), f"{where}.{key}" if where else str(key))
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        pairs = enumerate(zip(a, b, strict=True))
        return next((d for i, (x, y) in pairs if (d := _difference(x, y, f"{where}[{i}]"))), None)
    return None if a == b else (where or "the document")


def _attempt(root: SystemRoot, staging: Path) -> Capture:
    with record(root) as reads:
        status = compute_status(root)
    skipped = write_tree(root, reads, staging)
    copy = compute_status(SystemRoot.at(staging, root.patch_dirs))
    difference = _difference(status_document(status, "direct"), status_document(copy, "direct"))
    return Capture(status, tuple(skipped), difference is None, difference)


def is_archive(out: Path) -> bool:
    """``*.tar``, ``*.tar.gz`` or ``*.tgz``: an archive; anything else, a directory."""
    return out.name.endswith(TAR_SUFFIXES)


def _owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """The capturing user's name and ids are nothing the reader needs."""
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _publish(staging: Path, out: Path) -> None:
    if not is_archive(out):
        if out.is_dir():
            out.rmdir()  # checked empty before the capture
        staging.rename(out)
        return
    partial = out.with_name(out.name + ".partial")
    try:
        with tarfile.open(partial, "w" if out.name.endswith(".tar") else "w:gz") as tar:
            for child in sorted(staging.iterdir()):
                tar.add(child, arcname=child.name, filter=_owned_by_root)
        partial.rename(out)
    finally:
        partial.unlink(missing_ok=True)  # a full disk: no half archive left under a name that looks finished


def check_output(out: Path) -> None:
    """UsageError unless ``out`` can be written: a new archive, or a new or empty directory, in an existing one."""
    if not out.parent.is_dir():
        raise UsageError(f"{out}: no directory {out.parent} to write it in")
    if is_archive(out):
        if out.exists():
            raise UsageError(f"{out}: exists; klpctl capture does not overwrite")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out}: exists and is not an empty directory")


def capture(root: SystemRoot, out: Path, attempts: int = 2,
            on_retry: Callable[[Capture], None] | None = None) -> Capture:  # fmt: skip
    """Copy what status reads under ``root`` to ``out`` (a directory, ``*.tar`` or ``*.tar.gz``), read the copy
    back, and copy again when its status differs (the host changed meanwhile), up to ``attempts`` times."""
    check_output(out)
    for attempt in range(1, max(attempts, 1) + 1):
        staging = Path(tempfile.mkdtemp(prefix=".klpctl-capture-", dir=out.parent))
        try:
            result = _attempt(root, staging)
            if result.reproduced or attempt >= attempts:
                _publish(staging, out)
                return result
            if on_retry is not None:
                on_retry(result)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
    raise AssertionError("unreachable: attempts >= 1")  # pragma: no cover


NOT_ROOT = (
    "warning: not root: /proc/kallsyms shows every address as 0 and some files (the tasks' patch_state,"
    " /proc/<pid>/stack, 0400 attributes) cannot be read; the capture shows what this user sees, not what root sees"
)


def retry_note(first: Capture) -> str:
    return f"the host changed while it was copied ({first.difference}); copying again"


def notes(result: Capture, out: str) -> list[str]:
    """What klpctl capture tells its user: each file left out, what the copy cannot show, where it went."""
    lines = [f"skipped {escape(s.host)}: {escape(s.reason)}" for s in result.skipped]
    if not result.status.kallsyms_addresses_visible:
        lines.append("warning: the captured /proc/kallsyms shows no addresses: which objects' symbols are resolved"
                     " cannot be told from it")  # fmt: skip
    if result.reproduced:
        lines.append(f"captured to {escape(out)}")
    else:
        lines.append(f"{escape(out)}: its status differs from this host's at {result.difference} (the host changed"
                     " while it was copied, twice); the copy is kept")  # fmt: skip
    return lines


def _member_ok(member: tarfile.TarInfo) -> bool:
    """What klpctl capture writes: files, directories and hard links, by relative names that stay inside."""
    names = [member.name, member.linkname] if member.islnk() else [member.name]
    inside = all(not n.startswith("/") and ".." not in PurePosixPath(n).parts for n in names)
    return inside and (member.isreg() or member.isdir() or member.islnk())


def unpack(archive: Path, into: Path) -> None:
    """Extract a capture archive for ``--root``; TarError for a member no capture holds (a symlink, a device, a name
    leading out of ``into``), before anything is written: an archive of unknown origin is not trusted."""
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        bad = [m.name for m in members if not _member_ok(m)]
        if bad:
            raise tarfile.TarError(f"{bad[0]}: not a file or directory inside the archive")
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4+: its own check too
            tar.extractall(into, members, filter="data")
        else:  # Debian 12's 3.11.2: the members were checked above
            tar.extractall(into, members)
