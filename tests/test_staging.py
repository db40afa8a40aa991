"""Rollout pre-flight: the staging directories' candidate patches, judged against the host and never loaded.

A candidate is what ``klpctl check FILE`` would say of insmod of the file now, reported apart from the host's own
patches: ``HostStatus.candidates``, JSON ``candidates``, the text view's candidates table, and the verdict metrics
with ``candidate="true"`` (the host's own series carry ``candidate="false"``, so no host alert sees a candidate).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from fixtures import RELEASE, FixtureRoot, in_tree_module_bytes
from prometheus_client import CollectorRegistry
from test_collect_descriptions import host, patch_bytes

from klpd.collect import Evaluator, evaluate_files
from klpd.config import parse_config
from klpd.daemon.stats import DaemonStats
from klpd.model_loader import CheckResult, LoadCheckName
from klpd.outputs.json import status_document, status_from_document
from klpd.outputs.metrics import KlpdCollector, MetricsSnapshot
from klpd.outputs.text import render_status

STAGING = "/var/lib/klpd/staging/{release}"


def staged_host(tmp_path: Path) -> FixtureRoot:
    """lp_old loaded (state 7 at version 2); staged: lp_new (state 7 at version 1: refused), lp_ok (fine) and a
    new build of lp_old (a module of that name is loaded: EEXIST)."""
    fx = host(tmp_path, "cmdline_proc_show\nother_fn\n")
    staging = STAGING.replace("{release}", RELEASE)
    fx.write(f"{staging}/lp_new.ko", patch_bytes("lp_new", [("cmdline_proc_show", "lp_b", 0)], [(7, 1)]))
    fx.write(f"{staging}/lp_ok.ko", patch_bytes("lp_ok", [("cmdline_proc_show", "lp_c", 0)], [(7, 2)]))
    fx.write(f"{staging}/lp_old.ko", patch_bytes("lp_old", [("cmdline_proc_show", "lp_d", 0)], [(7, 2)]))
    return fx


def evaluator(fx: FixtureRoot) -> Evaluator:
    root = replace(fx.root, staging_dirs=(STAGING,))
    return Evaluator(root, one_shot=True)


def test_candidates_are_judged_as_klpctl_check_judges_them_and_kept_apart(tmp_path: Path) -> None:
    fx = staged_host(tmp_path)
    status = evaluator(fx).evaluate().status
    assert [p.name for p in status.patches] == ["lp_old"]  # the host's own patches only
    by_name = {p.name: p for p in status.candidates}
    assert sorted(by_name) == ["lp_new", "lp_ok", "lp_old"]
    staging = STAGING.replace("{release}", RELEASE)
    assert by_name["lp_new"].path == f"{staging}/lp_new.ko"
    assert not by_name["lp_new"].will_load
    assert by_name["lp_new"].reasons[0] == (
        "livepatch: Livepatch patch (lp_new) is not compatible with the already installed livepatches."
    )
    assert by_name["lp_ok"].will_load, by_name["lp_ok"].reasons
    exists = {c.check: c for c in by_name["lp_old"].load_checks}
    assert not by_name["lp_old"].will_load
    assert any(c.result is CheckResult.FAILS and c.errno == "EEXIST" for c in exists.values()), exists
    # the same verdict klpctl check gives for the same file
    checked = evaluate_files(fx.root, [fx.root.path(f"{staging}/lp_new.ko")]).patches[0]
    assert (checked.will_load, checked.reasons) == (by_name["lp_new"].will_load, by_name["lp_new"].reasons)
    assert {c.check: c.result for c in checked.load_checks}[LoadCheckName.STATES] is CheckResult.FAILS


def test_candidates_in_json_text_and_metrics(tmp_path: Path) -> None:
    status = evaluator(staged_host(tmp_path)).evaluate().status
    doc = status_document(status, "direct")
    assert [c["name"] for c in doc["candidates"]] == [c.name for c in status.candidates]
    assert status_from_document(doc).candidates == status.candidates

    text = render_status(status)
    assert "candidates (staging directories" in text
    new_row = next(line for line in text.splitlines() if line.strip().startswith("lp_new "))
    assert "lp_new.ko" in new_row and "NO" in new_row
    assert "not compatible with the already installed livepatches" in text

    registry = CollectorRegistry()
    registry.register(KlpdCollector(MetricsSnapshot(status, DaemonStats())))
    value = registry.get_sample_value
    assert value("klpd_patch_will_load", {"patch": "lp_new", "candidate": "true"}) == 0
    assert value("klpd_patch_will_load", {"patch": "lp_ok", "candidate": "true"}) == 1
    assert value("klpd_patch_will_load", {"patch": "lp_old", "candidate": "true"}) == 0
    assert value("klpd_patch_will_load", {"patch": "lp_old", "candidate": "false"}) == 1  # the loaded one
    assert value("klpd_patch_load_check", {"patch": "lp_new", "check": "states", "result": "fails",
                                           "candidate": "true"}) == 1  # fmt: skip
    # a candidate is not on the host: no state, no loaded series that a host alert would read
    assert value("klpd_patch_state", {"patch": "lp_new", "state": "not_loaded"}) is None
    assert value("klpd_patch_loaded", {"patch": "lp_ok"}) is None


def test_a_module_that_is_not_a_livepatch_is_named_and_the_source_stays_up(tmp_path: Path) -> None:
    fx = staged_host(tmp_path)
    staging = STAGING.replace("{release}", RELEASE)
    fx.write(f"{staging}/driver.ko", in_tree_module_bytes(f"{RELEASE} SMP mod_unload ", 4096, name="driver"))
    evaluation = evaluator(fx).evaluate()
    problems = [p for p in evaluation.status.problems if p.code == "staged_not_livepatch"]
    assert [p.subject for p in problems] == [f"{staging}/driver.ko"]
    assert "no livepatch=Y" in problems[0].message
    assert evaluation.source_up["staging_files"] is True
    assert "driver" not in {c.name for c in evaluation.status.candidates}


def test_staging_dirs_are_watched_and_absent_ones_are_normal(tmp_path: Path) -> None:
    fx = staged_host(tmp_path)
    fx.root.path("/srv").mkdir()
    root = replace(fx.root, staging_dirs=(STAGING, "/srv/never-made/{release}"))
    evaluation = Evaluator(root, one_shot=True).evaluate()
    assert fx.root.path(STAGING.replace("{release}", RELEASE)) in evaluation.watch_dirs
    assert fx.root.path("/srv") in evaluation.watch_dirs  # the nearest existing ancestor: creating it is seen
    assert evaluation.source_up["staging_files"] is True
    assert not [p for p in evaluation.status.problems if "never-made" in p.message]


def test_without_staging_dirs_nothing_changes(tmp_path: Path) -> None:
    evaluation = Evaluator(staged_host(tmp_path).root, one_shot=True).evaluate()
    assert evaluation.status.candidates == ()
    assert "staging_files" not in evaluation.source_up


def test_config_staging_dirs(tmp_path: Path) -> None:
    config = parse_config(f'root = "{tmp_path}"\nstaging_dirs = ["/srv/rollout/{{release}}"]')
    assert config.system_root().staging_dirs_for("6.1.0") == (tmp_path / "srv/rollout/6.1.0",)
    assert parse_config("").staging_dirs == ()
