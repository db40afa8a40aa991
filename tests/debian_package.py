"""Building the Debian package of this tree (debian/) the way a maintainer does: `dpkg-buildpackage -us -uc -b`
in a copy of the files the package is made from, with Debian's own tools and python3."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# What the package is built from; everything else in a checkout (.venv, .git, tests) must not matter.
SOURCES = ("pyproject.toml", "README.md", "klpd", "config", "systemd", "debian")
# Debian's tools with Debian's python3: a python3.11 earlier in PATH (pyenv, a venv) has neither `build` nor
# dh-python, and PYTHONPATH would let this checkout's klpd stand in for the package's.
DEBIAN_ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("PYTHON")},
              "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}  # fmt: skip


def build_deb(workdir: Path) -> Path:
    """The .deb, built under ``workdir``; a skip saying so when dpkg-buildpackage is absent (./dev.sh test
    installs it, so CI never skips)."""
    if shutil.which("dpkg-buildpackage", path=DEBIAN_ENV["PATH"]) is None:
        pytest.skip("dpkg-buildpackage is not installed (Debian package dpkg-dev; ./dev.sh test installs it)")
    src = workdir / "klpd"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))  # fmt: skip
        else:
            shutil.copy2(REPO / name, src / name)
    result = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src, env=DEBIAN_ENV, capture_output=True,
                            text=True, check=False, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    debs = list(workdir.glob("klpd_*_all.deb"))
    assert len(debs) == 1, f"dpkg-buildpackage made {debs}"
    return debs[0]
