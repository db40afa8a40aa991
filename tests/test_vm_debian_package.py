"""The .deb on a real systemd host: the guest (systemd as PID 1, as tests/test_vm_systemd.py boots it) installs
the package built from this tree with ``dpkg -i``, and nothing else — no drop-in, no virtualenv: the service must
be running once dpkg returns, answer on /metrics and to ``/usr/bin/klpctl status``, and stop on ``dpkg -r``.

The guest's root is the host's (read-only, under a tmpfs overlay), so Debian's python3-* packages the .deb
depends on are the ones ./dev.sh test installed on the host.
"""

import shutil
import tempfile
from pathlib import Path

import pytest
from debian_package import build_deb
from vm.agent import PORT, parse_metrics
from vm.harness import session_environment
from vm.kernel import cache_dir

pytestmark = pytest.mark.vm


# What bash completes for "klpctl sta" with the completion the package installed.
COMPLETE_STA = """'source /usr/share/bash-completion/completions/klpctl; COMP_WORDS=(klpctl sta); COMP_CWORD=1; _klpctl
echo "${COMPREPLY[@]}"'"""


def script(deb) -> str:
    return rf"""
# The build container's policy-rc.d forbids starting services (exit 101); a host has none, and this guest's root
# is that container's.
rm -f /usr/sbin/policy-rc.d
step install dpkg -i {deb}
step user getent passwd klpd
step active systemctl is-active klpd
step show systemctl show klpd -p User -p ExecMainPID -p StatusText
step metrics curl -sf --max-time 10 http://127.0.0.1:{PORT}/metrics
step status /usr/bin/klpctl status --json
step manpage man -w klpctl
step completion bash -c {COMPLETE_STA}
step remove dpkg -r klpd
step inactive systemctl is-active klpd
journalctl -u klpd -o cat --no-pager > $KLPVM_OUT/klpd.log
"""


@pytest.fixture(scope="module")
def result():
    env = session_environment()
    # Built where the guest sees it: its systemd mounts a fresh /tmp over the host's.
    work = Path(tempfile.mkdtemp(prefix="deb-", dir=cache_dir()))
    try:
        return env.vm(init="systemd").run(script(build_deb(work)), timeout=300)
    finally:
        shutil.rmtree(work)


def test_installing_the_package_starts_the_service(result):
    install = result.step("install")
    assert install.rc == 0, install.out + install.err
    assert result.step("user").out.startswith("klpd:"), result.step("user").err
    active = result.step("active")
    assert active.out.strip() == "active", active.out + result.text("klpd.log")[-3000:]
    shown = dict(line.split("=", 1) for line in result.step("show").out.splitlines() if "=" in line)
    assert shown["User"] == "klpd" and shown["StatusText"], shown
    assert "Traceback" not in result.text("klpd.log")


def test_the_installed_service_answers(result):
    metrics = result.step("metrics")
    assert metrics.rc == 0, metrics.err
    samples = parse_metrics(metrics.out)
    evaluations = [v for (name, _), v in samples.items() if name == "klpd_evaluations_total"]
    assert evaluations and evaluations[0] >= 1, metrics.out[:2000]
    status = result.step("status")
    assert status.rc in (0, 1), status.err  # 1: the guest kernel's own state may have problems; never 2 or 3
    doc = status.json()
    assert doc["source"] == "daemon" and doc["schema"] == "klpd.status/1", doc.get("source")


def test_the_man_page_and_bash_completion_are_installed(result):
    assert result.step("manpage").out.strip() == "/usr/share/man/man1/klpctl.1.gz", result.step("manpage").err
    completion = result.step("completion")
    assert completion.out.strip() == "status", completion.err


def test_removing_the_package_stops_the_service(result):
    remove = result.step("remove")
    assert remove.rc == 0, remove.out + remove.err
    assert result.step("inactive").out.strip() == "inactive", result.step("inactive").out
