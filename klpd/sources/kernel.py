"""The running kernel: /proc/sys/kernel/osrelease, /proc/sys/kernel/tainted, /sys/kernel/livepatch.

``osrelease`` is what ``uname -r`` prints; ``tainted`` (since 2.6) is the decimal taint mask, bit 15 (``K``,
TAINT_LIVEPATCH, since 4.0) set once any livepatch module has been loaded; /sys/kernel/livepatch exists when the
kernel has CONFIG_LIVEPATCH (since 3.19).

On the live host the release may come from uname(2) when procfs cannot give it; under any other root it must
come from the tree, or klpd would judge a copied host against the machine it happens to run on.
"""

from __future__ import annotations

import os

from klpd.errors import FormatError, SourceError
from klpd.model import KernelInfo, Problem, Severity
from klpd.numbers import kernel_decimal
from klpd.regular_file import read_regular_text
from klpd.root import HostPath, SystemRoot
from klpd.sources.result import Read, os_reason, unreadable


def parse_osrelease(text: str, path: str) -> str:
    release = text.strip()
    if not release or any(c.isspace() for c in release):
        raise FormatError(path, f"not a kernel release: {text[:60]!r}")
    return release


def parse_tainted(text: str, path: str) -> int:
    value = kernel_decimal(text.strip())  # an unsigned long
    if value is None:
        raise FormatError(path, f"not a taint mask: {text[:60]!r}")
    return value


def _release(root: SystemRoot, problems: list[Problem]) -> str:
    path = root.osrelease
    try:
        return parse_osrelease(read_regular_text(path, errors="replace"), path.host)
    except (OSError, FormatError) as error:
        if not root.is_live:
            reason = os_reason(error) if isinstance(error, OSError) else error.reason
            raise SourceError(path.host, f"{reason}: the kernel release under this root is unknown") from error
        problems.append(
            Problem("source_unreadable", Severity.WARNING, f"{path.host}: {error}; using uname(2)", subject=path.host)
        )
        return os.uname().release


def _tainted(path: HostPath, problems: list[Problem]) -> int | None:
    try:
        return parse_tainted(read_regular_text(path, errors="replace"), path.host)
    except OSError as error:
        problems.append(unreadable(path.host, error))
    except FormatError as error:
        problems.append(Problem("attribute_malformed", Severity.WARNING, str(error), subject=path.host))
    return None


def read_kernel_info(root: SystemRoot) -> Read[KernelInfo]:
    """Release, taint mask (None when unreadable) and livepatch support; SourceError when the release is unknown."""
    problems: list[Problem] = []
    info = KernelInfo(
        release=_release(root, problems),
        tainted=_tainted(root.tainted, problems),
        livepatch_supported=root.sys_livepatch.local.is_dir(),
    )
    if not info.livepatch_supported:
        # A state of the host, not a source failure: every patch's verdict says it too (the loader's check).
        path = root.sys_livepatch.host
        problems.append(Problem("livepatch_unsupported", Severity.WARNING,
                                f"{path}: missing: kernel {info.release} has no CONFIG_LIVEPATCH, so no livepatch"
                                " module can load", subject=path))  # fmt: skip
    return Read(info, tuple(problems))
