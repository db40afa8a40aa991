"""``klpctl`` as a user runs it, whole process, against ``cat /proc/kallsyms >/dev/null`` timed in the same run:

1. ``klpctl check`` of a one-object patch (vmlinux, one symbol) on this host: goal <= 2.5x cat;
2. ``klpctl status`` answered by a running ``klpd`` (temporary socket, metrics on 127.0.0.1, an unused port): goal
   <= 1.5x cat.

The console script (``.venv/bin/klpctl``) is measured, not ``python -m``: it is what users run. Rounds interleave
the commands so a burst of load from the rest of the machine hits all of them alike; figures are medians. The
interpreter's own start-up and, from one ``-X importtime`` run of each command, its heaviest top-level imports are
printed too: together they say where the time goes.

    .venv/bin/python benchmarks/bench_cli.py [--repeat N] [--root DIR]

``--root`` points both commands and the daemon at a fixture tree instead of this host; ``cat`` then reads that
tree's ``proc/kallsyms``.
"""

from __future__ import annotations

import argparse
import compileall
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from elfwriter import R_X86_64_PC32, KlpModule  # noqa: E402

BIN = Path(sys.executable).parent
KLPCTL = str(BIN / "klpctl")
CHECK_GOAL = 2.5
STATUS_GOAL = 1.5


def pick_symbol(kallsyms: Path) -> str:
    """A vmlinux function that occurs once, so the check resolves it as the kernel would (status ok)."""
    counts: dict[str, int] = {}
    with kallsyms.open(encoding="utf-8", errors="surrogateescape") as stream:
        for line in stream:
            fields = line.split()
            if len(fields) == 3 and fields[1] in "tT":
                counts[fields[2]] = counts.get(fields[2], 0) + 1
    for name in ("schedule", "vfs_read", "do_sys_open", "printk"):
        if counts.get(name) == 1:
            return name
    return next(name for name, n in counts.items() if n == 1)


def one_object_patch(symbol: str, release: str) -> bytes:
    m = KlpModule("livepatch_bench_cli", vermagic=f"{release} SMP")
    text = m.function("bench_fn")
    m.klp_rela("vmlinux", text, [(0, m.klp_sym("vmlinux", symbol, 0), R_X86_64_PC32, -4)])
    return m.build()


def release_of(root: Path) -> str:
    try:
        return (root / "proc/sys/kernel/osrelease").read_text().strip()
    except OSError:
        return platform.release()


@contextmanager
def running_daemon(root: Path, tmp: Path) -> Iterator[Path]:
    """``klpd`` on a socket in ``tmp``, metrics on 127.0.0.1 and a port the kernel picks; yields the socket."""
    sock = tmp / "klpd.sock"
    log_path = tmp / "klpd.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "klpd.daemon.main", "--config", os.devnull, "--root", str(root),
             "--socket", str(sock), "--listen", "127.0.0.1:0"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while "ready:" not in log_path.read_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"klpd did not become ready:\n{log_path.read_text()}")
                time.sleep(0.05)
            yield sock
        finally:
            proc.terminate()
            proc.wait(10)


def run(cmd: Sequence[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def medians(repeat: int, commands: dict[str, Sequence[str]]) -> dict[str, float]:
    times: dict[str, list[float]] = {label: [] for label in commands}
    for cmd in commands.values():  # a warm-up round: page cache, .pyc files
        run(cmd)
    for _ in range(repeat):
        for label, cmd in commands.items():
            times[label].append(run(cmd))
    return {label: statistics.median(ts) for label, ts in times.items()}


def heaviest_imports(cmd: Sequence[str], top: int = 6) -> tuple[float, list[tuple[str, float]]]:
    """Total import time and the heaviest top-level imports of one run of ``cmd`` (PYTHONPROFILEIMPORTTIME)."""
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    err = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, check=False).stderr
    tops = []
    for m in re.finditer(r"^import time:\s+\d+ \|\s+(\d+) \| ( *)(\S+)$", err, re.M):
        if len(m.group(2)) <= 1:  # a module the program (or site) imported itself, not one imported by another
            tops.append((m.group(3).strip(), int(m.group(1)) / 1e6))
    total = sum(t for _, t in tops)
    return total, sorted(tops, key=lambda x: -x[1])[:top]


def line(name: str, value: float, cat: float, goal: float) -> None:
    ratio = value / cat
    verdict = "OK" if ratio <= goal else "MISS"
    print(f"  {name:<44} {value * 1000:8.1f} ms  {ratio:5.2f}x cat  goal <= {goal:g}x  {verdict}")


def report_imports(label: str, cmd: Sequence[str]) -> None:
    total, tops = heaviest_imports(cmd)
    print(f"  {label}: {total * 1000:.1f} ms of imports (one run, -X importtime); heaviest top-level:")
    for name, seconds in tops:
        print(f"      {seconds * 1000:7.1f} ms  {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=25, help="rounds; each figure is the median (default 25)")
    parser.add_argument("--root", default="/", help="the system to read (default: this host)")
    args = parser.parse_args()
    # An installed klpd is byte-compiled (Debian's python3 helpers run py3compile at install); a checkout may not
    # be (PYTHONDONTWRITEBYTECODE), and compiling every module on every run is no cost a user pays.
    compileall.compile_dir(REPO / "klpd", quiet=1)
    root = Path(args.root).absolute()
    kallsyms = root / "proc/kallsyms"
    with tempfile.TemporaryDirectory(prefix="bench_cli.") as tmp_name:
        tmp = Path(tmp_name)
        symbol = pick_symbol(kallsyms)
        patch = tmp / "livepatch_bench_cli.ko"
        patch.write_bytes(one_object_patch(symbol, release_of(root)))
        cat = ["cat", str(kallsyms)]
        check = [KLPCTL, "check", "--root", str(root), str(patch)]
        with running_daemon(root, tmp) as sock:
            status = [KLPCTL, "status", "--root", str(root), "--socket", str(sock)]
            probe = subprocess.run(status, capture_output=True, text=True, check=False)
            if "no klpd daemon answers" in probe.stderr:
                raise SystemExit(f"klpctl status did not reach the daemon: {probe.stderr}")
            t = medians(args.repeat, {
                "cat": cat, "check": check, "status": status,
                "python": [sys.executable, "-c", "pass"], "python -S": [sys.executable, "-S", "-c", "pass"],
            })  # fmt: skip
            with kallsyms.open("rb") as f:
                lines = sum(1 for _ in f)
            print(f"{kallsyms}: {lines} lines; one-object patch resolving vmlinux {symbol!r}; medians of "
                  f"{args.repeat} rounds; klpd byte-compiled, as an installed package is")  # fmt: skip
            print(f"  {'cat ' + str(kallsyms) + ' >/dev/null':<44} {t['cat'] * 1000:8.1f} ms")
            line("klpctl check (one object, whole process)", t["check"], t["cat"], CHECK_GOAL)
            line("klpctl status (answered by klpd)", t["status"], t["cat"], STATUS_GOAL)
            print(f"  interpreter start-up alone: python -c pass {t['python'] * 1000:.1f} ms, "
                  f"python -S -c pass {t['python -S'] * 1000:.1f} ms (site and .pth files)")  # fmt: skip
            report_imports("klpctl check", check)
            report_imports("klpctl status", status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
