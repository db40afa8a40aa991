"""Debian's own kernels for the QEMU suite: fetched with apt, cached per kernel, made ready to boot and to build for.

The series (:mod:`series`) decides where a kernel comes from:

- bookworm's 6.1, the host's suite: ``linux-image-6.1.0-<N>-amd64``, whatever ``linux-image-amd64`` depends on
  today (``KLPD_VM_KERNEL=6.1.0-<N>-amd64`` overrides). Its ``linux-headers`` package is installed with the host's
  apt, as root, because kbuild needs the compiler the kernel was built with (gcc-12, the host's) and
  ``linux-kbuild-6.1``. Cached in ``<cache>/<release>_<version>``.
- another suite's (5.10, 6.12, 7.x): the image through a private apt configuration (:class:`apt.PrivateApt`), the
  headers and compiler unpacked into a private build root (:mod:`toolchain`). Cached in
  ``<cache>/kernels/<release>_<version>``, under a lock of its own so that a cold download blocks no other series.

``linux-source-<major.minor>`` of the same version is downloaded only to extract ``lib/livepatch/`` and
``samples/livepatch/``.

Every step writes into a temporary name and renames it when complete, so an interrupted run never leaves a half-made
cache entry behind, and a lock file serialises concurrent test sessions on the same cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import toolchain
from .apt import PrivateApt, apt_install, apt_query, apt_update_once, apt_updated, candidate_version, fetch_deb
from .errors import HarnessError, Unavailable, run
from .series import Series, selected

REPO = Path(__file__).resolve().parents[2]

__all__ = ["HarnessError", "KernelImage", "Unavailable", "apt_install", "prepare_kernel", "run"]


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


def lock_path(cache: Path) -> Path:
    """The lock of the selected series' cache: the host's 6.1 keeps the cache-wide one it always had."""
    series, _ = selected()
    if series.host:
        return cache / "lock"
    (cache / "kernels").mkdir(exist_ok=True)
    return cache / "kernels" / f"{series.name}.lock"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) for the duration of the block."""
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# How long a build nobody has prepared a session with stays in the cache. Sessions of other checkouts (other keys)
# share it: removing every other key at once pulled modules from under their running guests.
STALE_AFTER = 24 * 3600


def prune_siblings(keep: Path, pattern: str, spare: Sequence[str] = ()) -> None:
    """Mark ``keep`` as used now; remove its siblings matching ``pattern`` (but ``spare``) unused for a day."""
    os.utime(keep)
    for old in keep.parent.glob(pattern):
        if old != keep and old.name not in spare:
            with contextlib.suppress(FileNotFoundError):
                if time.time() - old.stat().st_mtime > STALE_AFTER:
                    shutil.rmtree(old, ignore_errors=True)


def current_release() -> str:
    """The host suite's kernel release to test: a full ``$KLPD_VM_KERNEL``, else the flavour
    ``linux-image-amd64`` depends on."""
    _, release = selected()
    if release:
        return release
    out = apt_query(["depends", "linux-image-amd64"])
    m = re.search(r"Depends: linux-image-(6\.1\.\d+-\d+-amd64)\b", out)
    if not m:
        raise Unavailable(f"apt knows no linux-image-amd64 depending on a 6.1 kernel:\n{out[:500]}")
    return m.group(1)


@dataclass(frozen=True)
class KernelImage:
    """A Debian kernel extracted into the cache."""

    release: str  # e.g. 6.1.0-56-amd64
    version: str  # Debian package version, e.g. 6.1.192-2
    base: Path  # its cache directory: everything made for this kernel goes there
    headers: Path  # <sysroot>/usr/src/linux-headers-<release>
    series: str = "6.1"
    sysroot: Path = Path("/")  # where the headers and compiler live: the host, or a private build root

    @property
    def build_path(self) -> str | None:
        """PATH for kbuild: the private build root's compiler first; None for the host's own."""
        return None if self.sysroot == Path("/") else toolchain.tool_path(self.sysroot)

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
        in_modules = self.modules / "vmlinuz"  # sid's 7.x: /usr/lib/modules/<release>/vmlinuz
        return in_modules if in_modules.exists() else self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def modules(self) -> Path:
        merged = self.root / "usr" / "lib" / "modules" / self.release  # trixie's and sid's packages: merged /usr
        return merged if merged.is_dir() else self.root / "lib" / "modules" / self.release


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
    # Only small directories are needed out of a 1.3 GB tree: stream it, never unpack it whole. The selftest
    # modules are lib/livepatch/ up to 6.1 and tools/testing/selftests/livepatch/test_modules/ since (6.5);
    # klp-build's init code (tool_hooks.py) exists since 6.19: tar fails on a pattern that matches nothing, so
    # success is judged by what was extracted.
    script = (
        'dpkg-deb --fsys-tarfile "$1" | tar -xO "$2" | tar -xJ -C "$3" --strip-components=1 --wildcards '
        '"*/lib/livepatch" "*/samples/livepatch" "*/tools/testing/selftests/livepatch/test_modules" '
        '"*/scripts/livepatch/init.c" 2>&1 | '
        'grep -v -e "Not found in archive" -e "Exiting with failure"; exit 0'
    )
    errors = run(["bash", "-c", script, "extract", deb, m.group(1), dest])
    if not (dest / "samples" / "livepatch").is_dir() or errors.strip():
        raise HarnessError(f"extracting the livepatch sources of {deb} failed:\n{errors[-3000:]}")


def prepare_kernel(cache: Path) -> KernelImage:
    """Fetch, extract and install what the suite needs for the selected kernel (idempotent; needs the lock).

    Stale package lists name versions the archive no longer serves: on a failure, update them once and retry.
    """
    series, release = selected()
    if not series.host:
        apt = PrivateApt(cache / "kernels" / f"apt-{series.name}", series.suites)
        try:
            return _prepare_private(cache / "kernels", series, release, apt)
        except HarnessError:
            if not apt.update_if_stale():
                raise
            return _prepare_private(cache / "kernels", series, release, apt)
    try:
        return _prepare_kernel(cache)
    except HarnessError:
        if apt_updated() or os.geteuid() != 0:
            raise
        apt_update_once()
        return _prepare_kernel(cache)


def _source_package(release: str) -> str:
    return "linux-source-" + ".".join(release.split(".")[:2])


def _fetch_image_and_source(
    base: Path, fetch: Callable[[str, str], Path], release: str, version: str, parts: Sequence[str] = ()
) -> None:
    """``parts``: the packages that hold the image's files when linux-image-<release> is only their metapackage
    (sid's 7.x: linux-binary-<release> has the vmlinuz, linux-modules-<release> the modules, linux-base-<release>
    modules.builtin)."""
    if not (base / "image").exists():
        debs = [fetch(f"linux-image-{release}", version), *(fetch(p, "") for p in parts)]

        def extract(tmp: Path) -> None:
            for deb in debs:
                _extract_image(deb, tmp)

        _complete(base / "image", extract)
        for deb in debs:
            deb.unlink()  # 70 MB no longer needed
    if not (base / "source").exists():
        source_deb = fetch(_source_package(release), version)
        _complete(base / "source", lambda tmp: _extract_livepatch_sources(source_deb, tmp))
        source_deb.unlink()  # 140 MB, of which two small directories were needed


def _drop_replaced(parent: Path, base: Path, series: Series) -> None:
    """Remove the cache of a kernel of the same series that the archive has since replaced: 500 MB each."""
    for old in parent.iterdir():
        if old != base and (old / "image").is_dir() and series.matches(old.name):
            shutil.rmtree(old, ignore_errors=True)


def _checked(image: KernelImage) -> KernelImage:
    for path in (image.vmlinuz, image.modules, image.headers / "Makefile"):
        if not path.exists():
            raise HarnessError(f"the kernel {image.release} {image.version} has no {path}")
    return image


def _prepare_private(parent: Path, series: Series, release: str | None, apt: PrivateApt) -> KernelImage:
    if release is None:
        out = apt.query(["depends", "linux-image-amd64"])
        m = re.search(r"Depends: linux-image-(\S+-amd64)\b", out)
        if not m or not series.matches(m.group(1)):
            raise Unavailable(f"{series.suites} has no linux-image-amd64 of the {series.name} series:\n{out[:500]}")
        release = m.group(1)
    version = apt.candidate(f"linux-image-{release}")
    base = parent / f"{release}_{version}"
    base.mkdir(parents=True, exist_ok=True)
    debs = parent / f"debs-{series.name}"  # one per series: concurrent sessions of two series download at once
    depends = apt.query(["depends", f"linux-image-{release}"])
    parts = sorted(set(re.findall(rf"Depends: (linux-(?:base|binary|modules)-{re.escape(release)})\n", depends)))

    def fetch(package: str, v: str) -> Path:
        return apt.download(package, v or apt.candidate(package), debs)

    _fetch_image_and_source(base, fetch, release, version, parts)
    sysroot = base / "sysroot"
    _complete(sysroot, lambda tmp: toolchain.make_sysroot(apt, release, tmp, sysroot, base / "sysroot-debs"))
    _drop_replaced(parent, base, series)
    headers = sysroot / "usr" / "src" / f"linux-headers-{release}"
    return _checked(KernelImage(release, version, base, headers, series.name, sysroot))


def _prepare_kernel(cache: Path) -> KernelImage:
    release = current_release()
    version = candidate_version(f"linux-image-{release}")
    base = cache / f"{release}_{version}"
    base.mkdir(parents=True, exist_ok=True)
    debs = cache / "debs"

    def fetch(package: str, v: str) -> Path:
        try:
            return fetch_deb(package, v, debs)
        except HarnessError:
            if package.startswith("linux-image-"):
                raise
            # The archive may briefly lack the matching source; the livepatch sources barely change.
            return fetch_deb(package, candidate_version(package), debs)

    _fetch_image_and_source(base, fetch, release, version)
    apt_install([f"linux-headers-{release}"])
    _drop_replaced(cache, base, selected()[0])
    return _checked(KernelImage(release, version, base, Path(f"/usr/src/linux-headers-{release}")))


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
            for lib in ("lib", "usr/lib"):
                where = image.sysroot / lib / "modules" / image.release / link
                if where.is_symlink():
                    target = os.readlink(where)
                    if not target.startswith("/"):
                        target = os.path.normpath(where.parent / target)  # trixie's links are relative
                    elif image.sysroot != Path("/"):
                        target = f"{image.sysroot}{target}"  # an absolute link of the private build root
                    (tree / link).symlink_to(target)
                    break
        (tree / "extra").mkdir()
        for ko in extra:
            shutil.copy2(ko, tree / "extra" / ko.name)
        run(["depmod", "-b", tmp, image.release])

    return _complete(dest, make) / "lib" / "modules" / image.release
