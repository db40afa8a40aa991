"""Which Debian suite carries which kernel series, and which series this test session boots.

``KLPD_VM_KERNEL`` picks it: a series (``5.10``, ``6.1``, ``6.12``, ``7``) or a full release
(``6.1.0-56-amd64``, ``6.12.118+deb13-amd64``), whose series is the one it starts with. Unset, the session boots
bookworm's 6.1, the host's own suite. One pytest session boots one kernel; the matrix is one session per series
(``./dev.sh test-vm-matrix``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Series:
    name: str  # what KLPD_VM_KERNEL says, e.g. "6.12"
    suites: tuple[tuple[str, str], ...]  # (archive, suite) pairs; () for the host's own apt
    core_only: bool  # runs the core cases only (CI time); the whole suite runs on the others

    @property
    def host(self) -> bool:
        """Bookworm's 6.1: the host's own apt, compiler (gcc-12) and installed headers."""
        return not self.suites

    def matches(self, release: str) -> bool:
        return release.startswith((self.name + ".", self.name + "-"))


SERIES: dict[str, Series] = {
    "5.10": Series("5.10", (("debian", "bullseye"), ("debian-security", "bullseye-security")), core_only=True),
    "6.1": Series("6.1", (), core_only=False),
    "6.12": Series("6.12", (("debian", "trixie"), ("debian-security", "trixie-security")), core_only=False),
    "7": Series("7", (("debian", "sid"),), core_only=True),
}
DEFAULT = "6.1"
# What a core-only series runs: the vmlinux sympos cases, a module target in both orders with its refusals and the
# load-order hazard, the reload after removal, stacked/replace status and a blocked transition, the daemon following
# real uevents and the kernel log — and the harness's own smoke test.
CORE_CASES = frozenset(
    {
        "test_vm_smoke.py",
        "test_vm_check_vmlinux.py",
        "test_vm_module_patches.py",
        "test_vm_module_reload.py",
        "test_vm_status.py",
        "test_vm_daemon.py",
        "test_vm_tool_hooks.py",
    }
)


def selected() -> tuple[Series, str | None]:
    """The session's series and, when ``KLPD_VM_KERNEL`` names a full release, that release."""
    wanted = os.environ.get("KLPD_VM_KERNEL", "") or DEFAULT
    if wanted in SERIES:
        return SERIES[wanted], None
    # the longest matching name first: "6.12.x" is 6.12's, never 6.1's
    for name in sorted(SERIES, key=len, reverse=True):
        if SERIES[name].matches(wanted):
            return SERIES[name], wanted
    raise ValueError(f"KLPD_VM_KERNEL={wanted!r} is none of the series {', '.join(SERIES)} nor one of their releases")
