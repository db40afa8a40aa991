"""/lib/modules/<release>/modules.dep: where each module of a kernel release is installed (depmod(8)).

One line per module: ``<path>: <dependency path> ...``; paths are relative to /lib/modules/<release> (absolute
ones are kept as they are), the file name ends in ``.ko`` or ``.ko.xz``/``.ko.gz``/``.ko.zst``, and the module
name is the file name without that suffix and with ``-`` read as ``_`` (the kernel's own spelling). klpd uses it
to find the .ko of a patch's target module that is not loaded, to predict klp_module_coming().
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from klpd.model import Problem, Severity
from klpd.names import module_name_from_filename
from klpd.regular_file import read_regular_text
from klpd.root import HostPath, SystemRoot
from klpd.sources.result import Read, malformed_lines, unreadable

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")
# A distribution kernel's modules.dep is under 1 MiB (6,000 modules); this leaves room for any real one.
MODULES_DEP_LIMIT = 64 * 1024 * 1024


@dataclass(frozen=True)
class ModulesDep:
    """modules.dep of one release: module name -> its .ko file, under the root it was read from."""

    path: str  # host path of modules.dep, for messages
    modules: Mapping[str, HostPath] = field(default_factory=dict)
    dependencies: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # module name -> module names

    def get(self, name: str) -> HostPath | None:
        """The .ko of module ``name`` ('-' and '_' spellings alike), or None when depmod does not know it."""
        return self.modules.get(name.replace("-", "_"))

    def depends(self, name: str) -> tuple[str, ...]:
        return self.dependencies.get(name.replace("-", "_"), ())

    def names(self) -> frozenset[str]:
        return frozenset(self.modules)

    def paths(self) -> tuple[HostPath, ...]:
        return tuple(self.modules.values())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.replace("-", "_") in self.modules

    def __len__(self) -> int:
        return len(self.modules)


def _host_path(entry: str, base: str) -> str | None:
    if not entry.endswith(MODULE_SUFFIXES) or "\0" in entry:  # no file system path holds a NUL
        return None
    return posixpath.normpath(posixpath.join(base, entry))


def parse_modules_dep(text: str, path: str, root: SystemRoot | None = None) -> Read[ModulesDep]:
    """Parse modules.dep whose host path is ``path`` (relative entries are relative to its directory); odd lines
    are skipped and reported in one Problem.

    With ``root``, the .ko files are read under it; without, at their host paths.
    """
    base = posixpath.dirname(path)
    modules: dict[str, HostPath] = {}
    dependencies: dict[str, tuple[str, ...]] = {}
    skipped = 0
    first: tuple[int, str] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        target, colon, rest = line.partition(":")
        module = _host_path(target.strip(), base) if colon else None
        deps = [_host_path(d, base) for d in rest.split()]
        if module is None or None in deps:
            skipped += 1
            first = first or (number, line)
            continue
        name = module_name_from_filename(module)
        # depmod writes each module once; should a name repeat, the first entry is kept, as modprobe does.
        if name not in modules:
            modules[name] = root.file(module) if root is not None else HostPath(module, Path(module))
            dependencies[name] = tuple(module_name_from_filename(d) for d in deps if d is not None)
    problems = () if first is None else (malformed_lines(path, skipped, *first),)
    return Read(ModulesDep(path, modules, dependencies), problems)


def read_modules_dep(root: SystemRoot, release: str) -> Read[ModulesDep]:
    """modules.dep of ``release`` under ``root``; missing or unreadable: empty, with a Problem."""
    path = root.modules_dep(release)
    try:
        text = read_regular_text(path, MODULES_DEP_LIMIT)
    except FileNotFoundError:
        problem = Problem(
            "source_missing",
            Severity.WARNING,
            f"{path.host}: missing: modules of kernel {release} cannot be located (run depmod)",
            subject=path.host,
        )
        return Read(ModulesDep(path.host), (problem,))
    except OSError as error:
        return Read(ModulesDep(path.host), (unreadable(path.host, error),))
    return parse_modules_dep(text, path.host, root)
