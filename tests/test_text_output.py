"""The human rendering of what only the daemon knows: what an operator reads at 3 a.m."""

from __future__ import annotations

from klpd.outputs.text import render_daemon

DAEMON = {
    "version": "0.1.0",
    "pid": 42,
    "started": 1_700_000_000,
    "evaluations": 7,
    "last_evaluation": 1_700_000_100,
    "sources": {"kmsg": {"up": True, "events": 3, "lost": 0}, "kernel": {"up": False, "events": 0, "lost": 2}},
    "refusals": [
        {
            "time": 1_700_000_050,
            "patch": "lp_fix",
            "module": "nfsd",
            "message": "livepatch: patch 'lp_fix' failed for module 'nfsd', refusing to load module 'nfsd'",
        }
    ],
    "transitions": [
        {
            "patch": "lp_fix",
            "target": 1,
            "since": 1_700_000_010,
            "blocking_count": 1,
            "blocking_tasks": [{"pid": 99, "tid": 100, "comm": "kworker/0:1", "patch_state": 0}],
            "tasks_note": None,
            "signals": ["livepatch: signaling remaining tasks"],
        }
    ],
    "events": [{"time": 1_700_000_050, "source": "kmsg", "kind": "refusal", "message": "refused nfsd"}],
}


def test_transition_refusal_and_sources_are_spelled_out() -> None:
    text = render_daemon(DAEMON)
    assert "TRANSITION lp_fix: to patched since" in text and "1 task(s) blocking" in text
    assert "pid 99 tid 100 kworker/0:1" in text
    assert "kernel: livepatch: signaling remaining tasks" in text
    assert "REFUSED" in text and "module 'nfsd' by patch 'lp_fix'" in text
    assert "kmsg up" in text and "kernel DOWN, 2 lost" in text
    assert "refused nfsd" in text


def test_nothing_from_a_direct_computation() -> None:
    assert render_daemon({}) == ""


def test_odd_daemon_fields_do_not_crash() -> None:
    text = render_daemon({"transitions": "garbage", "sources": {"x": None}, "events": [1, "a"]})
    assert "x DOWN" in text
