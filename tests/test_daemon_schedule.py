"""The daemon's timers as plain arithmetic: when the next evaluation and the next watchdog ping are due."""

from __future__ import annotations

import pytest

from klpd.daemon.schedule import MAX_COALESCE_WAIT, RETRY_AFTER_FAILURE, TRANSITION_RECHECK, Schedule

T0 = 5000.0


def idle(coalesce_delay=0.1, resync_interval=300.0, watchdog_interval=None):
    """A schedule right after an evaluation at T0."""
    return Schedule(coalesce_delay, resync_interval, watchdog_interval).evaluated(T0, in_transition=False)


def test_an_idle_daemon_sleeps_until_the_resync():
    s = idle()
    assert s.timeout(T0) == 300.0
    assert not s.evaluation_due(T0 + 299.9)
    assert s.evaluation_due(T0 + 300.0)


def test_the_first_evaluation_is_due_at_once():
    s = Schedule(0.1, 300.0)
    assert s.evaluation_due(T0) and s.timeout(T0) == 0.0


def test_each_event_of_a_burst_pushes_the_evaluation_back():
    s = idle().event(T0 + 1.0)
    assert s.timeout(T0 + 1.0) == pytest.approx(0.1)
    s = s.event(T0 + 1.05)
    assert not s.evaluation_due(T0 + 1.1)
    assert s.evaluation_due(T0 + 1.16)


def test_a_never_ending_trickle_is_evaluated_within_max_coalesce_wait():
    s = idle()
    t = T0 + 1.0
    while not s.evaluation_due(t):
        s = s.event(t)
        t += 0.05
    assert t - (T0 + 1.0) == pytest.approx(MAX_COALESCE_WAIT, abs=0.051)


def test_an_immediate_evaluation_is_not_postponed_by_later_events():
    s = idle(coalesce_delay=5.0).immediate().event(T0 + 1.0)
    assert s.evaluation_due(T0 + 1.0) and s.timeout(T0 + 1.0) == 0.0


def test_an_evaluation_ends_the_burst():
    s = idle().event(T0 + 1.0).evaluated(T0 + 1.1, in_transition=False)
    assert s.deadline is None and s.burst_start is None
    assert s.event(T0 + 2.0).timeout(T0 + 2.0) == pytest.approx(0.1)  # a new burst, a new deadline


def test_a_transition_is_rechecked_soon():
    s = Schedule(0.1, 300.0).evaluated(T0, in_transition=True)
    assert s.timeout(T0) == TRANSITION_RECHECK
    assert Schedule(0.1, 1.0).evaluated(T0, in_transition=True).timeout(T0) == 1.0  # a shorter resync wins


def test_a_failed_evaluation_is_retried():
    assert Schedule(0.1, 300.0).failed(T0).timeout(T0) == RETRY_AFTER_FAILURE
    assert Schedule(0.1, 3.0).failed(T0).timeout(T0) == 3.0


def test_watchdog_pings_at_its_interval_and_wakes_the_loop():
    s = idle(watchdog_interval=0.1).started(T0)
    assert s.watchdog_due(T0) and s.timeout(T0) == 0.0
    s = s.pinged(T0)
    assert not s.watchdog_due(T0 + 0.05)
    assert s.timeout(T0) == pytest.approx(0.1)  # not the resync, 300 s away
    assert s.watchdog_due(T0 + 0.1)


def test_no_watchdog_unless_systemd_asks():
    s = idle().started(T0)
    assert not s.watchdog_due(T0 + 1e6)
    assert s.timeout(T0) == 300.0


def test_a_reload_changes_the_intervals_of_what_comes_next():
    s = idle().reconfigured(1.0, 60.0).immediate()
    assert s.evaluation_due(T0)
    assert s.evaluated(T0, in_transition=False).timeout(T0) == 60.0
    assert s.evaluated(T0, in_transition=False).event(T0 + 1.0).timeout(T0 + 1.0) == 1.0
