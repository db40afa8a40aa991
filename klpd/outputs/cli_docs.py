"""Shell completion (bash, zsh) and the manual page (roff), generated from ``klpctl``'s argparse parser itself.

Nothing here names a command or an option: they are read from the parser (:func:`describe`), so a new option is
completed and documented the day it is added. argparse has no public way to list a parser's actions; its
``_actions`` and ``_SubParsersAction`` are stable since Python 3.2 and are read in :func:`describe` only.
"""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass

# Value placeholders (metavars) whose values are paths: completed with file names.
_PATH_METAVARS = frozenset({"DIR", "FILE", "PATH", "OUT"})


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]  # "-v", "--verbose"
    help: str
    metavar: str | None  # None: a flag that takes no value
    choices: tuple[str, ...] = ()

    @property
    def is_path(self) -> bool:
        return not self.choices and self.metavar in _PATH_METAVARS


@dataclass(frozen=True)
class Positional:
    metavar: str
    help: str
    many: bool  # nargs "+" or "*"
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    usage: str
    options: tuple[Option, ...]
    positionals: tuple[Positional, ...]
    epilog: str | None


@dataclass(frozen=True)
class Program:
    prog: str
    description: str
    options: tuple[Option, ...]
    commands: tuple[Subcommand, ...]
    epilog: str | None


def _help(action: argparse.Action) -> str:
    text = action.help or ""
    return text % {"default": action.default, "prog": ""} if "%(" in text else text


def _choices(action: argparse.Action) -> tuple[str, ...]:
    return tuple(str(c) for c in action.choices) if action.choices else ()


def _arguments(parser: argparse.ArgumentParser) -> tuple[tuple[Option, ...], tuple[Positional, ...]]:
    options: list[Option] = []
    positionals: list[Positional] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        if action.option_strings:
            takes_value = action.nargs != 0
            metavar = (action.metavar or action.dest.upper()) if takes_value else None
            options.append(Option(tuple(action.option_strings), _help(action), str(metavar) if metavar else None,
                                  _choices(action)))  # fmt: skip
        else:
            metavar = str(action.metavar or action.dest.upper())
            positionals.append(Positional(metavar, _help(action), action.nargs in ("+", "*"), _choices(action)))
    return tuple(options), tuple(positionals)


def describe(parser: argparse.ArgumentParser) -> Program:
    """What the parser accepts: its options, and each subcommand's."""
    options, _ = _arguments(parser)
    commands: list[Subcommand] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                sub_options, sub_positionals = _arguments(sub)
                usage = " ".join(sub.format_usage().split()).removeprefix("usage: ")
                commands.append(Subcommand(name, helps.get(name, ""), usage, sub_options, sub_positionals,
                                           sub.epilog))  # fmt: skip
    return Program(parser.prog, parser.description or "", options, tuple(commands), parser.epilog)


# -- bash -----------------------------------------------------------------------------------------------------------


def _bash_words(words: list[str]) -> str:
    return shlex.quote(" ".join(words))


def _bash_case(options: tuple[Option, ...], positionals: tuple[Positional, ...]) -> list[str]:
    """The body of one command's completion: an option's value, then options, then positionals."""
    lines = []
    for option in options:
        if option.metavar is None:
            continue
        pattern = "|".join(option.flags)
        if option.choices:
            lines.append(f'                {pattern}) COMPREPLY=($(compgen -W {_bash_words(list(option.choices))}'
                         ' -- "$cur")); return ;;')  # fmt: skip
        elif option.is_path:
            lines.append(f'                {pattern}) COMPREPLY=($(compgen -f -- "$cur")); return ;;')
        else:
            lines.append(f"                {pattern}) return ;;")
    if lines:
        lines = ['            case "$prev" in', *lines, "            esac"]
    flags = [f for o in options for f in o.flags]
    lines.append(f'            opts={_bash_words(flags)}')
    choices = [c for p in positionals for c in p.choices]
    if choices:
        lines.append(f'            [[ "$cur" != -* ]] && {{ COMPREPLY=($(compgen -W {_bash_words(choices)}'
                     ' -- "$cur")); return; }')  # fmt: skip
    elif positionals:
        lines.append('            [[ "$cur" != -* ]] && { COMPREPLY=($(compgen -f -- "$cur")); return; }')
    return lines


def bash_completion(program: Program) -> str:
    """A bash completion script: ``source`` it, or install it as /usr/share/bash-completion/completions/<prog>."""
    name = re.sub(r"\W", "_", program.prog)
    commands = [c.name for c in program.commands]
    lines = [
        f"# bash completion for {program.prog}; generated by '{program.prog} completion bash' from its parser",
        f"_{name}() {{",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}" command="" opts="" i',
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        case "${COMP_WORDS[i]}" in',
        f'            {"|".join(commands)}) command="${{COMP_WORDS[i]}}"; break ;;',
        "        esac",
        "    done",
        '    case "$command" in',
        '        "")',
        f'            opts={_bash_words([f for o in program.options for f in o.flags] + commands)}',
        "            ;;",
    ]
    for command in program.commands:
        lines += [f"        {command.name})", *_bash_case(command.options, command.positionals), "            ;;"]
    lines += [
        "    esac",
        '    COMPREPLY=($(compgen -W "$opts" -- "$cur"))',
        "}",
        f"complete -o default -F _{name} {program.prog}",
    ]
    return "\n".join(lines) + "\n"


# -- zsh ------------------------------------------------------------------------------------------------------------


def _zsh_text(text: str) -> str:
    """Text inside a single-quoted _arguments spec's [description]: no quote, bracket or colon left bare."""
    return re.sub(r"([\[\]:\\])", r"\\\1", text).replace("'", "'\\''")


def _zsh_option(option: Option) -> str:
    """One _arguments spec: ``'--root[help]:DIR:_files'``; ``'(-v --verbose)'{-v,--verbose}'[help]'`` for two
    spellings (each excludes the other)."""
    rest = f"[{_zsh_text(option.help)}]"
    if option.metavar is not None:
        action = f"({' '.join(option.choices)})" if option.choices else ("_files" if option.is_path else " ")
        rest += f":{_zsh_text(option.metavar)}:{action}"
    if len(option.flags) == 1:
        return f"'{option.flags[0]}{rest}'"
    return f"'({' '.join(option.flags)})'{{{','.join(option.flags)}}}'{rest}'"


def _zsh_positional(positional: Positional) -> str:
    action = f"({' '.join(positional.choices)})" if positional.choices else "_files"
    return f"'{'*' if positional.many else ''}:{_zsh_text(positional.metavar)}:{action}'"


def zsh_completion(program: Program) -> str:
    """A zsh completion function: install it as ``_<prog>`` in a directory of $fpath."""
    name = re.sub(r"\W", "_", program.prog)
    lines = [
        f"#compdef {program.prog}",
        f"# zsh completion for {program.prog}; generated by '{program.prog} completion zsh' from its parser",
        f"_{name}() {{",
        "    local curcontext=$curcontext state line",
        "    local -a commands",
        "    _arguments -C \\",
        *(f"        {_zsh_option(o)} \\" for o in program.options),
        "        '1:command:->command' \\",
        "        '*::argument:->argument'",
        "    case $state in",
        "        command)",
        "            commands=(",
        *(f"                '{c.name}:{_zsh_text(c.help)}'" for c in program.commands),
        "            )",
        "            _describe -t commands command commands",
        "            ;;",
        "        argument)",
        "            case $line[1] in",
    ]
    for command in program.commands:
        specs = [_zsh_option(o) for o in command.options] + [_zsh_positional(p) for p in command.positionals]
        lines.append(f"                {command.name}) _arguments \\")
        lines += [f"                    {spec} \\" for spec in specs[:-1]]
        lines.append(f"                    {specs[-1]} ;;" if specs else "                    ;;")
    lines += ["            esac", "            ;;", "    esac", "}", f'_{name} "$@"']
    return "\n".join(lines) + "\n"


# -- roff -----------------------------------------------------------------------------------------------------------


def _roff(text: str) -> str:
    """Text for a roff line: backslashes escaped, hyphens of options literal, no line read as a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n"))


def _roff_option(option: Option) -> list[str]:
    value = f" \\fI{_roff(option.metavar)}\\fR" if option.metavar else ""
    flags = ", ".join(f"\\fB{_roff(f)}\\fR" for f in option.flags)
    choices = f" ({_roff(', '.join(option.choices))})" if option.choices else ""
    return [".TP", flags + value, _roff(option.help) + choices]


def _roff_synopsis(prog: str, command: Subcommand) -> str:
    arguments = command.usage.removeprefix(f"{prog} {command.name}").strip()
    return f".B {_roff(prog)} {command.name}\n{_roff(arguments)}\n.br"


def _roff_epilog(epilog: str) -> list[str]:
    title, _, body = epilog.partition("\n")
    return [f".SH {_roff(title.rstrip(':').upper())}", ".nf", _roff(body), ".fi"]


def manpage(program: Program, version: str) -> str:
    """The manual page, section 1, in roff (man(7) macros): what ``man -l klpctl.1`` shows."""
    prog = _roff(program.prog)
    lines = [
        f'.TH {program.prog.upper()} 1 "" "{prog} {_roff(version)}" "User Commands"',
        f".\\\" generated by '{program.prog} manpage' from its argparse parser: do not edit",
        ".SH NAME",
        f"{prog} \\- {_roff(program.description)}",
        ".SH SYNOPSIS",
        *(_roff_synopsis(program.prog, c) for c in program.commands),
        ".SH OPTIONS",
        *(line for o in program.options for line in _roff_option(o)),
        ".SH COMMANDS",
    ]
    for command in program.commands:
        lines += [f".SS {prog} {command.name}", _roff(command.help)]
        for positional in command.positionals:
            choices = f" ({_roff(', '.join(positional.choices))})" if positional.choices else ""
            lines += [".TP", f"\\fI{_roff(positional.metavar)}\\fR", _roff(positional.help) + choices]
        lines += [line for o in command.options for line in _roff_option(o)]
    if program.epilog:
        lines += _roff_epilog(program.epilog)
    return "\n".join(lines) + "\n"
