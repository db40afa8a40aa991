"""``klpd`` as a process: --once, the socket API through ``klpctl status``, SIGHUP, SIGTERM, sd_notify, and the
errors a user meets when starting it wrong."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.daemon_scenario import BOOT_ID, HOSTNAME, MACHINE_ID, PATCH, TARGET, Host

VENV_BIN = Path(sys.executable).parent
KLPD = [sys.executable, "-m", "klpd.daemon.main"]
KLPCTL = [sys.executable, "-m", "klpd.cli"]
REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def klpctl(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from klpd.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], check=False, capture_output=True, text=True, env=ENV,
                          timeout=60)  # fmt: skip


def wait_logged(proc: subprocess.Popen, stderr_path: Path, pattern: str, timeout: float = 20.0) -> re.Match[str]:
    """Until ``pattern`` is in the process's stderr file; an AssertionError with the log if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, stderr_path.read_text())
        if m:
            return m
        if proc.poll() is not None:
            raise AssertionError(f"klpd exited ({proc.returncode}):\n{stderr_path.read_text()}")
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} not logged:\n{stderr_path.read_text()}")


def unix_get(path: Path, target: str) -> bytes:
    """The body of GET ``target`` on the daemon's Unix socket, as curl --unix-socket asks."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(f"GET {target} HTTP/1.0\r\nHost: klpd\r\n\r\n".encode())
        reply = b"".join(iter(lambda: s.recv(65536), b""))
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0], head
    return body


class Daemon:
    def __init__(self, tmp_path: Path, extra_env: dict[str, str] | None = None):
        self.host = Host(tmp_path / "host")
        self.socket = tmp_path / "run" / "klpd.sock"
        self.config = tmp_path / "klpd.toml"
        self.write_config(resync_interval=300)
        self.stderr_path = tmp_path / "stderr"
        self.stderr = open(self.stderr_path, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*KLPD, "--config", str(self.config), "--root", str(self.host.path), "--socket", str(self.socket),
             "--listen", "127.0.0.1:0", "--log-level", "debug"],
            stdout=subprocess.DEVNULL, stderr=self.stderr, env={**ENV, **(extra_env or {})},
        )  # fmt: skip
        self.wait_log(r"ready: ")
        self.port = int(re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", self.log()).group(1))

    def write_config(self, **settings):
        self.config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))

    def log(self) -> str:
        return self.stderr_path.read_text()

    def wait_log(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        return wait_logged(self.proc, self.stderr_path, pattern, timeout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


@pytest.fixture(autouse=True)
def _klpd_logger_restored():
    """main() in-process points the "klpd" logger at stderr and stops it propagating; later tests' caplog (on the
    root logger, as pytest 7 has it) must still see klpd's records."""
    logger = logging.getLogger("klpd")
    saved = (logger.handlers[:], logger.propagate, logger.level)
    yield
    logger.handlers[:], logger.propagate, logger.level = saved[0], saved[1], saved[2]


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path)
    yield d
    d.stop()


def test_once_prints_the_status_and_exits(tmp_path):
    host = Host(tmp_path / "host")
    (tmp_path / "empty.toml").write_text("")
    result = subprocess.run([*KLPD, "--once", "--root", str(host.path), "--config", str(tmp_path / "empty.toml")],
                            check=False,
                            capture_output=True, text=True, env=ENV, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert PATCH in result.stdout and "klpd_target(pending, load ok)" in result.stdout


def test_once_with_a_textfile_dir_writes_the_metrics_there_and_says_so(tmp_path):
    """What systemd/klpd-textfile.service runs on node_exporter hosts: one evaluation, klpd.prom replaced whole."""
    host = Host(tmp_path / "host")
    (tmp_path / "empty.toml").write_text("")
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    run = [*KLPD, "--once", "--root", str(host.path), "--config", str(tmp_path / "empty.toml")]
    result = subprocess.run([*run, "--textfile", str(textfiles)], check=False, capture_output=True, text=True,
                            env=ENV, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"metrics written to {textfiles / 'klpd.prom'}" in result.stderr
    assert [p.name for p in textfiles.iterdir()] == ["klpd.prom"]  # no temporary file left behind
    prom = (textfiles / "klpd.prom").read_text()
    assert f'klpd_patch_state{{patch="{PATCH}",state="not_loaded"}} 1.0' in prom
    assert "klpd_evaluations_total 1.0" in prom
    assert (textfiles / "klpd.prom").stat().st_mode & 0o777 == 0o644  # node_exporter runs as another user

    missing = subprocess.run([*run, "--textfile", str(tmp_path / "nowhere")], check=False, capture_output=True,
                             text=True, env=ENV, timeout=60)  # fmt: skip
    assert missing.returncode == 1
    assert f"--textfile {tmp_path / 'nowhere'}: cannot write the node_exporter textfile there" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_klpctl_status_asks_the_running_daemon(daemon):
    result = klpctl("status", "--socket", str(daemon.socket), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["source"] == "daemon" and doc["daemon"]["pid"] == daemon.proc.pid
    assert [p["name"] for p in doc["patches"]] == [PATCH]
    identity = {"hostname": HOSTNAME, "machine_id": MACHINE_ID, "boot_id": BOOT_ID}  # from --root's files
    assert {k: doc["host"][k] for k in identity} == identity
    health = json.loads(unix_get(daemon.socket, "/v1/health"))
    assert {k: health[k] for k in identity} == identity
    text = klpctl("status", "--socket", str(daemon.socket))
    assert PATCH in text.stdout and "daemon:" in text.stdout
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}/metrics", timeout=5) as r:
        body = r.read().decode()
    assert f'klpd_patch_state{{patch="{PATCH}",state="not_loaded"}} 1.0' in body
    assert 'klpd_source_up{source="kmsg"} 1.0' in body


def test_klpctl_falls_back_when_no_daemon_answers(tmp_path):
    host = Host(tmp_path / "host")
    result = klpctl("status", "--socket", str(tmp_path / "nobody.sock"), "--root", str(host.path), "--json")
    assert "no klpd daemon answers" in result.stderr
    assert json.loads(result.stdout)["source"] == "direct"


def test_sighup_with_a_bad_config_keeps_running_then_a_good_one_applies(daemon):
    daemon.config.write_text("resync_interval = -1\n")
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_log(r"configuration not reloaded, keeping the running one: .*klpd\.toml: resync_interval")
    assert daemon.proc.poll() is None
    assert klpctl("status", "--socket", str(daemon.socket), "--json").returncode == 0
    # A good file is applied, and the reload re-evaluates at once: the module loaded meanwhile shows.
    daemon.host.load_target()
    daemon.write_config(resync_interval=600)
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_log(r"configuration reloaded from")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        doc = json.loads(klpctl("status", "--socket", str(daemon.socket), "--json").stdout)
        objects = {o["name"]: o for o in doc["patches"][0]["objects"]}
        if objects[TARGET]["loaded"]:
            break
        time.sleep(0.1)
    assert objects[TARGET]["loaded"] is True


def test_sigterm_exits_cleanly_and_removes_the_socket(daemon):
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=10) == 0
    assert not daemon.socket.exists()
    assert "Traceback" not in daemon.log()


def test_sd_notify_ready_and_status(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(20)
    d = Daemon(tmp_path, extra_env={"NOTIFY_SOCKET": str(path)})
    try:
        message = sock.recv(4096).decode()
        assert message.startswith("READY=1\nSTATUS=1 patches (1 not loaded)")
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(timeout=10) == 0
        rest = []
        sock.settimeout(1)
        try:
            while True:
                rest.append(sock.recv(4096).decode())
        except TimeoutError:
            pass
        assert "STOPPING=1" in rest
    finally:
        d.stop()
        sock.close()


def test_bad_config_at_start_names_file_and_key(tmp_path):
    config = tmp_path / "klpd.toml"
    config.write_text('listen = "localhost"\n')
    result = subprocess.run([*KLPD, "--config", str(config)], check=False, capture_output=True, text=True, env=ENV,
                            timeout=60)  # fmt: skip
    assert result.returncode == 2
    assert f"{config}: listen:" in result.stderr and "Traceback" not in result.stderr


def test_a_socket_path_that_cannot_be_created_is_a_clear_error(capsys):
    """As a user without write access to /run meets it; /sys refuses mkdir (EPERM) even to root."""
    from klpd.daemon.main import main

    assert main(["--root", "/", "--socket", "/sys/klpd-test/klpd.sock", "--listen", ""]) == 1
    err = capsys.readouterr().err
    assert "cannot create the directory of the API socket /sys/klpd-test: Operation not permitted" in err
    assert "--socket PATH" in err and "Traceback" not in err


def test_a_port_in_use_is_a_clear_error(capsys, tmp_path):
    from klpd.daemon.main import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["--root", "/", "--socket", str(tmp_path / "s.sock"), "--listen", f"127.0.0.1:{port}"])
    assert code == 1
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port} for /metrics: Address already in use" in err
    assert not (tmp_path / "s.sock").exists()  # the API socket opened first was closed again


def test_real_metrics_output_passes_promtool(daemon):
    """`promtool check metrics` on what the running daemon serves, not on a hand-built snapshot."""
    from tests.test_metrics import promtool_check

    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}/metrics", timeout=5) as r:
        body = r.read()
    assert b"klpd_build_info" in body and b"klpd_patch_will_load" in body
    result = promtool_check(body)
    assert result.returncode == 0, result.stdout + result.stderr


def test_api_socket_in_a_directory_it_cannot_search_is_a_setup_error(tmp_path, monkeypatch):
    """lstat() of the old socket fails with EACCES (a non-root daemon, simulated): the clear SetupError that
    names the socket and the way out, not a PermissionError traceback (at start, or on SIGHUP)."""
    from klpd.daemon.api import ApiServer
    from klpd.errors import SetupError

    path = tmp_path / "run" / "klpd.sock"
    real_lstat = Path.lstat

    def lstat(self, *args, **kwargs):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_lstat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "lstat", lstat)
    with pytest.raises(SetupError, match=r"cannot create the API socket .*klpd\.sock: Permission denied.*--socket"):
        ApiServer(path, 0o660, lambda: None).start()


# A daemon whose start is held at a point and signalled there: the signal arrives "in the first 0.6 s" by
# construction, not by a race with a sleep.
_SIGNALLED_START = """
import os, signal, sys
from klpd.daemon import loop, main
when, signum = sys.argv[1], getattr(signal, sys.argv[2])
real_load, real_start = main.load, loop.Agent.start_servers
def load(args):
    if when == "load":
        os.kill(os.getpid(), signum)  # before the agent exists
    return real_load(args)
def start_servers(self):
    if when == "servers":
        os.kill(os.getpid(), signum)  # the agent exists, nothing is served yet
    real_start(self)
main.load, loop.Agent.start_servers = load, start_servers
sys.exit(main.main(sys.argv[3:]))
"""


@pytest.mark.parametrize("when", ["load", "servers"])
def test_a_sighup_while_starting_is_a_reload_once_started(tmp_path, when):
    host = Host(tmp_path / "host")
    config = tmp_path / "klpd.toml"
    config.write_text("resync_interval = 300\n")
    args = ["--config", str(config), "--root", str(host.path), "--socket", str(tmp_path / "s.sock"),
            "--listen", "", "--log-level", "debug"]  # fmt: skip
    with (tmp_path / "stderr").open("w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", _SIGNALLED_START, when, "SIGHUP", *args],
                                stdout=subprocess.DEVNULL, stderr=err, env=ENV)  # fmt: skip
        try:
            wait_logged(proc, tmp_path / "stderr", "configuration reloaded", timeout=30)
            log = (tmp_path / "stderr").read_text()
            assert log.index("ready: ") < log.index("configuration reloaded")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("when", ["load", "servers"])
def test_a_sigterm_while_starting_stops_cleanly(tmp_path, when):
    host = Host(tmp_path / "host")
    (tmp_path / "klpd.toml").write_text("")
    result = subprocess.run(
        [sys.executable, "-c", _SIGNALLED_START, when, "SIGTERM", "--config", str(tmp_path / "klpd.toml"),
         "--root", str(host.path),
         "--socket", str(tmp_path / "s.sock"), "--listen", ""],
        check=False, capture_output=True, text=True, env=ENV, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "ready: " not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "s.sock").exists()


# A daemon whose evaluation never returns (stuck in Python, as a bug or an unbounded read would be), with the stop
# deadline shortened so the test does not wait 10 s: the deadline's logic, not its length, is under test.
_STUCK_EVALUATION = """
import sys, time
from klpd.collect import Evaluator
from klpd.daemon import main
main.STOP_DEADLINE = 0.5
def evaluate(self, files=None):
    print("evaluating", file=sys.stderr, flush=True)
    while True:
        time.sleep(1)
Evaluator.evaluate = evaluate
sys.exit(main.main(sys.argv[1:]))
"""


def test_a_sigterm_ends_a_daemon_whose_evaluation_is_stuck(tmp_path):
    """SIGTERM used to wait for the evaluation to return: for ever, if it did not. Past the stop deadline klpd
    exits (1), says why, and leaves nothing behind that would stop the next start."""
    host = Host(tmp_path / "host")
    sock = tmp_path / "s.sock"
    args = ["--config", "/dev/null", "--root", str(host.path), "--socket", str(sock), "--listen", ""]
    with (tmp_path / "stderr").open("w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", _STUCK_EVALUATION, *args], stdout=subprocess.DEVNULL,
                                stderr=err, env=ENV)  # fmt: skip
        try:
            wait_logged(proc, tmp_path / "stderr", "evaluating", timeout=60)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 1
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    log = (tmp_path / "stderr").read_text()
    assert "after SIGTERM/SIGINT (stuck in a turn of the loop, or in closing); exiting now without cleanup" in log, log
    assert "Traceback" not in log
    from klpd.daemon.api import ApiServer

    again = ApiServer(sock, 0o660, lambda: None)  # the stale socket does not block the next start
    again.start()
    again.close()


def test_the_stop_deadline_is_armed_once_by_the_first_stop_signal_and_disarmed_after():
    import threading

    from klpd.daemon.main import STOP_DEADLINE, Signals

    fired: list[str] = []
    armed: list[threading.Timer] = []

    def arm(seconds: float, action) -> threading.Timer:
        timer = threading.Timer(seconds, action)
        armed.append(timer)
        return timer  # never started: this test does not wait

    before = signal.getsignal(signal.SIGTERM)
    signals = Signals(arm=arm, exit_now=lambda: fired.append("exit"))
    signals.install()
    try:
        assert signal.getsignal(signal.SIGTERM) != before
        signals._handle(signal.SIGHUP, None)
        assert armed == [] and signals.reload
        signals._handle(signal.SIGTERM, None)
        signals._handle(signal.SIGINT, None)
        assert [t.interval for t in armed] == [STOP_DEADLINE] == [20.0] and signals.stop
    finally:
        signals.restore()
    assert armed[0].finished.is_set()  # cancelled: a clean return from main() is never turned into exit 1
    assert signal.getsignal(signal.SIGTERM) == before  # main() called in-process leaves the caller's handlers
    armed[0].run()  # what the thread would do once started: a cancelled timer does not act
    assert fired == []


def test_a_stop_is_recorded_even_when_its_deadline_cannot_be_armed():
    from klpd.daemon.main import Signals

    def arm(_seconds, _action):
        raise RuntimeError("can't start new thread")

    signals = Signals(arm=arm, exit_now=lambda: None)
    signals._handle(signal.SIGTERM, None)
    assert signals.stop


def test_a_kmsg_that_cannot_be_polled_is_a_source_down_not_a_crash(tmp_path):
    """A character device epoll refuses (EPERM), here /dev/null linked in as the fixture's dev/kmsg."""
    from klpd.config import Config, KernelLogSource, UeventSource
    from klpd.daemon.event_sources import open_sources
    from klpd.daemon.kernel_log import KmsgSource
    from klpd.errors import SourceError

    host = Host(tmp_path / "host")
    kmsg = host.path / "dev" / "kmsg"
    kmsg.unlink(missing_ok=True)
    kmsg.parent.mkdir(exist_ok=True)
    kmsg.symlink_to("/dev/null")
    with pytest.raises(SourceError, match="cannot be polled"):
        KmsgSource(kmsg)
    config = Config(root=host.path, kernel_log=KernelLogSource.KMSG, uevent_source=UeventSource.NONE)
    sources, health = open_sources(config, config.system_root())
    try:
        assert health["kmsg"] is False and health["inotify"] is True
    finally:
        for source in sources:
            source.close()
