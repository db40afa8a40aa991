"""The systemd unit: `systemd-analyze verify` is clean, its exposure score is <= 2.0, and the hardening leaves
every file and socket the daemon needs reachable."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from fixtures import required_tool

from tests.entry_points import entry_point

SYSTEMD = Path(__file__).resolve().parent.parent / "systemd"
UNIT = SYSTEMD / "klpd.service"
SYSUSERS = SYSTEMD / "klpd.sysusers"
MAX_EXPOSURE = 2.0




def tool(name: str) -> str:
    return required_tool(name, "systemd")


def settings() -> dict[str, list[str]]:
    """[Service]/[Unit] key -> values in order (a key may repeat, e.g. SystemCallFilter=)."""
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def one(key: str) -> str | None:
    values = settings().get(key)
    return values[-1] if values else None


@pytest.fixture
def installable_unit(tmp_path) -> Path:
    # verify checks that ExecStart names an executable; /usr/bin/klpd exists only once the package is installed,
    # so check a copy whose ExecStart is this checkout's klpd (the entry point pip installed into the venv).
    klpd = entry_point("klpd")
    text = UNIT.read_text()
    assert "ExecStart=/usr/bin/klpd " in text
    path = tmp_path / UNIT.name
    path.write_text(text.replace("ExecStart=/usr/bin/klpd ", f"ExecStart={klpd} "))
    return path


def test_systemd_analyze_verify_is_clean(installable_unit):
    result = subprocess.run(
        [tool("systemd-analyze"), "verify", str(installable_unit)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    # Warnings about other units of this machine are not ours; any line naming klpd.service is.
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "klpd" in line]
    assert ours == []


def test_exposure_score_at_most_2(installable_unit):
    result = subprocess.run(
        [tool("systemd-analyze"), "security", "--offline=yes", "--no-pager", str(installable_unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for klpd\.service: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_runs_as_notify_service_with_watchdog_and_reload():
    assert one("Type") == "notify"
    assert one("ExecStart") == "/usr/bin/klpd --config /etc/klpd/klpd.toml"
    # Only what every Debian install has (dash is Essential); procps's /bin/kill is not on a fresh one.
    assert one("ExecReload") == "/bin/sh -c 'kill -HUP $$MAINPID'"
    assert re.fullmatch(r"\d+s?", one("WatchdogSec") or "")
    assert one("RuntimeDirectory") == "klpd"  # /run/klpd/klpd.sock, the default API socket


def test_least_privilege_keeps_every_source_reachable():
    # Not root; one capability, for /proc/<pid>/task/<tid>/patch_state (mode 0400) and the journal files.
    assert one("User") == "klpd"
    assert one("CapabilityBoundingSet") == "CAP_DAC_READ_SEARCH"
    assert one("AmbientCapabilities") == "CAP_DAC_READ_SEARCH"
    assert one("NoNewPrivileges") == "yes"
    # Settings that look like hardening but would blind the daemon:
    assert one("ProtectKernelTunables") in (None, "no")  # makes /proc/kallsyms inaccessible
    assert one("ProtectKernelModules") in (None, "no")  # makes /usr/lib/modules inaccessible
    assert one("ProcSubset") in (None, "all")  # "pid" hides /proc/kallsyms, /proc/modules, /proc/sys
    assert one("ProtectProc") in (None, "default")  # hidepid hides the tasks that block a transition
    assert one("PrivateUsers") in (None, "no")  # capabilities would not reach host-owned /proc files
    assert one("PrivateNetwork") in (None, "no")  # uevents and udev's netlink multicast are in the host netns
    families = set((one("RestrictAddressFamilies") or "").split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    # What it reads must not be hidden by the path settings.
    hidden = " ".join(settings().get("InaccessiblePaths", []))
    for needed in (
        "/proc",
        "/sys",
        "/lib/modules",
        "/usr/lib/modules",
        "/var/lib/kpatch",
        "/usr/lib/kpatch",
        "/run/log/journal",
        "/var/log/journal",
        "/etc/klpd",
    ):
        assert not re.search(rf"(^|\s)-?{re.escape(needed)}(/|\s|$)", hidden), needed
    # The kernel log comes from the journal; /dev/kmsg and CAP_SYSLOG stay out (see the unit's header).
    assert one("ProtectKernelLogs") == "yes"
    # Nothing loads modules: the system call filter excludes @module.
    assert any("@module" in value for value in settings()["SystemCallFilter"] if value.startswith("~"))


def test_sysusers_creates_the_service_user(tmp_path):
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        [tool("systemd-sysusers"), f"--root={tmp_path}", str(SYSUSERS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    passwd = (tmp_path / "etc/passwd").read_text()
    entry = next(line for line in passwd.splitlines() if line.startswith("klpd:"))
    assert entry.endswith(":/usr/sbin/nologin")
    assert re.search(r"^klpd:", (tmp_path / "etc/group").read_text(), re.MULTILINE)


TEXTFILE_SERVICE = SYSTEMD / "klpd-textfile.service"
TEXTFILE_TIMER = SYSTEMD / "klpd-textfile.timer"


def test_textfile_service_and_timer_verify(tmp_path):
    """The node_exporter mode's units: systemd-analyze verify is clean for the pair (the timer names its service)."""
    klpd = entry_point("klpd")
    text = TEXTFILE_SERVICE.read_text()
    assert "ExecStart=/usr/bin/klpd " in text
    (tmp_path / TEXTFILE_SERVICE.name).write_text(text.replace("ExecStart=/usr/bin/klpd ", f"ExecStart={klpd} "))
    shutil.copy(TEXTFILE_TIMER, tmp_path / TEXTFILE_TIMER.name)
    units = [str(tmp_path / TEXTFILE_TIMER.name), str(tmp_path / TEXTFILE_SERVICE.name)]
    result = subprocess.run([tool("systemd-analyze"), "verify", *units], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert [line for line in (result.stdout + result.stderr).splitlines() if "klpd" in line] == []


def test_textfile_service_writes_where_it_may_and_its_answers_do_not_fail_it():
    values: dict[str, list[str]] = {}
    for line in TEXTFILE_SERVICE.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    [exec_start] = values["ExecStart"]
    directory = re.search(r"--textfile (\S+)", exec_start)
    assert "--once" in exec_start.split() and directory
    # The one writable path is the directory klpd writes to: a drop-in changing one must change the other.
    assert values["ReadWritePaths"] == [f"-{directory.group(1)}"] and values["ProtectSystem"] == ["strict"]
    assert values["Type"] == ["oneshot"] and values["User"] == ["klpd"]
    # --once exits 1 (problems) or 3 (undetermined) with the answer in klpd.prom: a run, not a unit failure.
    assert set(values["SuccessExitStatus"][0].split()) == {"1", "3"}
    assert values["PrivateNetwork"] == ["yes"]
    timer = TEXTFILE_TIMER.read_text()
    assert re.search(r"^OnUnitActiveSec=\d+min$", timer, re.MULTILINE) and "WantedBy=timers.target" in timer


def test_textfile_service_exposure_at_most_2(tmp_path):
    path = tmp_path / TEXTFILE_SERVICE.name
    klpd = entry_point("klpd")
    path.write_text(TEXTFILE_SERVICE.read_text().replace("ExecStart=/usr/bin/klpd ", f"ExecStart={klpd} "))
    result = subprocess.run([tool("systemd-analyze"), "security", "--offline=yes", "--no-pager", str(path)],
                            capture_output=True, text=True, check=False)  # fmt: skip
    match = re.search(r"Overall exposure level for klpd-textfile\.service: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout
