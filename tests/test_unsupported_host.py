"""Hosts that cannot livepatch say so plainly: no /sys/kernel/livepatch (no CONFIG_LIVEPATCH) is a stated host
problem, a metric at 0 and a failing `klpctl check`; a kernel without modules gets no depmod advice; a missing
source is klpd_source_up 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures import RELEASE, FixtureRoot, one_symbol_root
from test_cli import good_patch

from klpd.cli import ExitCode, main
from klpd.collect import Evaluator


def bare_kernel(path: Path) -> FixtureRoot:
    """A kernel built without CONFIG_LIVEPATCH and without CONFIG_MODULES: no /sys/kernel/livepatch, no
    /proc/modules, nothing under /lib/modules."""
    fx = FixtureRoot(path)
    fx.kernel(RELEASE, livepatch=False)
    fx.kallsyms(vmlinux=[(0xFFFFFFFF81000000, "T", "foo")])
    return fx


def test_status_says_livepatch_is_not_supported_and_gives_no_module_advice(tmp_path, capsys):
    fx = bare_kernel(tmp_path / "root")
    assert main(["status", "--root", str(fx.path), "--json"]) == ExitCode.OK  # nothing installed: nothing wrong
    doc = json.loads(capsys.readouterr().out)
    assert doc["host"]["livepatch_supported"] is False
    codes = [p["code"] for p in doc["problems"]]
    assert "livepatch_unsupported" in codes
    (unsupported,) = [p for p in doc["problems"] if p["code"] == "livepatch_unsupported"]
    assert "/sys/kernel/livepatch" in unsupported["message"] and "CONFIG_LIVEPATCH" in unsupported["message"]
    main(["status", "--root", str(fx.path)])
    text = capsys.readouterr().out
    assert "livepatch NOT supported" in text
    assert "depmod" not in text and "linux-headers" not in text and "modules.dep" not in text


def test_check_fails_on_a_kernel_without_livepatch(tmp_path, capsys):
    fx = bare_kernel(tmp_path / "root")
    ko = tmp_path / "lp_good.ko"
    ko.write_bytes(good_patch())
    assert main(["check", "--root", str(fx.path), str(ko)]) == ExitCode.PROBLEMS
    out = capsys.readouterr().out
    assert "livepatch support is disabled" in out and "will NOT load" in out


def test_metrics_of_an_unsupported_host(tmp_path):
    evaluation = Evaluator(bare_kernel(tmp_path / "root").root).evaluate()
    assert evaluation.status.livepatch_supported is False
    up = evaluation.source_up
    assert up["livepatch_sysfs"] is False and up["proc_modules"] is False and up["modules_dep"] is False
    assert up["kallsyms"] is True


@pytest.mark.parametrize("missing", ["modules_dep", "kernel_build"])
def test_a_missing_source_is_down(tmp_path, missing):
    """modules.dep before depmod ran, Module.symvers without linux-headers: what they decide is unknown."""
    fx = one_symbol_root(tmp_path / "root")  # modules.dep present, no Module.symvers
    if missing == "modules_dep":
        fx.root.modules_dep(RELEASE).local.unlink()
    up = Evaluator(fx.root).evaluate().source_up
    assert up[missing] is False
    assert up["kallsyms"] is True and up["proc_modules"] is True and up["livepatch_sysfs"] is True
