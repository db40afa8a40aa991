"""Which host and which boot: /proc/sys/kernel/hostname, /etc/machine-id and /proc/sys/kernel/random/boot_id.

The daemon's documents carry them so that a fleet's collected answers say whose they are. ``machine-id`` is
systemd's (machine-id(5): 32 lowercase hex digits, since systemd 1); ``boot_id`` is the kernel's random UUID for
this boot (since 2.6.12). Under ``--root`` all three come from the tree; a missing or malformed file is None, never
a guess — none of them changes what klpd predicts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from klpd.regular_file import read_regular_text
from klpd.root import HostPath, SystemRoot

_MACHINE_ID = re.compile(r"[0-9a-f]{32}")
_BOOT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HOSTNAME = re.compile(r"[^\s\x00-\x1f\x7f]{1,64}")  # the kernel's limit is 64 (__NEW_UTS_LEN)


@dataclass(frozen=True)
class HostIdentity:
    hostname: str | None
    machine_id: str | None
    boot_id: str | None

    def as_json(self) -> dict[str, Any]:
        return {"hostname": self.hostname, "machine_id": self.machine_id, "boot_id": self.boot_id}


def _read(path: HostPath, pattern: re.Pattern[str]) -> str | None:
    try:
        text = read_regular_text(path, errors="replace").strip()
    except OSError:
        return None
    return text if pattern.fullmatch(text) else None


def read_host_identity(root: SystemRoot) -> HostIdentity:
    return HostIdentity(
        hostname=_read(root.hostname, _HOSTNAME),
        machine_id=_read(root.machine_id, _MACHINE_ID),
        boot_id=_read(root.boot_id, _BOOT_ID),
    )
