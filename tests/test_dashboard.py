"""The Grafana dashboard: valid, its queries parse, and every metric it or the alert rules use is one klpd exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from metrics_fixture import basic_snapshot

from klpd.outputs.metrics import METRIC_NAMES, render

CONFIG = Path(__file__).resolve().parent.parent / "config"
DASHBOARD = CONFIG / "grafana" / "klpd-dashboard.json"
RULES = CONFIG / "prometheus" / "klpd-alerts.yml"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
METRIC = re.compile(r"\bklpd_[a-z0-9_]+\b")
# Grafana's variables, replaced by values that make each query plain PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$instance": ".*", "$job": "klpd"}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[dict]) -> list[dict]:
    out = []
    for panel in panels:
        out.append(panel)
        out.extend(all_panels(panel.get("panels", [])))
    return out


def queries() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in all_panels(dashboard()["panels"]) for t in p.get("targets", [])]


def exported_names() -> set[str]:
    text = render(basic_snapshot()).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_dashboard_is_valid_json_with_unique_panel_ids():
    board = dashboard()
    assert board["title"] and board["uid"]
    ids = [p["id"] for p in all_panels(board["panels"])]
    assert len(ids) == len(set(ids))
    for panel in all_panels(board["panels"]):
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


def test_job_variable_lists_the_jobs_that_scrape_klpd():
    """A fleet whose scrape job is not named "klpd" picks its own: every query is filtered by $job."""
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    job = variables["job"]
    assert job["type"] == "query" and job["query"]["query"] == "label_values(klpd_build_info, job)"
    assert job["datasource"]["uid"] == "${datasource}"
    assert all('job="$job"' in expr for _, expr in queries())
    assert 'job="$job"' in variables["instance"]["query"]["query"]


def test_instance_variable_drives_the_drill_down():
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["instance"]["type"] == "query"
    assert "klpd_build_info" in variables["instance"]["query"]["query"]
    assert variables["instance"]["multi"] and variables["instance"]["includeAll"]
    # Every panel below the host row is filtered by the instance variable; the fleet overview above it is not.
    host_row = False
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            host_row = "$instance" in panel["title"]
            continue
        for target in panel["targets"]:
            assert ('instance=~"$instance"' in target["expr"]) == host_row, (panel["title"], target["expr"])


def test_dashboard_metrics_are_exported():
    used = {name for _, expr in queries() for name in METRIC.findall(expr)}
    used |= set(METRIC.findall(json.dumps(dashboard()["templating"])))
    assert used, "the dashboard queries no klpd metric"
    assert used <= exported_names(), f"not exported by klpd: {sorted(used - exported_names())}"
    assert used <= METRIC_NAMES


def test_alert_rule_metrics_are_exported():
    used = set(METRIC.findall(RULES.read_text()))
    assert used, "the alert rules use no klpd metric"
    assert used <= exported_names(), f"not exported by klpd: {sorted(used - exported_names())}"


def test_cross_check_catches_a_misspelt_metric():
    assert "klpd_patch_states" not in exported_names()
    assert "klpd_patch_state" in exported_names()


def test_every_dashboard_query_is_valid_promql(tmp_path):
    # promtool parses every expression of a rule file; the queries become recording rules.
    rules = []
    for i, (title, query) in enumerate(queries()):
        expr = query
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"{title}: unknown Grafana variable in {expr}"
        rules.append(f"      - record: dashboard:query_{i}\n        expr: {json.dumps(expr)}\n")
    path = tmp_path / "dashboard-queries.yml"
    path.write_text("groups:\n  - name: dashboard\n    rules:\n" + "".join(rules))
    if not Path(PROMTOOL).exists():
        pytest.fail("promtool is needed (Debian package 'prometheus'; ./dev.sh test installs it)")
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
