"""The .deb on a real systemd host of each Debian release it is for: the guest (systemd as PID 1, as
tests/test_vm_systemd.py boots it) installs the package built from this tree with ``apt install ./klpd_*.deb``, and
nothing else — no drop-in, no virtualenv: the service must be running once apt returns, sandboxed as its unit says,
answer on /metrics and to ``/usr/bin/klpctl status``, and stop on ``dpkg -r``.

Two userspaces, a fresh Debian 12 (bookworm) and a fresh Debian 13 (trixie), each made by mmdebstrap
(:mod:`vm.rootfs`) from the archive's packages: systemd, udev, curl and the .deb's Depends, nothing else — the
distribution's own python3 and python3-* packages, not the host's (whatever ./dev.sh installed on it). The guest
has no network, so apt finds the dependencies installed.
"""

import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from debian_package import build_deb
from vm.agent import PORT, parse_metrics
from vm.harness import GuestResult, Unavailable, forced, parallel_boots, session_environment
from vm.rootfs import GuestRoot, guest_root

pytestmark = pytest.mark.vm

# debian/control's Depends, from the distribution's archive.
DEPENDS = ("python3", "python3-pyelftools", "python3-pyudev", "python3-prometheus-client", "python3-systemd",
           "python3-zstandard")  # fmt: skip


# A fresh root: what the service and this test's script need besides the .deb's Depends (curl asks /metrics,
# man-db finds the man page: a standard Debian install has it).
FRESH = ("systemd", "systemd-sysv", "udev", "curl", "man-db", *DEPENDS)

# What bash completes for "klpctl sta" with the completion the package installed.
COMPLETE_STA = """'source /usr/share/bash-completion/completions/klpctl; COMP_WORDS=(klpctl sta); COMP_CWORD=1; _klpctl
echo "${COMPREPLY[@]}"'"""


@dataclass(frozen=True)
class Userspace:
    name: str
    root: GuestRoot
    python: str  # `python3 --version` there
    pyelftools: str  # the version prefix of its python3-pyelftools (bookworm 0.29, trixie 0.32)


USERSPACES = {
    u.name: u
    for u in (
        Userspace("bookworm", GuestRoot("bookworm", FRESH), "Python 3.11.", "0.29"),
        Userspace("trixie", GuestRoot("trixie", FRESH), "Python 3.13.", "0.32"),
    )
}  # fmt: skip


def script(deb: str) -> str:
    return rf"""
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
step reload systemctl reload klpd
for i in $(seq 50); do journalctl -u klpd -o cat --no-pager | grep -q "configuration reloaded" && break; sleep 0.2; done
step manpage man -w klpctl
step completion bash -c {COMPLETE_STA}
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


@pytest.fixture(scope="module")
def boots(deb):
    """Every userspace's boot, two at a time: each guest keeps one host core busy for a minute or more."""
    env = session_environment()
    try:
        roots = {name: guest_root(u.root) for name, u in USERSPACES.items()}  # built one after the other, once
    except Unavailable as e:  # as session_environment() treats the kernel's: a skip, a failure when forced
        (pytest.fail if forced() else pytest.skip)(f"cannot make the fresh Debian roots here: {e}")

    def boot(name: str) -> GuestResult:
        # cwd: a directory every root has (the repository is in none of them; nothing here needs it).
        vm = env.vm(init="systemd", root=roots[name], cwd=Path("/root"), inputs={deb.name: deb})
        return vm.run(script(deb.name), timeout=300)

    with ThreadPoolExecutor(parallel_boots()) as pool:
        futures = {name: pool.submit(boot, name) for name in USERSPACES}
    return env, {name: f.exception() or f.result() for name, f in futures.items()}


@pytest.fixture(scope="module", params=list(USERSPACES))
def userspace(request):
    return USERSPACES[request.param]


@pytest.fixture
def result(boots, userspace):
    env, results = boots
    if isinstance(results[userspace.name], BaseException):
        raise results[userspace.name]
    return results[userspace.name], env


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


def test_the_service_reloads(result):
    # ExecReload must work with what a fresh install has: procps's /bin/kill is not there.
    result, _ = result
    reload = result.step("reload")
    assert reload.rc == 0, reload.err + result.text("klpd.log")[-3000:]
    assert "configuration reloaded" in result.text("klpd.log"), result.text("klpd.log")[-3000:]


def test_the_man_page_and_bash_completion_are_installed(result):
    result, _ = result
    assert result.step("manpage").out.strip() == "/usr/share/man/man1/klpctl.1.gz", result.step("manpage").err
    completion = result.step("completion")
    assert completion.out.strip() == "status", completion.err


def test_removing_the_package_stops_the_service(result):
    result, _ = result
    remove = result.step("remove")
    assert remove.rc == 0, remove.out + remove.err
    assert result.step("inactive").out.strip() == "inactive", result.step("inactive").out
