"""Daemon benchmarks (issue 4, item 8), printing figures and their ratio to the goal:

1. a storm of 1,000 module add/remove events in 2 s through a fake uevent monitor, against this host (``/``):
   evaluations (goal <= 10) and time from the last event to the converged snapshot (goal <= 1 s);
2. one re-evaluation after a module event vs ``cat /proc/kallsyms >/dev/null`` (goal <= 1.25x);
3. /metrics scrape p99 with 50 patches (goal <= 5 ms);
4. the real ``klpd`` process on this host: steady-state RSS (goal <= 40 MiB) and CPU over 5 s idle (no polling).

Run: ``.venv/bin/python benchmarks/bench_daemon.py``
"""

from __future__ import annotations

import dataclasses
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from klpd.collect import Evaluation, Evaluator  # noqa: E402
from klpd.config import Config, ListenAddress  # noqa: E402
from klpd.daemon.loop import Agent  # noqa: E402
from klpd.daemon.systemd_notify import Notifier  # noqa: E402
from klpd.daemon.uevents import UeventSource  # noqa: E402
from klpd.model import HostStatus  # noqa: E402
from klpd.root import SystemRoot  # noqa: E402
from tests.daemon_scenario import FakeMonitor  # noqa: E402
from tests.metrics_fixture import basic_status  # noqa: E402


def line(name: str, value: float, unit: str, goal: float, lower_is_better: bool = True) -> None:
    ratio = value / goal if goal else float("nan")
    ok = (value <= goal) if lower_is_better else (value >= goal)
    print(f"{name:<48} {value:>10.3f} {unit:<5} goal {goal:g} {unit:<5} ratio {ratio:5.2f}  {'OK' if ok else 'MISS'}")


def bench_storm() -> None:
    monitor = FakeMonitor()
    count = [0]

    class Counting(Evaluator):
        def evaluate(self, files=None):  # type: ignore[no-untyped-def]
            count[0] += 1
            return super().evaluate(files)

    agent = Agent(Config(root=Path("/"), socket=None, listen=None), sources=[UeventSource(monitor, "udev")],
                  evaluator_factory=Counting, notifier=Notifier(send=lambda s: None, environ={}))  # fmt: skip
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    while agent.snapshot is None:
        time.sleep(0.01)
    before = count[0]
    n = 1000
    start = time.monotonic()
    for i in range(n):
        monitor.emit("add" if i % 2 == 0 else "remove", f"storm_mod_{i % 100}")
        target = start + 2.0 * (i + 1) / n
        delay = target - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    last = time.monotonic()
    while True:
        snap = agent.snapshot
        if snap is not None and snap.stats.events.get("udev", 0) == n:
            converged = time.monotonic()
            break
        time.sleep(0.001)
    evaluations = count[0] - before
    agent.request_stop()
    thread.join(10)
    agent.close()
    monitor.close()
    print(f"storm: {n} events in {last - start:.2f} s")
    line("  evaluations during the storm", evaluations, "", 10)
    line("  last event -> converged snapshot", converged - last, "s", 1.0)


def bench_reevaluation() -> None:
    evaluator = Evaluator(SystemRoot.at("/"))
    evaluator.evaluate()  # the first one parses everything
    times = []
    for _ in range(15):
        t0 = time.perf_counter()
        evaluator.evaluate()
        times.append(time.perf_counter() - t0)
    cats = []
    for _ in range(15):
        t0 = time.perf_counter()
        subprocess.run(["sh", "-c", "cat /proc/kallsyms >/dev/null"], check=True)
        cats.append(time.perf_counter() - t0)
    ev, cat = statistics.median(times), statistics.median(cats)
    with open("/proc/kallsyms", "rb") as f:
        lines = sum(1 for _ in f)
    print(f"re-evaluation (/proc/kallsyms has {lines} lines): median {ev * 1000:.1f} ms, "
          f"cat /proc/kallsyms median {cat * 1000:.1f} ms")  # fmt: skip
    line("  re-evaluation / cat /proc/kallsyms", ev / cat, "x", 1.25)


def _fifty_patches() -> HostStatus:
    base = basic_status()
    patches = []
    for i in range(50):
        template = base.patches[i % len(base.patches)]
        patches.append(dataclasses.replace(template, name=f"livepatch_bench_{i:02d}", path=f"/var/lib/kpatch/p{i}.ko"))
    return dataclasses.replace(base, patches=tuple(patches))


_SCRAPER = """
import sys, time, urllib.request
times = []
for _ in range(500):
    t0 = time.perf_counter()
    with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
        r.read()
    times.append(time.perf_counter() - t0)
print(*times)
"""


def bench_scrape() -> None:
    status = _fifty_patches()

    class Fixed:
        def __init__(self, root: object) -> None:
            pass

        def evaluate(self) -> Evaluation:
            return Evaluation(status, 0.01, {"kallsyms": True}, ())

    agent = Agent(Config(root=Path("/"), socket=None, listen=ListenAddress("127.0.0.1", 0)), sources=[],
                  evaluator_factory=Fixed, notifier=Notifier(send=lambda s: None, environ={}))  # fmt: skip
    agent.start_servers()
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    while agent.snapshot is None:
        time.sleep(0.01)
    url = f"http://127.0.0.1:{agent.servers.metrics.port}/metrics"  # type: ignore[union-attr]
    with urllib.request.urlopen(url, timeout=5) as r:
        size = len(r.read())
    # The scraper is another process, as Prometheus is: a client thread here would compete for the GIL.
    out = subprocess.run([sys.executable, "-c", _SCRAPER, url], check=True, capture_output=True, text=True).stdout
    times = [float(t) for t in out.split()]
    agent.request_stop()
    thread.join(10)
    agent.close()
    times.sort()
    p99 = times[int(len(times) * 0.99) - 1]
    print(f"scrape: 50 patches, {size} bytes, median {statistics.median(times) * 1000:.2f} ms")
    line("  scrape p99", p99 * 1000, "ms", 5.0)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_process() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sock = Path(tmp) / "klpd.sock"
        proc = subprocess.Popen(
            [sys.executable, "-m", "klpd.daemon.main", "--config", os.devnull, "--socket", str(sock),
             "--listen", "127.0.0.1:0"], cwd=REPO, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        try:
            assert proc.stderr is not None
            for text in proc.stderr:
                if "ready:" in text:
                    break
            time.sleep(2.0)
            cpu0 = _cpu_seconds(proc.pid)
            time.sleep(5.0)
            cpu = _cpu_seconds(proc.pid) - cpu0
            status = Path(f"/proc/{proc.pid}/status").read_text()
            rss_kib = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"klpd process on this host (exit status after SIGTERM: {proc.returncode})")
    line("  steady-state RSS", rss_kib / 1024, "MiB", 40)
    line("  CPU while idle for 5 s", cpu, "s", 0.05)


def main() -> None:
    bench_storm()
    bench_reevaluation()
    bench_scrape()
    bench_process()


if __name__ == "__main__":
    main()
