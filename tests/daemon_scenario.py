"""A fixture host whose livepatch state the daemon tests change step by step, a fake uevent monitor, and simulated
time for the loop.

The host: kernel 6.1.0-test with livepatch support; an installed patch ``livepatch_demo`` (kpatch directory)
patching vmlinux (``printk``) and the module ``klpd_target`` (``target_fn``), which modules.dep knows. The
steps are what the kernel would show: the target module appears, the patch loads and transitions, the transition
completes. Kernel log lines go through a FIFO at ``dev/kmsg``, in /dev/kmsg's record format.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import os
import selectors
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.elfwriter import (
    R_X86_64_PC32,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHT_PROGBITS,
    STT_FUNC,
    KlpModule,
    Section,
    Symbol,
    create_elf_file,
)
from tests.fixtures import FixtureRoot, LivepatchObject

RELEASE = "6.1.0-test"
PATCH = "livepatch_demo"
TARGET = "klpd_target"
PATCH_FILE = f"/var/lib/kpatch/{RELEASE}/{PATCH}.ko"
VMLINUX_SYMS = [(0xFFFFFFFF81000000, "T", "_stext"), (0xFFFFFFFF81000100, "T", "printk"),
                (0xFFFFFFFF81000200, "t", "cmdline_proc_show")]  # fmt: skip


def patch_module(name: str = PATCH) -> bytes:
    m = KlpModule(name, vermagic=f"{RELEASE} SMP preempt mod_unload modversions ")
    text = m.function("livepatch_cmdline_proc_show")
    m.klp_rela("vmlinux", text, [(0x10, m.klp_sym("vmlinux", "printk", 0), R_X86_64_PC32, -4)])
    m.klp_rela(TARGET, text, [(0x20, m.klp_sym(TARGET, "target_fn", 0), R_X86_64_PC32, -4)])
    return m.build()


def target_module() -> bytes:
    return create_elf_file(
        [Section(".text", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, b"\xcc" * 32)],
        [Symbol("target_fn", value=0, shndx=".text", type=STT_FUNC, size=16)],
    )


HOSTNAME, MACHINE_ID, BOOT_ID = "fleet-7", "0123456789abcdef0123456789abcdef", "01234567-89ab-cdef-0123-456789abcdef"


class Host:
    """The fixture host and the steps that change it."""

    def __init__(self, path: Path) -> None:
        self.fx = FixtureRoot(path)
        self.path = path
        self.fx.kernel(RELEASE, tainted=0)
        self.modules: list[str] = []
        self.module_syms: list[tuple[int, str, str, str]] = []
        self._write_modules()
        self.fx.write(f"/lib/modules/{RELEASE}/kernel/drivers/{TARGET}.ko", target_module())
        self.fx.modules_dep(RELEASE, {f"kernel/drivers/{TARGET}.ko": []})
        self.fx.file(PATCH_FILE, patch_module())
        self.kmsg_path = self.fx.root.kmsg
        self.kmsg_path.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(self.kmsg_path)
        self._seq = 1000
        self.fx.mkdir("/proc/1/task/1")
        self.fx.write("/proc/1/task/1/comm", "init\n")
        self.fx.write("/proc/1/task/1/patch_state", "-1\n")
        # Which host and boot: the daemon's documents name them (klpd.sources.host_identity).
        self.fx.write("/proc/sys/kernel/hostname", f"{HOSTNAME}\n")
        self.fx.write("/etc/machine-id", f"{MACHINE_ID}\n")
        self.fx.write("/proc/sys/kernel/random/boot_id", f"{BOOT_ID}\n")

    def _write_modules(self) -> None:
        self.fx.kallsyms(VMLINUX_SYMS, objects=self.module_syms)
        self.fx.proc_modules(self.modules)

    def load_target(self) -> None:
        self.modules.append(f"{TARGET} 16384 0 - Live 0xffffffffc0000000")
        self.module_syms.append((0xFFFFFFFFC0000000, "t", "target_fn", TARGET))
        self._write_modules()

    def load_patch(self, *, transition: bool) -> None:
        self.modules.append(f"{PATCH} 16384 1 - Live 0xffffffffc0010000 (OEK)")
        self._write_modules()
        self.fx.sys_module(PATCH, srcversion=None, taint="OEK")
        self.set_patch(enabled=True, transition=transition)

    def set_patch(self, *, enabled: bool, transition: bool) -> None:
        objects = [LivepatchObject("vmlinux", patched=True, functions=[("cmdline_proc_show", 0)]),
                   LivepatchObject(TARGET, patched=TARGET in " ".join(self.modules))]  # fmt: skip
        self.fx.livepatch(PATCH, enabled=enabled, transition=transition, objects=objects)

    def task(self, pid: int, tid: int, comm: str, patch_state: int) -> None:
        self.fx.mkdir(f"/proc/{pid}/task/{tid}")
        self.fx.write(f"/proc/{pid}/task/{tid}/comm", comm + "\n")
        self.fx.write(f"/proc/{pid}/task/{tid}/patch_state", f"{patch_state}\n")

    def kmsg(self, text: str, prio: int = 4) -> None:
        """One kernel log record, as /dev/kmsg hands it out."""
        self._seq += 1
        record = f"{prio},{self._seq},{self._seq * 1000},-;{text}\n SUBSYSTEM=none\n"
        fd = os.open(self.kmsg_path, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, record.encode())
        finally:
            os.close(fd)


@dataclass
class FakeDevice:
    action: str
    sys_name: str
    subsystem: str = "module"


class FakeMonitor:
    """A pyudev Monitor stand-in: a pipe to select() on and a queue of devices (or errors) to hand out."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe2(os.O_NONBLOCK)
        self._queue: collections.deque[FakeDevice | OSError] = collections.deque()
        self._lock = threading.Lock()

    def fileno(self) -> int:
        return self._r

    def emit(self, action: str, name: str) -> None:
        self._put(FakeDevice(action, name))

    def overflow(self) -> None:
        import errno

        self._put(OSError(errno.ENOBUFS, "No buffer space available"))

    def _put(self, item: FakeDevice | OSError) -> None:
        with self._lock:
            self._queue.append(item)
            os.write(self._w, b"x")

    def poll(self, timeout: float | None = None) -> FakeDevice | None:
        with self._lock:
            if not self._queue:
                try:
                    while os.read(self._r, 4096):
                        pass
                except BlockingIOError:
                    pass
                return None
            item = self._queue.popleft()
        if isinstance(item, OSError):
            raise item
        return item

    def close(self) -> None:
        os.close(self._r)
        os.close(self._w)


class SimulatedTime:
    """A monotonic clock that moves only while the loop waits, and the selector the loop waits in.

    The loop's select(timeout) returns at once: with what the real select(0) finds ready, else after moving the
    clock to the next scripted action (which runs, and whatever it wrote is then found ready) or by the whole
    timeout, whichever comes first. So a test scripts when things happen (``at``) and the loop's timers run on
    simulated seconds: no real sleep, and no verdict that depends on how loaded the machine is.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.start = start
        self.waits: list[float | None] = []  # every timeout the loop asked to sleep for
        self._actions: list[tuple[float, int, Callable[[], object]]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        return self.now

    def at(self, offset: float, action: Callable[[], object]) -> None:
        """Run ``action`` ``offset`` simulated seconds after the start."""
        heapq.heappush(self._actions, (self.start + offset, next(self._order), action))

    def selector(self) -> selectors.BaseSelector:
        return _SimulatedSelector(self)

    def wait(self, timeout: float | None) -> bool:
        """Move the clock for a select() that found nothing ready; True when a scripted action ran."""
        self.waits.append(timeout)
        if len(self.waits) > 100_000:
            raise AssertionError("the loop spins without sleeping")
        until = None if timeout is None else self.now + timeout
        if self._actions and (until is None or self._actions[0][0] <= until):
            when, _, action = heapq.heappop(self._actions)
            self.now = max(self.now, when)
            action()
            return True
        if until is None:
            raise AssertionError("the loop would sleep for ever, and nothing is scripted to wake it")
        self.now = until
        return False


class _SimulatedSelector(selectors.DefaultSelector):
    def __init__(self, time: SimulatedTime) -> None:
        super().__init__()
        self._time = time

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready:
            return ready
        if self._time.wait(timeout):
            return super().select(0)
        return []
