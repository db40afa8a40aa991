"""Boot Debian's 6.1 kernel under QEMU and run a shell script in it, against the host's own files.

    env = prepare()                       # fetch, extract, build (cached); raises Unavailable when it cannot run here
    result = env.vm().run("insmod ...; cat /sys/kernel/livepatch/*/enabled", timeout=120)
    result.exit_code, result.stdout, result.stderr, result.dmesg, result.files["x.json"]
    runs = env.run_many({"a": script_a, "b": script_b})   # independent boots, two at a time on two cores
    env.run_many({"a": ...}, kernel_args={"a": ["module.sig_enforce=1"]})   # boot "a" with more on its command line
    runs["a"].step("check").json()        # guest.sh's `step check klpctl check --json FILE`

Tests call :func:`session_environment` (skip or fail policy) instead of :func:`prepare`.

Each :meth:`VM.run` is one boot: a pristine kernel per case, since livepatch state cannot always be undone (a
patch that was forced, or a target module whose relocations 6.1 does not clear on removal). The guest sees the
host's root read-only (writes land in a tmpfs overlay), so ``/work/main/.venv/bin/klpctl`` runs inside it at the
same path; ``env.vm(root=...)`` boots a root made from another suite's packages instead (:mod:`rootfs`). The
script runs as root with bash, in the repository's directory; ``$KLPVM_OUT`` is a directory whose files come back
in :attr:`GuestResult.files`, and ``$KLPVM_IN`` holds the files given as ``env.vm(inputs=...)``.

QEMU uses TCG (``-accel tcg,thread=single -cpu max``: one host thread per guest, see VM.qemu_command) unless a real
KVM is present: ``/dev/kvm`` alone is not enough, it can be a nested implementation that stalls a guest, so KVM is
used only with kvm_intel or kvm_amd loaded.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from .boot import BUSYBOX, KLPCTL, QEMU, VM, GuestResult, Step, VMError, load_factor
from .initramfs import INIT, build_initramfs
from .kernel import (
    REPO,
    HarnessError,
    KernelImage,
    Unavailable,
    cache_dir,
    lock_path,
    locked,
    module_tree,
    prepare_kernel,
    prune_siblings,
)
from .modules import Built, build_modules

# What the harness runs on the host besides apt: dev.sh installs these; the harness installs them too when missing.
# patchelf and zstd: for the kernels of other suites (a private build root; zstd-compressed modules).
HOST_PACKAGES = (
    "qemu-system-x86", "busybox-static", "kmod", "xz-utils", "zstd", "patchelf", "make", "bc", "curl", "jq", "udev",
)  # fmt: skip


@dataclass(frozen=True)
class Environment:
    """Everything one boot needs; made once per test session by :func:`prepare`."""

    kernel: KernelImage
    modules: Path  # host path of the guest's /lib/modules/<release> (image + extra/, depmod-ed)
    initramfs: Path
    built: Built | None  # the livepatch modules the cases load (None only while preparing)

    def vm(self, **kwargs: object) -> VM:
        return VM(self, **kwargs)  # type: ignore[arg-type]

    def run_many(
        self, scripts: Mapping[str, str], timeout: float = 300.0, kernel_args: Mapping[str, Sequence[str]] | None = None
    ) -> Runs:
        """Run independent scripts, one pristine boot each, :func:`parallel_boots` at a time.

        A guest spends most of its time in one vCPU thread (Python under TCG), so two boots on two host cores
        take little longer than one. A boot that fails is kept as its error and raised by ``runs[name]`` only.
        ``kernel_args[name]`` is added to that boot's kernel command line (see :meth:`VM.run`).
        """
        with ThreadPoolExecutor(parallel_boots()) as pool:
            futures = {
                name: pool.submit(self.vm().run, script, timeout, (kernel_args or {}).get(name, ()))
                for name, script in scripts.items()
            }
            wait(futures.values())
        return Runs({name: f.exception() or f.result() for name, f in futures.items()})


class Runs(dict[str, "GuestResult | BaseException"]):
    """Results of :meth:`Environment.run_many` by name; a boot that failed raises its error when looked up."""

    def __getitem__(self, name: str) -> GuestResult:
        value = super().__getitem__(name)
        if isinstance(value, BaseException):
            raise value
        return value


def parallel_boots() -> int:
    """``$KLPD_VM_JOBS``, else one boot per host core (at most 4)."""
    env = os.environ.get("KLPD_VM_JOBS")
    return max(1, int(env)) if env else max(1, min(4, os.cpu_count() or 1))


def check_host() -> None:
    """Raise Unavailable when this host cannot run the suite at all (before any download)."""
    if shutil.which(QEMU) is None or not BUSYBOX.exists():
        from .kernel import apt_install

        try:
            apt_install(HOST_PACKAGES)
        except Unavailable as e:
            raise Unavailable(f"{QEMU} or busybox-static is missing and cannot be installed: {e}") from None
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise Unavailable("no apt-get/dpkg-deb: the kernel packages come from Debian's archive")


def prepare() -> Environment:
    """Fetch and build everything (cached, serialised by a lock), return the boot environment."""
    from .kernel import apt_install

    check_host()
    cache = cache_dir()
    with locked(cache / "lock"):
        apt_install(HOST_PACKAGES)
    with locked(lock_path(cache)):
        kernel = prepare_kernel(cache)
        base = kernel.base
        # Named after its init script, so a changed script never boots from a stale cached image.
        initramfs = base / f"initramfs-{hashlib.sha256(INIT.encode()).hexdigest()[:12]}.cpio"
        if not initramfs.exists():
            build_initramfs(module_tree(kernel, [], base / "modroot-base"), kernel.release, BUSYBOX, initramfs)
        kallsyms = base / "kallsyms"
        if not kallsyms.exists():
            # The image's System.map is a stub: ask the guest itself which symbols it has, once.
            bare = Environment(kernel, base / "modroot-base" / "lib" / "modules" / kernel.release, initramfs, None)
            result = bare.vm().run("cat /proc/kallsyms > $KLPVM_OUT/kallsyms", timeout=300)
            if result.exit_code != 0 or "kallsyms" not in result.files:
                raise HarnessError(f"could not read the guest's /proc/kallsyms:\n{result.stderr}")
            kallsyms.write_bytes(result.files["kallsyms"])
        built = build_modules(kernel, kallsyms.read_text(), base / "build")
        # Named after what goes into it, module_tree() included, so that a changed tree layout is rebuilt.
        tree_key = hashlib.sha256(f"{built.key} {inspect.getsource(module_tree)}".encode()).hexdigest()[:16]
        tree = module_tree(kernel, built.targets, base / f"modroot-{tree_key}")
        prune_siblings(base / f"modroot-{tree_key}", "modroot-*", spare=("modroot-base",))
    return Environment(kernel, tree, initramfs, built)


_session: Environment | BaseException | None = None


def session_environment() -> Environment:
    """The prepared environment for this test session, or a skip (a failure when forced) saying why not.

    ``KLPD_VM_TESTS=0`` skips the suite outright; ``KLPD_VM_TESTS=1`` or ``CI=true`` turn every skip into a failure.
    A preparation error fails every VM test with the same message, without retrying the preparation each time.
    """
    import pytest

    global _session  # noqa: PLW0603 - one preparation per test session
    if os.environ.get("KLPD_VM_TESTS") == "0":
        pytest.skip("real-kernel suite disabled by KLPD_VM_TESTS=0")
    if _session is None:
        try:
            _session = prepare()
        except BaseException as e:  # remembered, so a failing preparation is not redone for every test
            _session = e
    if isinstance(_session, Unavailable):
        if forced():
            pytest.fail(f"the real-kernel suite must run here (KLPD_VM_TESTS=1 or CI=true) but cannot: {_session}")
        pytest.skip(f"real-kernel suite unavailable: {_session}")
    if isinstance(_session, BaseException):
        raise _session
    return _session


def forced() -> bool:
    """True when a skip must fail instead: CI (``CI=true``) or ``KLPD_VM_TESTS=1``."""
    return os.environ.get("KLPD_VM_TESTS") == "1" or os.environ.get("CI", "").lower() == "true"


__all__ = [
    "KLPCTL",
    "REPO",
    "VM",
    "Environment",
    "GuestResult",
    "HarnessError",
    "Runs",
    "Step",
    "Unavailable",
    "VMError",
    "forced",
    "load_factor",
    "prepare",
    "session_environment",
]
