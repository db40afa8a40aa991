"""SystemRoot: the one place that decides every system path klpd reads.

Every reader takes a :class:`SystemRoot`, so the same code runs on a live host (``/``), a fixture tree or a plain
copy of a host's files (``--root DIR``). Under a root other than ``/`` everything comes from the tree, the kernel
release included (``proc/sys/kernel/osrelease``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Where fleets install patch modules (kernel-semantics.md, "Where patch modules are installed"). ``{release}`` is
# replaced by the running kernel release.
#  - kpatch: /var/lib/kpatch/<release>/ and /usr/lib/kpatch/<release>/
#  - SUSE kernel-livepatch packages: /lib/modules/<release>/livepatch/
#  - plain /lib/modules/<release> installs (klp-build, Ubuntu, DKMS-style): the extra/ and updates/ trees, where
#    out-of-tree modules go; only modules whose modinfo says livepatch=Y are taken as patches.
DEFAULT_PATCH_DIRS: tuple[str, ...] = (
    "/var/lib/kpatch/{release}",
    "/usr/lib/kpatch/{release}",
    "/lib/modules/{release}/livepatch",
    "/lib/modules/{release}/extra",
    "/lib/modules/{release}/updates",
)

# The audit event (PEP 578) of a look at a path that opens nothing (whether an attribute exists): opens and
# directory listings raise their own events. ``klpctl capture`` copies what these events name (klpd.capture).
PROBE_EVENT = "klpd.probe"


@dataclass(frozen=True, slots=True)
class HostPath:
    """One system file or directory: the host path it stands for and where this process reads it.

    ``host`` is what messages and JSON name (``/proc/kallsyms``); ``local`` is where it is under the root
    (``/tmp/capture/proc/kallsyms`` with ``--root``). Readers take this one value, so nothing converts back.
    """

    host: str
    local: Path

    def __str__(self) -> str:
        return self.host

    @property
    def name(self) -> str:
        return self.local.name

    def child(self, name: str) -> HostPath:
        """The entry ``name`` inside this directory."""
        return HostPath(f"{self.host.rstrip('/')}/{name}", self.local / name)

    def exists(self) -> bool:
        """Whether there is anything at this path: told to audit hooks, as opens and listings are by Python."""
        sys.audit(PROBE_EVENT, self.local)
        return self.local.exists()


@dataclass(frozen=True)
class SystemRoot:
    """Maps the host's absolute paths into ``root``.

    ``patch_dirs`` and ``staging_dirs`` are absolute host paths (``{release}`` expanded per call); they too are
    looked up under ``root``. Staging directories hold candidate patches: evaluated, never loaded.
    """

    root: Path = Path("/")
    patch_dirs: tuple[str, ...] = field(default=DEFAULT_PATCH_DIRS)
    staging_dirs: tuple[str, ...] = ()

    @classmethod
    def at(
        cls, root: str | Path = "/", patch_dirs: Sequence[str] | None = None, staging_dirs: Sequence[str] = ()
    ) -> SystemRoot:
        dirs = DEFAULT_PATCH_DIRS if patch_dirs is None else tuple(patch_dirs)
        return cls(Path(root), dirs, tuple(staging_dirs))

    @property
    def is_live(self) -> bool:
        """True when this root is the running host itself (``/``)."""
        return self.root.resolve() == Path("/")

    def file(self, host_path: str) -> HostPath:
        """The :class:`HostPath` of an absolute host path such as ``/proc/kallsyms``."""
        return HostPath(host_path, self.path(host_path))

    def under(self, path: Path) -> HostPath:
        """The :class:`HostPath` of a location found under this root (a directory walk's result)."""
        return HostPath(self.host_path(path), path)

    def path(self, host_path: str) -> Path:
        """The location under this root of an absolute host path such as ``/proc/kallsyms``."""
        return self.root / host_path.lstrip("/")

    # What the readers in klpd.sources read: HostPaths, so a reader never converts back for its messages.
    @property
    def kallsyms(self) -> HostPath:
        return self.file("/proc/kallsyms")

    @property
    def proc_modules(self) -> HostPath:
        return self.file("/proc/modules")

    @property
    def osrelease(self) -> HostPath:
        return self.file("/proc/sys/kernel/osrelease")

    @property
    def tainted(self) -> HostPath:
        return self.file("/proc/sys/kernel/tainted")

    # Which host this is (klpd.sources.host_identity): the daemon's documents name it.
    @property
    def hostname(self) -> HostPath:
        return self.file("/proc/sys/kernel/hostname")

    @property
    def machine_id(self) -> HostPath:
        return self.file("/etc/machine-id")

    @property
    def boot_id(self) -> HostPath:
        return self.file("/proc/sys/kernel/random/boot_id")

    @property
    def sys_module(self) -> HostPath:
        return self.file("/sys/module")

    @property
    def sys_livepatch(self) -> HostPath:
        return self.file("/sys/kernel/livepatch")

    @property
    def ftrace_functions(self) -> tuple[HostPath, ...]:
        """tracefs' available_filter_functions: where tracefs is mounted since 4.1, then its debugfs location."""
        return (
            self.file("/sys/kernel/tracing/available_filter_functions"),
            self.file("/sys/kernel/debug/tracing/available_filter_functions"),
        )

    # Module signature policy (klpd.sources.module_signing)
    @property
    def sig_enforce(self) -> HostPath:
        return self.file("/sys/module/module/parameters/sig_enforce")

    @property
    def lockdown(self) -> HostPath:
        return self.file("/sys/kernel/security/lockdown")

    @property
    def keys(self) -> HostPath:
        return self.file("/proc/keys")

    @property
    def modules_disabled(self) -> HostPath:
        return self.file("/proc/sys/kernel/modules_disabled")

    def module_symvers(self, release: str) -> HostPath:
        """Module.symvers of the release's build tree (Debian's linux-headers-<release>, ``make modules_install``)."""
        return self.modules_dir(release).child("build").child("Module.symvers")

    def boot_symvers(self, release: str) -> HostPath:
        """The gzipped Module.symvers RHEL, Fedora and SUSE kernel packages install in /boot."""
        return self.file(f"/boot/symvers-{release}.gz")

    def modules_dir(self, release: str) -> HostPath:
        return self.file(f"/lib/modules/{release}")

    def modules_dep(self, release: str) -> HostPath:
        return self.modules_dir(release).child("modules.dep")

    # What the daemon opens, scans or watches itself and names by host_path() only when it reports it: plain
    # Paths, as its event sources take them.
    @property
    def proc(self) -> Path:
        return self.path("/proc")

    @property
    def kmsg(self) -> Path:
        return self.path("/dev/kmsg")

    def patch_dirs_for(self, release: str) -> tuple[Path, ...]:
        """Every patch install directory for ``release``, under this root, in configured order.

        Plain Paths: the daemon watches them, and find_patch_files() walks them and names what it finds with
        :meth:`under`.
        """
        return tuple(self.path(d.replace("{release}", release)) for d in self.patch_dirs)

    def staging_dirs_for(self, release: str) -> tuple[Path, ...]:
        """Every staging directory (candidate patches, evaluated and never loaded) for ``release``, under this
        root, in configured order."""
        return tuple(self.path(d.replace("{release}", release)) for d in self.staging_dirs)

    def release_parents(self) -> tuple[Path, ...]:
        """The directories whose entries are kernel releases: each patch directory's part before ``{release}``
        (``/var/lib/kpatch``, ``/usr/lib/kpatch``, ``/lib/modules`` by default), under this root."""
        parents: list[Path] = []
        for d in self.patch_dirs:
            if "{release}" in d:
                parent = self.path(d.split("{release}", 1)[0].rstrip("/") or "/")
                if parent not in parents:
                    parents.append(parent)
        return tuple(parents)

    @property
    def default_kernel_links(self) -> tuple[HostPath, ...]:
        """Debian's links to the kernel the boot loader starts by default (linux-base: /vmlinuz, /boot/vmlinuz)."""
        return (self.file("/vmlinuz"), self.file("/boot/vmlinuz"))

    def host_path(self, path: Path) -> str:
        """The host path that ``path`` (somewhere under this root) stands for, for messages and JSON."""
        try:
            return "/" + str(path.relative_to(self.root)).lstrip("/")
        except ValueError:
            return str(path)
