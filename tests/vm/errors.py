"""The harness's two failures, and the one way it runs a host command."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path


class Unavailable(Exception):
    """The suite cannot run here (no QEMU, not root, no package registry): a reason to skip."""


class HarnessError(Exception):
    """A preparation step failed where it should have worked: a real failure, never a skip."""


def run(cmd: Sequence[str | Path], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a host command, returning stdout; a failure raises HarnessError quoting the command's stderr."""
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, errors="replace", check=False
    )
    if proc.returncode != 0:
        raise HarnessError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout
