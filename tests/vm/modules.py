"""The livepatch modules the VM cases load, built out of tree against the test kernel's headers.

- Upstream: every module of the kernel's ``lib/livepatch/`` (selftests) and ``samples/livepatch/``, unchanged.
- The suite's own (``tests/vm/modules/``): the target module ``klpvm_target`` and one patch module per
  :class:`Variant`, each a one-line .c including ``klpvm_patch.h``, converted by ``klpconvert.py``; and the
  :data:`PLAIN` livepatch modules, built as they are. The vmlinux
  symbols the variants use are picked from the guest's own ``/proc/kallsyms`` (the Debian image's System.map is a stub):
  the first, by name, of the static text functions named once, and of those named exactly twice.
- The module-loader cases' patches (``loader.py``): one plain livepatch module, copied and rewritten to trip one
  check of load_module() each (vermagic, a CRC, an unexported import, an unknown signing key).

Built modules are cached under a key of everything that goes into them, so editing a source rebuilds.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import klpconvert, loader
from .kernel import KernelImage, prune_siblings, run

SOURCES = Path(__file__).resolve().parent / "modules"
# Not livepatch modules: installed into the guest's /lib/modules/<release>/extra so that modprobe finds them.
UPSTREAM_TARGETS = (
    "test_klp_callbacks_mod",
    "test_klp_callbacks_busy",
    "livepatch-callbacks-mod",
    "livepatch-callbacks-busymod",
    "livepatch-shadow-mod",
)
TARGET = "klpvm_target"
TARGET_PARTS = ("klpvm_target_a", "klpvm_target_c", "klpvm_target_b", "klpvm_target_main")  # symtab order: a, c, b
MISSING_SYMBOL = "klpvm_no_such_symbol"
# Plain livepatch modules of modules/, built as they are (no klpconvert): <name>.ko in the own build's src/.
PLAIN = ("klpvm_slow_enable",)


@dataclass(frozen=True)
class Symbols:
    """vmlinux symbols the patches refer to, as the guest's /proc/kallsyms lists them."""

    unique: str  # a static text function named once
    duplicated: str  # a static text function name that occurs exactly twice


def pick_symbols(kallsyms: str, release: str) -> Symbols:
    entries = [line.split() for line in kallsyms.splitlines()]
    vmlinux = [(int(e[0], 16), e[1], e[2]) for e in entries if len(e) == 3]
    addr = {name: a for a, _, name in vmlinux}
    stext, etext = addr["_stext"], addr["_etext"]
    count = Counter(name for _, _, name in vmlinux)
    in_text: dict[str, int] = defaultdict(int)
    for a, kind, name in vmlinux:
        if kind == "t" and stext <= a < etext and re.fullmatch(r"[a-z][a-z0-9_]*", name):
            in_text[name] += 1
    unique = sorted(n for n, c in in_text.items() if c == 1 and count[n] == 1)
    duplicated = sorted(n for n, c in in_text.items() if c == 2 and count[n] == 2)
    if not unique or not duplicated:
        missing = "a static text function named once" if not unique else "a static text function named exactly twice"
        raise ValueError(f"{release}'s /proc/kallsyms has no {missing} between _stext and _etext")
    return Symbols(unique[0], duplicated[0])


@dataclass(frozen=True)
class Variant:
    """One of the suite's patch modules: which symbol its code uses, and how klpconvert treats it."""

    name: str  # module name
    label: str  # ELF name of the symbol, e.g. ".klp.sym.vmlinux.foo,2"
    target: bool = False  # patches klpvm_target (else vmlinux's cmdline_proc_show)
    move: tuple[str, ...] = ()
    object_name: str | None = None
    keep_rela: bool = False


def variants(sym: Symbols) -> tuple[Variant, ...]:
    vm = ".klp.sym.vmlinux."
    mod = f".klp.sym.{TARGET}.dup_fn"
    return (
        Variant("klpvm_vm_unique", f"{vm}{sym.unique},0"),
        Variant("klpvm_vm_dup_pos2", f"{vm}{sym.duplicated},2"),
        Variant("klpvm_vm_dup_pos0", f"{vm}{sym.duplicated},0"),
        Variant("klpvm_vm_dup_past", f"{vm}{sym.duplicated},3"),
        Variant("klpvm_vm_missing", f"{vm}{MISSING_SYMBOL},0"),
        Variant("klpvm_vm_malformed", f"{vm}{sym.unique}"),
        Variant("klpvm_vm_not_klp", f"{vm}{sym.unique},0", move=("seq_printf",)),
        Variant("klpvm_vm_ordinary_rela", f"{vm}{sym.unique},0", keep_rela=True),
        Variant("klpvm_mod_pos1", f"{mod},1", target=True),
        Variant("klpvm_mod_pos2", f"{mod},2", target=True),
        Variant("klpvm_mod_pos3", f"{mod},3", target=True),
        Variant("klpvm_mod_pos4", f"{mod},4", target=True),
        Variant("klpvm_mod_vmlinux_sym", f"{vm}{sym.unique},0", target=True, object_name=TARGET),
    )


@dataclass(frozen=True)
class Built:
    directory: Path
    key: str
    symbols: Symbols
    upstream: Path  # the kernel's selftest and sample modules, <name>.ko
    patches: Path  # the suite's converted patch modules, <variant>.ko
    loader: Path  # the module-loader cases' patches, <name>.ko (loader.SOURCES)
    targets: tuple[Path, ...]  # modules to install into the guest's extra/

    def upstream_module(self, name: str) -> Path:
        return self.upstream / f"{name}.ko"

    def patch(self, name: str) -> Path:
        return self.patches / f"{name}.ko"

    def loader_patch(self, name: str) -> Path:
        return self.loader / f"{name}.ko"

    def plain(self, name: str) -> Path:
        """One of :data:`PLAIN`."""
        return self.directory / "src" / f"{name}.ko"


def make(kernel: KernelImage, directory: Path, objects: Sequence[str], extra: str = "", warn: bool = False) -> None:
    """Build ``objects`` out of tree in ``directory`` (Kbuild: ``obj-m`` plus ``extra``) against the kernel's
    headers, with the compiler the kernel was built with. ``warn``: modpost's unresolved symbols only warn."""
    (directory / "Kbuild").write_text(f"obj-m := {' '.join(o + '.o' for o in objects)}\n{extra}")
    env = dict(os.environ)
    if warn:
        env["KBUILD_MODPOST_WARN"] = "1"
    if kernel.build_path:
        env["PATH"] = kernel.build_path  # the compiler the kernel was built with, from its private build root
    jobs = f"-j{os.cpu_count() or 2}"
    run(["make", "-s", jobs, "-C", kernel.headers, f"M={directory}", "modules"], env=env)


def _build_upstream(kernel: KernelImage, dest: Path) -> Path:
    if (dest / "done").exists():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    sources = sorted((kernel.source / "lib" / "livepatch").glob("*.c"))
    sources += sorted((kernel.source / "tools" / "testing" / "selftests" / "livepatch" / "test_modules").glob("*.c"))
    sources += sorted((kernel.source / "samples" / "livepatch").glob("*.c"))
    for c in sources:
        shutil.copy2(c, dest / c.name)
    make(kernel, dest, [c.stem for c in sources])
    (dest / "done").touch()
    return dest


def _own_key(kernel: KernelImage, sym: Symbols) -> str:
    h = hashlib.sha256(f"{kernel.release} {kernel.version} {sym}".encode())
    for path in [*sorted(SOURCES.iterdir()), Path(klpconvert.__file__), Path(loader.__file__), Path(__file__)]:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def _build_own(kernel: KernelImage, sym: Symbols, dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    src = dest / "src"
    src.mkdir(parents=True)
    for f in SOURCES.iterdir():
        shutil.copy2(f, src / f.name)
    all_variants = variants(sym)
    for v in all_variants:
        target = "#define KLPVM_TARGET\n" if v.target else ""
        asm_label = v.label.replace(",", klpconvert.ASM_COMMA)
        labels = f'#define KLPVM_LABEL "{v.label}"\n#define KLPVM_ASM_LABEL "{asm_label}"\n'
        (src / f"{v.name}.c").write_text(f'{target}{labels}#include "klpvm_patch.h"\n')
    loader.write_sources(src)
    parts = " ".join(p + ".o" for p in TARGET_PARTS)
    objects = [TARGET, *(v.name for v in all_variants), *loader.SOURCES, *PLAIN]
    make(kernel, src, objects, f"{TARGET}-y := {parts}\n", warn=True)
    patches = dest / "patches"
    patches.mkdir()
    for v in all_variants:
        data = klpconvert.convert(
            (src / f"{v.name}.ko").read_bytes(), move=v.move, object_name=v.object_name, keep_rela=v.keep_rela
        )
        (patches / f"{v.name}.ko").write_bytes(data)
    loader.derive(kernel, src, dest / "loader")
    (dest / "done").touch()


def build_modules(kernel: KernelImage, kallsyms: str, dest: Path) -> Built:
    """Build (or find in the cache) every module the cases use."""
    sym = pick_symbols(kallsyms, kernel.release)
    upstream = _build_upstream(kernel, dest / f"upstream-{kernel.version}")
    key = _own_key(kernel, sym)
    own = dest / f"own-{key}"
    if not (own / "done").exists():
        _build_own(kernel, sym, own)
    prune_siblings(own, "own-*")
    targets = (own / "src" / f"{TARGET}.ko", *(upstream / f"{n}.ko" for n in UPSTREAM_TARGETS))
    return Built(own, key, sym, upstream, own / "patches", own / "loader", targets)
