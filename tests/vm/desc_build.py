"""The description cases' modules (``desc_modules/``), built against the guest kernel's headers, cached by content.

Each ``klpvm_d_*.c`` but the target's parts is one livepatch module; ``klpvm_d_target`` (main + dup_a + dup_b) is
the module whose functions the ``mod_*`` cases look up. The vmlinux names the C code uses come from the guest's
own /proc/kallsyms (modules.pick_symbols) and are written into ``klpvm_desc_symbols.h``. ``klpvm_d_rela_orphan``
then goes through klpconvert, which turns its ``.klp.sym.klpvm_d_orphan.*`` reference into a
``.klp.rela.klpvm_d_orphan.text`` section that no klp_object of the patch names.
"""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from . import klpconvert
from .harness import Environment
from .kernel import KernelImage, cache_dir, locked, prune_siblings
from .modules import make, pick_symbols

SOURCES = Path(__file__).resolve().parent / "desc_modules"
TARGET = "klpvm_d_target"
TARGET_PARTS = ("klpvm_d_target_main", "klpvm_d_dup_a", "klpvm_d_dup_b")
CONVERTED = ("klpvm_d_rela_orphan",)
# noinstr (hence notrace) vmlinux functions a guest never calls, the first listed once in the guest's kallsyms is
# KLPVM_NOTRACE: the #MC handler, then the #DF one. exc_machine_check is listed once on 5.10, 6.1, 6.12 and 7.2;
# test_kernel_notrace_functions_have_no_ftrace_record checks on each guest that ftrace has no record of it.
NOTRACE = ("exc_machine_check", "exc_double_fault")


@dataclass(frozen=True)
class DescModules:
    directory: Path
    duplicated: str  # the vmlinux name kallsyms lists exactly twice (KLPVM_DUP)
    unique: str  # a vmlinux name listed once (KLPVM_UNIQUE)
    notrace: str  # KLPVM_NOTRACE

    def patch(self, case: str) -> Path:
        return self.directory / f"klpvm_d_{case}.ko"

    @property
    def target(self) -> Path:
        return self.directory / f"{TARGET}.ko"


def cases() -> list[str]:
    """Every case, by the part of its file name after ``klpvm_d_``."""
    names = (p.stem for p in sorted(SOURCES.glob("klpvm_d_*.c")))
    return [n.removeprefix("klpvm_d_") for n in names if n not in TARGET_PARTS]


def build(env: Environment) -> DescModules:
    kernel = env.kernel
    kallsyms = (kernel.base / "kallsyms").read_text()
    sym = pick_symbols(kallsyms, kernel.release)
    notrace = pick_notrace(kallsyms, kernel.release)
    names = {"KLPVM_DUP": sym.duplicated, "KLPVM_UNIQUE": sym.unique, "KLPVM_NOTRACE": notrace}
    header = "".join(f'#define {macro} "{name}"\n' for macro, name in names.items())
    h = hashlib.sha256(f"{kernel.release} {kernel.version}\n{header}".encode())
    for path in [*sorted(SOURCES.iterdir()), Path(klpconvert.__file__), Path(__file__)]:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    dest = kernel.base / "build" / f"desc-{h.hexdigest()[:16]}"
    with locked(cache_dir() / "lock"):
        if not (dest / "done").exists():
            _build(kernel, header, dest)
        prune_siblings(dest, "desc-*")
    return DescModules(dest, sym.duplicated, sym.unique, notrace)


def pick_notrace(kallsyms: str, release: str) -> str:
    counts = Counter(f[2] for f in (line.split() for line in kallsyms.splitlines()) if len(f) == 3)
    for name in NOTRACE:
        if counts[name] == 1:
            return name
    listed = ", ".join(f"{name} {counts[name]} times" for name in NOTRACE)
    raise ValueError(f"{release}'s /proc/kallsyms lists none of the notrace candidates once: {listed}")


def _build(kernel: KernelImage, header: str, dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for f in SOURCES.iterdir():
        shutil.copy2(f, dest / f.name)
    (dest / "klpvm_desc_symbols.h").write_text(header)
    objects = [TARGET, *(f"klpvm_d_{c}" for c in cases())]
    parts = " ".join(p + ".o" for p in TARGET_PARTS)
    # The orphan's .klp.sym symbol is undefined until klpconvert marks it: modpost may only warn.
    make(kernel, dest, objects, f"{TARGET}-y := {parts}\nccflags-y := -I$(src)\n", warn=True)
    for name in CONVERTED:
        ko = dest / f"{name}.ko"
        ko.write_bytes(klpconvert.convert(ko.read_bytes()))
    (dest / "done").touch()
