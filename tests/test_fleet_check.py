"""``klpctl check --root A --root B ... FILE``: one patch judged on many captured hosts, with a per-host table and
a per-patch summary; a host that cannot be judged is a row with its reason, and the others are still judged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures import RELEASE, FixtureRoot
from test_collect_descriptions import host, patch_bytes

from klpd.cli import ExitCode, main


def bare_host(path: Path) -> FixtureRoot:
    """A host with no livepatch loaded or installed."""
    fx = FixtureRoot(path)
    fx.kernel(RELEASE)
    fx.kallsyms(vmlinux=[(0xFFFFFFFF81000000, "T", "_text"), (0xFFFFFFFF81001000, "t", "cmdline_proc_show")])
    fx.proc_modules([])
    fx.modules_dep(RELEASE, {})
    return fx


def hosts(tmp_path: Path) -> tuple[list[str], Path]:
    """db1 runs lp_old with state 7 at version 2 (the candidate's version 1 is refused there); db2 runs nothing;
    db3's capture has no /proc/kallsyms."""
    db1 = host(tmp_path / "db1", "cmdline_proc_show\n")
    db1.write("/proc/sys/kernel/hostname", "db1\n")
    db2 = bare_host(tmp_path / "db2")
    db2.write("/proc/sys/kernel/hostname", "db2\n")
    db3 = host(tmp_path / "db3", "cmdline_proc_show\n")
    db3.root.kallsyms.local.unlink()
    candidate = tmp_path / "lp_new.ko"
    candidate.write_bytes(patch_bytes("lp_new", [("cmdline_proc_show", "lp_b", 0)], [(7, 1)]))
    return [str(tmp_path / n) for n in ("db1", "db2", "db3")], candidate


def test_the_table_names_each_host_and_the_summary_counts_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    roots, candidate = hosts(tmp_path)
    args = ["check", *(x for r in roots for x in ("--root", r)), str(candidate)]
    assert main(args) == ExitCode.PROBLEMS
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line and not line.startswith("lp_new:")}
    assert "NO" in rows["db1"] and "not compatible with the already installed livepatches" in rows["db1"]
    assert " yes " in rows["db2"], rows["db2"]
    db3 = next(line for line in out.splitlines() if line.startswith(roots[2]))
    assert "cannot evaluate" in db3 and "kallsyms" in db3
    assert "lp_new: loads on 1 of 3 hosts, fails on 1, undetermined on 1" in out


def test_the_json_document_holds_each_hosts_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    roots, candidate = hosts(tmp_path)
    assert main(["check", "--json", *(x for r in roots for x in ("--root", r)), str(candidate)]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "klpd.fleet-check/1"
    assert [(h["root"], h["hostname"]) for h in doc["hosts"]] == [(roots[0], "db1"), (roots[1], "db2"),
                                                                  (roots[2], None)]  # fmt: skip
    assert doc["hosts"][0]["status"]["patches"][0]["will_load"] is False
    assert doc["hosts"][1]["status"]["patches"][0]["will_load"] is True
    assert doc["hosts"][2]["status"] is None and "kallsyms" in doc["hosts"][2]["error"]
    assert doc["summary"] == {"lp_new": {"loads": 1, "fails": 1, "undetermined": 1}}


def test_one_root_is_the_ordinary_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    roots, candidate = hosts(tmp_path)
    assert main(["check", "--json", "--root", roots[1], str(candidate)]) == ExitCode.OK
    assert json.loads(capsys.readouterr().out)["schema"] == "klpd.status/1"


def test_a_root_that_is_no_directory_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    roots, candidate = hosts(tmp_path)
    assert main(["check", "--root", roots[0], "--root", str(tmp_path / "nope"), str(candidate)]) == ExitCode.USAGE
    assert "nope: not a directory" in capsys.readouterr().err
