"""``klpctl status --direct`` against /sys/kernel/livepatch of a real kernel, with the kernel's own selftest modules:
stacked patches, atomic replace, a patch of a module loaded later, and a transition held up by a busy kworker.
"""

import json
import re
import tarfile

import pytest
from vm import compare
from vm.harness import session_environment

from klpd.cli import main

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def env():
    return session_environment()


@pytest.fixture(scope="module")
def runs(env):
    up = env.built.upstream_module
    return env.run_many({
        "stacked": f"""
            step insmod1 insmod {up("test_klp_livepatch")}
            klp_wait
            step insmod2 insmod {up("test_klp_atomic_replace")} replace=0
            klp_wait
            step status klpctl status --direct --json
            sysfs_dump sysfs
            step inspect klpctl inspect --json {up("test_klp_livepatch")} {up("test_klp_atomic_replace")}
            step capture klpctl capture $KLPVM_OUT/stacked.tar.gz
            step status_capture klpctl status --root $KLPVM_OUT/stacked.tar.gz --json
        """,
        "replace": f"""
            step insmod1 insmod {up("test_klp_livepatch")}
            klp_wait
            step insmod2 insmod {up("test_klp_atomic_replace")} replace=1
            klp_wait
            step status klpctl status --direct --json
            sysfs_dump sysfs
            step modules cat /proc/modules
        """,
        "module_object": f"""
            step insmod insmod {up("test_klp_callbacks_demo")}
            klp_wait
            step status_before klpctl status --direct --json
            sysfs_dump sysfs_before
            step modprobe modprobe test_klp_callbacks_mod
            klp_wait
            step status_after klpctl status --direct --json
            sysfs_dump sysfs_after
            step inspect klpctl inspect --json {up("test_klp_callbacks_demo")}
        """,
        # test_klp_callbacks_busy block_transition=Y keeps a kworker inside the function the demo patches.
        "blocked": f"""
            step modprobe modprobe test_klp_callbacks_busy block_transition=Y
            sleep 1
            step check_before klpctl check --json {up("test_klp_callbacks_demo")}
            step insmod insmod {up("test_klp_callbacks_demo")}
            sleep 2
            step status_blocked klpctl status --direct --json
            step status_blocked_text klpctl status --direct -v
            step status_blocked_details klpctl status --direct --json -v
            sysfs_dump sysfs_blocked
            step capture klpctl capture $KLPVM_OUT/blocked.tar.gz
            step status_capture klpctl status --root $KLPVM_OUT/blocked.tar.gz --json
            echo 0 > /sys/module/test_klp_callbacks_busy/parameters/block_transition
            klp_wait
            step status_done klpctl status --direct --json
            sysfs_dump sysfs_done
        """,
    })  # fmt: skip


def assert_status_matches_sysfs(step_status, step_sysfs):
    """Every patch sysfs shows is in klpd with the same attributes, and klpd shows no other enabled patch."""
    # 1: problems found somewhere, 4: a transition in progress; still a full answer
    assert step_status.rc in (0, 1, 4), step_status.err
    doc = step_status.json()
    sysfs = step_sysfs.json()
    for name, attributes in sysfs.items():
        assert compare.sysfs_mismatches(compare.patch(doc, name), attributes) == [], name
    enabled = {p["name"] for p in doc["patches"] if p["enabled"]}
    assert enabled <= set(sysfs), f"klpd calls {enabled - set(sysfs)} enabled; sysfs has {sorted(sysfs)}"
    return doc, sysfs


@pytest.mark.parametrize("case", ["stacked", "module_object"])
def test_inspect_reads_the_selftest_modules_as_sysfs_shows_them(runs, case):
    """The kernel's own selftest modules: the functions klpctl inspect reads from each file's klp_patch are the
    <object>/<function,sympos> directories the kernel made of it (sysfs prints sympos 0 as 1)."""
    result = runs[case]
    sysfs = result.step("sysfs" if case == "stacked" else "sysfs_after").json()
    files = result.step("inspect").json()["files"]
    assert files, result.step("inspect").err
    for file in files:
        desc = file["description"]
        assert desc is not None and desc["found_by"] == "static", file["problems"]
        described = {
            o["name"] or "vmlinux": sorted(f"{f['old_name']},{f['old_sympos'] or 1}" for f in o["functions"])
            for o in desc["objects"]
        }
        shown = {name: sorted(o["functions"]) for name, o in sysfs[file["name"]]["objects"].items()}
        assert described == shown, (file["name"], described, shown)


def test_stacked_patches(env, runs):
    result = runs["stacked"]
    assert result.step("insmod1").rc == 0 and result.step("insmod2").rc == 0
    doc, sysfs = assert_status_matches_sysfs(result.step("status"), result.step("sysfs"))
    assert set(sysfs) == {"test_klp_livepatch", "test_klp_atomic_replace"}
    # which attributes this kernel creates (replace since 6.11, stack_order since 6.14) is what klpd's table says
    for name in sysfs:
        assert compare.attribute_mismatches(env.kernel.release, sysfs[name]) == [], (name, sysfs[name])
    for name in sysfs:
        patch = compare.patch(doc, name)
        assert patch["loaded"] is True and patch["enabled"] is True and patch["transition"] is False


def test_atomic_replace(runs):
    result = runs["replace"]
    assert result.step("insmod1").rc == 0 and result.step("insmod2").rc == 0
    doc, sysfs = assert_status_matches_sysfs(result.step("status"), result.step("sysfs"))
    # The replaced patch left sysfs, its module stays loaded (it is removable now).
    assert set(sysfs) == {"test_klp_atomic_replace"}
    assert "test_klp_livepatch " in result.step("modules").out
    assert compare.patch(doc, "test_klp_atomic_replace")["enabled"] is True
    # Gone from sysfs and never installed in a patch directory: klpd lists no such patch (its module no longer
    # patches anything; it was loaded from the build directory).
    assert [p for p in doc["patches"] if p["name"] == "test_klp_livepatch"] == []


def test_module_object_patched_when_its_module_loads(env, runs):
    release = env.kernel.release
    result = runs["module_object"]
    assert result.step("insmod").rc == 0 and result.step("modprobe").rc == 0
    doc, sysfs = assert_status_matches_sysfs(result.step("status_before"), result.step("sysfs_before"))
    assert sysfs["test_klp_callbacks_demo"]["objects"]["test_klp_callbacks_mod"].get("patched") == (
        compare.sysfs_patched(release, False)
    )
    assert compare.obj(compare.patch(doc, "test_klp_callbacks_demo"), "test_klp_callbacks_mod")["loaded"] is False
    doc, sysfs = assert_status_matches_sysfs(result.step("status_after"), result.step("sysfs_after"))
    assert sysfs["test_klp_callbacks_demo"]["objects"]["test_klp_callbacks_mod"].get("patched") == (
        compare.sysfs_patched(release, True)
    )
    assert compare.obj(compare.patch(doc, "test_klp_callbacks_demo"), "test_klp_callbacks_mod")["loaded"] is True


def test_blocked_transition(runs):
    result = runs["blocked"]
    assert result.step("modprobe").rc == 0 and result.step("insmod").rc == 0
    doc, sysfs = assert_status_matches_sysfs(result.step("status_blocked"), result.step("sysfs_blocked"))
    assert sysfs["test_klp_callbacks_demo"]["transition"] == "1"
    assert result.step("status_blocked").rc == 4, doc  # a transition in progress, nothing else wrong
    blocked = compare.patch(doc, "test_klp_callbacks_demo")
    assert blocked["transition"] is True
    # klpctl status --direct names the kworker the kernel waits for (its patch_state is still 0)
    tasks = blocked["tasks"]
    assert tasks["kind"] == "blocking" and tasks["known"] and tasks["count"] >= 1, tasks
    assert any(t["comm"].startswith("kworker") for t in tasks["tasks"]), tasks
    # as klp blocking -vv: a kworker has no command line, and its kernel stack (read as root) shows where it
    # sleeps: in the function the patch replaces
    details = compare.patch(result.step("status_blocked_details").json(), "test_klp_callbacks_demo")["tasks"]
    kworker = next(t for t in details["tasks"] if t["comm"].startswith("kworker"))
    assert kworker["cmdline"] is None, kworker
    assert any(f.startswith("busymod_work_func+") for f in kworker["stack"]), kworker["stack"]
    text = result.step("status_blocked_text").out
    assert "cmdline: - (a kernel thread, or gone)" in text
    assert re.search(r"^\s+busymod_work_func\+0x[0-9a-f]+/0x[0-9a-f]+ \[test_klp_callbacks_busy\]$", text, re.M), text
    # Before the insmod, klpctl check saw that kworker asleep in the function the patch replaces.
    before = compare.patch(result.step("check_before").json(), "test_klp_callbacks_demo")
    sleeping = before["tasks"]
    assert sleeping["kind"] == "sleeping_in_replaced_function" and sleeping["known"], sleeping
    functions = {t["function"] for t in sleeping["tasks"]}
    assert functions == {"busymod_work_func [test_klp_callbacks_busy]"}, sleeping
    doc, sysfs = assert_status_matches_sysfs(result.step("status_done"), result.step("sysfs_done"))
    assert sysfs["test_klp_callbacks_demo"]["transition"] == "0"
    assert result.step("status_done").rc != 4, doc
    assert compare.patch(doc, "test_klp_callbacks_demo")["transition"] is False


@pytest.mark.parametrize(("case", "status_step"), [("stacked", "status"), ("blocked", "status_blocked")])
def test_a_capture_answers_as_the_guest(runs, case, status_step, tmp_path, capsys):
    """klpctl capture in the guest, then status --root of the archive, in the guest and on this host: the same
    document as the guest's own status --direct, field for field (it holds no timestamp), the transition's
    blocking kworker included."""
    result = runs[case]
    capture = result.step("capture")
    assert capture.rc == 0, capture.err
    assert "skipped" not in capture.err, capture.err
    guest = result.step(status_step).json()
    assert result.step("status_capture").json() == guest
    archive = tmp_path / f"{case}.tar.gz"
    archive.write_bytes(result.files[f"{case}.tar.gz"])
    assert main(["status", "--json", "--root", str(archive)]) == result.step(status_step).rc
    assert json.loads(capsys.readouterr().out) == guest
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    patch = "test_klp_livepatch" if case == "stacked" else "test_klp_callbacks_demo"
    assert {"proc/kallsyms", "proc/modules", f"sys/kernel/livepatch/{patch}/enabled"} <= names
    # klpctl runs from the host's tree the guest sees under /: its own code is not taken for a system file
    assert {n.split("/")[0] for n in names} <= {"proc", "sys", "lib", "boot", "var", "usr"}, sorted(names)
    assert not [n for n in names if n.endswith((".py", ".pyc", ".so"))]
    with tarfile.open(archive) as tar:  # proc/cmdline may be there, empty: a name in the listing of /proc
        private = {m.name: m.size for m in tar.getmembers() if m.name.endswith(("environ", "cmdline", "maps"))}
    assert set(private.values()) <= {0} and not [n for n in private if n.count("/") > 1], private
    if case == "blocked":  # the tasks' patch_state: what names the kworker that holds the transition
        assert any(n.endswith("/patch_state") for n in names)
        assert compare.patch(guest, "test_klp_callbacks_demo")["tasks"]["count"] >= 1
