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
from collections.abc import Sequence

from klpd import __version__
from klpd.cli.common import EXIT_CODES_HELP, FORMATS, Command, ExitCode
from klpd.cli.docs import configure_completion, configure_manpage, run_completion, run_manpage
from klpd.cli.files import configure_check, configure_inspect, run_check, run_inspect
from klpd.cli.host import (
    configure_capture,
    configure_list,
    configure_status,
    run_capture,
    run_list,
    run_status,
)
from klpd.errors import KlpdError, UsageError

__all__ = ["COMMANDS", "ExitCode", "build_parser", "main", "main_entry"]


COMMANDS: tuple[Command, ...] = (
    Command(
        "inspect",
        "show a livepatch module's modinfo, sections, symbols, relocations and problems",
        configure_inspect,
        run_inspect,
    ),
    Command(
        "check",
        "pre-flight: will these patch modules load on this host, and what will they do",
        configure_check,
        run_check,
    ),
    Command("status", "the livepatch state of this host: loaded and installed patches", configure_status, run_status),
    Command(
        "list",
        "the patch modules installed for every kernel release, the running and the next boot's marked",
        configure_list,
        run_list,
    ),
    Command(
        "capture",
        "copy exactly the files status reads into OUT, for klpctl status --root OUT on another machine",
        configure_capture,
        run_capture,
        json=False,
    ),
    Command(
        "completion",
        "print the shell completion script for SHELL (bash: source it; zsh: install it as _klpctl in $fpath)",
        configure_completion,
        run_completion,
        json=False,
        root=False,
    ),
    Command(
        "manpage", "print the klpctl(1) manual page (roff)", configure_manpage, run_manpage, json=False, root=False
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="klpctl",
        description="Livepatch state, computed as the kernel will compute it.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"klpctl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help, epilog=EXIT_CODES_HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        if command.name == "check":  # several roots: the files judged on each captured host (klpctl capture)
            p.add_argument("--root", dest="roots", action="append", default=None, metavar="DIR",
                           help="read the system from DIR instead of / (a copy of a host or an archive klpctl"
                           " capture wrote); give it several times to judge the files on each of those hosts, one"
                           " table")  # fmt: skip
        elif command.root:
            p.add_argument(
                "--root",
                default=None,
                metavar="DIR",
                help="read the system from DIR instead of / (a fixture tree, a copy of a host, or an archive klpctl"
                " capture wrote); status then computes in this process unless --socket names a daemon",
            )
        if command.json:
            p.add_argument("--format", choices=FORMATS, default="text",
                           help="text (the default), json (the versioned document) or yaml (the same document)")
            p.add_argument("--json", dest="format", action="store_const", const="json", help="as --format json")
        command.configure(p)
        p.set_defaults(run=command.run, parser=parser)  # completion and manpage describe the parser
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
        with contextlib.ExitStack() as args.resources:  # what a command holds until it is done (an unpacked --root)
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
