"""The Prometheus alert rules: promtool accepts them, and promtool's unit tests cover every alert."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

PROMETHEUS_DIR = Path(__file__).resolve().parent.parent / "config" / "prometheus"
RULES = PROMETHEUS_DIR / "klpd-alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "klpd-alerts.test.yml"
INHIBIT = PROMETHEUS_DIR / "alertmanager-inhibit.example.yml"
README = PROMETHEUS_DIR.parent.parent / "README.md"
RUNBOOK = "file:///usr/share/doc/klpd/README.md#"  # where the Debian package installs the README
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert Path(PROMTOOL).exists(), "promtool is needed (Debian package 'prometheus'; ./dev.sh test installs it)"
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, check=False, cwd=PROMETHEUS_DIR)


def alert_names() -> set[str]:
    return set(re.findall(r"^\s*- alert:\s*(\w+)\s*$", RULES.read_text(), re.MULTILINE))


def test_promtool_check_rules():
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in result.stdout


def test_promtool_rule_unit_tests_pass():
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_case():
    # Each `- eval_time:` block of the test file names one alert and what it expects at that time.
    blocks = re.split(r"^\s*- eval_time:", RULE_TESTS.read_text(), flags=re.MULTILINE)[1:]
    firing, quiet = set(), set()
    for block in blocks:
        name = re.search(r"alertname:\s*(\w+)", block).group(1)
        (quiet if re.search(r"exp_alerts:\s*\[\]", block) else firing).add(name)
    assert alert_names() == {
        "KlpdDown",
        "KlpdAbsent",
        "KlpdSourceFailing",
        "KlpdEvaluationStale",
        "KlpdTransitionStuck",
        "KlpdUnresolvableSymbols",
        "KlpdModuleLoadRefused",
        "KlpdModuleLoadWouldBeRefused",
        "KlpdPatchNotLoaded",
        "KlpdPatchWillNotLoad",
        "KlpdLivepatchUnsupported",
        "KlpdTextfileStale",
        "KlpdCandidateWillNotLoad",
        "KlpdCandidateWouldRefuseModuleLoad",
    }
    assert firing == alert_names()
    assert quiet == alert_names()


def test_a_broken_rule_fails_its_unit_test(tmp_path):
    # The unit tests are not vacuous: an alert that ignores `for:` makes them fail.
    broken = RULES.read_text().replace("for: 30m", "for: 1m")
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    result = subprocess.run(
        [PROMTOOL, "test", "rules", RULE_TESTS.name], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert result.returncode != 0
    assert "KlpdPatchNotLoaded" in result.stdout + result.stderr


def rule_blocks() -> dict[str, str]:
    parts = re.split(r"^\s*- alert:\s*", RULES.read_text(), flags=re.MULTILINE)[1:]
    return {part.split(None, 1)[0]: part for part in parts}


def test_every_alert_links_its_runbook_entry_in_the_readme():
    runbook = README.read_text().split("\n## Runbook\n", 1)
    assert len(runbook) == 2, "README.md has no '## Runbook' section"
    section = runbook[1].split("\n## ", 1)[0]
    entries = set(re.findall(r"^### (\w+)$", section, re.MULTILINE))
    for name, block in rule_blocks().items():
        url = re.search(r'runbook_url: "([^"]+)"', block)
        assert url, f"{name} has no runbook_url"
        assert url.group(1) == RUNBOOK + name.lower(), name  # the anchor of its "### Name" heading
    assert entries == alert_names()


def test_critical_alerts_for_what_will_fail():
    blocks = rule_blocks()
    assert 'klpd_patch_will_load{candidate="false"} == 0' in blocks["KlpdPatchWillNotLoad"]
    for name in ("KlpdPatchWillNotLoad", "KlpdModuleLoadWouldBeRefused", "KlpdModuleLoadRefused"):
        assert "severity: critical" in blocks[name], name
    # Target labels (datacenter, team) must reach the alert: aggregate away only klpd's own labels.
    assert not re.search(r"\b(sum|count|max|min|avg) by\b", RULES.read_text())


def test_the_inhibition_example_names_real_alerts():
    text = INHIBIT.read_text()
    named = set()
    for matcher in re.findall(r"alertname=~?\"([^\"]+)\"", text):
        named |= set(matcher.split("|"))
    assert named and named <= alert_names(), named - alert_names()
    assert "inhibit_rules:" in text and text.count("equal: [job, instance") == text.count("source_matchers")
