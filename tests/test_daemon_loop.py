"""The daemon end to end, in-process: a fixture host changes under a running Agent, fed by a fake uevent monitor,
a FIFO standing in for /dev/kmsg and real inotify; the answers are read back through the Unix socket API (as
klpctl does) and /metrics over HTTP. Those tests wait (boundedly) for real I/O; the tests of the loop's timing
run it in simulated time (``SimulatedTime``), so no verdict depends on how fast this machine is."""

from __future__ import annotations

import shutil
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from klpd.api_client import fetch_status
from klpd.collect import Evaluator
from klpd.config import Config, ListenAddress
from klpd.daemon.events import Batch, Event
from klpd.daemon.inotify import PatchDirWatcher
from klpd.daemon.kernel_log import KmsgSource
from klpd.daemon.loop import Agent
from klpd.daemon.schedule import IMMEDIATE
from klpd.daemon.systemd_notify import Notifier
from klpd.daemon.uevents import UeventSource
from tests.daemon_scenario import PATCH, PATCH_FILE, RELEASE, TARGET, FakeMonitor, Host, SimulatedTime, patch_module


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Running:
    def __init__(self, tmp_path: Path, coalesce_delay: float = 0.05, resync_interval: float = 300.0):
        self.host = Host(tmp_path / "host")
        self.monitor = FakeMonitor()
        self.socket = tmp_path / "run" / "klpd.sock"
        self.notes: list[str] = []
        config = Config(root=self.host.path, socket=self.socket, listen=ListenAddress("127.0.0.1", 0),
                        coalesce_delay=coalesce_delay, resync_interval=resync_interval)  # fmt: skip
        self.evaluations = 0
        outer = self

        class CountingEvaluator(Evaluator):
            def evaluate(self, files=None):
                outer.evaluations += 1
                return super().evaluate(files)

        self.agent = Agent(
            config,
            sources=[UeventSource(self.monitor, "udev"), KmsgSource(self.host.kmsg_path), PatchDirWatcher()],
            evaluator_factory=CountingEvaluator,
            notifier=Notifier(send=self.notes.append, environ={}),
        )
        self.agent.start_servers()
        self.thread = threading.Thread(target=self.agent.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.agent.snapshot, what="first evaluation")

    def status(self):
        return fetch_status(str(self.socket))

    def patch(self, doc):
        return next(p for p in doc["patches"] if p["name"] == PATCH)

    def metrics(self) -> str:
        port = self.agent.servers.metrics.port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return r.read().decode()

    def stop(self):
        self.agent.request_stop()
        self.thread.join(timeout=5)
        self.agent.close()
        self.monitor.close()


@pytest.fixture
def running(tmp_path):
    r = Running(tmp_path)
    yield r
    r.stop()


def sample(metrics: str, line_start: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_start} not in metrics:\n{metrics}")


def test_state_changes_reach_the_api_and_metrics(running):
    r = running
    assert any(n.startswith("READY=1\nSTATUS=1 patches (1 not loaded)") for n in r.notes)
    doc = r.status()
    assert doc["schema"] == "klpd.status/1" and doc["source"] == "daemon"
    patch = r.patch(doc)
    assert patch["loaded"] is False and patch["path"] == PATCH_FILE
    target = next(o for o in patch["objects"] if o["name"] == TARGET)
    assert target["loaded"] is False and target["module_load"] == "ok"
    assert [s["state"] for s in target["sections"]] == ["pending"]

    # The target module appears: its uevent makes the daemon look again.
    r.host.load_target()
    r.monitor.emit("add", TARGET)
    doc = wait_for(lambda: (d := r.status()) and next(o for o in r.patch(d)["objects"] if o["name"] == TARGET)["loaded"]
                   and d, what="target module loaded")  # fmt: skip
    assert doc["daemon"]["events"][0] == {**doc["daemon"]["events"][0], "source": "udev", "kind": "add",
                                          "subject": TARGET}  # fmt: skip

    # The patch loads and starts transitioning; one task still runs unpatched code.
    r.host.task(4242, 4243, "stuck_worker", 0)
    r.host.task(4242, 4242, "idle_main", -1)
    r.host.task(77, 77, "switched", 1)
    r.host.load_patch(transition=True)
    r.host.kmsg(f"livepatch: '{PATCH}': starting patching transition", prio=5)
    doc = wait_for(lambda: (d := r.status()) and d["daemon"]["transitions"] and d, what="transition")
    assert r.patch(doc)["transition"] is True
    (transition,) = doc["daemon"]["transitions"]
    assert transition["patch"] == PATCH and transition["target"] == "patched"
    assert transition["since_source"] == "kernel_log"
    assert transition["blocking_tasks"] == [{"pid": 4242, "tid": 4243, "comm": "stuck_worker", "patch_state": 0}]
    assert transition["blocking_count"] == 1
    metrics = r.metrics()
    assert sample(metrics, f'klpd_patch_state{{patch="{PATCH}",state="transition"}}') == 1
    assert sample(metrics, f'klpd_transition_blocking_tasks{{patch="{PATCH}"}}') == 1
    assert sample(metrics, f'klpd_transition_start_time_seconds{{patch="{PATCH}"}}') == transition["since"]

    # The kernel signals, then the transition completes.
    r.host.kmsg("livepatch: signaling remaining tasks", prio=5)
    wait_for(lambda: (t := r.status()["daemon"]["transitions"]) and t[0]["signals"] == 1, what="signal seen")
    r.host.set_patch(enabled=True, transition=False)
    r.host.task(4242, 4243, "stuck_worker", -1)
    r.host.kmsg(f"livepatch: '{PATCH}': patching complete", prio=5)
    doc = wait_for(lambda: (d := r.status()) and not d["daemon"]["transitions"] and d, what="transition over")
    assert r.patch(doc)["enabled"] is True and r.patch(doc)["transition"] is False
    metrics = r.metrics()
    assert sample(metrics, f'klpd_patch_state{{patch="{PATCH}",state="enabled"}}') == 1
    assert f'klpd_transition_blocking_tasks{{patch="{PATCH}"}}' not in metrics

    # A refused module load: no uevent, only the kernel log says so.
    r.host.kmsg(f"livepatch: failed to initialize patch '{PATCH}' for module 'other_mod' (-8)")
    r.host.kmsg(f"livepatch: patch '{PATCH}' failed for module 'other_mod', refusing to load module 'other_mod'")
    doc = wait_for(lambda: (d := r.status()) and d["daemon"]["refusals"] and d, what="refusal")
    (refusal,) = doc["daemon"]["refusals"]
    assert refusal["patch"] == PATCH and refusal["module"] == "other_mod"
    assert "refusing to load module 'other_mod'" in refusal["message"]
    metrics = wait_for(lambda: (m := r.metrics()) and "other_mod" in m and m, what="refusal metric")
    assert sample(metrics, f'klpd_module_load_refusals_total{{object="other_mod",patch="{PATCH}"}}') == 1
    assert sample(metrics, 'klpd_events_total{source="kmsg"}') == 5  # every livepatch line above
    assert sample(metrics, 'klpd_source_up{source="kmsg"}') == 1


def test_new_patch_file_is_noticed_by_inotify(running):
    r = running
    assert [p["name"] for p in r.status()["patches"]] == [PATCH]
    r.host.fx.file(f"/var/lib/kpatch/{RELEASE}/livepatch_second.ko", patch_module("livepatch_second"))
    doc = wait_for(lambda: (d := r.status()) and len(d["patches"]) == 2 and d, what="second patch")
    assert sorted(p["name"] for p in doc["patches"]) == ["livepatch_demo", "livepatch_second"]
    Path(r.host.fx.root.path(f"/var/lib/kpatch/{RELEASE}/livepatch_second.ko")).unlink()
    wait_for(lambda: len(r.status()["patches"]) == 1, what="second patch removed")
    assert r.status()["daemon"]["sources"]["inotify"]["events"] >= 2


def test_lost_events_force_a_resync_and_are_counted(running):
    r = running
    before = r.evaluations
    r.host.load_target()
    r.monitor.overflow()  # ENOBUFS: the add event of the target module was dropped
    wait_for(lambda: r.status()["daemon"]["sources"]["udev"]["lost"] == 1, what="loss counted")
    doc = r.status()
    assert next(o for o in r.patch(doc)["objects"] if o["name"] == TARGET)["loaded"] is True
    assert r.evaluations > before
    assert sample(r.metrics(), 'klpd_lost_events_total{source="udev"}') == 1


def simulated_agent(host: Host, sim: SimulatedTime, **kwargs) -> tuple[Agent, list[float]]:
    """An Agent on ``host`` whose loop runs in ``sim``'s time; the list gets the time of each evaluation."""
    evaluations: list[float] = []

    class Counting(Evaluator):
        def evaluate(self, files=None):
            evaluations.append(sim.clock())
            return super().evaluate(files)

    config = Config(**{"root": host.path, "socket": None, "listen": None, **kwargs.pop("config", {})})
    kwargs.setdefault("notifier", Notifier(send=lambda s: None, environ={}))
    agent = Agent(config, evaluator_factory=Counting, clock=sim.clock, selector=sim.selector(), **kwargs)
    return agent, evaluations


def test_a_storm_costs_a_handful_of_evaluations(tmp_path):
    sim = SimulatedTime()
    monitor = FakeMonitor()
    agent, count = simulated_agent(Host(tmp_path / "host"), sim, sources=[UeventSource(monitor, "udev")],
                                   config={"coalesce_delay": 0.1, "resync_interval": 300.0})  # fmt: skip
    for i in range(300):  # 300 events over 0.6 s
        sim.at(0.002 * (i + 1), lambda i=i: monitor.emit("add" if i % 2 == 0 else "remove", f"mod{i}"))
    sim.at(5.0, agent.request_stop)
    try:
        agent.run()
    finally:
        agent.close()
        monitor.close()
    assert agent.snapshot.daemon["sources"]["udev"]["events"] == 300  # the storm counted
    before = 1  # run()'s first evaluation, at the start
    assert 1 <= len(count) - before <= 4


class _ScriptedSource:
    name = "script"

    def __init__(self):
        import os

        self.r, self.w = os.pipe()

    def fileno(self):
        return self.r

    def read(self):
        import os

        os.read(self.r, 1)
        return Batch((Event(time.time(), self.name, "poke", "x"),))

    def close(self):
        pass


def test_idle_daemon_sleeps_until_the_resync(tmp_path):
    """No event, no evaluation: the loop waits in select() for the periodic resync, which does come."""
    sim = SimulatedTime()
    agent, count = simulated_agent(Host(tmp_path / "host"), sim, sources=[], config={"resync_interval": 0.5})
    sim.at(1.2, agent.request_stop)
    try:
        agent.run()
    finally:
        agent.close()
    assert len(count) == 3  # the first evaluation and two resyncs, 0.5 s apart
    assert 0.4 < count[1] - count[0] < 0.8
    assert sim.waits == pytest.approx([0.5, 0.5, 0.5])  # each select() slept until the next resync (or the stop)


def test_watchdog_pings_when_systemd_asks(tmp_path):
    sim = SimulatedTime()
    notes: list[str] = []
    notifier = Notifier(send=notes.append, environ={"WATCHDOG_USEC": "200000"})
    agent, _ = simulated_agent(Host(tmp_path / "host"), sim, sources=[], notifier=notifier)
    sim.at(0.55, agent.request_stop)
    try:
        agent.run()
    finally:
        agent.close()
    assert 4 <= notes.count("WATCHDOG=1") <= 8  # every 0.1 s
    assert notes[-1] == "STOPPING=1"


def test_a_client_hanging_up_early_leaves_no_traceback(running, capfd):
    """Seen in QEMU: `curl -f` drops the connection on a 503; every such request printed a traceback."""
    import socket as socket_module

    running.status()  # the first evaluation is published
    for _ in range(5):
        with socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_STREAM) as s:
            s.connect(str(running.socket))
            s.sendall(b"GET /v1/status HTTP/1.1\r\nHost: klpd\r\n\r\n")
            s.setsockopt(socket_module.SOL_SOCKET, socket_module.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    running.status()  # still answering
    time.sleep(0.2)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipeError" not in err


class _BrokenSource(_ScriptedSource):
    """A source with a bug: its first read raises something no source is supposed to raise."""

    name = "broken"

    def __init__(self):
        super().__init__()
        self.reads = 0

    def read(self):
        self.reads += 1
        if self.reads == 1:
            import os

            os.read(self.r, 1)
            raise RuntimeError("a bug in a source")
        return super().read()


def test_a_failing_source_is_dropped_and_a_reload_brings_it_back(tmp_path):
    import os

    host = Host(tmp_path / "host")
    config = Config(root=host.path, socket=None, listen=None)
    source = _BrokenSource()
    agent = Agent(config, sources=[source], config_loader=lambda: config, notifier=Notifier(send=lambda s: None))
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: agent.snapshot is not None, what="first evaluation")
        os.write(source.w, b"x")
        wait_for(lambda: agent.snapshot.stats.source_up.get("broken") is False, what="source marked down")
        assert thread.is_alive()  # the agent goes on without it
        agent.request_reload()
        wait_for(lambda: agent.snapshot.stats.source_up.get("broken") is True, what="source back up")
        os.write(source.w, b"x")
        wait_for(lambda: agent.snapshot.stats.events.get("broken") == 1, what="its events counted again")
    finally:
        agent.request_stop()
        thread.join(5)
        agent.close()


def test_an_immediate_resync_is_not_postponed_by_later_events(tmp_path):
    host = Host(tmp_path / "host")
    sim = SimulatedTime()
    agent = Agent(Config(root=host.path, socket=None, listen=None, coalesce_delay=5.0), sources=[], clock=sim.clock)
    try:
        agent.handle("kmsg", Batch((), lost=1))  # lost events: evaluate now
        agent.handle("udev", Batch((Event(time.time(), "udev", "add", "m"),)))
        assert agent.schedule.deadline == IMMEDIATE
    finally:
        agent.close()


def test_metrics_are_rendered_once_per_evaluation_and_a_scrape_copies_them(tmp_path, monkeypatch):
    from klpd.outputs import metrics

    calls = []
    real = metrics.build_families
    monkeypatch.setattr(metrics, "build_families", lambda *a: calls.append(1) or real(*a))
    host = Host(tmp_path / "host")
    agent = Agent(Config(root=host.path, socket=None, listen=None), sources=[],
                  notifier=Notifier(send=lambda s: None, environ={}))  # fmt: skip
    try:
        calls.clear()  # the Agent renders the before-the-first-evaluation text once, at start
        agent.evaluate_now()
        scrapes = [agent.exposition.scrape() for _ in range(3)]
        assert len(calls) == 1  # rendered when the snapshot was published; the scrapes only copied it
        assert all(s.startswith(agent.snapshot.metrics_text) for s in scrapes)
        assert b"klpd_evaluations_total 1.0" in scrapes[0]
        agent.evaluate_now()
        assert b"klpd_evaluations_total 2.0" in agent.exposition.scrape()
        assert len(calls) == 2
    finally:
        agent.close()


def test_status_line_counts_a_refused_module_load_as_a_problem():
    import json

    from klpd.daemon.snapshot import summarize
    from klpd.outputs.json import status_from_document

    golden = Path(__file__).parent / "golden" / "status"
    refused = status_from_document(json.loads((golden / "refused.json").read_text()))
    assert summarize(refused) == "1 patches (1 enabled), 1 with problems"  # klpctl exits 1 on this host
    loaded = status_from_document(json.loads((golden / "loaded.json").read_text()))
    assert summarize(loaded) == "1 patches (1 enabled)"


def test_a_failed_evaluation_is_published(tmp_path):
    """/proc/kallsyms unreadable: systemd still gets READY, and the API and metrics say what failed instead of
    503 'starting' for ever (first evaluation) or a stale 'ok' (later ones)."""
    import json

    from klpd.errors import SourceError

    host = Host(tmp_path / "host")
    failing = {"now": True}

    class Flaky(Evaluator):
        def evaluate(self, files=None):
            if failing["now"]:
                raise SourceError("/proc/kallsyms", "cannot read: Permission denied")
            return super().evaluate(files)

    notes: list[str] = []
    config = Config(root=host.path, socket=None, listen=None)
    agent = Agent(config, sources=[], evaluator_factory=Flaky, notifier=Notifier(send=notes.append, environ={}))
    try:
        agent.evaluate_now()
        snap = agent.snapshot
        assert snap is not None
        health = json.loads(snap.health_json)
        assert health["status"] == "error" and "Permission denied" in health["summary"]
        assert health["sources"]["kallsyms"] is False
        doc = json.loads(snap.status_json)
        assert [p["code"] for p in doc["problems"]] == ["evaluation_failed"]
        assert any(n.startswith("READY=1") for n in notes)
        failing["now"] = False
        agent.evaluate_now()
        assert json.loads(agent.snapshot.health_json)["status"] == "ok"
        good = json.loads(agent.snapshot.status_json)
        failing["now"] = True
        agent.evaluate_now()
        stale = json.loads(agent.snapshot.status_json)
        assert stale["patches"] == good["patches"]  # the last good answer, flagged
        assert [p["code"] for p in stale["problems"]][-1] == "evaluation_failed"
        assert json.loads(agent.snapshot.health_json)["status"] == "error"
    finally:
        agent.close()


def test_a_textfile_directory_that_cannot_be_written_shows_as_a_source_down(tmp_path):
    """A full or read-only textfile directory was only a log line: node_exporter kept serving the last file and
    nobody saw it. Now klpd_source_up{source="textfile"} says so from the next snapshot on."""
    host = Host(tmp_path / "host")
    textfiles = tmp_path / "textfiles"
    textfiles.mkdir()
    config = Config(root=host.path, socket=None, listen=None, textfile_dir=textfiles)
    agent = Agent(config, sources=[], notifier=Notifier(send=lambda s: None))
    try:
        agent.evaluate_now()
        agent.evaluate_now()
        assert agent.snapshot is not None and agent.snapshot.stats.source_up["textfile"] is True
        assert b'klpd_source_up{source="textfile"} 1.0' in agent.snapshot.metrics_text
        shutil.rmtree(textfiles)  # replaced by a plain file: every write fails
        textfiles.write_text("not a directory")
        agent.evaluate_now()
        agent.evaluate_now()
        assert agent.snapshot.stats.source_up["textfile"] is False
        assert b'klpd_source_up{source="textfile"} 0.0' in agent.snapshot.metrics_text
    finally:
        agent.close()


def _ask_health(socket_path: Path) -> tuple[int, dict]:
    import json
    import socket as socketlib

    with socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(socket_path))
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: klpd\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_health_says_wedged_while_one_turn_of_the_loop_lasts_too_long(tmp_path):
    """/v1/health kept serving the last snapshot's "ok" while the loop was stuck. The loop runs in simulated time:
    its second evaluation 'lasts' 29 s, then 31 s, and the API thread answers a real client at each point."""
    host = Host(tmp_path / "host")
    sim = SimulatedTime()
    seen: list[tuple[int, dict]] = []
    sock_path = tmp_path / "run" / "klpd.sock"
    calls = {"n": 0}

    class Slow(Evaluator):
        def evaluate(self, files=None):
            calls["n"] += 1
            if calls["n"] == 2:  # the first one finished: its snapshot says "ok"
                sim.now += 29.0
                seen.append(_ask_health(sock_path))
                sim.now += 2.0
                seen.append(_ask_health(sock_path))
            return super().evaluate(files)

    config = Config(root=host.path, socket=sock_path, listen=None, resync_interval=10.0)
    agent = Agent(config, sources=[], evaluator_factory=Slow, clock=sim.clock, selector=sim.selector(),
                  notifier=Notifier(send=lambda _n: None, environ={}))  # fmt: skip
    agent.start_servers()
    sim.at(5.0, lambda: seen.append(_ask_health(sock_path)))  # the loop waits for its next resync
    sim.at(45.0, lambda: seen.append(_ask_health(sock_path)))  # the slow one (10 s to 41 s) is over
    sim.at(46.0, agent.request_stop)
    try:
        agent.run()
    finally:
        agent.close()
    (c5, waiting), (c29, slow), (c31, wedged), (c45, after) = seen
    assert (c5, waiting["status"], c29, slow["status"]) == (200, "ok", 200, "ok")
    assert c31 == 503 and wedged["status"] == "wedged" and wedged["busy_seconds"] == 31.0
    assert "busy for 31 s" in wedged["summary"] and wedged["evaluations"] == 1  # the last snapshot's facts
    assert (c45, after["status"], after["evaluations"]) == (200, "ok", 2)


def test_a_first_evaluation_that_never_ends_is_wedged_not_starting(tmp_path):
    """Before any snapshot, a stuck start said "starting" for ever; after 30 s it is "wedged", and says why. The
    loop itself runs (simulated time), so this fails if run() does not count its start as busy."""
    host = Host(tmp_path / "host")
    sim = SimulatedTime()
    sock_path = tmp_path / "run" / "klpd.sock"
    seen: list[tuple[int, dict]] = []

    class Stuck(Evaluator):
        def evaluate(self, files=None):
            if not seen:
                sim.now += 12.0
                seen.append(_ask_health(sock_path))
                sim.now += 83.0
                seen.append(_ask_health(sock_path))
            return super().evaluate(files)

    config = Config(root=host.path, socket=sock_path, listen=None)
    agent = Agent(config, sources=[], evaluator_factory=Stuck, clock=sim.clock, selector=sim.selector(),
                  notifier=Notifier(send=lambda _n: None, environ={}))  # fmt: skip
    agent.start_servers()
    sim.at(100.0, agent.request_stop)
    try:
        agent.run()
    finally:
        agent.close()
    (c12, starting), (c95, wedged) = seen
    assert (c12, starting) == (503, {"error": "klpd is starting: no evaluation yet"})
    assert c95 == 503 and wedged["status"] == "wedged" and wedged["busy_seconds"] == 95.0
    assert "no evaluation has finished yet" in wedged["summary"]
