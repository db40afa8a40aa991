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


def _status_exit(status: HostStatus, *, transition: bool = False) -> int:
    """The exit code of a status; ``transition`` (``status``, not ``check``: a checked file refused with EBUSY
    will not load now) gives a transition in progress its own code, 4, over the EBUSY it causes."""
    from klpd.predict.verdicts import has_problems, in_transition, undetermined

    busy = transition and in_transition(status)
    if has_problems(status, while_transition=busy):
        return ExitCode.PROBLEMS
    if undetermined(status):
        return ExitCode.UNDETERMINED
    return ExitCode.TRANSITION if busy else ExitCode.OK


def _dumps(args: argparse.Namespace, doc: dict[str, object]) -> str:
    """The document as --format asks: JSON, or the same data as YAML."""
    if args.format == "yaml":
        from klpd.outputs import yaml as yaml_out

        return yaml_out.dumps(doc)
    from klpd.outputs import json as json_out

    return json_out.dumps(doc)


def _root(args: argparse.Namespace) -> SystemRoot:
    from pathlib import Path

    from klpd.root import SystemRoot

    root = Path(args.root or "/")
    if root.is_file():  # an archive klpctl capture wrote
        import tarfile
        import tempfile

        from klpd.capture import unpack

        unpacked = Path(args.resources.enter_context(tempfile.TemporaryDirectory(prefix="klpctl-root-")))
        try:
            unpack(root, unpacked)
        except (OSError, tarfile.TarError) as exc:
            raise UsageError(f"--root {args.root}: not a readable capture archive ({exc})") from None
        root = unpacked
    if not root.is_dir():
        raise UsageError(f"--root {args.root}: not a directory or a capture archive")
    return SystemRoot.at(root)


# -- inspect --------------------------------------------------------------------------------------------------------


def _configure_inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="livepatch module files (.ko, .ko.xz, .ko.gz, .ko.zst)")
    p.add_argument("--no-relocations", action="store_true", help="do not list every relocation")


def _run_inspect(args: argparse.Namespace) -> int:
    from pathlib import Path

    from klpd.collect import read_patch_file
    from klpd.model import Severity
    from klpd.outputs import json as json_out
    from klpd.outputs import text as text_out
    from klpd.root import HostPath

    modules: list[PatchModule] = []
    problems: list[Problem] = []
    for name in args.files:
        module, problem = read_patch_file(HostPath(name, Path(name)))
        if module is not None:
            modules.append(module)
        if problem is not None:
            problems.append(problem)
    if args.format != "text":
        print(_dumps(args, json_out.inspect_document(modules, problems)), end="")
    else:
        print(text_out.render_inspect(modules, problems, relocations=not args.no_relocations), end="")
    bad = problems or any(x.severity is Severity.ERROR for m in modules for x in m.problems)
    return ExitCode.PROBLEMS if bad else ExitCode.OK


# -- check ----------------------------------------------------------------------------------------------------------


def _configure_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="livepatch module files to check against this host")
    p.add_argument("-v", "--verbose", action="store_true", help="list every section and symbol")


def _run_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from klpd.sources import prefetch

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
            if args.format != "text":
                print(_dumps(args, doc), end="")
            else:
                print(text_out.render_status(status, args.verbose), end="")
                print(text_out.render_daemon(doc.get("daemon") or {}), end="")
            return _status_exit(status, transition=True)
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
    return _status_exit(status, transition=True)


def _print_status(args: argparse.Namespace, status: HostStatus, source: str) -> None:
    from klpd.outputs import json as json_out
    from klpd.outputs import text as text_out

    if args.format != "text":
        print(_dumps(args, json_out.status_document(status, source)), end="")
    else:
        print(text_out.render_status(status, getattr(args, "verbose", False)), end="")


# -- capture --------------------------------------------------------------------------------------------------------


def _configure_capture(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", metavar="OUT", help="a new directory (or an empty one), or a new *.tar or *.tar.gz file")


def _run_capture(args: argparse.Namespace) -> int:
    from pathlib import Path

    from klpd import capture

    def say(text: str) -> None:
        print(f"klpctl: {text}", file=sys.stderr)

    root = _root(args)
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


# -- completion, manpage -----------------------------------------------------------------------------------------


def _configure_completion(p: argparse.ArgumentParser) -> None:
    p.add_argument("shell", metavar="SHELL", choices=("bash", "zsh"), help="the shell to complete in")


def _run_completion(args: argparse.Namespace) -> int:
    from klpd.outputs import cli_docs

    program = cli_docs.describe(build_parser())
    script = cli_docs.bash_completion(program) if args.shell == "bash" else cli_docs.zsh_completion(program)
    print(script, end="")
    return ExitCode.OK


def _configure_manpage(p: argparse.ArgumentParser) -> None:
    del p  # no options: the page goes to stdout (klpctl manpage > klpctl.1)


def _run_manpage(args: argparse.Namespace) -> int:
    from klpd.outputs import cli_docs

    print(cli_docs.manpage(cli_docs.describe(build_parser()), __version__), end="")
    return ExitCode.OK


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
        "capture",
        "copy exactly the files status reads into OUT, for klpctl status --root OUT on another machine",
        _configure_capture,
        _run_capture,
        json=False,
    ),
    Command(
        "completion",
        "print the shell completion script for SHELL (bash: source it; zsh: install it as _klpctl in $fpath)",
        _configure_completion,
        _run_completion,
        json=False,
        root=False,
    ),
    Command(
        "manpage", "print the klpctl(1) manual page (roff)", _configure_manpage, _run_manpage, json=False, root=False
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
        if command.root:
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
