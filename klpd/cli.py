"""``klpctl``: inspect, check and status, declared as a table; one place maps errors to exit codes.

Imports are the start-up time of every ``klpctl`` run, so this module loads at the top only argparse and klpd's
errors: each command imports what it uses. A daemon query loads the client, the JSON codec and the text output;
``check`` and ``status --direct`` first start the kernel formatting /proc/kallsyms (:mod:`klpd.sources.prefetch`),
then import the ELF parser and the readers of /proc and /sys while it runs.
"""

# ruff: noqa: PLC0415 -- the imports inside functions are the point: see above.

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import TYPE_CHECKING, NamedTuple

from klpd import __version__
from klpd.errors import DaemonUnavailable, KlpdError, UsageError
from klpd.protocol import DEFAULT_SOCKET

if TYPE_CHECKING:
    from klpd.model import HostStatus, PatchModule, Problem
    from klpd.root import SystemRoot


class ExitCode(IntEnum):
    OK = 0
    PROBLEMS = 1  # something will fail, or is wrong
    USAGE = 2
    UNDETERMINED = 3  # a source could not be read: the answer may be incomplete


class Command(NamedTuple):
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _status_exit(status: HostStatus) -> int:
    from klpd.predict.verdicts import has_problems, undetermined

    if has_problems(status):
        return ExitCode.PROBLEMS
    if undetermined(status):
        return ExitCode.UNDETERMINED
    return ExitCode.OK


def _root(args: argparse.Namespace, given: str | None = None) -> SystemRoot:
    from pathlib import Path

    from klpd.root import SystemRoot

    name = given if given is not None else args.root
    root = Path(name or "/")
    if not root.is_dir():
        raise UsageError(f"--root {name}: not a directory")
    return SystemRoot.at(root)


def _files(args: argparse.Namespace, *, any_release: bool) -> list[str]:
    """FILE arguments as given; one that is no file but a module name (no '/') is the patch of that name installed
    for the running kernel (``any_release``: for any kernel when the running one has none), as kpatch takes names."""
    from pathlib import Path

    wanted = [f for f in args.files if "/" not in f and not Path(f).exists()]
    if not wanted:
        return list(args.files)
    from klpd.installed import find_by_name, read_installed

    installed = read_installed(_root(args))
    out: list[str] = []
    for given in args.files:
        if given not in wanted:
            out.append(given)
            continue
        found = find_by_name(installed, given, any_release=any_release)
        if not found:
            where = "any installed kernel" if any_release else f"the running kernel ({installed.running})"
            raise UsageError(f"{given}: no such file, and no patch module of that name is installed for {where}")
        out.extend(str(_root(args).path(p)) for p in found)
    return out


# -- inspect --------------------------------------------------------------------------------------------------------


def _configure_inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE|NAME",
                   help="livepatch module files (.ko, .ko.xz, .ko.gz, .ko.zst), or names of installed patch modules"
                   " (the running kernel's; else any kernel's)")  # fmt: skip
    p.add_argument("--no-relocations", action="store_true", help="do not list every relocation")


def _run_inspect(args: argparse.Namespace) -> int:
    from pathlib import Path

    from klpd.elf.files import read_patch_file
    from klpd.model import Severity
    from klpd.outputs import json as json_out
    from klpd.outputs import text as text_out
    from klpd.root import HostPath

    modules: list[PatchModule] = []
    problems: list[Problem] = []
    for name in _files(args, any_release=True):
        module, problem = read_patch_file(HostPath(name, Path(name)))
        if module is not None:
            modules.append(module)
        if problem is not None:
            problems.append(problem)
    if args.json:
        print(json_out.dumps(json_out.inspect_document(modules, problems)), end="")
    else:
        print(text_out.render_inspect(modules, problems, relocations=not args.no_relocations), end="")
    bad = problems or any(x.severity is Severity.ERROR for m in modules for x in m.problems)
    return ExitCode.PROBLEMS if bad else ExitCode.OK


# -- check ----------------------------------------------------------------------------------------------------------


def _configure_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE|NAME",
                   help="livepatch module files to check against this host, or names of patch modules installed for"
                   " the running kernel")  # fmt: skip
    p.add_argument("-v", "--verbose", action="store_true", help="list every section and symbol")


def _run_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from klpd.sources import prefetch

    if args.roots and len(args.roots) > 1:
        return _run_fleet_check(args)
    args.root = args.roots[0] if args.roots else None
    args.files = _files(args, any_release=False)
    root = _root(args)
    early = prefetch.start(root.kallsyms)  # the kernel formats /proc/kallsyms while the imports below run
    try:
        from klpd.collect import evaluate_files
        from klpd.transition_tasks import with_tasks

        # and, as root, the tasks now sleeping in a function a patch replaces: they will hold its transition
        status = with_tasks(root, evaluate_files(root, [Path(f) for f in args.files], early))
    finally:
        if early is not None:
            early.close()
    _print_status(args, status, "check")
    return _status_exit(status)


def _run_fleet_check(args: argparse.Namespace) -> int:
    """``check`` with --root given several times: the files judged on each captured host, one table."""
    from pathlib import Path

    from klpd.collect import evaluate_files
    from klpd.outputs import fleet
    from klpd.outputs import json as json_out
    from klpd.sources.host_identity import read_host_identity

    roots = [_root(args, given) for given in args.roots]  # a usage error before any work
    checks: list[fleet.HostCheck] = []
    for given, root in zip(args.roots, roots, strict=True):
        hostname = read_host_identity(root).hostname
        try:
            status = evaluate_files(root, [Path(f) for f in args.files])
        except KlpdError as exc:  # this host cannot be judged; the others still are
            checks.append(fleet.HostCheck(given, hostname, None, str(exc)))
        else:
            checks.append(fleet.HostCheck(given, hostname, status))
    if args.json:
        print(json_out.dumps(fleet.fleet_document(checks)), end="")
    else:
        print(fleet.render_fleet(checks), end="")
    kind = fleet.exit_kind(checks)
    return {"problems": ExitCode.PROBLEMS, "undetermined": ExitCode.UNDETERMINED}.get(kind, ExitCode.OK)


# -- status ---------------------------------------------------------------------------------------------------------


def _configure_status(p: argparse.ArgumentParser) -> None:
    p.add_argument("--direct", action="store_true", help="compute in this process instead of asking the daemon")
    p.add_argument("--socket", default=None, metavar="PATH", help=f"the daemon's socket (default {DEFAULT_SOCKET})")
    p.add_argument("-v", "--verbose", action="store_true", help="list every object, section and symbol")


def _run_status(args: argparse.Namespace) -> int:
    # A daemon answers for the system it reads, which need not be --root's DIR: with --root, only a daemon named
    # by --socket (one started with the same --root) is asked; the default socket's is the live host's.
    if not args.direct and (args.root is None or args.socket is not None):
        from klpd.api_client import fetch_status
        from klpd.outputs import json as json_out
        from klpd.outputs import text as text_out

        socket_path = args.socket or DEFAULT_SOCKET
        try:
            doc = fetch_status(socket_path)
            status = json_out.status_from_document(doc)
        # Whatever answers on the socket may be anything: a document the model cannot hold is no daemon's answer.
        except (DaemonUnavailable, ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            reason = text_out.escape(str(exc)[:300])
            print(f"klpctl: no klpd daemon answers on {text_out.escape(socket_path)} ({reason}); computing directly",
                  file=sys.stderr)  # fmt: skip
        else:
            if args.json:
                print(json_out.dumps(doc), end="")
            else:
                print(text_out.render_status(status, args.verbose), end="")
                print(text_out.render_daemon(doc.get("daemon") or {}), end="")
            return _status_exit(status)
    from klpd.sources import prefetch

    root = _root(args)
    early = prefetch.start(root.kallsyms)  # as in check
    try:
        from klpd.collect import evaluate_host
        from klpd.transition_tasks import with_tasks

        status = with_tasks(root, evaluate_host(root, early))  # and the tasks blocking a transition
    finally:
        if early is not None:
            early.close()
    _print_status(args, status, "direct")
    return _status_exit(status)


# -- list -----------------------------------------------------------------------------------------------------------


def _configure_list(p: argparse.ArgumentParser) -> None:
    del p  # --root and --json only


def _run_list(args: argparse.Namespace) -> int:
    from klpd.installed import read_installed
    from klpd.outputs import installed as installed_out
    from klpd.outputs import json as json_out

    installed = read_installed(_root(args))
    if args.json:
        print(json_out.dumps(installed_out.installed_document(installed)), end="")
    else:
        print(installed_out.render_installed(installed), end="")
    return ExitCode.PROBLEMS if installed_out.has_problems(installed) else ExitCode.OK


def _print_status(args: argparse.Namespace, status: HostStatus, source: str) -> None:
    from klpd.outputs import json as json_out
    from klpd.outputs import text as text_out

    if args.json:
        print(json_out.dumps(json_out.status_document(status, source)), end="")
    else:
        print(text_out.render_status(status, getattr(args, "verbose", False)), end="")


COMMANDS: tuple[Command, ...] = (
    Command(
        "inspect",
        "show a livepatch module's modinfo, sections, symbols, relocations and problems",
        _configure_inspect,
        _run_inspect,
    ),
    Command(
        "check",
        "pre-flight: will these patch modules load on this host, and what will they do",
        _configure_check,
        _run_check,
    ),
    Command("status", "the livepatch state of this host: loaded and installed patches", _configure_status, _run_status),
    Command(
        "list",
        "the patch modules installed for every kernel release, the running and the next boot's marked",
        _configure_list,
        _run_list,
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="klpctl", description="Livepatch state, computed as the kernel will compute it."
    )
    parser.add_argument("--version", action="version", version=f"klpctl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        if command.name == "check":  # several roots: the files judged on each captured host (klpctl capture)
            p.add_argument("--root", dest="roots", action="append", default=None, metavar="DIR",
                           help="read the system from DIR instead of / (a copy of a host, as klpctl capture makes);"
                           " give it several times to judge the files on each of those hosts, one table")  # fmt: skip
        else:
            p.add_argument(
                "--root",
                default=None,
                metavar="DIR",
                help="read the system from DIR instead of / (a fixture tree or a copy of a host); status then"
                " computes in this process unless --socket names a daemon",
            )
        p.add_argument("--json", action="store_true", help="print the versioned JSON document")
        command.configure(p)
        p.set_defaults(run=command.run)
    return parser


def _escaped(exc: Exception) -> str:
    from klpd.outputs.text import escape  # on an error only: a good run does not pay for it

    return escape(str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code) if isinstance(exc.code, int) else ExitCode.USAGE
    try:
        return int(args.run(args))
    except UsageError as exc:
        print(f"klpctl: {_escaped(exc)}", file=sys.stderr)
        return ExitCode.USAGE
    except KlpdError as exc:
        print(f"klpctl: {_escaped(exc)}", file=sys.stderr)
        return ExitCode.UNDETERMINED
    except BrokenPipeError:
        return ExitCode.OK
    except KeyboardInterrupt:
        return 130


def main_entry() -> None:
    code = main()
    # The interpreter's teardown frees every object one by one: /proc/kallsyms alone is megabytes of them, several
    # milliseconds of a run for nothing. klpctl holds nothing that needs finalizing once its output is flushed.
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        pass  # a reader that went away (| head) had what it wanted
    except OSError as exc:  # a full disk, EIO: the answer did not reach its reader, and a script must know
        with contextlib.suppress(OSError):
            sys.stderr.write(f"klpctl: cannot write the output: {exc.strerror or exc}\n")
        code = ExitCode.UNDETERMINED
    with contextlib.suppress(OSError):
        sys.stderr.flush()
    os._exit(code)
