"""``klpctl status`` exit 4: a transition in progress, told apart from problems (1) and from "cannot tell" (3)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fixtures import FixtureRoot, LivepatchObject
from test_scenarios import KPATCH_DIR, host, one, patch

import klpd.api_client
from klpd.cli import ExitCode, main
from klpd.sources import modules_dep


def in_transition(tmp_path: Path) -> FixtureRoot:
    """lp_busy switching its tasks; lp_next installed, whose insmod fails with EBUSY until lp_busy is done."""
    fx = host(tmp_path, modules=("lp_busy",))
    fx.file(f"{KPATCH_DIR}/lp_busy.ko", patch("lp_busy", ("vmlinux", "unique_fn", 0)).build())
    fx.file(f"{KPATCH_DIR}/lp_next.ko", patch("lp_next", ("vmlinux", "unique_fn", 0)).build())
    fx.livepatch("lp_busy", enabled=True, transition=True, objects=[LivepatchObject("vmlinux", patched=True)])
    fx.sys_module("lp_busy", srcversion="SRCLP_BUSY", taint="OEK")
    return fx


def status(fx: FixtureRoot, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, dict[str, Any]]:
    code = main(["status", "--json", "--root", str(fx.path), *extra])
    return code, json.loads(capsys.readouterr().out)


def test_a_transition_in_progress_exits_4_and_0_once_it_ends(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fx = in_transition(tmp_path)
    code, doc = status(fx, capsys)
    assert code == ExitCode.TRANSITION == 4
    assert one(doc, "lp_busy")["transition"] is True
    assert one(doc, "lp_next")["will_load"] is False  # shown as it is, EBUSY: only the exit code discounts it
    fx.write("/sys/kernel/livepatch/lp_busy/transition", "0\n")
    assert status(fx, capsys)[0] == ExitCode.OK


def test_check_of_a_patch_held_by_a_transition_is_a_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An insmod now fails with EBUSY: check answers for now, and 4 is status's only."""
    fx = in_transition(tmp_path)
    assert main(["check", "--root", str(fx.path), str(fx.root.path(f"{KPATCH_DIR}/lp_next.ko"))]) == 1
    assert "EBUSY" in capsys.readouterr().out


def test_a_transition_does_not_hide_a_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fx = in_transition(tmp_path)
    # sympos 0 of a name vmlinux has twice: "unresolvable ambiguity", whatever the transition does
    fx.file(f"{KPATCH_DIR}/lp_ambiguous.ko", patch("lp_ambiguous", ("vmlinux", "dup_fn", 0)).build())
    code, doc = status(fx, capsys)
    assert code == ExitCode.PROBLEMS
    assert any("ambiguity" in r for r in one(doc, "lp_ambiguous")["reasons"])


def test_a_transition_with_a_source_unread_cannot_determine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(*args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(modules_dep, "read_regular_text", denied)
    assert status(in_transition(tmp_path), capsys)[0] == ExitCode.UNDETERMINED


def test_the_daemons_answer_in_transition_exits_4(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fx = in_transition(tmp_path)
    _, direct = status(fx, capsys)
    monkeypatch.setattr(klpd.api_client, "fetch_status", lambda path: {**direct, "source": "daemon"})
    assert main(["status", "--root", str(fx.path), "--socket", str(tmp_path / "klpd.sock")]) == ExitCode.TRANSITION
    assert "transition" in capsys.readouterr().out


@pytest.mark.parametrize("args", [[], ["status"], ["check"], ["inspect"]])
def test_help_lists_every_exit_code(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*args, "--help"]) == 0
    text = capsys.readouterr().out
    for code in ExitCode:
        assert f"\n  {int(code)}  " in text, code
    assert "4  (status) a livepatch transition is in progress" in text
