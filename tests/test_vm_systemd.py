"""The shipped unit on a real systemd host: the guest boots its root with systemd as PID 1 (journald and udevd
running as on any fleet host), klpd is installed as a package installs it (sysusers entry, /etc/klpd/klpd.toml,
systemd/klpd.service) and started with ``systemctl start``.

The unit's promises, each checked against what systemd and the kernel say:

- ``Type=notify``: ``systemctl start`` returns once klpd is READY, with a one-line ``STATUS=``;
- the sandbox (user klpd, CAP_DAC_READ_SEARCH only, ProtectSystem=strict, the system call filter, IP allowed to
  loopback only...) keeps every feature working: udev uevents and the journal's kernel transport, the API socket
  (0660 klpd:klpd) and /metrics, a refusal seen only in the kernel log, and the tasks blocking a transition (their
  patch_state files are 0400 root);
- ``systemctl reload`` (SIGHUP) keeps the same process; ``systemctl stop`` ends it cleanly;
- ``systemd-analyze security`` rates the running unit at 2.0 or less (2.0 with the test drop-in's
  ProtectHome=tmpfs; the shipped file alone scores 1.9 offline, tests/test_systemd_unit.py).

Only ExecStart= differs from a package install (a drop-in naming this virtualenv's klpd); the paths the virtualenv
needs outside /usr are bound in read-only, and where they are under /root, ProtectHome= becomes ``tmpfs`` so they
can be.
"""

import re
import sys
from pathlib import Path

import pytest
from vm.agent import Snapshot, jq_event, jq_object, poll_functions
from vm.harness import KLPCTL, REPO, session_environment

pytestmark = pytest.mark.vm

KLPD = KLPCTL.parent / "klpd"
SOCKET = "/run/klpd/klpd.sock"  # the shipped config's
TARGET = "klpvm_target"
PATCH = "klpvm_mod_pos4"  # a module sympos past the count: the target's load is refused
DEMO, BUSY = "test_klp_callbacks_demo", "test_klp_callbacks_busy"


def drop_in() -> str:
    """The drop-in a test install needs: this virtualenv's klpd, and read-only binds of what it runs from."""
    needed = []
    for path in (REPO, Path(sys.prefix), Path(sys.base_prefix)):
        if not any(path.is_relative_to(p) for p in (Path("/usr"), *needed)):
            needed.append(path)
    lines = ["[Service]", "ExecStart=", f"ExecStart={KLPD} --config /etc/klpd/klpd.toml"]
    lines += [f"BindReadOnlyPaths={p}" for p in needed]
    if any(p.is_relative_to(h) for p in needed for h in (Path("/root"), Path("/home"))):
        lines.append("ProtectHome=tmpfs")
    return "\n".join(lines) + "\n"


def script(env) -> str:
    return rf"""
# Installed as a package would install it.
systemd-sysusers {REPO}/systemd/klpd.sysusers
mkdir -p /etc/klpd /etc/systemd/system/klpd.service.d
cp {REPO}/config/klpd.toml /etc/klpd/klpd.toml
cp {REPO}/systemd/klpd.service /etc/systemd/system/klpd.service
cat > /etc/systemd/system/klpd.service.d/test.conf <<'EOF'
{drop_in()}EOF
systemctl daemon-reload
{poll_functions(SOCKET)}
show() {{ systemctl show klpd -p ActiveState -p SubState -p StatusText -p MainPID -p NRestarts -p Result \
    -p ExecMainStatus -p User; }}

date +%s.%N > $KLPVM_OUT/start.time
step start systemctl start klpd
date +%s.%N >> $KLPVM_OUT/start.time
step show_started show
step socket stat -c '%a %U %G' {SOCKET}
step identity sh -c 'ps -o user=,group= -p $(systemctl show klpd -p MainPID --value); \
    grep -E "^Cap(Eff|Bnd|Amb)" /proc/$(systemctl show klpd -p MainPID --value)/status'
klpd_until started '.daemon.sources.udev.up and .daemon.sources.journal.up and .daemon.sources.inotify.up'

P=$(install_patch {env.built.patch(PATCH)})
step insmod insmod $P
klp_wait
klpd_until before '[{jq_object(PATCH, TARGET)} | .module_load] == ["refused"]'
step modprobe modprobe {TARGET}
klpd_until refused 'any(.daemon.refusals[]; .patch == "{PATCH}" and .module == "{TARGET}")'
step modprobe_busy modprobe {BUSY} block_transition=Y
klpd_until added '{jq_event("add", BUSY, "udev")}'
step insmod_demo insmod {env.built.upstream_module(DEMO)}
klpd_until blocked 'any(.daemon.transitions[]; .patch == "{DEMO}" and (.blocking_tasks | length) > 0)'
tasks tasks_blocked
echo 0 > /sys/module/{BUSY}/parameters/block_transition
klp_wait
klpd_until done '.daemon.transitions == []'

step reload systemctl reload klpd
sleep 2
step show_reloaded show
step klpctl klpctl status --json
step security systemd-analyze security klpd --no-pager
step stop systemctl stop klpd
step show_stopped show
journalctl -u klpd -o cat --no-pager > $KLPVM_OUT/klpd.log
"""


@pytest.fixture(scope="module")
def result():
    env = session_environment()
    return env.vm(init="systemd").run(script(env), timeout=400)


def properties(step) -> dict[str, str]:
    assert step.rc == 0, step.err
    return dict(line.split("=", 1) for line in step.out.splitlines() if "=" in line)


def test_started_as_a_notify_service(result):
    start = result.step("start")
    assert start.rc == 0, start.err + result.text("klpd.log")[-3000:]
    shown = properties(result.step("show_started"))
    # systemctl start returned after READY=1: the service is running, and its status line is klpd's summary.
    assert (shown["ActiveState"], shown["SubState"]) == ("active", "running"), shown
    assert re.fullmatch(r"\d+ patches.*", shown["StatusText"]), shown
    assert shown["User"] == "klpd" and shown["NRestarts"] == "0"
    user, group, *caps = result.step("identity").out.split()
    assert (user, group) == ("klpd", "klpd"), result.step("identity").out
    capabilities = dict(zip(caps[::2], caps[1::2], strict=True))
    cap_dac_read_search = 1 << 2
    assert {name: int(value, 16) for name, value in capabilities.items()} == {
        "CapEff:": cap_dac_read_search,
        "CapBnd:": cap_dac_read_search,
        "CapAmb:": cap_dac_read_search,
    }
    assert result.step("socket").out.split() == ["660", "klpd", "klpd"]
    log = result.text("klpd.log")
    assert "ready:" in log and "Traceback" not in log, log[-3000:]


def test_every_source_works_inside_the_sandbox(result):
    started = Snapshot(result, "started")
    sources = started.daemon["sources"]
    started.converged(all(sources.get(s, {}).get("up") for s in ("udev", "journal", "inotify")), "its sources up")
    assert started.metric("klpd_source_up", source="udev") == 1  # /metrics answered on 127.0.0.1
    assert started.metric("klpd_source_up", source="journal") == 1

    # The refusal: only the kernel log tells it, here through the journal files the capability reads.
    assert result.step("insmod").rc == 0, result.step("insmod").err
    assert result.step("modprobe").rc != 0
    refused = Snapshot(result, "refused")
    matching = [r for r in refused.daemon["refusals"] if (r["patch"], r["module"]) == (PATCH, TARGET)]
    refused.converged(matching, f"the refusal of {TARGET}")
    kernel_said = f"livepatch: patch '{PATCH}' failed for module '{TARGET}', refusing to load module '{TARGET}'"
    assert kernel_said in result.step("modprobe").dmesg
    assert matching[0]["message"] == kernel_said
    assert ("journal", "module_load_refused", TARGET) in refused.events()

    added = Snapshot(result, "added")
    added.converged(("udev", "add", BUSY) in added.events(), f"udev's add of {BUSY}")


def test_blocking_tasks_are_named_inside_the_sandbox(result):
    """patch_state is 0400 and owned by each task's user: the one capability is what lets klpd read it."""
    assert result.step("insmod_demo").rc == 0, result.step("insmod_demo").err
    unpatched = {}
    for line in result.text("tasks_blocked.out").splitlines():
        pid, tid, state, comm = line.split(" ", 3)
        if state == "0":
            unpatched[int(tid)] = (int(pid), comm)
    blocked = Snapshot(result, "blocked")
    transitions = [t for t in blocked.daemon["transitions"] if t["patch"] == DEMO]
    blocked.converged(transitions and transitions[0]["blocking_tasks"], f"{DEMO}'s blocking tasks")
    [transition] = transitions
    assert transition["tasks_unreadable"] == 0 and transition["tasks_scanned"] > 0, transition
    assert transition["blocking_count"] == len(transition["blocking_tasks"]), transition
    for task in transition["blocking_tasks"]:
        assert unpatched.get(task["tid"]) == (task["pid"], task["comm"]), (task, unpatched)
    assert any(t["comm"].startswith("kworker") for t in transition["blocking_tasks"])
    done = Snapshot(result, "done")
    done.converged(done.daemon["transitions"] == [], "the transition's end")


def test_reload_keeps_the_process_and_stop_is_clean(result):
    started = properties(result.step("show_started"))
    assert result.step("reload").rc == 0, result.step("reload").err
    reloaded = properties(result.step("show_reloaded"))
    assert reloaded["ActiveState"] == "active" and reloaded["MainPID"] == started["MainPID"], reloaded
    assert "configuration reloaded from /etc/klpd/klpd.toml" in result.text("klpd.log")
    klpctl = result.step("klpctl")  # the default socket, the daemon's answer
    assert klpctl.rc in (0, 1), klpctl.err
    doc = klpctl.json()
    assert doc["source"] == "daemon" and doc["daemon"]["pid"] == int(started["MainPID"])
    assert result.step("stop").rc == 0
    stopped = properties(result.step("show_stopped"))
    assert (stopped["ActiveState"], stopped["Result"], stopped["ExecMainStatus"]) == ("inactive", "success", "0")


def test_exposure_of_the_running_unit(result):
    security = result.step("security")
    match = re.search(r"Overall exposure level for klpd\.service: (\d+\.\d+)", security.out)
    assert match, security.out[-2000:] + security.err
    assert float(match.group(1)) <= 2.0, security.out
