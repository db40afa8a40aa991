"""One boot of the test kernel under QEMU: run a script in the guest and collect what it left behind.

See :mod:`harness` for how a test gets an :class:`Environment` to boot.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .initramfs import GUEST_OUT, systemd_units
from .kernel import REPO

if TYPE_CHECKING:
    from .harness import Environment

QEMU = "qemu-system-x86_64"
BUSYBOX = Path("/bin/busybox")
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
        accel = ["-accel", "kvm", "-cpu", "host"] if real_kvm() else ["-accel", "tcg,thread=single", "-cpu", "max"]
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
