"""The .deb on a real systemd host of each Debian release it is for: the guest (systemd as PID 1, as
tests/test_vm_systemd.py boots it) installs the package built from this tree with ``apt install ./klpd_*.deb``, and
nothing else — no drop-in, no virtualenv: the service must be running once apt returns, sandboxed as its unit says,
answer on /metrics and to ``/usr/bin/klpctl status``, and stop on ``dpkg -r``.

Two userspaces, each with the distribution's own python3 and python3-* packages:

- ``bookworm-host``: the host's root (read-only, under a tmpfs overlay), Debian 12 with the packages ./dev.sh test
  installed on it;
- ``trixie``: a fresh Debian 13 made by mmdebstrap (:mod:`vm.rootfs`) from the archive's packages: systemd, udev,
  curl and the .deb's Depends, nothing else. The guest has no network, so apt finds the dependencies installed.
"""

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from debian_package import build_deb
from vm.agent import PORT, parse_metrics
from vm.harness import session_environment
from vm.rootfs import GuestRoot, guest_root

pytestmark = pytest.mark.vm

# debian/control's Depends, from the distribution's archive.
DEPENDS = ("python3", "python3-pyelftools", "python3-pyudev", "python3-prometheus-client", "python3-systemd",
           "python3-zstandard")  # fmt: skip


@dataclass(frozen=True)
class Userspace:
    name: str
    root: GuestRoot | None  # None: the host's own root
    python: str  # `python3 --version` there
    pyelftools: str  # the version prefix of its python3-pyelftools (bookworm 0.29, trixie 0.32)


USERSPACES = {
    u.name: u
    for u in (
        Userspace("bookworm-host", None, "Python 3.11.", "0.29"),
        Userspace("trixie", GuestRoot("trixie", ("systemd", "systemd-sysv", "udev", "curl", *DEPENDS)),
                  "Python 3.13.", "0.32"),
    )
}  # fmt: skip


def script(deb: str) -> str:
    return rf"""
# The build container's policy-rc.d forbids starting services (exit 101); a host has none, and the bookworm
# guest's root is that container's.
rm -f /usr/sbin/policy-rc.d
step python python3 --version
step versions dpkg-query -W {" ".join(DEPENDS)}
cp "$KLPVM_IN/{deb}" /root/
cd /root
step install env DEBIAN_FRONTEND=noninteractive apt install -y ./{deb}
step user getent passwd klpd
step active systemctl is-active klpd
step show systemctl show klpd -p User -p ExecMainPID -p StatusText -p ProtectSystem -p ProtectHome \
    -p NoNewPrivileges -p PrivateDevices -p CapabilityBoundingSet -p RestrictNamespaces
pid=$(systemctl show -p MainPID --value klpd)
step exe readlink /proc/$pid/exe
step proc grep -E '^(Uid|NoNewPrivs|Seccomp|CapEff|CapBnd):' /proc/$pid/status
step metrics curl -sf --max-time 10 http://127.0.0.1:{PORT}/metrics
step status /usr/bin/klpctl status --json
step remove dpkg -r klpd
step inactive systemctl is-active klpd
journalctl -u klpd -o cat --no-pager > $KLPVM_OUT/klpd.log
"""


@pytest.fixture(scope="module")
def deb():
    work = Path(tempfile.mkdtemp(prefix="deb-"))
    try:
        yield build_deb(work)
    finally:
        shutil.rmtree(work)


@pytest.fixture(scope="module", params=list(USERSPACES))
def userspace(request):
    return USERSPACES[request.param]


@pytest.fixture(scope="module")
def result(userspace, deb):
    env = session_environment()
    root = Path("/") if userspace.root is None else guest_root(userspace.root)
    # cwd: a directory every root has (the repository is not in the trixie one; nothing here needs it).
    vm = env.vm(init="systemd", root=root, cwd=Path("/root"), inputs={deb.name: deb})
    return vm.run(script(deb.name), timeout=300), env


def test_the_guest_runs_the_distributions_python(userspace, result):
    result, _ = result
    assert result.step("python").out.startswith(userspace.python), result.step("python").out
    versions = dict(line.split("\t") for line in result.step("versions").out.splitlines())
    assert versions["python3-pyelftools"].startswith(userspace.pyelftools), versions
    assert result.step("exe").out.strip() == f"/usr/bin/python3.{userspace.python.split('.')[1]}"


def test_installing_the_package_starts_the_service(result):
    result, _ = result
    install = result.step("install")
    assert install.rc == 0, install.out + install.err
    assert result.step("user").out.startswith("klpd:"), result.step("user").err
    active = result.step("active")
    assert active.out.strip() == "active", active.out + result.text("klpd.log")[-3000:]
    shown = dict(line.split("=", 1) for line in result.step("show").out.splitlines() if "=" in line)
    assert shown["User"] == "klpd" and shown["StatusText"], shown
    assert "Traceback" not in result.text("klpd.log")


def test_the_service_is_sandboxed(result):
    result, _ = result
    shown = dict(line.split("=", 1) for line in result.step("show").out.splitlines() if "=" in line)
    assert shown["ProtectSystem"] == "strict" and shown["ProtectHome"] == "yes", shown
    assert shown["NoNewPrivileges"] == "yes" and shown["PrivateDevices"] == "yes", shown
    assert shown["CapabilityBoundingSet"] == "cap_dac_read_search", shown
    assert shown["RestrictNamespaces"] == "yes", shown
    # What the kernel enforces on the running process, whatever systemd reports.
    proc = dict(line.split(":", 1) for line in result.step("proc").out.splitlines())
    proc = {k: v.split() for k, v in proc.items()}
    assert proc["Uid"][0] != "0" and proc["NoNewPrivs"] == ["1"] and proc["Seccomp"] == ["2"], proc
    cap_dac_read_search = 1 << 2
    assert int(proc["CapEff"][0], 16) == int(proc["CapBnd"][0], 16) == cap_dac_read_search, proc


def test_the_installed_service_answers(result):
    result, env = result
    metrics = result.step("metrics")
    assert metrics.rc == 0, metrics.err
    samples = parse_metrics(metrics.out)
    evaluations = [v for (name, _), v in samples.items() if name == "klpd_evaluations_total"]
    assert evaluations and evaluations[0] >= 1, metrics.out[:2000]
    status = result.step("status")
    assert status.rc in (0, 1), status.err  # 1: the guest kernel's own state may have problems; never 2 or 3
    doc = status.json()
    assert doc["source"] == "daemon" and doc["schema"] == "klpd.status/1", doc.get("source")
    assert doc["host"]["kernel_release"] == env.kernel.release, doc["host"]


def test_removing_the_package_stops_the_service(result):
    result, _ = result
    remove = result.step("remove")
    assert remove.rc == 0, remove.out + remove.err
    assert result.step("inactive").out.strip() == "inactive", result.step("inactive").out
