"""``--format yaml``: the JSON document's data, read back unchanged by PyYAML's safe loader (a dev-only
dependency: klpd itself writes YAML without it)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli import good_patch
from test_scenarios import SCENARIOS

from klpd.cli import main
from klpd.outputs.yaml import dumps

json_data = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(json_data)
def test_any_json_data_reads_back_the_same(value: Any) -> None:
    assert yaml.safe_load(dumps(value)) == value


@pytest.mark.parametrize(
    "text", ["no", "Yes", "on", "~", "null", "1.0", "0x1f", "1_000", "2026-12-07", "- a", "a: b", "#x", "", " ",
             "tab\there", "nel\x85", "bom\ufeff", "del\x7f", "\x00", "line\u2028sep", "😀", "\udc80"],
)  # fmt: skip
def test_strings_stay_strings_as_keys_and_values(text: str) -> None:
    assert yaml.safe_load(dumps({text: [text, {"k": text}]})) == {text: [text, {"k": text}]}


@pytest.mark.parametrize("number", [0.1, 1e-05, 1e16, -0.0, 5e-324, 1.7976931348623157e308, math.inf, -math.inf])
def test_floats_stay_floats(number: float) -> None:
    assert yaml.safe_load(dumps({"x": number})) == {"x": number}


def test_nan_is_yamls_nan() -> None:
    assert math.isnan(yaml.safe_load(dumps([math.nan]))[0])


def test_non_json_data_is_refused() -> None:
    with pytest.raises(TypeError):
        dumps({"x": (1, 2)})
    with pytest.raises(TypeError):
        dumps({1: "x"})


def formats(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[tuple[int, str], ...]:
    """(exit code, stdout) of the command with --json, --format json, --format yaml and --format text."""
    out = []
    for flags in (["--json"], ["--format", "json"], ["--format", "yaml"], ["--format", "text"], []):
        code = main([*args, *flags])
        out.append((code, capsys.readouterr().out))
    return tuple(out)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_status_and_check_as_yaml_are_the_json_document(
    scenario: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    SCENARIOS[scenario](tmp_path, capsys)  # builds its fixture root
    [root] = [p.parent for p in tmp_path.rglob("proc")]
    (tmp_path / "lp_good.ko").write_bytes(good_patch())
    for command in (["status", "--root", str(root)], ["check", "--root", str(root), str(tmp_path / "lp_good.ko")]):
        as_json, as_format_json, as_yaml, as_text, default = formats(capsys, *command)
        assert as_json == as_format_json  # --json is --format json
        assert as_text == default and not as_text[1].startswith("{")
        assert as_yaml[0] == as_json[0]
        assert yaml.safe_load(as_yaml[1]) == json.loads(as_json[1])


def test_inspect_as_yaml_is_the_json_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "lp_good.ko").write_bytes(good_patch())
    (tmp_path / "bad.ko").write_bytes(good_patch()[:200])
    as_json, as_format_json, as_yaml, _, _ = formats(capsys, "inspect", str(tmp_path / "lp_good.ko"),
                                                     str(tmp_path / "bad.ko"))  # fmt: skip
    assert as_json == as_format_json and as_yaml[0] == as_json[0] == 1
    doc = yaml.safe_load(as_yaml[1])
    assert doc == json.loads(as_json[1]) and doc["schema"] == "klpd.inspect/1"


def test_an_unknown_format_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--format", "xml"]) == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err
