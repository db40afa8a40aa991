"""The Prometheus collector over a snapshot, its text exposition (golden file, promtool), the /metrics app and
the textfile writer.

Regenerate the golden file after an intended change with ``KLPD_UPDATE_GOLDEN=1 pytest tests/test_metrics.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from metrics_fixture import basic_snapshot, basic_stats, basic_status
from prometheus_client import CollectorRegistry, generate_latest

from klpd.daemon.stats import DaemonStats
from klpd.outputs.exposition import Exposition, metrics_wsgi_app, write_textfile
from klpd.outputs.metrics import (
    FUNCTION_STATUSES,
    METRIC_NAMES,
    METRICS,
    PATCH_STATES,
    SYMBOL_STATUSES,
    KlpdCollector,
    MetricsSnapshot,
    build_registry,
    render,
)

GOLDEN = Path(__file__).parent / "golden" / "metrics_basic.prom"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def registry_for(snapshot: MetricsSnapshot | None, version: str = "test") -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(KlpdCollector(snapshot, version))
    return registry


@pytest.fixture
def reg() -> CollectorRegistry:
    return registry_for(basic_snapshot())


def value(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


def series(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith((name + "{", name + " "))]


# --- values ----------------------------------------------------------------------------------------------------


def test_build_and_kernel_info(reg):
    assert value(reg, "klpd_build_info", version="test") == 1
    assert value(reg, "klpd_kernel_info", release="6.1.0-18-amd64") == 1
    assert value(reg, "klpd_livepatch_supported") == 1
    assert value(reg, "klpd_kernel_tainted_livepatch") == 1
    assert value(reg, "klpd_kallsyms_addresses_visible") == 0
    assert value(reg, "klpd_host_problems", severity="warning") == 1
    assert value(reg, "klpd_host_problems", severity="error") == 0


def test_patch_state_is_one_hot(reg):
    expected = {
        "livepatch_cve_2024_1": "transition",
        "livepatch_xfs": "enabled",
        "kpatch_old": "not_loaded",
        "livepatch_disabled": "disabled",
    }
    for patch, current in expected.items():
        for state in PATCH_STATES:
            assert value(reg, "klpd_patch_state", patch=patch, state=state) == (state == current), (patch, state)


def test_loaded_enabled_unknown_is_its_own_state():
    patch = replace(basic_status().patches[1], enabled=None)
    reg = registry_for(MetricsSnapshot(replace(basic_status(), patches=(patch,)), DaemonStats()))
    assert value(reg, "klpd_patch_state", patch="livepatch_xfs", state="unknown") == 1
    assert value(reg, "klpd_patch_state", patch="livepatch_xfs", state="disabled") == 0


def test_symbol_counts_have_a_series_only_for_statuses_that_occur(reg):
    counts = {s: value(reg, "klpd_symbols", patch="livepatch_xfs", object="xfs", status=s) for s in SYMBOL_STATUSES}
    assert counts == {
        "ok": 2,
        "not_found": 1,
        "ambiguous": None,
        "sympos_not_found": None,
        "malformed_name": None,
        "not_livepatch_symbol": None,
        "vmlinux_from_module_section": None,
        "unknown": 1,
    }
    assert value(reg, "klpd_symbols", patch="kpatch_old", object="vmlinux", status="ambiguous") == 1


def test_function_counts_by_status(reg):
    xfs = {s: value(reg, "klpd_functions", patch="livepatch_xfs", object="xfs", status=s) for s in FUNCTION_STATUSES}
    assert xfs == dict.fromkeys(FUNCTION_STATUSES) | {"ok": 1, "not_found": 1, "unknown": 1}
    assert value(reg, "klpd_functions", patch="livepatch_xfs", object="vmlinux", status="ok") == 1


def test_sections_by_state(reg):
    assert value(reg, "klpd_sections", patch="livepatch_xfs", object="xfs", state="pending") == 1
    assert value(reg, "klpd_sections", patch="livepatch_xfs", object="xfs", state="fails") == 1
    assert value(reg, "klpd_sections", patch="livepatch_xfs", object="xfs", state="applied") is None
    assert value(reg, "klpd_sections", patch="livepatch_xfs", object="vmlinux", state="applied") == 1


def test_module_load_verdict_is_one_hot_and_only_for_unloaded_modules(reg):
    xfs = {"patch": "livepatch_xfs", "object": "xfs", "candidate": "false"}
    assert value(reg, "klpd_module_load", **xfs, verdict="refused") == 1
    assert value(reg, "klpd_module_load", **xfs, verdict="ok") == 0
    assert value(reg, "klpd_module_load", **xfs, verdict="unknown") == 0
    nf_tables = {"patch": "livepatch_cve_2024_1", "object": "nf_tables", "candidate": "false"}
    assert value(reg, "klpd_module_load", **nf_tables, verdict="ok") is None


def test_will_load_problems_and_sysfs_attributes(reg):
    assert value(reg, "klpd_patch_will_load", patch="kpatch_old", candidate="false") == 0
    assert value(reg, "klpd_patch_will_load", patch="livepatch_xfs", candidate="false") == 1
    assert value(reg, "klpd_patch_problems", patch="livepatch_xfs", severity="error", candidate="false") == 1
    assert value(reg, "klpd_patch_problems", patch="livepatch_xfs", severity="warning", candidate="false") == 1
    assert value(reg, "klpd_patch_problems", patch="kpatch_old", severity="error", candidate="false") == 0
    assert value(reg, "klpd_patch_stack_order", patch="livepatch_xfs") == 2
    assert value(reg, "klpd_patch_replace", patch="livepatch_cve_2024_1") == 1
    # Attributes the kernel does not expose (older kernels, patches not loaded) are absent, not 0.
    assert value(reg, "klpd_patch_stack_order", patch="livepatch_disabled") is None
    assert value(reg, "klpd_object_patched", patch="kpatch_old", object="vmlinux") is None
    assert value(reg, "klpd_object_loaded", patch="livepatch_xfs", object="xfs") == 0


def test_transition_metrics_only_for_patches_in_transition(reg):
    assert value(reg, "klpd_transition_start_time_seconds", patch="livepatch_cve_2024_1") == 1_700_000_000
    assert value(reg, "klpd_transition_blocking_tasks", patch="livepatch_cve_2024_1") == 3
    # A stale start time for a patch no longer in transition is not exported.
    stats = replace(basic_stats(), transition_start={"livepatch_xfs": 5.0})
    reg2 = registry_for(MetricsSnapshot(basic_status(), stats))
    assert value(reg2, "klpd_transition_start_time_seconds", patch="livepatch_xfs") is None


def test_refusal_counter_exists_at_zero_for_every_patched_module(reg):
    assert value(reg, "klpd_module_load_refusals_total", patch="livepatch_xfs", object="xfs") == 2
    # Present before the first refusal, so increase() sees the first one.
    assert value(reg, "klpd_module_load_refusals_total", patch="livepatch_cve_2024_1", object="nf_tables") == 0
    assert value(reg, "klpd_module_load_refusals_total", patch="livepatch_xfs", object="vmlinux") is None


def test_daemon_counters_and_source_health(reg):
    assert value(reg, "klpd_events_total", source="udev") == 12
    assert value(reg, "klpd_lost_events_total", source="udev") == 1
    assert value(reg, "klpd_lost_events_total", source="journal") == 0
    assert value(reg, "klpd_events_total", source="kmsg") == 0  # an event source without events yet has a series
    assert value(reg, "klpd_source_up", source="kallsyms") == 1
    assert value(reg, "klpd_events_total", source="kallsyms") is None  # a data source sends no events
    assert value(reg, "klpd_source_up", source="kmsg") == 0
    assert value(reg, "klpd_source_up", source="udev") == 1
    assert value(reg, "klpd_evaluations_total") == 5
    assert value(reg, "klpd_evaluation_duration_seconds") == pytest.approx(0.042)
    assert value(reg, "klpd_last_evaluation_timestamp_seconds") == 1_700_000_030.5


def test_duplicate_patch_names_give_one_series_per_name():
    text = render(basic_snapshot(), version="test").decode()
    assert len([line for line in text.splitlines() if line.startswith('klpd_patch_loaded{patch="kpatch_old"}')]) == 1
    info = [line for line in series(text, "klpd_patch_info") if 'patch="kpatch_old"' in line]
    assert len(info) == 2  # both files are still visible
    assert any('release="5.10.0-28-amd64"' in line for line in info)


def test_unknown_taint_is_absent_not_zero():
    status = replace(basic_status(), tainted=None, livepatch_tainted=None)
    reg = registry_for(MetricsSnapshot(status, DaemonStats()))
    assert value(reg, "klpd_kernel_tainted_livepatch") is None


def test_before_first_evaluation_only_build_info():
    reg = registry_for(None)
    samples = [s for family in reg.collect() for s in family.samples]
    assert [(s.name, s.value) for s in samples] == [("klpd_build_info", 1)]


def wsgi_get(app, path, method="GET"):
    got = {}
    environ = {"PATH_INFO": path, "REQUEST_METHOD": method}
    body = b"".join(app(environ, lambda status, headers: got.update(status=status, headers=dict(headers))))
    return got["status"], got["headers"], body


def test_wsgi_app_serves_metrics_only_at_metrics():
    app = metrics_wsgi_app(Exposition(lambda: render(basic_snapshot()), process=False))
    status, headers, body = wsgi_get(app, "/metrics")
    assert status == "200 OK"
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert int(headers["Content-Length"]) == len(body)
    assert b'klpd_patch_state{patch="livepatch_xfs",state="enabled"} 1.0' in body
    assert wsgi_get(app, "/metrics", "HEAD")[2] == b""
    assert wsgi_get(app, "/debug")[0] == "404 Not Found"
    assert wsgi_get(app, "/metrics", "POST")[0] == "405 Method Not Allowed"


# --- exposition: every metric declared, golden file, promtool ---------------------------------------------------


def test_exposition_has_every_declared_metric_and_nothing_else():
    text = render(basic_snapshot(), version="test").decode()
    names = {
        re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group()
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert names == METRIC_NAMES
    for metric in METRICS:
        assert f"# TYPE {metric.name} {metric.kind.value}" in text
        assert metric.name.startswith("klpd_")
        assert metric.name.endswith("_total") == (metric.kind.value == "counter")


def test_golden_exposition():
    text = render(basic_snapshot(), version="test").decode()
    if os.environ.get("KLPD_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "metrics output changed; KLPD_UPDATE_GOLDEN=1 regenerates the golden file"


def promtool_check(data: bytes) -> subprocess.CompletedProcess[str]:
    assert Path(PROMTOOL).exists(), "promtool is needed (Debian package 'prometheus'; ./dev.sh test installs it)"
    return subprocess.run(
        [PROMTOOL, "check", "metrics"], input=data.decode(), capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize("source", ["registry", "exposition"])
def test_promtool_accepts_the_daemon_output(source):
    # klpd's metrics plus process_*, through the collector registry and through the daemon's exposition
    if source == "registry":
        data = generate_latest(build_registry(basic_snapshot()))
    else:
        text = render(basic_snapshot())
        data = Exposition(lambda: text).scrape()
    assert b"process_resident_memory_bytes" in data
    result = promtool_check(data)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", "promtool lint findings"


def test_promtool_accepts_hostile_label_values():
    status = basic_status()
    odd = replace(status.patches[2], path='/var/lib/kpatch/we"ird\\dir\nname.ko')
    data = render(MetricsSnapshot(replace(status, patches=(odd,)), basic_stats()))
    result = promtool_check(data)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the textfile ----------------------------------------------------------------------------------------------


def test_textfile_is_written_whole_and_world_readable(tmp_path):
    (tmp_path / "klpd.prom").write_text("old\n")
    target = write_textfile(tmp_path, b"klpd_build_info 1\n")
    assert target == tmp_path / "klpd.prom"
    assert target.read_bytes() == b"klpd_build_info 1\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["klpd.prom"]  # no temporary left behind


def test_textfile_failure_leaves_no_temporary(tmp_path):
    (tmp_path / "klpd.prom").mkdir()  # rename onto a directory fails
    with pytest.raises(OSError):
        write_textfile(tmp_path, b"x 1\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["klpd.prom"]


def test_textfile_missing_directory_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_textfile(tmp_path / "absent", b"x 1\n")


def test_identical_patch_entries_give_no_duplicate_series():
    status = basic_status()
    doubled = replace(status, patches=(status.patches[0], status.patches[0]))
    text = render(MetricsSnapshot(doubled, basic_stats())).decode()
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    series_keys = [line.rsplit(" ", 1)[0] for line in lines]
    assert len(series_keys) == len(set(series_keys))
