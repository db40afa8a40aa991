"""The running daemon (``klpd``) in a real guest: module uevents, a refused module load, a blocked transition.

Each boot starts klpd in the background with the tests' configuration (``kernel_log = "kmsg"``, ``uevent_source =
"kernel"``: the guest runs no journald or udevd, except in ``production_sources``), waits for its socket, then
changes the kernel's state and polls the daemon's JSON API (``GET /v1/status`` on its socket) until it shows the
change, for at most ``CONVERGE_SECONDS``; the document it converged on (or the last one) and ``/metrics`` at that
moment come back to the host, which compares them with what the kernel did: the module command's exit status, its
messages, sysfs, ``/proc/<pid>/task/<tid>/patch_state``. One ``klpctl status --socket`` per boot
checks the CLI's way in.

- ``uevents``: klpvm_mod_pos1 (a ``.klp.rela.klpvm_target`` patch) loaded, then ``modprobe``/``rmmod`` of its
  target: the object's loaded flag, its sections and ``klpd_object_loaded`` follow, and the uevents are listed.
- ``refusal_and_transition``: klpvm_mod_pos4 (a module sympos past the count) loaded, then ``modprobe`` of its
  target, which the kernel refuses (no uevent: only the kernel log says so); then ``test_klp_callbacks_busy
  block_transition=Y`` + test_klp_callbacks_demo, a transition a kworker blocks until the parameter is cleared.
- ``production_sources``: the guest runs systemd-journald and systemd-udevd, as a fleet host does, and klpd runs
  with the shipped ``config/klpd.toml`` (whose ``auto`` settings pick both): module uevents come through udevd, the
  refusal and the patch's messages through the journal's kernel transport.
"""

import json
import re
from pathlib import Path

import pytest
from vm import compare
from vm.agent import PORT, Snapshot, daemon_started, jq_event, jq_object, jq_patch, poll_functions
from vm.harness import KLPCTL, session_environment

from klpd.kernel_version import semantics_for

pytestmark = pytest.mark.vm

KLPD = KLPCTL.parent / "klpd"
TARGET = "klpvm_target"
SOCKET = "/tmp/klpd-vm/klpd.sock"
STAGING = "/var/lib/klpd-staging"
# The candidates staged in ``uevents`` once klpvm_mod_pos1 is loaded and its target removed, and what the kernel
# then says of insmod of each, in this order: a vmlinux symbol that does not exist (refused), a new build of the
# loaded klpvm_mod_pos1 (EEXIST), a module sympos past the count (loads, and refuses its target's later load),
# a good vmlinux patch (loads).
STAGED = ("klpvm_vm_missing", "klpvm_mod_pos1", "klpvm_mod_pos4", "klpvm_vm_unique")
# A patch whose pre-patch callback sleeps SLOW_MS: the first phase of its enable, long enough for klpd to answer in
# (on 7.2 its first evaluation after the load took over 12 s) and outlasting klpd_until's CONVERGE_SECONDS.
SLOW, SLOW_MS = "klpvm_slow_enable", 25000
FORGED = "livepatch: patch 'forged' failed for module 'forged_mod', refusing to load module 'forged_mod'"

# The tests' configuration: the kernel's own uevents and /dev/kmsg, which need neither udevd nor journald.
CONFIG = f"""
listen = "127.0.0.1:{PORT}"
socket = "{SOCKET}"
kernel_log = "kmsg"
uevent_source = "kernel"
log_level = "debug"
staging_dirs = ["{STAGING}"]
"""
# What a fleet host runs; the socket and the listen address are the test's own (the flags override the file).
SHIPPED_CONFIG = Path(__file__).resolve().parents[1] / "config" / "klpd.toml"

# Starts klpd and defines klpd_until. Sourced after guest.sh, so $KLPVM_OUT and step are there.
DAEMON = rf"""
ip link set lo up  # the guest's loopback starts down; /metrics listens on it
KLPD_DIR=$(mktemp -d /tmp/klpd-conf.XXXXXX)
mkdir -p {SOCKET.rsplit("/", 1)[0]}
@WRITE_CONFIG@
{KLPD} --root / --config "$KLPD_DIR/klpd.toml" --socket {SOCKET} --listen 127.0.0.1:{PORT} 2> "$KLPVM_OUT/klpd.log" &
KLPD_PID=$!
@POLL@
t0=$(date +%s.%N)
for i in $(seq 300); do
    klpd_get /v1/health > /dev/null && break
    kill -0 $KLPD_PID 2> /dev/null || break
    sleep 0.2
done
echo "$t0 $(date +%s.%N)" > "$KLPVM_OUT/ready.wait"

# klpd_stop: SIGTERM, and klpd's exit status as stop.rc (a clean stop is 0).
klpd_stop() {{
    kill -TERM $KLPD_PID
    wait $KLPD_PID
    echo $? > "$KLPVM_OUT/stop.rc"
}}
"""


def daemon(config=CONFIG):
    """The script that starts klpd with ``config``: TOML text, or the path of a configuration file."""
    if isinstance(config, Path):
        write = f'cp {config} "$KLPD_DIR/klpd.toml"'
    else:
        write = f"cat > \"$KLPD_DIR/klpd.toml\" <<'EOF'\n{config.strip()}\nEOF"
    return DAEMON.replace("@WRITE_CONFIG@", write).replace("@POLL@", poll_functions(SOCKET))


@pytest.fixture(scope="module")
def env():
    return session_environment()


@pytest.fixture(scope="module")
def runs(env):
    return env.run_many(scripts(env))


def scripts(env):
    up = env.built.upstream_module
    staged_copies = "\n".join(f"cp {env.built.patch(n)} {STAGING}.tmp/" for n in STAGED)
    staged_loads = "\n".join(f"step staged_insmod_{n} insmod {STAGING}/{n}.ko; klp_wait" for n in STAGED)
    demo = "test_klp_callbacks_demo"
    busy = "test_klp_callbacks_busy"
    slow = env.built.plain(SLOW)
    return {
        "uevents": f"""
            P=$(install_patch {env.built.patch("klpvm_mod_pos1")})
            step insmod insmod $P
            klp_wait
            {daemon()}
            klpd_until before '[{jq_object("klpvm_mod_pos1", TARGET)} | .loaded == false] == [true]'
            step modprobe modprobe {TARGET}
            klp_wait
            klpd_until loaded '[{jq_object("klpvm_mod_pos1", TARGET)} | .loaded and .patched
                and all(.sections[]; .state == "applied")] == [true] and {jq_event("add", TARGET)}'
            step patched_loaded cat /sys/kernel/livepatch/klpvm_mod_pos1/{TARGET}/patched
            step rmmod rmmod {TARGET}
            klpd_until removed '[{jq_object("klpvm_mod_pos1", TARGET)} | .loaded == false] == [true]
                and {jq_event("remove", TARGET)}'
            step patched_removed cat /sys/kernel/livepatch/klpvm_mod_pos1/{TARGET}/patched
            step klpctl klpctl status --socket {SOCKET} --json
            step list klpctl list --json
            step check_name klpctl check --json klpvm_mod_pos1
            step check_path klpctl check --json $P
            # Rollout pre-flight: klpd judges the staged candidates (inotify sees the directory appear) ...
            mkdir -p {STAGING}.tmp
            {staged_copies}
            mv {STAGING}.tmp {STAGING}
            klpd_until staged '[.candidates[].name] | sort == {json.dumps(sorted(STAGED))}'
            step staged_text klpctl status --socket {SOCKET}
            klpd_stop
            # ... and the kernel judges them: insmod of each, then the target klpvm_mod_pos4 would refuse.
            {staged_loads}
            klp_wait
            step staged_modprobe modprobe {TARGET}
        """,
        "refusal_and_transition": f"""
            P=$(install_patch {env.built.patch("klpvm_mod_pos4")})
            step insmod insmod $P
            klp_wait
            {daemon()}
            klpd_until before '[{jq_object("klpvm_mod_pos4", TARGET)} | .loaded == false] == [true]'
            # User space imitating the kernel, asking for LOG_KERN: the kernel files it as LOG_USER.
            step forge sh -c 'echo "<0>$1" > /dev/kmsg' forge "{FORGED}"
            step modprobe modprobe {TARGET}
            klpd_until refused 'any(.daemon.refusals[]; .patch == "klpvm_mod_pos4" and .module == "{TARGET}")'
            step modules_refused cat /proc/modules

            step modprobe_busy modprobe {busy} block_transition=Y
            date +%s.%N > $KLPVM_OUT/insmod_demo.time
            step insmod_demo insmod {up(demo)}
            date +%s.%N >> $KLPVM_OUT/insmod_demo.time
            klpd_until blocked 'any(.daemon.transitions[]; .patch == "{demo}" and (.blocking_tasks | length) > 0)'
            step transition_blocked cat /sys/kernel/livepatch/{demo}/transition
            tasks tasks_blocked
            for pid in $(jq -r '.daemon.transitions[].blocking_tasks[].tid' $KLPVM_OUT/blocked.json); do
                echo "== $pid"; cat /proc/$pid/stack
            done > $KLPVM_OUT/stacks.out 2>&1
            echo 0 > /sys/module/{busy}/parameters/block_transition
            step klp_wait klp_wait
            step transition_done cat /sys/kernel/livepatch/{demo}/transition
            tasks tasks_done
            klpd_until done '.daemon.transitions == [] and [{jq_patch(demo)} | .transition] == [false]'

            # An enable held in its first phase by a sleeping pre-patch callback: transition 1, enabled still 0.
            insmod {slow} pre_patch_ms={SLOW_MS} > $KLPVM_OUT/insmod_slow.out 2>&1 &
            SLOW_PID=$!
            for i in $(seq 200); do
                [ "$(cat /sys/kernel/livepatch/{SLOW}/transition 2> /dev/null)" = 1 ] && break
                sleep 0.1
            done
            step window_before cat /sys/kernel/livepatch/{SLOW}/enabled /sys/kernel/livepatch/{SLOW}/transition
            klpd_until window 'any(.daemon.transitions[]; .patch == "{SLOW}" and .target == "patched")'
            step window_after cat /sys/kernel/livepatch/{SLOW}/enabled /sys/kernel/livepatch/{SLOW}/transition
            wait $SLOW_PID
            echo $? > $KLPVM_OUT/insmod_slow.rc
            klp_wait
            klpd_until window_done '.daemon.transitions == []'
            step klpctl klpctl status --socket {SOCKET} --json
            klpd_stop
        """,
        "production_sources": f"""
            # What a fleet host runs besides klpd: journald (reading /dev/kmsg) and udevd, each creating its own
            # sockets as it does without socket activation. journald will not run without the cgroup hierarchy.
            mount -t cgroup2 cgroup2 /sys/fs/cgroup
            /lib/systemd/systemd-journald > $KLPVM_OUT/journald.log 2>&1 &
            /lib/systemd/systemd-udevd --daemon > $KLPVM_OUT/udevd.log 2>&1
            for i in $(seq 100); do
                [ -S /run/systemd/journal/socket ] && [ -S /run/udev/control ] && break
                sleep 0.1
            done
            {daemon(SHIPPED_CONFIG)}
            klpd_until started '.daemon.sources.udev.up and .daemon.sources.journal.up'
            P=$(install_patch {env.built.patch("klpvm_mod_pos4")})
            step insmod insmod $P
            klp_wait
            klpd_until before '[{jq_object("klpvm_mod_pos4", TARGET)} | .loaded == false] == [true]
                and {jq_event("enabling", "klpvm_mod_pos4", "journal")}'
            # User space imitating the kernel, asking for LOG_KERN: the kernel files it as LOG_USER.
            step forge sh -c 'echo "<0>$1" > /dev/kmsg' forge "{FORGED}"
            step modprobe modprobe {TARGET}
            klpd_until refused 'any(.daemon.refusals[]; .patch == "klpvm_mod_pos4" and .module == "{TARGET}")'
            step modprobe_busy modprobe {busy}
            klpd_until added '{jq_event("add", busy, "udev")}'
            step rmmod_busy rmmod {busy}
            klpd_until removed '{jq_event("remove", busy, "udev")}'
            step journal journalctl -k -o json --no-pager
            klpd_stop
        """,
    }


# ------------------------------------------------------------------------------------------------------------------


def test_daemon_follows_module_uevents(env, runs):
    release = env.kernel.release
    result = runs["uevents"]
    daemon_started(result)
    assert result.step("insmod").rc == 0, result.step("insmod").err
    patch = "klpvm_mod_pos1"

    before = Snapshot(result, "before")
    before.converged(before.obj(patch, TARGET)["loaded"] is False, f"{TARGET} absent")
    assert {s["state"] for s in before.obj(patch, TARGET)["sections"]} == {"pending"}
    assert before.metric("klpd_object_loaded", patch=patch, object=TARGET) == 0
    assert before.metric("klpd_sections", patch=patch, object=TARGET, state="pending") >= 1
    assert before.daemon["sources"]["kernel"]["up"] is True and before.daemon["sources"]["kmsg"]["up"] is True

    # The kernel: the target loads and its object is patched.
    modprobe = result.step("modprobe")
    assert modprobe.rc == 0, modprobe.err + "\n".join(modprobe.dmesg)
    assert result.step("patched_loaded").out.strip() == (compare.sysfs_patched(release, True) or "")
    loaded = Snapshot(result, "loaded")
    target = loaded.obj(patch, TARGET)
    loaded.converged(target["loaded"] is True and ("kernel", "add", TARGET) in loaded.events(), f"{TARGET} loaded")
    assert target["patched"] is compare.shown_patched(release, True)
    assert {s["state"] for s in target["sections"]} == {"applied"}, target["sections"]
    assert loaded.metric("klpd_object_loaded", patch=patch, object=TARGET) == 1
    assert loaded.metric("klpd_object_patched", patch=patch, object=TARGET) == compare.shown_patched(release, True)
    assert loaded.metric("klpd_sections", patch=patch, object=TARGET, state="applied") >= 1
    assert not loaded.metric("klpd_sections", patch=patch, object=TARGET, state="pending")
    # Exactly one uevent per module load; the kernel log's "applying patch" came with it.
    assert loaded.events("kernel").count(("kernel", "add", TARGET)) == 1, loaded.events()
    assert ("kmsg", "applying", patch) in loaded.events(), loaded.events()
    assert loaded.metric("klpd_events_total", source="kernel") > before.metric("klpd_events_total", source="kernel")

    # The kernel: the target goes, the patch stays with its object unpatched.
    assert result.step("rmmod").rc == 0, result.step("rmmod").err
    assert result.step("patched_removed").out.strip() == (compare.sysfs_patched(release, False) or "")
    removed = Snapshot(result, "removed")
    target = removed.obj(patch, TARGET)
    removed.converged(
        target["loaded"] is False and ("kernel", "remove", TARGET) in removed.events(), f"{TARGET} removed"
    )
    assert target["patched"] is compare.shown_patched(release, False)
    assert {s["state"] for s in target["sections"]} == {"pending"}, target["sections"]
    assert removed.metric("klpd_object_loaded", patch=patch, object=TARGET) == 0
    assert removed.metric("klpd_object_patched", patch=patch, object=TARGET) == compare.shown_patched(release, False)
    assert (
        removed.metric("klpd_events_total", source="kernel") >= before.metric("klpd_events_total", source="kernel") + 2
    )
    assert removed.daemon["refusals"] == []

    # klpctl asks the daemon: the same document, the daemon's part included.
    klpctl = result.step("klpctl")
    assert klpctl.rc in (0, 1), klpctl.err
    doc = klpctl.json()
    assert doc["source"] == "daemon" and doc["daemon"]["pid"] == removed.daemon["pid"]
    assert [o["loaded"] for p in doc["patches"] if p["name"] == patch for o in p["objects"] if o["name"] == TARGET] == [
        False
    ]
    assert result.text("stop.rc").strip() == "0", result.text("klpd.log")[-3000:]


def test_daemon_judges_staged_candidates_as_the_kernel_then_does(runs):
    result = runs["uevents"]
    staged = Snapshot(result, "staged")
    candidates = {c["name"]: c for c in staged.doc["candidates"]}
    staged.converged(sorted(candidates) == sorted(STAGED), f"the candidates {STAGED}")
    assert [p["name"] for p in staged.doc["patches"]] == ["klpvm_mod_pos1"]  # the host's own, apart
    for name in STAGED:
        insmod = result.step(f"staged_insmod_{name}")
        kernel_loaded = insmod.rc == 0
        assert candidates[name]["will_load"] is kernel_loaded, (name, candidates[name]["reasons"], insmod.err,
                                                                insmod.dmesg)  # fmt: skip
        assert staged.metric("klpd_patch_will_load", patch=name, candidate="true") == float(kernel_loaded), name
    # insmod of a module whose name is loaded: the kernel's EEXIST, as klpd said
    assert "File exists" in result.step("staged_insmod_klpvm_mod_pos1").err
    exists = [c for c in candidates["klpvm_mod_pos1"]["load_checks"] if c["errno"] == "EEXIST"]
    assert exists and exists[0]["result"] == "fails", candidates["klpvm_mod_pos1"]["load_checks"]
    assert staged.metric("klpd_patch_will_load", patch="klpvm_mod_pos1", candidate="false") == 1  # the loaded one
    # klpvm_mod_pos4 loads, and then the kernel refuses its target, as klpd said before either happened
    target = next(o for o in candidates["klpvm_mod_pos4"]["objects"] if o["name"] == TARGET)
    assert target["module_load"] == "refused"
    labels = {"patch": "klpvm_mod_pos4", "object": TARGET, "candidate": "true"}
    assert staged.metric("klpd_module_load", **labels, verdict="refused") == 1
    modprobe = result.step("staged_modprobe")
    assert modprobe.rc != 0, modprobe.out
    assert any("refusing to load module" in line for line in modprobe.dmesg), modprobe.dmesg
    # no candidate is counted as the host's own
    assert staged.metric("klpd_patch_state", patch="klpvm_vm_unique", state="not_loaded") is None
    text = result.step("staged_text").out
    assert "candidates (staging directories" in text and f"{STAGING}/klpvm_mod_pos4.ko" in text


def test_list_shows_the_loaded_patch_under_the_running_release(env, runs):
    result = runs["uevents"]
    doc = result.step("list").json()
    assert doc["running"] == env.kernel.release
    running = [r for r in doc["releases"] if r["running"]]
    assert [r["release"] for r in running] == [env.kernel.release]
    listed = {p["name"]: p for p in running[0]["patches"]}
    # install_patch put it in /var/lib/kpatch/<release>/, and the kernel's /proc/modules lists it
    assert listed["klpvm_mod_pos1"]["loaded"] is True
    assert listed["klpvm_mod_pos1"]["built_for"] == env.kernel.release
    assert listed["klpvm_mod_pos1"]["release_mismatch"] is False


def test_check_by_name_judges_the_installed_file(runs):
    result = runs["uevents"]
    by_name, by_path = result.step("check_name"), result.step("check_path")
    assert by_name.rc == by_path.rc and by_name.json() == by_path.json(), by_name.err
    (patch,) = by_name.json()["patches"]
    # the installed file of the loaded patch: insmod of it again is the kernel's EEXIST, as the staged copy showed
    assert patch["name"] == "klpvm_mod_pos1" and patch["path"].startswith("/var/lib/kpatch/")
    assert any(c["errno"] == "EEXIST" for c in patch["load_checks"]), patch["load_checks"]


def test_daemon_reports_refused_module_load(runs):
    result = runs["refusal_and_transition"]
    daemon_started(result)
    patch = "klpvm_mod_pos4"
    assert result.step("insmod").rc == 0, result.step("insmod").err
    before = Snapshot(result, "before")
    before.converged(before.obj(patch, TARGET)["loaded"] is False, f"{patch} loaded, {TARGET} absent")
    assert before.obj(patch, TARGET)["module_load"] == "refused"  # predicted before anyone tried
    refusals_before = before.metric("klpd_module_load_refusals_total", patch=patch, object=TARGET) or 0

    # The kernel refused the target and said why in its log; no module appeared, so no uevent.
    modprobe = result.step("modprobe")
    assert modprobe.rc != 0
    kernel_said = f"livepatch: patch '{patch}' failed for module '{TARGET}', refusing to load module '{TARGET}'"
    assert kernel_said in modprobe.dmesg, modprobe.dmesg
    assert not re.search(rf"^{TARGET} ", result.step("modules_refused").out, re.MULTILINE)

    refused = Snapshot(result, "refused")
    matching = [r for r in refused.daemon["refusals"] if (r["patch"], r["module"]) == (patch, TARGET)]
    refused.converged(matching, f"the refusal of {TARGET}")
    assert len(matching) == 1, refused.daemon["refusals"]
    assert matching[0]["message"] == kernel_said
    assert before.start - 1 <= matching[0]["time"] <= refused.end + 1
    counts = {(c["patch"], c["module"]): c["count"] for c in refused.daemon["refusal_counts"]}
    assert FORGED in result.step("forge").dmesg  # in the kernel log, as user space wrote it ...
    assert counts == {(patch, TARGET): 1}  # ... and not a refusal for klpd
    assert refused.metric("klpd_module_load_refusals_total", patch=patch, object=TARGET) == refusals_before + 1
    assert ("kmsg", "module_load_refused", TARGET) in refused.events(), refused.events()
    assert not [e for e in refused.events("kernel") if e[2] == TARGET], refused.events()
    # Still not loaded, still predicted to fail.
    assert refused.obj(patch, TARGET)["loaded"] is False
    assert refused.obj(patch, TARGET)["module_load"] == "refused"


def test_daemon_reports_blocked_transition(runs):
    result = runs["refusal_and_transition"]
    demo = "test_klp_callbacks_demo"
    assert result.step("modprobe_busy").rc == 0, result.step("modprobe_busy").err
    assert result.step("insmod_demo").rc == 0, result.step("insmod_demo").err
    insmod_start, insmod_end = map(float, result.text("insmod_demo.time").split())

    # The kernel: the transition is running, and these tasks are still unpatched.
    assert result.step("transition_blocked").out.strip() == "1"
    unpatched = {}
    for line in result.text("tasks_blocked.out").splitlines():
        pid, tid, state, comm = line.split(" ", 3)
        if state == "0":
            unpatched[int(tid)] = (int(pid), comm)
    assert any(comm.startswith("kworker") for _, comm in unpatched.values()), unpatched

    blocked = Snapshot(result, "blocked")
    transitions = [t for t in blocked.daemon["transitions"] if t["patch"] == demo]
    blocked.converged(transitions and transitions[0]["blocking_tasks"], f"{demo}'s transition and its blocking task")
    [transition] = transitions
    assert transition["target"] == "patched"
    # Since: when the kernel started it (during the insmod), as klpd read it in the kernel log or first saw it in
    # sysfs — a few seconds late at most, never before. The kernel stamps its log with local_clock(), which this
    # guest reads from per-CPU TSCs the kernel marks unsynchronized: 20 ms off CLOCK_MONOTONIC measured idle, more
    # on a loaded host, hence a second's slack below.
    assert insmod_start - 1 <= transition["since"] <= insmod_end + 5, (insmod_start, insmod_end, transition)
    assert blocked.patch(demo)["transition"] is True
    # The blocking tasks klpd names are the kernel's (unpatched kworkers); every one it lists is in the kernel's.
    tasks = transition["blocking_tasks"]
    assert any(t["comm"].startswith("kworker") for t in tasks), tasks
    for t in tasks:
        assert t["patch_state"] == 0, t
        assert unpatched.get(t["tid"]) == (t["pid"], t["comm"]), (t, unpatched)
    assert transition["blocking_count"] == len(tasks)
    stacks = result.text("stacks.out")
    assert "busymod_work_func" in stacks, stacks
    assert blocked.metric("klpd_transition_blocking_tasks", patch=demo) == len(tasks)
    assert blocked.metric("klpd_patch_state", patch=demo, state="transition") == 1
    assert blocked.metric("klpd_transition_start_time_seconds", patch=demo) == pytest.approx(transition["since"])

    # Released: the kernel finishes, klpd drops the transition.
    assert result.step("klp_wait").rc == 0
    assert result.step("transition_done").out.strip() == "0"
    assert not [line for line in result.text("tasks_done.out").splitlines() if line.split(" ")[2] == "0"]
    done = Snapshot(result, "done")
    done.converged(done.daemon["transitions"] == [] and done.patch(demo)["transition"] is False, "no transition")
    assert done.patch(demo)["enabled"] is True
    assert done.metric("klpd_patch_state", patch=demo, state="enabled") == 1
    assert done.metric("klpd_patch_state", patch=demo, state="transition") == 0
    assert done.metric("klpd_transition_blocking_tasks", patch=demo) is None
    assert done.metric("klpd_transition_start_time_seconds", patch=demo) is None

    klpctl = result.step("klpctl")
    assert klpctl.rc in (0, 1), klpctl.err
    doc = klpctl.json()
    assert doc["source"] == "daemon" and doc["daemon"]["transitions"] == []
    assert result.text("stop.rc").strip() == "0", result.text("klpd.log")[-3000:]


def test_daemon_knows_an_enable_is_transitioning_to_patched_while_enabled_still_says_0(env, runs):
    """__klp_enable_patch() sets up the transition (sysfs transition=1), runs the pre-patch callbacks and registers
    the functions with ftrace before it sets enabled: on 6.12 under TCG klpd once answered "unpatched" from that
    window. Here a pre-patch callback holds the kernel in it while klpd is asked."""
    result = runs["refusal_and_transition"]
    assert result.step("window_before").out.split() == ["0", "1"], result.step("window_before")  # enabled, transition
    window = Snapshot(result, "window")
    transitions = [t for t in window.daemon["transitions"] if t["patch"] == SLOW]
    if semantics_for(env.kernel.release).sysfs_stack_order:
        # 6.14+: stack_order_show() takes klp_mutex, which the enable holds, so klpd's evaluation (it reads
        # stack_order) waits for the enable to end and never sees the window (7.2: no evaluation for its 25 s).
        # What klpd must not do is answer wrongly meanwhile.
        assert all(t["target"] == "patched" for t in transitions), transitions
        assert result.text("insmod_slow.rc").strip() == "0", result.text("insmod_slow.out")
        done = Snapshot(result, "window_done")
        done.converged(done.daemon["transitions"] == [], "no transition")
        assert done.patch(SLOW)["enabled"] is True
        return
    window.converged(transitions and transitions[0]["target"] == "patched", f"{SLOW} transitioning to patched")
    # The kernel was still in the window when klpd answered (enabled 0, transition 1), not done with the enable: a
    # klpd that takes the target from enabled says "patched" only then (seen with the fix reverted).
    after = result.step("window_after").out.split()
    assert after == ["0", "1"], f"klpd showed 'patched' only after {window.seconds:.1f} s: enabled, transition {after}"
    assert window.patch(SLOW)["enabled"] is False and window.patch(SLOW)["transition"] is True
    assert transitions[0]["since_source"] == "kernel_log"  # dated by "enabling patch"
    assert result.text("insmod_slow.rc").strip() == "0", result.text("insmod_slow.out")
    done = Snapshot(result, "window_done")
    done.converged(done.daemon["transitions"] == [], "no transition")
    assert done.patch(SLOW)["enabled"] is True


def test_daemon_log_has_no_tracebacks(runs):
    """klpd's log (the journal, under systemd) holds messages, not Python tracebacks: here the API was polled with
    ``curl -f``, which hangs up on an HTTP error status before reading the body (503 while klpd starts)."""
    for name in ("uevents", "refusal_and_transition", "production_sources"):
        log = runs[name].text("klpd.log")
        assert "Traceback" not in log, f"{name}: klpd logged a traceback:\n{log[log.index('Traceback') - 300 :][:2500]}"


def test_daemon_with_the_shipped_config_reads_udevd_and_the_journal(runs):
    """A fleet host's sources: the shipped config's ``auto`` picks udevd's uevents and the journal's kernel
    transport, and the refusal (no uevent) and the patch's messages arrive through the journal, stamped with the
    kernel's own time."""
    result = runs["production_sources"]
    daemon_started(result)
    patch, busy = "klpvm_mod_pos4", "test_klp_callbacks_busy"

    started = Snapshot(result, "started")
    sources = started.daemon["sources"]
    started.converged(sources.get("udev", {}).get("up") and sources.get("journal", {}).get("up"), "udev and journal")
    assert "kernel" not in sources and "kmsg" not in sources, sources  # auto chose them, not the fallbacks
    assert started.metric("klpd_source_up", source="udev") == 1
    assert started.metric("klpd_source_up", source="journal") == 1

    # The patch loads; its "enabling patch" reached klpd through journald.
    assert result.step("insmod").rc == 0, result.step("insmod").err
    before = Snapshot(result, "before")
    before.converged(("journal", "enabling", patch) in before.events(), f"the journal's 'enabling patch {patch}'")
    assert before.obj(patch, TARGET)["module_load"] == "refused"

    # The kernel refuses the target: the journal carries the only trace of it.
    modprobe = result.step("modprobe")
    assert modprobe.rc != 0
    kernel_said = f"livepatch: patch '{patch}' failed for module '{TARGET}', refusing to load module '{TARGET}'"
    assert kernel_said in modprobe.dmesg, modprobe.dmesg
    journal = [json.loads(line) for line in result.step("journal").out.splitlines() if line.startswith("{")]
    # journald keeps a kernel message whole, under identifier "kernel" and facility 0 (LOG_KERN).
    [stored] = [e for e in journal if e.get("MESSAGE") == kernel_said]
    assert (stored["_TRANSPORT"], stored["SYSLOG_IDENTIFIER"], stored["SYSLOG_FACILITY"]) == ("kernel", "kernel", "0")
    # The same words from user space went in under LOG_USER, with "livepatch" split off as the identifier.
    assert FORGED in result.step("forge").dmesg
    [forged] = [e for e in journal if e.get("MESSAGE") == FORGED.removeprefix("livepatch: ")]
    assert (forged["SYSLOG_IDENTIFIER"], forged["SYSLOG_FACILITY"]) == ("livepatch", "1")

    refused = Snapshot(result, "refused")
    matching = [r for r in refused.daemon["refusals"] if (r["patch"], r["module"]) == (patch, TARGET)]
    refused.converged(matching, f"the refusal of {TARGET} from the journal")
    assert len(matching) == 1 and matching[0]["message"] == kernel_said, refused.daemon["refusals"]
    assert ("journal", "module_load_refused", TARGET) in refused.events(), refused.events()
    # The kernel's time for the record, not journald's: the same instant (to the µs) journald kept as the source's.
    boot_offset = matching[0]["time"] - int(stored["_SOURCE_MONOTONIC_TIMESTAMP"]) / 1e6
    enabling = [e for e in refused.daemon["events"] if (e["source"], e["kind"]) == ("journal", "enabling")]
    [enabling_stored] = [e for e in journal if e.get("MESSAGE") == f"livepatch: enabling patch '{patch}'"]
    other_offset = enabling[0]["time"] - int(enabling_stored["_SOURCE_MONOTONIC_TIMESTAMP"]) / 1e6
    assert boot_offset == pytest.approx(other_offset, abs=0.05)
    assert before.start - 1 <= matching[0]["time"] <= refused.end + 1
    assert refused.metric("klpd_module_load_refusals_total", patch=patch, object=TARGET) == 1
    assert [(r["patch"], r["module"]) for r in refused.daemon["refusals"]] == [(patch, TARGET)]  # not the forged one
    assert refused.metric("klpd_events_total", source="journal") >= 2

    # An ordinary module comes and goes: udevd's re-broadcast of the kernel's uevent, one each.
    assert result.step("modprobe_busy").rc == 0, result.step("modprobe_busy").err
    added = Snapshot(result, "added")
    added.converged(("udev", "add", busy) in added.events(), f"udev's add of {busy}")
    assert result.step("rmmod_busy").rc == 0, result.step("rmmod_busy").err
    removed = Snapshot(result, "removed")
    removed.converged(("udev", "remove", busy) in removed.events(), f"udev's remove of {busy}")
    assert removed.events("udev").count(("udev", "add", busy)) == 1, removed.events()
    assert removed.metric("klpd_events_total", source="udev") >= 2
    assert removed.metric("klpd_lost_events_total", source="udev") == 0
    assert removed.metric("klpd_lost_events_total", source="journal") == 0
    assert result.text("stop.rc").strip() == "0", result.text("klpd.log")[-3000:]
