"""klpctl completion and manpage: generated from the parser itself."""

# ruff: noqa: PLC0415 -- imports inside functions keep klpctl's start-up small: see klpd/cli/__init__.py.

from __future__ import annotations

import argparse

from klpd import __version__
from klpd.cli.common import ExitCode


def configure_completion(p: argparse.ArgumentParser) -> None:
    p.add_argument("shell", metavar="SHELL", choices=("bash", "zsh"), help="the shell to complete in")


def run_completion(args: argparse.Namespace) -> int:
    from klpd.outputs import cli_docs

    program = cli_docs.describe(args.parser)
    script = cli_docs.bash_completion(program) if args.shell == "bash" else cli_docs.zsh_completion(program)
    print(script, end="")
    return ExitCode.OK


def configure_manpage(p: argparse.ArgumentParser) -> None:
    del p  # no options: the page goes to stdout (klpctl manpage > klpctl.1)


def run_manpage(args: argparse.Namespace) -> int:
    from klpd.outputs import cli_docs

    print(cli_docs.manpage(cli_docs.describe(args.parser), __version__), end="")
    return ExitCode.OK
