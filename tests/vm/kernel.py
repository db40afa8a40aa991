"""Debian's own kernel for the QEMU suite: fetched with apt, cached, and made ready to boot and to build modules for.

The kernel is ``linux-image-6.1.0-<N>-amd64``, whatever ``linux-image-amd64`` depends on today (override with
``KLPD_VM_KERNEL=6.1.0-<N>-amd64``). Its ``linux-headers`` package is installed with apt, as root, because kbuild
needs the compiler the kernel was built with (gcc-12) and ``linux-kbuild-6.1``; ``linux-source-6.1`` of the same
version is downloaded only to extract ``lib/livepatch/`` and ``samples/livepatch/``.

Every step writes into a temporary name and renames it when complete, so an interrupted run never leaves a half-made
cache entry behind, and a lock file serialises concurrent test sessions on the same cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class Unavailable(Exception):
    """The suite cannot run here (no QEMU, not root, no package registry): a reason to skip."""


class HarnessError(Exception):
    """A preparation step failed where it should have worked: a real failure, never a skip."""


def cache_dir() -> Path:
    """``$KLPD_VM_CACHE``, else ``/var/cache/klpd-vm`` for root (kept across clones), else ``<repo>/.cache/vm``."""
    env = os.environ.get("KLPD_VM_CACHE")
    if env:
        path = Path(env)
    elif os.geteuid() == 0:
        path = Path("/var/cache/klpd-vm")
    else:
        path = REPO / ".cache" / "vm"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise Unavailable(f"cannot create the cache directory {path} ({e.strerror}); set KLPD_VM_CACHE") from None
    if not os.access(path, os.W_OK):
        raise Unavailable(f"the cache directory {path} is not writable; set KLPD_VM_CACHE")
    return path


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) for the duration of the block."""
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run(cmd: Sequence[str | Path], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a host command, returning stdout; a failure raises HarnessError quoting the command's stderr."""
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, errors="replace", check=False
    )
    if proc.returncode != 0:
        raise HarnessError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout


def _apt_env() -> dict[str, str]:
    return {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise Unavailable(f"{what} needs root (apt-get); run the suite as root or via ./dev.sh test")


_apt_updated = False


def _apt_update_once() -> None:
    global _apt_updated  # noqa: PLW0603 - one `apt-get update` per test session is the point
    if not _apt_updated:
        _require_root("apt-get update")
        run(["apt-get", "update", "-qq"], env=_apt_env())
        _apt_updated = True


def _installed(package: str) -> bool:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False)
    return proc.returncode == 0 and "install ok installed" in proc.stdout


def apt_install(packages: Sequence[str]) -> None:
    """Install the packages that are not installed yet (no apt call at all when none is missing)."""
    missing = [p for p in packages if not _installed(p)]
    if not missing:
        return
    _require_root(f"installing {' '.join(missing)}")
    _apt_update_once()
    run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=300", *missing],
        env=_apt_env(),
    )


def _apt_query(args: Sequence[str]) -> str:
    """An apt-cache query; an empty answer triggers one `apt-get update` (fresh machines have no lists)."""
    out = subprocess.run(["apt-cache", *args], capture_output=True, text=True, check=False).stdout
    if not out.strip() and os.geteuid() == 0:
        _apt_update_once()
        out = subprocess.run(["apt-cache", *args], capture_output=True, text=True, check=False).stdout
    return out


def current_release() -> str:
    """The kernel release to test: ``$KLPD_VM_KERNEL`` or the flavour ``linux-image-amd64`` depends on."""
    env = os.environ.get("KLPD_VM_KERNEL")
    if env:
        return env
    out = _apt_query(["depends", "linux-image-amd64"])
    m = re.search(r"Depends: linux-image-(6\.1\.\d+-\d+-amd64)\b", out)
    if not m:
        raise Unavailable(f"apt knows no linux-image-amd64 depending on a 6.1 kernel:\n{out[:500]}")
    return m.group(1)


def candidate_version(package: str) -> str:
    m = re.search(r"Candidate: (\S+)", _apt_query(["policy", package]))
    if not m or m.group(1) == "(none)":
        raise Unavailable(f"apt has no candidate for {package}")
    return m.group(1)


def fetch_deb(package: str, version: str, dest: Path) -> Path:
    """``apt-get download package=version`` into ``dest`` (kept there: a warm cache downloads nothing)."""
    name = f"{package}_{version.replace(':', '%3a')}_"
    found = sorted(dest.glob(f"{name}*.deb"))
    if found:
        return found[0]
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / "partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    # root downloads as _apt, which cannot write into a root-owned cache: download as root instead.
    run(["apt-get", "download", "-qq", "-o", "APT::Sandbox::User=root", f"{package}={version}"], cwd=tmp)
    debs = list(tmp.glob("*.deb"))
    if len(debs) != 1:
        raise HarnessError(f"apt-get download {package}={version} gave {debs}")
    final = dest / debs[0].name
    debs[0].rename(final)
    tmp.rmdir()
    return final


@dataclass(frozen=True)
class KernelImage:
    """A Debian kernel extracted into the cache."""

    release: str  # e.g. 6.1.0-56-amd64
    version: str  # Debian package version, e.g. 6.1.192-2
    base: Path  # its cache directory: everything made for this kernel goes there
    headers: Path  # /usr/src/linux-headers-<release> (installed with apt)

    @property
    def root(self) -> Path:
        """dpkg -x of linux-image-<release>: boot/, lib/modules/<release>/."""
        return self.base / "image"

    @property
    def source(self) -> Path:
        """lib/livepatch and samples/livepatch of linux-source of the same version."""
        return self.base / "source"

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.release


def _complete(final: Path, make: Callable[[Path], None]) -> Path:
    """Build ``final`` through ``make(tmp)`` into a temporary sibling, then rename it into place."""
    if final.exists():
        return final
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    make(tmp)
    tmp.rename(final)
    return final


def _extract_image(deb: Path, dest: Path) -> None:
    run(["dpkg-deb", "-x", deb, dest])


def _extract_livepatch_sources(deb: Path, dest: Path) -> None:
    listing = run(["dpkg-deb", "-c", deb])
    m = re.search(r"(\./usr/src/linux-source-[\w.]+\.tar\.xz)", listing)
    if not m:
        raise HarnessError(f"{deb} holds no usr/src/linux-source-*.tar.xz")
    dest.mkdir(parents=True)
    # Only two small directories are needed out of a 1.3 GB tree: stream it, never unpack it whole.
    script = (
        'set -o pipefail; dpkg-deb --fsys-tarfile "$1" | tar -xO "$2" | '
        'tar -xJ -C "$3" --strip-components=1 --wildcards "*/lib/livepatch" "*/samples/livepatch"'
    )
    run(["bash", "-c", script, "extract", deb, m.group(1), dest])


def prepare_kernel(cache: Path) -> KernelImage:
    """Fetch, extract and install what the suite needs for the current kernel (idempotent; needs the lock).

    Stale package lists name versions the archive no longer serves: on a failure, update them once and retry.
    """
    try:
        return _prepare_kernel(cache)
    except HarnessError:
        if _apt_updated or os.geteuid() != 0:
            raise
        _apt_update_once()
        return _prepare_kernel(cache)


def _prepare_kernel(cache: Path) -> KernelImage:
    release = current_release()
    image_pkg = f"linux-image-{release}"
    version = candidate_version(image_pkg)
    debs = cache / "debs"
    base = cache / f"{release}_{version}"
    base.mkdir(parents=True, exist_ok=True)

    if not (base / "image").exists():
        image_deb = fetch_deb(image_pkg, version, debs)
        _complete(base / "image", lambda tmp: _extract_image(image_deb, tmp))
        image_deb.unlink()  # 70 MB no longer needed

    apt_install([f"linux-headers-{release}"])
    headers = Path(f"/usr/src/linux-headers-{release}")
    if not (headers / "Makefile").exists():
        raise HarnessError(f"linux-headers-{release} is installed but {headers}/Makefile is missing")

    if not (base / "source").exists():
        source_pkg = "linux-source-" + ".".join(release.split(".")[:2])
        try:
            source_deb = fetch_deb(source_pkg, version, debs)
        except HarnessError:
            # The archive may briefly lack the matching source; the livepatch sources barely change.
            source_deb = fetch_deb(source_pkg, candidate_version(source_pkg), debs)
        _complete(base / "source", lambda tmp: _extract_livepatch_sources(source_deb, tmp))
        source_deb.unlink()  # 140 MB, of which two small directories were needed
    image = KernelImage(release, version, base, headers)
    for old in cache.iterdir():
        if old != base and (old / "image").is_dir():
            shutil.rmtree(old, ignore_errors=True)  # a kernel the archive has since replaced: 500 MB each
    for path in (image.vmlinuz, image.modules):
        if not path.exists():
            raise HarnessError(f"{image_pkg} {version} has no {path.relative_to(image.root)}")
    return image


def module_tree(image: KernelImage, extra: Sequence[Path], dest: Path) -> Path:
    """``dest/lib/modules/<release>``: a hard-linked copy of the image's modules plus ``extra/`` (the suite's own
    target modules, so that modprobe and klpd find them through modules.dep), indexed by ``depmod -b``.

    The guest sees this directory instead of the host's ``/lib/modules/<release>``, so it gets the host's ``build``
    and ``source`` links too (what ``linux-headers-<release>`` installs there): a guest with the headers installed,
    like the host, whose ``build/Module.symvers`` klpd reads the kernel's exports and CRCs from."""

    def make(tmp: Path) -> None:
        tree = tmp / "lib" / "modules" / image.release
        tree.parent.mkdir(parents=True)
        run(["cp", "-al", image.modules, tree])
        for link in ("build", "source"):
            host = Path("/lib/modules") / image.release / link
            if host.is_symlink():
                (tree / link).symlink_to(os.readlink(host))
        (tree / "extra").mkdir()
        for ko in extra:
            shutil.copy2(ko, tree / "extra" / ko.name)
        run(["depmod", "-b", tmp, image.release])

    return _complete(dest, make) / "lib" / "modules" / image.release
