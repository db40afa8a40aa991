"""klpctl status, list and capture: the host (or a copy of it) as a whole."""

# ruff: noqa: PLC0415 -- imports inside functions keep klpctl's start-up small: see klpd/cli/__init__.py.

from __future__ import annotations

import argparse
import os
import sys

from klpd.cli.common import ExitCode, dumps, print_status, root_of, status_exit
from klpd.errors import DaemonUnavailable
from klpd.protocol import DEFAULT_SOCKET

# -- status ---------------------------------------------------------------------------------------------------------


def configure_status(p: argparse.ArgumentParser) -> None:
    p.add_argument("--direct", action="store_true", help="compute in this process instead of asking the daemon")
    p.add_argument("--socket", default=None, metavar="PATH", help=f"the daemon's socket (default {DEFAULT_SOCKET})")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="list every object, section and symbol, and each blocking task's command line and stack"
                   " (the stack as root)")  # fmt: skip


def run_status(args: argparse.Namespace) -> int:
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
            if args.format != "text":
                print(dumps(args, doc), end="")
            else:
                print(text_out.render_status(status, args.verbose), end="")
                print(text_out.render_daemon(doc.get("daemon") or {}), end="")
            return status_exit(status, transition=True)
    from klpd.sources import prefetch

    root = root_of(args)
    early = prefetch.start(root.kallsyms)  # as in check
    try:
        from klpd.collect import evaluate_host
        from klpd.transition_tasks import with_tasks

        # and the tasks blocking a transition (-v: with their command lines and stacks)
        status = with_tasks(root, evaluate_host(root, early), details=args.verbose)
    finally:
        if early is not None:
            early.close()
    print_status(args, status, "direct")
    return status_exit(status, transition=True)


# -- list -----------------------------------------------------------------------------------------------------------


def configure_list(p: argparse.ArgumentParser) -> None:
    del p  # --root and --json only


def run_list(args: argparse.Namespace) -> int:
    from klpd.installed import read_installed
    from klpd.outputs import installed as installed_out

    installed = read_installed(root_of(args))
    if args.format != "text":
        print(dumps(args, installed_out.installed_document(installed)), end="")
    else:
        print(installed_out.render_installed(installed), end="")
    return ExitCode.PROBLEMS if installed_out.has_problems(installed) else ExitCode.OK


# -- capture --------------------------------------------------------------------------------------------------------


def configure_capture(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", metavar="OUT", help="a new directory (or an empty one), or a new *.tar or *.tar.gz file")


def run_capture(args: argparse.Namespace) -> int:
    from pathlib import Path

    from klpd import capture

    def say(text: str) -> None:
        print(f"klpctl: {text}", file=sys.stderr)

    root = root_of(args)
    if root.is_live and os.geteuid() != 0:
        say(capture.NOT_ROOT)
    try:
        result = capture.capture(root, Path(args.out), on_retry=lambda first: say(capture.retry_note(first)))
    except OSError as exc:  # a full disk, a directory that cannot be written: nothing usable was left
        from klpd.outputs.text import escape

        say(f"cannot write {escape(args.out)}: {escape(exc.strerror or str(exc))}")
        return ExitCode.UNDETERMINED
    for note in capture.notes(result, args.out):
        say(note)
    return ExitCode.OK if result.reproduced else ExitCode.UNDETERMINED
