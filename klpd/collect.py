"""Gathering the inputs of the status computation: the only part of the core that does I/O.

sources (klpd/sources, klpd/elf) → :class:`~klpd.predict.SystemState` + :class:`~klpd.predict.PatchInput` →
:func:`klpd.predict.compute_status`. The daemon keeps a :class:`ModuleCache` so unchanged files are not re-parsed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from klpd.elf.files import Found, ModuleCache, module_build_facts, read_patch_file
from klpd.errors import SourceError
from klpd.model import VMLINUX, HostStatus, ModuleSymtab, PatchModule, Problem, RunningPatch, Severity
from klpd.names import module_name_from_filename, parse_klp_rela_name, parse_klp_sym_name
from klpd.predict import PatchInput, SystemState, compute_status
from klpd.root import HostPath, SystemRoot
from klpd.sources import (
    ftrace,
    kernel_build,
    livepatch_sysfs,
    module_signing,
    modules_dep,
    patch_files,
    proc_modules,
    sys_module,
)
from klpd.sources import kallsyms as kallsyms_source
from klpd.sources import kernel as kernel_source
from klpd.sources.prefetch import Prefetch

# ----------------------------------------------------------------------------------------------------------------
# one evaluation

SOURCES = (
    "kallsyms", "proc_modules", "livepatch_sysfs", "modules_dep", "patch_files", "kernel_build", "module_signing",
)  # fmt: skip


@dataclass(frozen=True)
class Evaluation:
    status: HostStatus
    duration_seconds: float
    source_up: Mapping[str, bool]  # per source in SOURCES (and "staging_files" when configured): read without an error
    watch_dirs: tuple[Path, ...]  # the patch install directories that exist, and the nearest existing parents


def _up(problems: Iterable[Problem]) -> bool:
    """A source works when it was read without an error and is there at all: a missing one (modules.dep before
    depmod, Module.symvers without linux-headers) leaves its checks unknown, so klpd_source_up says 0."""
    return not any(p.severity is Severity.ERROR or p.code == "source_missing" for p in problems)


def _without_modules(problems: tuple[Problem, ...]) -> tuple[Problem, ...]:
    """On a kernel without CONFIG_MODULES (no /proc/modules) nothing is installed under /lib/modules and no module
    is ever loaded: advice to run depmod or install symvers would be wrong. Errors stay."""
    return tuple(p for p in problems if p.severity is Severity.ERROR)


def _answer_depends_on(problems: Iterable[Problem]) -> tuple[Problem, ...]:
    """The problems of a source whose unreadable parts hide what the answer is about (a patch directory a non-root
    klpctl cannot search hides installed patches; modules.dep, where their target modules are), as errors: the
    readers report them as warnings, since the rest of the source was read; the answer is undetermined."""
    return tuple(replace(p, severity=Severity.ERROR) if p.code == "source_unreadable" else p for p in problems)


def _modules_disagree(path: str, unlisted: Sequence[str]) -> Problem:
    """/proc/modules without the livepatch modules sysfs shows loaded: an empty or stale copy (tar stores procfs
    files empty), so which modules are loaded, and every verdict that depends on it, is unknown."""
    names = ", ".join(unlisted[:5]) + (f" and {len(unlisted) - 5} more" if len(unlisted) > 5 else "")
    return Problem("source_inconsistent", Severity.ERROR,
                   f"{path}: does not list the livepatch module(s) {names} that /sys/kernel/livepatch shows loaded:"
                   " an empty or stale copy; which modules are loaded is unknown", subject=path)  # fmt: skip


class Evaluator:
    """Reads the system and computes its status; keeps what does not change between evaluations.

    The vmlinux part of /proc/kallsyms never changes while the kernel runs, and patch files rarely do: both are
    reused, so an evaluation after a module event costs little more than reading /proc/kallsyms.
    """

    def __init__(self, root: SystemRoot, prefetch: Prefetch | None = None, *, one_shot: bool = False) -> None:
        self.root = root
        self.cache = ModuleCache()
        # A one-shot run (klpctl) evaluates once and asks about a few names: its /proc/kallsyms is formatted by the
        # kernel while the run imports klpd (sources.prefetch) and searched rather than indexed whole.
        self._prefetch = prefetch
        self._one_shot = one_shot
        # Not the last Kallsyms (the whole file and an index of it: megabytes), only what the next read needs.
        self._kallsyms: kallsyms_source.KallsymsMemo | None = None
        self._kernel_build = kernel_build.KernelBuildCache()  # Module.symvers is parsed once per change
        self._ftrace = ftrace.FtraceCache()

    def system(self) -> tuple[SystemState, dict[str, bool], modules_dep.ModulesDep]:
        root = self.root
        problems: list[Problem] = []
        up: dict[str, bool] = {}
        kernel = kernel_source.read_kernel_info(root)
        problems += kernel.problems
        release = kernel.value.release
        try:
            prefetched, self._prefetch = (self._prefetch.take() if self._prefetch else None), None
            kallsyms = kallsyms_source.read_kallsyms(
                root, self._kallsyms, prefetched=prefetched, one_shot=self._one_shot
            )
        except SourceError as exc:
            raise SourceError(exc.path, f"{exc.reason}: without it no livepatch symbol can be resolved") from exc
        if kallsyms.value.vmlinux_symbols == 0:
            # Empty (what tar stores for a procfs file) or garbage: no symbol's absence would mean anything, so
            # "could not determine" as for an unreadable file, never a confident "will NOT load".
            raise SourceError(kallsyms.value.path, "no vmlinux symbols in it (empty, or not a copy of /proc/kallsyms):"
                              " without them no livepatch symbol can be resolved")  # fmt: skip
        if not self._one_shot:  # what the next evaluation needs; a one-shot run has none
            self._kallsyms = kallsyms.value.memo()
        problems += kallsyms.problems
        up["kallsyms"] = _up(kallsyms.problems)
        modules = proc_modules.read_proc_modules(root)
        problems += modules.problems
        up["proc_modules"] = _up(modules.problems)
        livepatches = livepatch_sysfs.read_livepatch(root)
        problems += livepatches.problems
        up["livepatch_sysfs"] = _up(livepatches.problems)
        unlisted = sorted(lp.name for lp in livepatches.value if lp.name not in modules.value)
        if unlisted and not modules.problems:
            problems.append(_modules_disagree(root.proc_modules.host, unlisted))
            up["proc_modules"] = False
        up["livepatch_sysfs"] = up["livepatch_sysfs"] and kernel.value.livepatch_supported
        has_modules = not any(p.code == "source_missing" for p in modules.problems)
        dep = modules_dep.read_modules_dep(root, release)
        dep = replace(dep, problems=_answer_depends_on(dep.problems))
        up["modules_dep"] = _up(dep.problems)
        problems += dep.problems if has_modules else _without_modules(dep.problems)
        build = kernel_build.read_kernel_build(
            root, release, dep.value, module_build_facts, self._kernel_build, one_shot=self._one_shot
        )
        up["kernel_build"] = _up(build.problems)
        problems += build.problems if has_modules else _without_modules(build.problems)
        signing = module_signing.read_module_signing(root)
        problems += signing.problems
        up["module_signing"] = _up(signing.problems)
        srcversions = {}
        running: dict[str, RunningPatch] = {}
        for lp in livepatches.value:
            info = sys_module.read_sys_module(root, lp.name)
            problems += info.problems
            srcversions[lp.name] = info.value.srcversion if info.value else None
            if info.value is not None and info.value.sections is not None:
                # What the kernel shows of the patch's livepatch ELF: all a loaded patch without a file offers.
                klp_symbols = kallsyms.value.klp_symbols(lp.name)
                symbols = tuple(name for name, _ in klp_symbols)
                resolved = _resolved_objects(klp_symbols) if kallsyms.value.addresses_visible else None
                running[lp.name] = RunningPatch(info.value.klp_rela_sections, symbols, resolved)
        state = SystemState(
            kernel=kernel.value,
            kallsyms=kallsyms.value,
            modules=modules.value,
            livepatches=livepatches.value,
            known_modules=frozenset(dep.value.names()),
            modules_dep_read=not dep.problems or bool(dep.value.names()),
            loaded_srcversions=srcversions,
            running_patches=running,
            problems=tuple(problems),
            kernel_build=build.value,
            module_signing=signing.value,
        )
        return state, up, dep.value

    def evaluate(self, files: Sequence[Path] | None = None) -> Evaluation:
        """Every loaded and installed patch, or (``files``) exactly these files as ``klpctl check`` asks."""
        started = time.monotonic()
        system, up, dep = self.system()
        inputs: list[PatchInput] = []
        candidates: list[PatchInput] = []
        host_problems: list[Problem] = []
        loaded = {lp.name for lp in system.livepatches}
        by_name: dict[str, list[Found]] = {}
        chosen_files: dict[str, Found | None] = {}
        seen: list[HostPath] = []
        found_problems: tuple[Problem, ...] = ()
        if files is None or loaded:  # a check needs the loaded patches' files too: their states
            by_name, seen, found_problems = _installed(self.root, self.cache, system.kernel.release)
            chosen_files = {n: _choose(by_name.get(n, []), system.loaded_srcversions.get(n)) for n in by_name}
        if files is not None:
            for f in files:
                module, problem = read_patch_file(HostPath(str(f), f))
                name = module.name if module else module_name_from_filename(f.name)
                checked = _patch_input(self.cache, system, dep, name, module=module, problem=problem, path=str(f))
                inputs.append(replace(checked, candidate=True))  # will_load: insmod of this file now
            up["patch_files"] = True
        else:
            host_problems += found_problems
            up["patch_files"] = _up(found_problems)
            for name in sorted(set(by_name) | loaded):
                chosen = chosen_files.get(name)
                for other in by_name.get(name, []):
                    if other is not chosen:
                        host_problems.append(
                            Problem(
                                "duplicate_patch_file",
                                Severity.WARNING,
                                f"{other[0].host}: another file for patch '{name}'; klpd reports"
                                f" {chosen[0].host if chosen else '-'}",
                                subject=other[0].host,
                            )
                        )
                path, module, problem = chosen if chosen else (None, None, None)
                host = path.host if path else None
                inputs.append(_patch_input(self.cache, system, dep, name, module=module, problem=problem, path=host))
            staged: list[HostPath] = []
            if self.root.staging_dirs:
                candidates, staged, staging_problems, staging_up = _staged(self.root, self.cache, system, dep)
                host_problems += staging_problems
                up["staging_files"] = staging_up
            self.cache.retain([*seen, *staged, *dep.paths()])
        descriptions = {
            name: chosen[1].description
            for name, chosen in chosen_files.items()
            if name in loaded and chosen and chosen[1] and chosen[1].description
        }
        wanted = {
            f.old_name
            for p in (*inputs, *candidates)
            if p.module and p.module.description
            for o in p.module.description.objects
            for f in o.functions or ()
            if f.old_name
        }
        system = replace(
            system,
            problems=system.problems + tuple(host_problems),
            loaded_descriptions=descriptions,
            ftrace=self._ftrace.read(self.root, wanted, tuple(system.modules)) if wanted else None,
        )
        status = compute_status(system, inputs, candidates)
        return Evaluation(status, time.monotonic() - started, up, _watch_dirs(self.root, system.kernel.release))


def _patch_input(cache: ModuleCache, system: SystemState, dep: modules_dep.ModulesDep, name: str, *,
                 module: PatchModule | None, problem: Problem | None, path: str | None) -> PatchInput:  # fmt: skip
    symtabs: dict[str, ModuleSymtab | Problem] = {}
    wanted: set[str] = set()
    if module is not None:  # its sections' and symbols' objects, and those whose functions it replaces
        described = module.description.objects if module.description else ()
        wanted = {s.object for s in module.sections if s.object} | {o.kernel_name for o in described}
        wanted |= {sym.parsed.object for sym in module.symbols.values() if sym.parsed}
    elif name in system.running_patches:
        running = system.running_patches[name]
        wanted = {o for o in map(parse_klp_rela_name, running.sections) if o} | {
            parsed.object for parsed in map(parse_klp_sym_name, running.symbols) if parsed
        }
    if wanted:
        # Loaded modules too: their full symtab tells whether the answer depends on the load order.
        for obj in sorted(wanted - {VMLINUX}):
            ko = dep.get(obj)
            if ko is not None:
                symtabs[obj] = cache.symtab(ko)
    return PatchInput(name, module, symtabs, problem, path)


def _installed(
    root: SystemRoot, cache: ModuleCache, release: str
) -> tuple[dict[str, list[Found]], list[HostPath], tuple[Problem, ...]]:
    """The installed patch files by module name, every file looked at, and the problems met finding them."""
    found = patch_files.find_patch_files(root, release)
    by_name: dict[str, list[Found]] = {}
    for path in found.value:
        read = cache.patch(path)
        if read is not None:  # None: an ordinary module in extra/ or updates/
            module, problem = read
            by_name.setdefault(module.name if module else module_name_from_filename(path.name), []).append(
                (path, module, problem)
            )
    return by_name, list(found.value), _answer_depends_on(found.problems)


# The staging directories' candidates, every file looked at, the problems met finding them, and whether the
# directories could be read (a file that is not a livepatch is a problem, not a failing source).
Staged = tuple[list[PatchInput], list[HostPath], tuple[Problem, ...], bool]


def _staged(root: SystemRoot, cache: ModuleCache, system: SystemState, dep: modules_dep.ModulesDep) -> Staged:
    """The candidate patches of the staging directories, each evaluated as ``klpctl check`` would: insmod of it
    now."""
    found = patch_files.find_patch_files(root, system.kernel.release, staging=True)
    problems = list(_answer_depends_on(found.problems))
    inputs: list[PatchInput] = []
    for path in found.value:
        read = cache.patch(path)
        if read is None:
            problems.append(
                Problem(
                    "staged_not_livepatch",
                    Severity.WARNING,
                    f"{path.host}: in a staging directory, but its modinfo has no livepatch=Y: not a candidate",
                    subject=path.host,
                )
            )
            continue
        module, problem = read
        name = module.name if module else module_name_from_filename(path.name)
        staged = _patch_input(cache, system, dep, name, module=module, problem=problem, path=path.host)
        inputs.append(replace(staged, candidate=True))
    return inputs, list(found.value), tuple(problems), _up(found.problems)


def _watch_dirs(root: SystemRoot, release: str) -> tuple[Path, ...]:
    """Each patch directory, or its nearest existing ancestor, for the daemon's inotify watch."""
    dirs: list[Path] = []
    for d in (*root.patch_dirs_for(release), *root.staging_dirs_for(release)):
        probe = d
        while not _exists(probe) and probe != probe.parent:
            probe = probe.parent
        if probe not in dirs:
            dirs.append(probe)
    return tuple(dirs)


def _exists(path: Path) -> bool:
    """Path.exists(), False also where a parent cannot be searched (a non-root klpctl and /var/lib/kpatch 0700):
    find_patch_files() reports that directory, this only decides what to watch."""
    try:
        path.stat()
    except (OSError, ValueError):
        return False
    return True


def _choose(candidates: list[Found], loaded_srcversion: str | None,
            ) -> Found | None:  # fmt: skip
    """The file that stands for a patch: the one the kernel loaded (same srcversion), else the first."""
    for candidate in candidates:
        module = candidate[1]
        if loaded_srcversion and module is not None and module.modinfo.srcversion == loaded_srcversion:
            return candidate
    return candidates[0] if candidates else None


def evaluate_host(root: SystemRoot, prefetch: Prefetch | None = None) -> HostStatus:
    """One-shot status of every loaded and installed patch (``klpctl status --direct``)."""
    return Evaluator(root, prefetch, one_shot=True).evaluate().status


def evaluate_files(root: SystemRoot, files: Sequence[Path], prefetch: Prefetch | None = None) -> HostStatus:
    """``klpctl check``: these files against the host under ``root``."""
    return Evaluator(root, prefetch, one_shot=True).evaluate(files).status


def _resolved_objects(klp_symbols: tuple[tuple[str, int], ...]) -> frozenset[str]:
    """The objects some of whose ``.klp.sym`` symbols the kernel has given an address."""
    parsed = ((parse_klp_sym_name(name), address) for name, address in klp_symbols)
    return frozenset(p.object for p, address in parsed if p is not None and address != 0)
