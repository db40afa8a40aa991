"""Guest roots made from a Debian suite's own packages (mmdebstrap), for a VM that boots another userspace than the
host's: a fresh install of that suite, as an administrator's host is, with only what a case names on top of it.

The root is a directory under the VM cache (``<cache>/roots/<suite>-<key>``), keyed by what goes into it (suite,
mirror, package list, mmdebstrap options), built once under a lock of its own and renamed into place when
complete, so an interrupted build leaves nothing half-made. The guest mounts it read-only under a tmpfs overlay,
as it mounts the host's root (:mod:`initramfs`): every boot starts from the same fresh install.

Packages come from Debian's archive through mmdebstrap's own apt configuration (suite and mirror on its command
line); the machine's apt sources are never touched. No network reaches the guest, so whatever a case installs
there (``apt install ./klpd_*.deb``) must find its dependencies already installed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .apt import MIRROR, apt_install
from .errors import Unavailable, run
from .kernel import cache_dir, locked

# Manuals, translations and docs are not what a case looks at; dpkg skips them while the root is built. The
# drop-in that says so is removed afterwards, so a package installed in the guest gets all its files.
_DPKG_EXCLUDES = ("/usr/share/man/*", "/usr/share/locale/*", "/usr/share/doc/*")
_DPKG_CFG = "etc/dpkg/dpkg.cfg.d/99mmdebstrap"


@dataclass(frozen=True)
class GuestRoot:
    suite: str
    packages: tuple[str, ...]  # on top of mmdebstrap's "apt" variant (Essential: yes, and apt)

    def options(self) -> list[str]:
        opts = ["--variant=apt", "--mode=root", f"--include={','.join(self.packages)}"]
        for pattern in _DPKG_EXCLUDES:
            opts.append(f"--dpkgopt=path-exclude={pattern}")
        opts.append("--dpkgopt=path-include=/usr/share/doc/*/copyright")
        opts.append(f'--customize-hook=rm -f "$1/{_DPKG_CFG}"')
        return opts

    def key(self) -> str:
        return hashlib.sha256(" ".join([self.suite, MIRROR, *self.options()]).encode()).hexdigest()[:12]


def guest_root(root: GuestRoot) -> Path:
    """The root directory, built on first use (one to three minutes: the packages are downloaded)."""
    if os.geteuid() != 0:
        raise Unavailable(f"a fresh {root.suite} root needs root (mmdebstrap --mode=root); run the suite as root")
    roots = cache_dir() / "roots"
    roots.mkdir(exist_ok=True)
    dest = roots / f"{root.suite}-{root.key()}"
    with locked(roots / "lock"):
        if dest.is_dir():
            return dest
        apt_install(["mmdebstrap"])
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        start = time.monotonic()
        run(["mmdebstrap", "--quiet", *root.options(), root.suite, str(tmp), f"{MIRROR}/debian"])
        tmp.rename(dest)
        print(f"klpvm: built the {root.suite} guest root {dest} in {time.monotonic() - start:.0f} s: "
              f"{_size(dest) / 2**20:.0f} MiB, {len(_installed(dest))} packages")  # fmt: skip
        for old in roots.glob(f"{root.suite}-*"):
            if old != dest:
                shutil.rmtree(old, ignore_errors=True)
    return dest


def _size(tree: Path) -> int:
    return sum(p.lstat().st_size for p in tree.rglob("*") if p.is_file() and not p.is_symlink())


def _installed(tree: Path) -> Sequence[str]:
    status = (tree / "var/lib/dpkg/status").read_text()
    return [line for line in status.splitlines() if line.startswith("Package: ")]
