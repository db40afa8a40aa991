"""What every klpctl command shares: exit codes, the command table's row, --root (a directory or a capture
archive), --format, and FILE|NAME arguments."""

# ruff: noqa: PLC0415 -- imports inside functions keep klpctl's start-up small: see klpd/cli/__init__.py.

from __future__ import annotations

import argparse
from collections.abc import Callable
from enum import IntEnum
from typing import TYPE_CHECKING, NamedTuple

from klpd.errors import UsageError

if TYPE_CHECKING:
    from klpd.model import HostStatus
    from klpd.root import SystemRoot


class ExitCode(IntEnum):
    OK = 0
    PROBLEMS = 1  # something will fail, or is wrong
    USAGE = 2
    UNDETERMINED = 3  # a source could not be read: the answer may be incomplete
    TRANSITION = 4  # status only: a patch is in transition, and nothing else is wrong: the state is changing


EXIT_CODES_HELP = """exit status:
  0  all good
  1  problems: a patch will not load, a module load will be refused, a symbol does not resolve, a bad file
  2  usage error
  3  could not determine: a source klpd needs could not be read
  4  (status) a livepatch transition is in progress, and nothing else is wrong (a patch that cannot load
     only because of it, EBUSY, is not counted): run again once it ends"""


FORMATS = ("text", "json", "yaml")


class Command(NamedTuple):
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    json: bool = True  # prints a document: --format, --json
    root: bool = True  # reads a system: --root


def status_exit(status: HostStatus, *, transition: bool = False) -> int:
    """The exit code of a status; ``transition`` (``status``, not ``check``: a checked file refused with EBUSY
    will not load now) gives a transition in progress its own code, 4, over the EBUSY it causes."""
    from klpd.predict.verdicts import has_problems, in_transition, undetermined

    busy = transition and in_transition(status)
    if has_problems(status, while_transition=busy):
        return ExitCode.PROBLEMS
    if undetermined(status):
        return ExitCode.UNDETERMINED
    return ExitCode.TRANSITION if busy else ExitCode.OK


def dumps(args: argparse.Namespace, doc: dict[str, object]) -> str:
    """The document as --format asks: JSON, or the same data as YAML."""
    if args.format == "yaml":
        from klpd.outputs import yaml as yaml_out

        return yaml_out.dumps(doc)
    from klpd.outputs import json as json_out

    return json_out.dumps(doc)


def root_of(args: argparse.Namespace, given: str | None = None) -> SystemRoot:
    from pathlib import Path

    from klpd.root import SystemRoot

    name = given if given is not None else args.root
    root = Path(name or "/")
    if root.is_file():  # an archive klpctl capture wrote
        import tarfile
        import tempfile

        from klpd.capture import unpack

        unpacked = Path(args.resources.enter_context(tempfile.TemporaryDirectory(prefix="klpctl-root-")))
        try:
            unpack(root, unpacked)
        except (OSError, tarfile.TarError) as exc:
            raise UsageError(f"--root {name}: not a readable capture archive ({exc})") from None
        root = unpacked
    if not root.is_dir():
        raise UsageError(f"--root {name}: not a directory or a capture archive")
    return SystemRoot.at(root)


def files_or_names(args: argparse.Namespace, root: Callable[[], SystemRoot], *, any_release: bool) -> list[str]:
    """FILE arguments as given; one that is no file but a module name (no '/') is the patch of that name installed
    for the running kernel (``any_release``: for any kernel when the running one has none), as kpatch takes names.
    ``root`` is called only when a name must be looked up, once (an archive --root is unpacked once)."""
    from pathlib import Path

    wanted = [f for f in args.files if "/" not in f and not Path(f).exists()]
    if not wanted:
        return list(args.files)
    from klpd.installed import find_by_name, read_installed

    system = root()
    installed = read_installed(system)
    out: list[str] = []
    for given in args.files:
        if given not in wanted:
            out.append(given)
            continue
        found = find_by_name(installed, given, any_release=any_release)
        if not found:
            where = "any installed kernel" if any_release else f"the running kernel ({installed.running})"
            raise UsageError(f"{given}: no such file, and no patch module of that name is installed for {where}")
        out.extend(str(system.path(p)) for p in found)
    return out


def print_status(args: argparse.Namespace, status: HostStatus, source: str) -> None:
    from klpd.outputs import json as json_out
    from klpd.outputs import text as text_out

    if args.format != "text":
        print(dumps(args, json_out.status_document(status, source)), end="")
    else:
        print(text_out.render_status(status, getattr(args, "verbose", False)), end="")
