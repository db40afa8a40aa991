"""/proc/modules: the loaded modules (kernel/module/procfs.c m_show(); layout unchanged since 2.6).

One line per module: ``name size refcount used_by state address [taint]``:

- ``refcount used_by`` read ``- -`` on kernels without CONFIG_MODULE_UNLOAD;
- ``used_by`` is ``-`` or a list of module names each followed by ``,`` (``[permanent],`` marks a module that
  has an init but no exit function: not a user, so it is left out);
- ``state`` is Live, Loading or Unloading;
- ``taint`` is present only for a tainted module: its letters in parentheses, plus ``+``/``-`` while it is
  loading/unloading (the state field says that already, so they are dropped).

A kernel without CONFIG_MODULES has no /proc/modules at all (and cannot livepatch).
"""

from __future__ import annotations

from klpd.errors import SourceError
from klpd.model import LoadedModule, Problem, Severity
from klpd.numbers import kernel_decimal
from klpd.regular_file import read_regular_text
from klpd.root import SystemRoot
from klpd.sources.result import Read, malformed_lines, os_reason

_PERMANENT = "[permanent]"
# m_show() prints ~100 bytes per module; tens of thousands of modules fit many times over.
PROC_MODULES_LIMIT = 64 * 1024 * 1024


def parse_module_line(line: str) -> LoadedModule | None:
    """One /proc/modules line, or None when it does not have the kernel's layout."""
    fields = line.split()
    if len(fields) not in (6, 7) or not fields[5].startswith("0x"):
        return None
    name, size_text, refcount_text, used_by, state = fields[:5]
    size = kernel_decimal(size_text)
    refcount = None if refcount_text == "-" else kernel_decimal(refcount_text, signed=True)  # an int: may be -1
    if size is None or (refcount is None and refcount_text != "-"):
        return None
    taint = ""
    if len(fields) == 7:
        flags = fields[6]
        if len(flags) < 2 or flags[0] != "(" or flags[-1] != ")":
            return None
        taint = flags[1:-1].replace("+", "").replace("-", "")
    users = () if used_by == "-" else tuple(u for u in used_by.split(",") if u and u != _PERMANENT)
    return LoadedModule(
        name=name,
        size=size,
        refcount=refcount,
        used_by=users,
        state=state,
        taint=taint,
    )


def parse_proc_modules(text: str, path: str) -> Read[dict[str, LoadedModule]]:
    """Every well-formed line by module name; odd lines are skipped and reported in one Problem."""
    modules: dict[str, LoadedModule] = {}
    skipped = 0
    first: tuple[int, str] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        module = parse_module_line(line)
        if module is None:
            skipped += 1
            first = first or (number, line)
            continue
        modules[module.name] = module
    problems = () if first is None else (malformed_lines(path, skipped, *first),)
    return Read(modules, problems)


def read_proc_modules(root: SystemRoot) -> Read[dict[str, LoadedModule]]:
    """/proc/modules under ``root``. Missing: no modules, with a warning; unreadable: SourceError (which modules
    are loaded decides every patch's verdict: without it none can be given)."""
    path = root.proc_modules
    try:
        text = read_regular_text(path, PROC_MODULES_LIMIT)
    except FileNotFoundError:
        problem = Problem(
            "source_missing",
            Severity.WARNING,
            f"{path.host}: missing (a kernel without CONFIG_MODULES, which cannot livepatch): no modules are loaded",
            subject=path.host,
        )
        return Read({}, (problem,))
    except OSError as error:
        raise SourceError(path.host, os_reason(error)) from error
    return parse_proc_modules(text, path.host)
