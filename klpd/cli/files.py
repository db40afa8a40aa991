"""klpctl inspect and check: patch module files (or installed patches' names), and check over many hosts."""

# ruff: noqa: PLC0415 -- imports inside functions keep klpctl's start-up small: see klpd/cli/__init__.py.

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from klpd.cli.common import ExitCode, dumps, files_or_names, print_status, root_of, status_exit
from klpd.errors import KlpdError

if TYPE_CHECKING:
    from klpd.model import PatchModule, Problem


# -- inspect --------------------------------------------------------------------------------------------------------


def configure_inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE|NAME",
                   help="livepatch module files (.ko, .ko.xz, .ko.gz, .ko.zst), or names of installed patch modules"
                   " (the running kernel's; else any kernel's)")  # fmt: skip
    p.add_argument("--no-relocations", action="store_true", help="do not list every relocation")


def run_inspect(args: argparse.Namespace) -> int:
    from pathlib import Path

    from klpd.elf.files import read_patch_file
    from klpd.model import Severity
    from klpd.outputs import json as json_out
    from klpd.outputs import text as text_out
    from klpd.root import HostPath

    modules: list[PatchModule] = []
    problems: list[Problem] = []
    for name in files_or_names(args, lambda: root_of(args), any_release=True):
        module, problem = read_patch_file(HostPath(name, Path(name)))
        if module is not None:
            modules.append(module)
        if problem is not None:
            problems.append(problem)
    if args.format != "text":
        print(dumps(args, json_out.inspect_document(modules, problems)), end="")
    else:
        print(text_out.render_inspect(modules, problems, relocations=not args.no_relocations), end="")
    bad = problems or any(x.severity is Severity.ERROR for m in modules for x in m.problems)
    return ExitCode.PROBLEMS if bad else ExitCode.OK


# -- check ----------------------------------------------------------------------------------------------------------


def configure_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE|NAME",
                   help="livepatch module files to check against this host, or names of patch modules installed for"
                   " the running kernel")  # fmt: skip
    p.add_argument("-v", "--verbose", action="store_true",
                   help="list every section and symbol, and each blocking task's command line and stack")  # fmt: skip


def run_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from klpd.sources import prefetch

    if args.roots and len(args.roots) > 1:
        return run_fleet_check(args)
    args.root = args.roots[0] if args.roots else None
    root = root_of(args)
    args.files = files_or_names(args, lambda: root, any_release=False)
    early = prefetch.start(root.kallsyms)  # the kernel formats /proc/kallsyms while the imports below run
    try:
        from klpd.collect import evaluate_files
        from klpd.transition_tasks import with_tasks

        # and, as root, the tasks now sleeping in a function a patch replaces: they will hold its transition
        status = with_tasks(root, evaluate_files(root, [Path(f) for f in args.files], early), details=args.verbose)
    finally:
        if early is not None:
            early.close()
    print_status(args, status, "check")
    return status_exit(status)


def run_fleet_check(args: argparse.Namespace) -> int:
    """``check`` with --root given several times: the files judged on each captured host, one table."""
    from pathlib import Path

    from klpd.collect import evaluate_files
    from klpd.outputs import fleet
    from klpd.sources.host_identity import read_host_identity

    roots = [root_of(args, given) for given in args.roots]  # a usage error before any work
    checks: list[fleet.HostCheck] = []
    for given, root in zip(args.roots, roots, strict=True):
        hostname = read_host_identity(root).hostname
        try:
            status = evaluate_files(root, [Path(f) for f in args.files])
        except KlpdError as exc:  # this host cannot be judged; the others still are
            checks.append(fleet.HostCheck(given, hostname, None, str(exc)))
        else:
            checks.append(fleet.HostCheck(given, hostname, status))
    if args.format != "text":
        print(dumps(args, fleet.fleet_document(checks)), end="")
    else:
        print(fleet.render_fleet(checks), end="")
    kind = fleet.exit_kind(checks)
    return {"problems": ExitCode.PROBLEMS, "undetermined": ExitCode.UNDETERMINED}.get(kind, ExitCode.OK)
