"""Fixture roots: a fake host in a temporary directory, for every test that reads the running system.

Write only the files a scenario needs, then point klpd at ``fx.root`` (a :class:`klpd.root.SystemRoot`). Each
writer produces what the kernel itself would print (layouts, trailing newlines, sysfs quirks such as sympos 0
shown as 1), so a test states the scenario, not the file format::

    from tests.fixtures import FixtureRoot, LivepatchObject

    def test_something(tmp_path):
        fx = FixtureRoot(tmp_path)
        fx.kernel("6.1.0-test", tainted=32768)
        fx.kallsyms(vmlinux=[(0xFFFFFFFF81000000, "T", "_stext"), (0xFFFFFFFF81000100, "t", "foo")],
                    objects=[(0xFFFFFFFFC0000000, "t", "bar", "ext4")])
        fx.proc_modules(["ext4 1011712 1 - Live 0xffffffffc0000000"])
        fx.livepatch("livepatch_fix", enabled=True, transition=False,
                     objects=[LivepatchObject("vmlinux", patched=True, functions=[("cmdline_proc_show", 0)])])
        fx.sys_module("livepatch_fix", srcversion="ABC", taint="OEK", sections=[".text", ".klp.rela.vmlinux.text"])
        fx.modules_dep("6.1.0-test", {"kernel/fs/ext4/ext4.ko.xz": ["kernel/fs/jbd2/jbd2.ko.xz"]})
        fx.file("/var/lib/kpatch/6.1.0-test/livepatch-fix.ko", b"...")
        status = something(fx.root)

Every writer takes ``kernel=`` style arguments named after the kernel's attributes; ``None`` leaves the attribute
out (an older kernel). ``fx.write(host_path, content)`` writes anything else.
"""

from __future__ import annotations

import gzip
import lzma
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zstandard

from klpd.root import SystemRoot
from tests.elfwriter import SHF_ALLOC, SHF_WRITE, SHT_PROGBITS, Section, create_elf_file, modinfo_data

# Default kernel release of fixture roots.
RELEASE = "6.1.0-test"


@dataclass
class LivepatchObject:
    """One ``<patch>/<object>/`` directory: ``patched`` None leaves the 6.1 attribute out."""

    name: str
    patched: bool | None = True
    functions: Sequence[tuple[str, int]] = field(default_factory=tuple)  # (name, sympos as in the klp_func)


def kallsyms_line(address: int, type_: str, name: str, obj: str | None = None, width: int = 16) -> str:
    """One /proc/kallsyms line as s_show() prints it (``%px`` is ``width`` hex digits)."""
    line = f"{address:0{width}x} {type_} {name}"
    return f"{line}\t[{obj}]\n" if obj is not None else line + "\n"


@dataclass
class SymversEntry:
    """One exported symbol as modpost's write_dump() records it."""

    symbol: str
    crc: int
    module: str = "vmlinux"
    gpl: bool = False
    namespace: str = ""


def symvers_text(entries: Iterable[SymversEntry], layout: str = "5.10") -> str:
    """Module.symvers in the layout of ``layout``: "5.10" (namespace last, 5.10+), "5.4" (namespace third,
    5.4-5.9) or "5.3" (no namespace column, up to 5.3)."""
    lines = []
    for e in entries:
        export = "EXPORT_SYMBOL_GPL" if e.gpl else "EXPORT_SYMBOL"
        fields = {
            "5.10": (f"0x{e.crc:08x}", e.symbol, e.module, export, e.namespace),
            "5.4": (f"0x{e.crc:08x}", e.symbol, e.namespace, e.module, export),
            "5.3": (f"0x{e.crc:08x}", e.symbol, e.module, export),
        }[layout]
        lines.append("\t".join(fields) + "\n")
    return "".join(lines)


def proc_key_line(serial: int, type_: str, describe: str, *, perm: int = 0x1F030000, uid: int = 0, gid: int = 0,
                  flags: str = "I------", usage: int = 1, expiry: str = "perm") -> str:  # fmt: skip
    """One /proc/keys line as proc_keys_show() prints it: ``%08x %s %5d %4s %08x %5d %5d %-9.9s `` + describe()."""
    return f"{serial:08x} {flags} {usage:5d} {expiry:>4} {perm:08x} {uid:5d} {gid:5d} {type_:<9.9} {describe}\n"


def keyring_describe(name: str, links: int | None) -> str:
    """keyring_describe(): ``<name>: <links>``, ``<name>: empty``; None: not instantiated, the bare name."""
    if links is None:
        return name
    return f"{name}: {links}" if links else f"{name}: empty"


def asymmetric_describe(description: str, key_id: str = "27dfcc5c", subtype: str = "X509.rsa") -> str:
    """asymmetric_key_describe() of an X.509 key: ``<description>: X509.rsa <last 8 hex of the id> []``."""
    return f"{description}: {subtype} {key_id} []"


COMPRESSORS = {
    "": lambda data: data,
    ".xz": lambda data: lzma.compress(data, format=lzma.FORMAT_XZ),
    ".gz": gzip.compress,
    ".zst": lambda data: zstandard.ZstdCompressor().compress(data),
}


def in_tree_module_bytes(vermagic: str | None, this_module_size: int | None, name: str = "intree") -> bytes:
    """An ordinary module: .modinfo (vermagic= unless None) and a .gnu.linkonce.this_module of the given size."""
    modinfo = [("license", "GPL"), ("name", name), ("intree", "Y")]
    if vermagic is not None:
        modinfo.append(("vermagic", vermagic))
    sections = [Section(".modinfo", SHT_PROGBITS, SHF_ALLOC, modinfo_data(modinfo))]
    if this_module_size is not None:
        sections.append(
            Section(".gnu.linkonce.this_module", SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, b"\0" * this_module_size)
        )
    return create_elf_file(sections)


class FixtureRoot:
    """A fake host under ``path``."""

    def __init__(self, path: Path, patch_dirs: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        self.root = SystemRoot.at(self.path, patch_dirs)

    def write(self, host_path: str, content: str | bytes, mode: int | None = None) -> Path:
        """Write ``content`` at the host path ``host_path`` (e.g. "/proc/modules") under the root."""
        target = self.root.path(host_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
        if mode is not None:
            target.chmod(mode)
        return target

    def mkdir(self, host_path: str) -> Path:
        target = self.root.path(host_path)
        target.mkdir(parents=True, exist_ok=True)
        return target

    # /proc/sys/kernel and /sys/kernel/livepatch ---------------------------------------------------------------
    def kernel(self, release: str = RELEASE, tainted: int | None = 0, livepatch: bool = True) -> FixtureRoot:
        """osrelease, tainted (None: no file), and /sys/kernel/livepatch when ``livepatch`` (CONFIG_LIVEPATCH)."""
        self.write("/proc/sys/kernel/osrelease", release + "\n")
        if tainted is not None:
            self.write("/proc/sys/kernel/tainted", f"{tainted}\n")
        if livepatch:
            self.mkdir("/sys/kernel/livepatch")
        return self

    # /proc/kallsyms --------------------------------------------------------------------------------------------
    def kallsyms(
        self,
        vmlinux: Iterable[tuple[int, str, str]] = (),
        *,
        objects: Iterable[tuple[int, str, str, str]] = (),
        raw: str | bytes | None = None,
        hide_addresses: bool = False,
    ) -> Path:
        """/proc/kallsyms from (address, type, name) vmlinux lines then (address, type, name, object) lines.

        ``hide_addresses`` prints every address as 0, as an unprivileged reader sees them. ``raw`` writes the
        text as given instead (for odd lines).
        """
        if raw is not None:
            return self.write("/proc/kallsyms", raw)
        lines = [kallsyms_line(0 if hide_addresses else a, t, n) for a, t, n in vmlinux]
        lines += [kallsyms_line(0 if hide_addresses else a, t, n, o) for a, t, n, o in objects]
        return self.write("/proc/kallsyms", "".join(lines))

    # /proc/modules ---------------------------------------------------------------------------------------------
    def proc_modules(self, lines: Iterable[str]) -> Path:
        """/proc/modules from its lines, e.g. ``"ext4 1011712 1 - Live 0xffffffffc0000000"``."""
        return self.write("/proc/modules", "".join(line + "\n" for line in lines))

    # /sys/kernel/livepatch/<patch> -----------------------------------------------------------------------------
    def livepatch(
        self,
        name: str,
        *,
        enabled: bool | None = True,
        transition: bool | None = False,
        force: bool = True,
        replace: bool | None = None,
        stack_order: int | None = None,
        objects: Iterable[LivepatchObject] = (),
    ) -> Path:
        """/sys/kernel/livepatch/<name>/ as the kernel lays it out; None leaves an attribute out."""
        base = f"/sys/kernel/livepatch/{name}"
        directory = self.mkdir(base)
        for attribute, value in (("enabled", enabled), ("transition", transition), ("replace", replace)):
            if value is not None:
                self.write(f"{base}/{attribute}", f"{int(value)}\n")
        if stack_order is not None:
            self.write(f"{base}/stack_order", f"{stack_order}\n")
        if force:
            self.write(f"{base}/force", "", mode=0o200)  # write-only in sysfs
        for obj in objects:
            self.mkdir(f"{base}/{obj.name}")
            if obj.patched is not None:
                self.write(f"{base}/{obj.name}/patched", f"{int(obj.patched)}\n")
            for function, sympos in obj.functions:
                # kernel/livepatch/core.c: kobject name "%s,%lu", old_sympos ? old_sympos : 1
                self.mkdir(f"{base}/{obj.name}/{function},{sympos or 1}")
        return directory

    # /sys/module/<name> ----------------------------------------------------------------------------------------
    def sys_module(
        self,
        name: str,
        *,
        initstate: str | None = "live",
        srcversion: str | None = None,
        taint: str | None = "",
        sections: Iterable[str] | None = (".text",),
    ) -> Path:
        """/sys/module/<name>/; None leaves an attribute (or sections/) out."""
        base = f"/sys/module/{name}"
        directory = self.mkdir(base)
        for attribute, value in (("initstate", initstate), ("srcversion", srcversion), ("taint", taint)):
            if value is not None:
                self.write(f"{base}/{attribute}", value + "\n")
        if sections is not None:
            self.mkdir(f"{base}/sections")
            for section in sections:
                self.write(f"{base}/sections/{section}", "0x0000000000000000\n", mode=0o400)
        return directory

    # /lib/modules/<release> and installed files ----------------------------------------------------------------
    def modules_dep(self, release: str = RELEASE, entries: Mapping[str, Sequence[str]] | str = ()) -> Path:
        """modules.dep from {module path: [dependency paths]} (paths as depmod writes them), or raw text."""
        if isinstance(entries, str):
            text = entries
        else:
            text = "".join(f"{module}: {' '.join(deps)}".rstrip() + "\n" for module, deps in dict(entries).items())
        return self.write(f"/lib/modules/{release}/modules.dep", text)

    def file(self, host_path: str, content: bytes = b"") -> Path:
        """Any installed file, e.g. a patch module under /var/lib/kpatch/<release>/."""
        return self.write(host_path, content)

    # module signing policy ---------------------------------------------------------------------------------------
    def sig_enforce(self, enforced: bool) -> Path:
        """/sys/module/module/parameters/sig_enforce (CONFIG_MODULE_SIG): param_get_bool() prints Y or N."""
        return self.write("/sys/module/module/parameters/sig_enforce", "Y\n" if enforced else "N\n")

    def lockdown(self, current: str = "none", levels: Sequence[str] = ("none", "integrity", "confidentiality")) -> Path:
        """/sys/kernel/security/lockdown: every level, the current one in brackets (lockdown_read())."""
        text = " ".join(f"[{level}]" if level == current else level for level in levels)
        return self.write("/sys/kernel/security/lockdown", text + "\n")

    def keys(self, lines: Iterable[str]) -> Path:
        """/proc/keys from lines made with :func:`proc_key_line`."""
        return self.write("/proc/keys", "".join(lines))

    def modules_disabled(self, disabled: bool) -> Path:
        return self.write("/proc/sys/kernel/modules_disabled", f"{int(disabled)}\n")

    # what the running kernel was built with ----------------------------------------------------------------------
    def module_symvers(self, release: str = RELEASE, entries: Iterable[SymversEntry] | str = (),
                       layout: str = "5.10") -> Path:  # fmt: skip
        """/lib/modules/<release>/build/Module.symvers (linux-headers-<release>), from entries or raw text."""
        text = entries if isinstance(entries, str) else symvers_text(entries, layout)
        return self.write(f"/lib/modules/{release}/build/Module.symvers", text)

    def boot_symvers(self, release: str = RELEASE, entries: Iterable[SymversEntry] | str = (),
                     layout: str = "5.10") -> Path:  # fmt: skip
        """/boot/symvers-<release>.gz as RHEL and SUSE kernel packages install it."""
        text = entries if isinstance(entries, str) else symvers_text(entries, layout)
        return self.write(f"/boot/symvers-{release}.gz", gzip.compress(text.encode()))

    def in_tree_module(self, release: str = RELEASE, path: str = "kernel/arch/x86/crypto/intree.ko", *,
                       vermagic: str | None = f"{RELEASE} SMP preempt mod_unload modversions ",
                       this_module_size: int | None = 1344, compression: str = "") -> Path:  # fmt: skip
        """An in-tree module at /lib/modules/<release>/<path><compression> (compression "", ".xz", ".gz" or
        ".zst"); add it to modules.dep yourself, depmod's order decides which module klpd reads."""
        data = COMPRESSORS[compression](in_tree_module_bytes(vermagic, this_module_size))
        return self.write(f"/lib/modules/{release}/{path}{compression}", data)


def one_symbol_root(path: Path) -> FixtureRoot:
    """A host whose vmlinux exports one function, ``foo``, with no modules loaded: what klpctl's tests read."""
    fx = FixtureRoot(path)
    fx.kernel(RELEASE)
    fx.kallsyms(vmlinux=[(0xFFFFFFFF81000000, "T", "foo")])
    fx.proc_modules([])
    fx.modules_dep(RELEASE, {})
    return fx


def required_tool(name: str, package: str | None = None) -> str:
    """The path of a command the test needs; a clear failure (never a skip) naming what installs it."""
    path = shutil.which(name)
    if path is None:
        where = f"Debian package '{package}'; " if package else ""
        pytest.fail(f"{name} is needed ({where}./dev.sh test installs it)")
    return path
