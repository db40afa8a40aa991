"""The tool-hook cases' modules (``hook_modules/``): livepatch modules whose init code is the patch tool's own.

A full kpatch-build or klp-build run diffs two whole-kernel builds; here the diff step is done by hand (the
``klpvm_kp_*.c`` / ``klpvm_kb_*.c`` files are what the diff would emit) and everything after it is the tool's:

- kpatch (bookworm's 6.1): ``kmod/patch/`` of trixie's ``kpatch-build`` package (livepatch-patch-hook.c,
  kpatch-patch.h, kpatch.lds.S, its Makefile), built the way kpatch-build builds a patch module (``make`` in that
  directory with KPATCH_BUILD, KPATCH_NAME and ``KCFLAGS=-I<patch dir>``), then the package's own
  ``create-klp-module --no-klp-arch-sections`` (as kpatch-build runs it for a kernel of 5.8 or later), which turns
  ``.kpatch.relocations`` into ``.klp.rela`` sections.
- klp-build (sid's 7.x): ``scripts/livepatch/init.c`` of the guest kernel's own ``linux-source``, built as
  klp-build's build_patch_module() does (``obj-m := NAME.o``, ``NAME-y := init.o <diff objects>``,
  ``KCFLAGS=-ffunction-sections -fdata-sections``) against the kernel's headers, which carry
  ``livepatch_external.h`` and the module linker script's ``.init.klp_*`` sections.

Each tool runs on the kernel it is proven on (:func:`tool_for`); the packages come through a private apt
configuration (:class:`apt.PrivateApt`) and are cached, as are the built modules (by content).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .apt import PrivateApt
from .errors import HarnessError, run
from .harness import Environment
from .kernel import KernelImage, cache_dir, lock_path, locked
from .series import SERIES

SOURCES = Path(__file__).resolve().parent / "hook_modules"
KPATCH, KLP_BUILD = "kpatch", "klp-build"
# tool -> (kernel series it runs on, case file prefix)
TOOLS = {KPATCH: ("6.1", "klpvm_kp_"), KLP_BUILD: ("7", "klpvm_kb_")}
KPATCH_SUITE = (("debian", "trixie"),)
KPATCH_PATCH_DIR = "usr/share/kpatch/patch"
CREATE_KLP_MODULE = "usr/lib/kpatch/create-klp-module"
# Diff objects that are a second part of another case's module (klp-build links every diff object of a patch).
SECOND_PARTS = {"klpvm_kb_two_files": "klpvm_kb_two_files_b"}


def tool_for(kernel: KernelImage) -> str | None:
    """The tool whose hook is proven on this kernel, None for a kernel that runs neither."""
    return next((tool for tool, (series, _) in TOOLS.items() if kernel.series == series), None)


@dataclass(frozen=True)
class HookModules:
    tool: str
    directory: Path  # <case>.ko
    duplicated: str  # the vmlinux name kallsyms lists exactly twice (KLPVM_DUP)
    provenance: str  # the package the tool's code came from, "<package> <version>"

    def patch(self, case: str) -> Path:
        return self.directory / f"{case}.ko"


def cases(tool: str) -> list[str]:
    prefix = TOOLS[tool][1]
    names = [p.stem for p in sorted(SOURCES.glob(f"{prefix}*.c"))]
    return [n for n in names if n not in SECOND_PARTS.values()]


def _filter_functions(env: Environment) -> str:
    """The guest's available_filter_functions, read once per kernel and cached beside its kallsyms."""
    path = env.kernel.base / "available_filter_functions"
    if not path.exists():
        tracing = "/sys/kernel/tracing"
        script = f"mount -t tracefs nodev {tracing} && cat {tracing}/available_filter_functions > $KLPVM_OUT/f"
        result = env.vm().run(script, timeout=300)
        if result.exit_code != 0 or "f" not in result.files:
            raise HarnessError(f"could not read the guest's available_filter_functions:\n{result.stderr}")
        path.write_bytes(result.files["f"])
    return path.read_text()


def traceable_duplicate(kallsyms: str, filter_functions: str) -> str:
    """The first static text function name kallsyms lists exactly twice whose two copies ftrace can both patch
    (as modules.pick_symbols' duplicated, less those without two ftrace records: 7.2's first, acomp_request_free,
    has none)."""
    vmlinux = [(int(e[0], 16), e[1], e[2]) for e in (line.split() for line in kallsyms.splitlines()) if len(e) == 3]
    addr = {name: a for a, _, name in vmlinux}
    count = Counter(name for _, _, name in vmlinux)
    in_text = Counter(
        name
        for a, kind, name in vmlinux
        if kind == "t" and addr["_stext"] <= a < addr["_etext"] and re.fullmatch(r"[a-z][a-z0-9_]*", name)
    )
    records = Counter(line.split()[0] for line in filter_functions.splitlines() if line and "[" not in line)
    for name in sorted(n for n, c in in_text.items() if c == 2 and count[n] == 2):
        if records[name] == 2:
            return name
    raise HarnessError("no vmlinux function name is listed twice in kallsyms and traceable at both copies")


def _symbols_header(kallsyms: str, dup: str) -> str:
    """klpvm_hook_symbols.h: the duplicated name (string and identifier) and the kallsyms addresses kpatch records."""
    entries = [line.split() for line in kallsyms.splitlines()]
    addresses: dict[str, list[str]] = {}
    for e in entries:
        if len(e) == 3:
            addresses.setdefault(e[2], []).append(e[0])
    if Counter(e[2] for e in entries if len(e) == 3)["cmdline_proc_show"] != 1:
        raise HarnessError("cmdline_proc_show is not listed exactly once in the guest's kallsyms")
    lines = {
        "KLPVM_DUP": f'"{dup}"',
        "KLPVM_DUP_FN": dup,
        "KLPVM_DUP_ADDR1": f"0x{addresses[dup][0]}UL",
        "KLPVM_DUP_ADDR2": f"0x{addresses[dup][1]}UL",
        "KLPVM_CMDLINE_ADDR": f"0x{addresses['cmdline_proc_show'][0]}UL",
    }
    return "".join(f"#define {k} {v}\n" for k, v in lines.items())


def _extracted(deb: Path, dest: Path, members: list[str]) -> Path:
    """``members`` of a package (paths or wildcards of its data), unpacked into ``dest`` (renamed in when done)."""
    if dest.exists():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    run(["dpkg-deb", "-x", deb, tmp])
    missing = [m for m in members if not (tmp / m).exists()]
    if missing:
        raise HarnessError(f"{deb.name} has no {', '.join(missing)}")
    tmp.rename(dest)
    return dest


def _kpatch_tree(cache: Path) -> tuple[Path, str]:
    """trixie's kpatch-build, unpacked: its patch/ directory and create-klp-module."""
    tools = cache / "tools"
    tools.mkdir(exist_ok=True)
    with locked(tools / "lock"):
        apt = PrivateApt(tools / "apt-trixie", KPATCH_SUITE)
        version = apt.candidate("kpatch-build")
        dest = tools / f"kpatch-build_{version}"
        if not dest.exists():
            deb = apt.download("kpatch-build", version, tools / "debs")
            _extracted(deb, dest, [KPATCH_PATCH_DIR, CREATE_KLP_MODULE])
            deb.unlink()
    return dest, f"kpatch-build {version}"


_INIT_C = "scripts/livepatch/init.c"


def _klp_build_tree(kernel: KernelImage) -> tuple[Path, str]:
    """The guest kernel's own klp-build init code: scripts/livepatch/init.c of linux-source of the same version,
    extracted with the kernel's livepatch sources (kernel.py), or on its own for a cache made before that."""
    package = "linux-source-" + ".".join(kernel.release.split(".")[:2])
    for dest in (kernel.source, kernel.base / "klp-build-source"):
        if (dest / _INIT_C).exists():
            return dest, f"{package} {kernel.version}"
    dest = kernel.base / "klp-build-source"
    series = SERIES[kernel.series]
    apt = PrivateApt(cache_dir() / "kernels" / f"apt-{series.name}", series.suites)
    debs = kernel.base / "klp-build-debs"
    deb = apt.download(package, kernel.version, debs)
    tarball = re.search(r"(\./usr/src/linux-source-[\w.]+\.tar\.xz)", run(["dpkg-deb", "-c", deb]))
    if not tarball:
        raise HarnessError(f"{deb} holds no usr/src/linux-source-*.tar.xz")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    script = 'dpkg-deb --fsys-tarfile "$1" | tar -xO "$2" | tar -xJ -C "$3" --strip-components=1 --wildcards "$4"'
    run(["bash", "-c", script, "extract", deb, tarball.group(1), tmp, f"*/{_INIT_C}"])
    if not (tmp / _INIT_C).exists():
        raise HarnessError(f"{deb.name} has no {_INIT_C}")
    tmp.rename(dest)
    shutil.rmtree(debs, ignore_errors=True)
    return dest, f"{package} {kernel.version}"


def build(env: Environment) -> HookModules:
    """Build (or find in the cache) the selected kernel's tool-hook modules; the kernel must have a tool."""
    kernel = env.kernel
    tool = tool_for(kernel)
    if tool is None:
        raise HarnessError(f"no patch tool's hook is proven on {kernel.release}")
    cache = cache_dir()
    kallsyms = (kernel.base / "kallsyms").read_text()
    with locked(lock_path(cache)):
        dup = traceable_duplicate(kallsyms, _filter_functions(env))
    header = _symbols_header(kallsyms, dup)
    tree, provenance = _kpatch_tree(cache) if tool == KPATCH else _klp_build_tree(kernel)
    tool_files = sorted((tree / KPATCH_PATCH_DIR).iterdir()) if tool == KPATCH else [tree / _INIT_C]
    h = hashlib.sha256(f"{kernel.release} {kernel.version} {provenance}\n{header}".encode())
    for path in [*sorted(SOURCES.iterdir()), *tool_files, Path(__file__)]:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    dest = kernel.base / "build" / f"hooks-{h.hexdigest()[:16]}"
    with locked(lock_path(cache)):
        if not (dest / "done").exists():
            shutil.rmtree(dest, ignore_errors=True)
            (dest / "src").mkdir(parents=True)
            for case in cases(tool):
                if tool == KPATCH:
                    _build_kpatch(kernel, tree, header, case, dest)
                else:
                    _build_klp_build(kernel, tree, header, case, dest)
            (dest / "done").touch()
            for old in dest.parent.glob("hooks-*"):
                if old != dest:
                    shutil.rmtree(old, ignore_errors=True)
    return HookModules(tool, dest, dup, provenance)


def _case_dir(dest: Path, case: str, header: str) -> Path:
    d = dest / "src" / case
    d.mkdir()
    (d / "klpvm_hook_symbols.h").write_text(header)
    for h in SOURCES.glob("*.h"):
        shutil.copy2(h, d / h.name)
    return d


def _env(kernel: KernelImage, **extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    if kernel.build_path:
        env["PATH"] = kernel.build_path  # the compiler the kernel was built with, from its private build root
    return env


def _build_kpatch(kernel: KernelImage, tree: Path, header: str, case: str, dest: Path) -> None:
    d = _case_dir(dest, case, header)
    for f in (tree / KPATCH_PATCH_DIR).iterdir():
        shutil.copy2(f, d / f.name)
    shutil.copy2(SOURCES / f"{case}.c", d / "output.c")  # create-diff-object's output.o, here compiled by kbuild
    # kpatch-build: KCFLAGS="-I$DATADIR/patch", then `make` in the patch directory, whose Makefile calls kbuild
    # with M=$(PWD).
    env = _env(kernel, KPATCH_BUILD=str(kernel.headers), KPATCH_NAME=case, PWD=str(d), KCFLAGS=f"-I{d}")
    run(["make", "-s"], cwd=d, env=env)
    run([tree / CREATE_KLP_MODULE, "--no-klp-arch-sections", d / f"{case}.ko", dest / f"{case}.ko"])


def _build_klp_build(kernel: KernelImage, tree: Path, header: str, case: str, dest: Path) -> None:
    d = _case_dir(dest, case, header)
    shutil.copy2(tree / _INIT_C, d / "init.c")
    parts = [case, *([SECOND_PARTS[case]] if case in SECOND_PARTS else [])]
    for part in parts:
        shutil.copy2(SOURCES / f"{part}.c", d / f"{part}_diff.c")
    objects = " ".join(f"{part}_diff.o" for part in parts)
    (d / "Kbuild").write_text(f"obj-m := {case}.o\n{case}-y := init.o {objects}\n")
    flags = "-ffunction-sections -fdata-sections"  # klp-build's build_patch_module(); -DKLP_NO_REPLACE only with -R
    env = _env(kernel, KCFLAGS=flags)
    run(["make", "-s", f"-j{os.cpu_count() or 2}", "-C", kernel.headers, f"M={d}", "modules"], env=env)
    shutil.copy2(d / f"{case}.ko", dest / f"{case}.ko")
