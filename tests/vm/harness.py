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
same path. The script runs as root with bash, in the repository's directory; ``$KLPVM_OUT`` is a directory whose
files come back in :attr:`GuestResult.files`.

QEMU uses TCG (``-accel tcg,thread=multi -cpu max``) unless a real KVM is present: ``/dev/kvm`` alone is not
enough, it can be a nested implementation that stalls a guest, so KVM is used only with kvm_intel or kvm_amd loaded.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .initramfs import GUEST_OUT, INIT, build_initramfs, systemd_units
from .kernel import (
    REPO,
    HarnessError,
    KernelImage,
    Unavailable,
    cache_dir,
    locked,
    module_tree,
    prepare_kernel,
)
from .modules import Built, build_modules

QEMU = "qemu-system-x86_64"
BUSYBOX = Path("/bin/busybox")
# What the harness runs on the host besides apt: dev.sh installs these; the harness installs them too when missing.
HOST_PACKAGES = ("qemu-system-x86", "busybox-static", "kmod", "xz-utils", "make", "bc", "curl", "jq", "udev")
GUEST_SH = Path(__file__).resolve().parent / "guest.sh"
# The klpctl of the virtualenv running the tests: the guest sees the host's files at the same paths.
KLPCTL = Path(sys.prefix) / "bin" / "klpctl"


# A boot reaches the script in 2-13 s under TCG on an idle host; far past that, the guest has stalled. Both this
# and a case's own time limit are for an idle host: they are stretched by load_factor() when the boot starts.
BOOT_TIMEOUT = 90.0


def load_factor() -> float:
    """How much slower a guest runs now than on an idle host: runnable tasks per host core, at least 1.

    TCG guests are CPU-bound, so on a host whose cores are already busy (another test session, a build) each
    guest gets a share of a core; a fixed limit would turn that into a false "stalled" or "timed out".
    """
    return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


class _BootStalled(Exception):
    """The guest never started the script (a TCG stall while booting): worth one more boot."""


class VMError(Exception):
    """The guest did not finish its script: timed out, panicked or never reached it."""


@dataclass(frozen=True)
class GuestResult:
    exit_code: int
    stdout: str
    stderr: str
    dmesg: str
    files: Mapping[str, bytes] = field(default_factory=dict)  # what the script left in $KLPVM_OUT
    console: str = ""  # the kernel console (ttyS0): boot messages, oopses
    seconds: float = 0.0

    def text(self, name: str) -> str:
        return self.files[name].decode(errors="replace")

    def step(self, name: str) -> Step:
        """What guest.sh's ``step NAME CMD...`` recorded, with the kernel messages logged while CMD ran."""
        if f"{name}.rc" not in self.files:
            raise KeyError(f"the guest script never ran step {name!r}; stderr:\n{self.stderr[-3000:]}")
        return Step(
            name,
            int(self.text(f"{name}.rc")),
            self.text(f"{name}.out"),
            self.text(f"{name}.err"),
            tuple(_dmesg_between(self.dmesg, name)),
        )


@dataclass(frozen=True)
class Step:
    name: str
    rc: int
    out: str
    err: str
    dmesg: tuple[str, ...]  # kernel messages from the step's start to the next step's, timestamps removed

    def json(self) -> Any:
        try:
            return json.loads(self.out)
        except ValueError:
            raise AssertionError(
                f"step {self.name}: stdout is not JSON (rc {self.rc}):\n{self.out[:2000]}\nstderr:\n{self.err[-3000:]}"
            ) from None


_TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\] ")


def _dmesg_between(dmesg: str, name: str) -> Iterator[str]:
    inside = False
    for line in dmesg.splitlines():
        text = _TIMESTAMP.sub("", line)
        if text.startswith("klpvm-step: "):
            inside = text == f"klpvm-step: {name}"
        elif inside:
            yield text


def real_kvm() -> bool:
    return Path("/dev/kvm").exists() and any(Path(f"/sys/module/{m}").exists() for m in ("kvm_intel", "kvm_amd"))


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


@dataclass
class VM:
    env: Environment
    memory: str = "1G"
    cpus: int = 2
    cwd: Path = REPO
    # cryptomgr.notests: the crypto self-tests are pure CPU work under TCG and are where stalled boots hung.
    cmdline: str = "console=ttyS0 quiet panic=-1 oops=panic mitigations=off cryptomgr.notests"
    init: str = "chroot"  # or "systemd": the root boots with systemd as PID 1 (initramfs.SYSTEMD_UNITS)

    def qemu_command(self, out: Path, kernel_args: Sequence[str] = ()) -> list[str]:
        accel = ["-accel", "kvm", "-cpu", "host"] if real_kvm() else ["-accel", "tcg,thread=multi", "-cpu", "max"]
        return [
            QEMU, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            *accel, "-m", self.memory, "-smp", str(self.cpus),
            "-kernel", str(self.env.kernel.vmlinuz), "-initrd", str(self.env.initramfs),
            "-append", " ".join((self.cmdline, *kernel_args)),
            "-serial", f"file:{out / 'console.log'}", "-serial", f"file:{out / 'stdout.log'}",
            "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
            "-fsdev", f"local,id=results,path={out / 'share'},security_model=none,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=results,mount_tag=results",
        ]  # fmt: skip

    def run(self, script: str, timeout: float = 180.0, kernel_args: Sequence[str] = ()) -> GuestResult:
        """Boot, run ``script`` (bash, as root, cwd = the repository) and power off; one pristine kernel per call.

        ``kernel_args`` are appended to the kernel command line, e.g. ``["module.sig_enforce=1"]`` for a guest
        that refuses unsigned modules. ``timeout`` (boot included) is for an idle host, see :func:`load_factor`.

        Under TCG on a loaded 2-core host a guest occasionally stalls while booting (soft lockups in early kernel
        threads) and never reaches the script. Such a boot says nothing about klpd or the kernel's livepatch
        behaviour, so it is retried once; a stall after the script started is a failure like any other.
        """
        for attempt in (1, 2):
            try:
                return self._attempt(script, timeout, kernel_args)
            except _BootStalled as exc:
                if attempt == 2:
                    raise VMError(f"guest stalled before the script started, twice\n{exc}") from None
                print(f"klpvm: boot stalled before the script started; retrying once\n{str(exc)[-1500:]}")
        raise AssertionError("unreachable")

    def _attempt(self, script: str, timeout: float, kernel_args: Sequence[str]) -> GuestResult:
        with tempfile.TemporaryDirectory(prefix="klpvm-") as tmp:
            out = Path(tmp)
            share = out / "share"
            (share / "files").mkdir(parents=True)
            (share / "script.sh").write_text(
                f": > {GUEST_OUT}/started\n"
                f"export KLPVM_OUT={GUEST_OUT}/files KLPCTL={shlex.quote(str(KLPCTL))}\n"
                f". {shlex.quote(str(GUEST_SH))}\n{script}"
            )
            (share / "vm.conf").write_text(
                f"KLPVM_CWD={shlex.quote(str(self.cwd))}\n"
                f"KLPVM_RELEASE={shlex.quote(self.env.kernel.release)}\n"
                f"KLPVM_MODULES={shlex.quote(str(self.env.modules))}\n"
                f"KLPVM_INIT={shlex.quote(self.init)}\n"
            )
            if self.init == "systemd":
                (share / "units").mkdir()
                for name, text in systemd_units(str(self.cwd)).items():
                    (share / "units" / name).write_text(text)
            factor = load_factor()
            boot_limit, limit = BOOT_TIMEOUT * factor, timeout * factor
            start = time.monotonic()
            proc = subprocess.Popen(
                self.qemu_command(out, kernel_args),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            try:
                qemu_out, _ = proc.communicate(timeout=boot_limit)
            except subprocess.TimeoutExpired:
                if not (share / "started").exists():
                    proc.kill()
                    proc.communicate()
                    raise _BootStalled(self._report(f"no script start in {boot_limit:.0f} s", out)) from None
                try:
                    qemu_out, _ = proc.communicate(timeout=max(limit - boot_limit, 1.0))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate()
                    raise VMError(self._report(f"guest did not finish in {limit:.0f} s", out)) from None
            seconds = time.monotonic() - start
            rc = share / "rc"
            if not rc.exists():
                raise VMError(
                    self._report(f"guest stopped without finishing the script (qemu exit {proc.returncode})", out)
                    + f"\n--- qemu ---\n{qemu_out.decode(errors='replace')[-2000:]}"
                )
            files = {p.name: p.read_bytes() for p in (share / "files").iterdir() if p.is_file()}
            return GuestResult(
                exit_code=int(rc.read_text().strip()),
                stdout=_read(out / "stdout.log"),
                stderr=_read(share / "stderr"),
                dmesg=_read(share / "dmesg"),
                files=files,
                console=_read(out / "console.log"),
                seconds=seconds,
            )

    @staticmethod
    def _report(what: str, out: Path) -> str:
        return (
            f"{what}\n--- console (tail) ---\n{_read(out / 'console.log')[-6000:]}"
            f"\n--- stdout (tail) ---\n{_read(out / 'stdout.log')[-3000:]}"
            f"\n--- stderr (tail) ---\n{_read(out / 'share' / 'stderr')[-3000:]}"
        )


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return ""


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
        for old in base.glob("modroot-*"):
            if old.name not in ("modroot-base", f"modroot-{tree_key}"):
                shutil.rmtree(old, ignore_errors=True)
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
    "VM",
    "Environment",
    "GuestResult",
    "HarnessError",
    "Runs",
    "Step",
    "Unavailable",
    "VMError",
    "forced",
    "prepare",
    "session_environment",
]
