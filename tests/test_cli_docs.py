"""``klpctl completion bash|zsh`` and ``klpctl manpage``: every command and option of the parser is in them, and
the shells and groff take them."""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

import pytest
from fixtures import required_tool

from klpd.cli import build_parser, main


def parser_words() -> dict[str, set[str]]:
    """Every subcommand and the option strings it takes, read from the parser (the top level under "")."""
    parser = build_parser()
    words = {"": {s for a in parser._actions for s in a.option_strings}}
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, p in sub.choices.items():
        words[name] = {s for a in p._actions for s in a.option_strings}
    return words


def output(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(list(args)) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("kind", [("completion", "bash"), ("completion", "zsh"), ("manpage",)])
def test_every_command_and_option_is_there(kind: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    text = output(capsys, *kind)
    if kind == ("manpage",):
        text = text.replace("\\-", "-")  # roff's literal hyphen
    words = parser_words()
    assert {"inspect", "check", "status", "capture", "completion", "manpage"} <= set(words)
    for command, options in words.items():
        assert command in text, command
        for option in options:
            assert option in text, (command, option)


def bash_complete(script: Path, line: str) -> list[str]:
    """What bash completes at the end of ``line`` (the word being typed last; "" for a new word)."""
    words = line.split(" ")
    program = (f"source {script}\nCOMP_WORDS=({' '.join(repr(w) for w in words)})\nCOMP_CWORD={len(words) - 1}\n"
               '_klpctl\nprintf "%s\\n" "${COMPREPLY[@]}"\n')  # fmt: skip
    run = subprocess.run([required_tool("bash"), "--norc", "-c", program], capture_output=True, text=True, check=True)
    assert run.stderr == ""
    return sorted(filter(None, run.stdout.split("\n")))


def test_bash_completes_commands_options_and_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "klpctl"
    script.write_text(output(capsys, "completion", "bash"))
    assert bash_complete(script, "klpctl c") == ["capture", "check", "completion"]
    assert bash_complete(script, "klpctl status --d") == ["--direct"]
    assert bash_complete(script, "klpctl --json status -") == sorted(parser_words()["status"])
    assert bash_complete(script, "klpctl completion ") == ["bash", "zsh"]
    assert bash_complete(script, "klpctl inspect --format ") == ["json", "text", "yaml"]
    (tmp_path / "capture.tar.gz").write_text("")
    monkeypatch.chdir(tmp_path)
    assert bash_complete(script, "klpctl status --root cap") == ["capture.tar.gz"]
    assert bash_complete(script, "klpctl check -v ca") == ["capture.tar.gz"]  # FILE: file names


def test_zsh_parses_and_registers_the_completion(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "_klpctl").write_text(output(capsys, "completion", "zsh"))
    zsh = required_tool("zsh")
    subprocess.run([zsh, "-n", str(tmp_path / "_klpctl")], check=True)
    program = f"fpath=({tmp_path} $fpath); autoload -Uz compinit; compinit -u -D; print -r -- $_comps[klpctl]"
    run = subprocess.run([zsh, "-f", "-c", program], capture_output=True, text=True, check=False)
    assert run.stdout.strip() == "_klpctl", run.stderr


def test_the_man_page_renders_without_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "klpctl.1"
    page.write_text(output(capsys, "manpage"))
    run = subprocess.run([required_tool("groff"), "-man", "-Tascii", "-ww", str(page)], capture_output=True, text=True,
                         check=True)  # fmt: skip
    assert run.stderr == ""
    rendered = re.sub(r".\x08", "", run.stdout)  # grotty's overstrike bold and underline
    for heading in ("NAME", "SYNOPSIS", "OPTIONS", "COMMANDS", "EXIT STATUS"):
        assert f"\n{heading}\n" in rendered, heading
    assert "klpctl - Livepatch state" in rendered and "4  (status) a livepatch transition" in rendered
