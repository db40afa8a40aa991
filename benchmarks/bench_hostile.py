"""Scrape latency while 1,000 slow clients hold connections to /metrics (issue 15, item 8), against none.

The server is the daemon's own MetricsServer, in this process as in klpd. The slow clients are another process: half
connect and stay idle, half drip one byte of a request every 0.1 s; whichever the server closes (to make room, or
at the request deadline) reconnects at once, so 1,000 are trying all the time. The scraper is a third process, as
Prometheus is: 300 scrapes one after the other, each with a 5 s timeout. Loopback only; about a minute at most.

Run: ``.venv/bin/python benchmarks/bench_hostile.py``
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from klpd.config import ListenAddress  # noqa: E402
from klpd.daemon.api import MetricsServer  # noqa: E402
from klpd.outputs.exposition import Exposition  # noqa: E402

SLOW_CLIENTS = 1000
SCRAPES = 300

_SLOW = """
import resource, selectors, socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 100)), hard))
request = b"GET /metrics HTTP/1.1\\r\\nHost: x\\r\\nX-Slow: " + b"a" * 100000
sel = selectors.DefaultSelector()
state = {}  # socket -> bytes sent so far (None: idle)

def connect(i):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex(("127.0.0.1", port))
    state[s] = 0 if i % 2 else None
    sel.register(s, selectors.EVENT_READ, i)

for i in range(n):
    connect(i)
print("connected", flush=True)
end = time.monotonic() + float(sys.argv[3])
next_drip = time.monotonic()
while time.monotonic() < end:
    for key, _ in sel.select(0.02):
        s = key.fileobj
        try:
            s.recv(4096)
        except BlockingIOError:
            continue
        except OSError:
            pass
        # Whatever the server said (a 408) or did (closed), come back at once.
        sel.unregister(s)
        del state[s]
        s.close()
        connect(key.data)
    if time.monotonic() >= next_drip:
        next_drip += 0.1
        for s, sent in list(state.items()):
            if sent is not None:
                try:
                    state[s] = sent + s.send(request[sent : sent + 1])
                except OSError:
                    pass
"""

_SCRAPER = """
import sys, time, urllib.request
times, failures = [], 0
for _ in range(int(sys.argv[2])):
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
            r.read()
    except OSError:
        failures += 1
        continue
    times.append(time.perf_counter() - t0)
print(failures, *times)
"""


def scrape(url: str) -> tuple[list[float], int]:
    out = subprocess.run([sys.executable, "-c", _SCRAPER, url, str(SCRAPES)], check=True, capture_output=True,
                         text=True, timeout=SCRAPES * 5 + 30).stdout.split()  # fmt: skip
    return sorted(float(t) for t in out[1:]), int(out[0])


def summary(name: str, times: list[float], failures: int) -> tuple[float, float]:
    p50 = statistics.median(times)
    p99 = times[max(int(len(times) * 0.99) - 1, 0)]
    print(f"{name:<44} p50 {p50 * 1000:7.2f} ms  p99 {p99 * 1000:7.2f} ms  failed {failures}/{SCRAPES}")
    return p50, p99


def main() -> None:
    text = b"# TYPE klpd_up gauge\nklpd_up 1.0\n" + b"klpd_filler 1.0\n" * 2000  # about the size of 50 patches
    server = MetricsServer(ListenAddress("127.0.0.1", 0), Exposition(lambda: text))
    server.start()
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        base = summary("scrape, no other client", *scrape(url))
        slow = subprocess.Popen([sys.executable, "-c", _SLOW, str(server.port), str(SLOW_CLIENTS), "40"],
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert slow.stdout is not None
        slow.stdout.readline()
        time.sleep(1.0)  # let the slow clients fill the server's connections
        try:
            loaded = summary(f"scrape, {SLOW_CLIENTS} slow clients (idle / drip)", *scrape(url))
            http = server.http
            assert http is not None
            print(f"{'  server connections open at the end':<44} {http.open_connections} (cap {http.max_connections})")
        finally:
            slow.terminate()
            slow.wait(10)
        print(f"{'ratio loaded / none':<44} p50 {loaded[0] / base[0]:7.2f} x   p99 {loaded[1] / base[1]:7.2f} x")
    finally:
        server.close()


if __name__ == "__main__":
    main()
