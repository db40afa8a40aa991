"""Patches of a module (``.klp.rela.klpvm_target.*``) against the real kernel, in both load orders.

klpvm_target (tests/vm/modules/klpvm_target_*.c) has three static dup_fn(): a and b in .text, c in .init.text, in
ELF symtab order a, c, b. When the patch loads first, klp_module_coming() resolves the module's relocations against
the target's full symtab (a, c, b); when the target is already loaded, against its core symtab (a, b). Reading the
target's ``probe`` parameter calls the patched function, which returns the address the kernel resolved.

Patch first: klpd must call the sections ``pending`` and predict the target's modprobe (``module_load``); after
modprobe, ``applied`` and sysfs ``patched=1``, or the kernel's refusal. The same prediction must hold with the
patch's file moved away, from what the kernel shows of the loaded patch (/sys/module/<patch>/sections,
/proc/kallsyms). Target first: ``will_load`` is the insmod.
"""

import pytest
from vm import compare
from vm.harness import session_environment

pytestmark = pytest.mark.vm

TARGET = "klpvm_target"

# variant: (what the probe returns or the kernel's verdict) with the patch loaded first, then with the target first.
# "a", "b": the core dup_fn of that unit; "init": the .init.text one (gone from kallsyms after init).
CASES = {
    "klpvm_mod_pos1": ("a", "a"),
    "klpvm_mod_pos2": ("init", "b"),
    "klpvm_mod_pos3": ("b", "sympos_not_found"),
    "klpvm_mod_pos4": ("sympos_not_found", "sympos_not_found"),
    "klpvm_mod_vmlinux_sym": ("vmlinux_from_module_section", "vmlinux_from_module_section"),
}
RESOLVED = ("a", "b", "init")


@pytest.fixture(scope="module")
def env():
    return session_environment()


TARGET_FIRST_REFUSED = [v for v, (_, second) in CASES.items() if second not in RESOLVED]
TARGET_FIRST_LOADS = [v for v, (_, second) in CASES.items() if second in RESOLVED]


@pytest.fixture(scope="module")
def runs(env):
    scripts = {}
    for variant in CASES:
        scripts[f"patch_first_{variant}"] = f"""
            P=$(install_patch {env.built.patch(variant)})
            step check klpctl check --json $P
            step insmod insmod $P
            klp_wait
            step status_before klpctl status --direct --json
            mv $P /tmp/ && step status_no_file klpctl status --direct --json && mv /tmp/${{P##*/}} $P
            sysfs_dump sysfs_before
            step modprobe modprobe {TARGET}
            klp_wait
            step status_after klpctl status --direct --json
            sysfs_dump sysfs_after
            step probe cat /sys/module/{TARGET}/parameters/probe
            step kallsyms cat /proc/kallsyms
        """
    # A refused insmod leaves no state behind: the refused variants share one boot and one klpctl check.
    installs = "\n".join(f"P_{v}=$(install_patch {env.built.patch(v)})" for v in TARGET_FIRST_REFUSED)
    checked = " ".join(f"$P_{v}" for v in TARGET_FIRST_REFUSED)
    insmods = "\n".join(f"step insmod_{v} insmod $P_{v}\nklp_wait" for v in TARGET_FIRST_REFUSED)
    scripts["target_first_refused"] = (
        f"step modprobe modprobe {TARGET}\n{installs}\nstep check klpctl check --json {checked}\n{insmods}"
    )
    for variant in TARGET_FIRST_LOADS:
        scripts[f"target_first_{variant}"] = f"""
            step modprobe modprobe {TARGET}
            P=$(install_patch {env.built.patch(variant)})
            step check klpctl check --json $P
            step insmod insmod $P
            klp_wait
            step status klpctl status --direct --json
            sysfs_dump sysfs
            step probe cat /sys/module/{TARGET}/parameters/probe
            step kallsyms cat /proc/kallsyms
        """
    # A target loaded while a patch is enabled (ftrace active) leaves ftrace's copies of its freed init functions
    # in /proc/kallsyms, under its name: a trap for anyone counting kallsyms lines for a module sympos.
    scripts["ftrace_copies"] = f"""
        step insmod_pos1 insmod {env.built.patch("klpvm_mod_pos1")}
        klp_wait
        step modprobe modprobe {TARGET}
        klp_wait
        step kallsyms cat /proc/kallsyms
        P=$(install_patch {env.built.patch("klpvm_mod_pos3")})
        step check klpctl check --json $P
        step insmod insmod $P
    """
    return env.run_many(scripts)


def probe_symbol(probe: str, kallsyms: str) -> str:
    """Which dup_fn the patched klpvm_target_fn returned: "a", "b", "init" (not a core one) or "unpatched"."""
    value = int(probe, 16)
    if value == 0:
        return "unpatched"
    core = compare.kallsyms_addresses(kallsyms, "dup_fn", TARGET)
    assert len(core) == 2, core
    return {core[0]: "a", core[1]: "b"}.get(value, "init")


def assert_refusal_predicted(doc, patch, dmesg):
    """The kernel refused on a symbol: klpd flags that symbol for that reason and predicts every line it logged."""
    verdict = compare.symbol_verdict(dmesg)
    assert verdict is not None, dmesg
    assert compare.matches_verdict(patch, verdict), (verdict, compare.symbols(patch))
    missing = set(compare.failure_lines(dmesg)) - compare.predicted_messages(doc, patch)
    assert not missing, (
        f"kernel said {sorted(missing)}; klpd predicted {sorted(compare.predicted_messages(doc, patch))}"
    )
    return verdict


@pytest.mark.parametrize("variant", CASES)
def test_patch_first_then_target(env, runs, variant):
    release = env.kernel.release
    expected = CASES[variant][0]
    result = runs[f"patch_first_{variant}"]
    insmod, modprobe = result.step("insmod"), result.step("modprobe")
    assert insmod.rc == 0, insmod.err  # module-specific sections wait for their module: the patch always loads
    kernel_loads_target = modprobe.rc == 0
    if expected in RESOLVED:
        assert kernel_loads_target, modprobe.err + "\n".join(modprobe.dmesg)
        assert probe_symbol(result.step("probe").out, result.step("kallsyms").out) == expected
    else:
        assert not kernel_loads_target
        assert compare.symbol_verdict(modprobe.dmesg).status == expected, modprobe.dmesg
        assert f"refusing to load module '{TARGET}'" in "\n".join(modprobe.dmesg)

    check = result.step("check")
    doc = check.json()
    patch = compare.patch(doc, variant)
    assert patch["will_load"] is True, patch["reasons"]
    target = compare.obj(patch, TARGET)
    assert target["loaded"] is False
    assert target["module_load"] == ("ok" if kernel_loads_target else "refused"), target["reasons"]
    states = {s["state"] for s in target["sections"]}
    assert states == ({"pending"} if kernel_loads_target else {"fails"}), target["sections"]
    if not kernel_loads_target:
        assert_refusal_predicted(doc, patch, modprobe.dmesg)
    # The load-order hazard: where the two orders resolve differently (another symbol, or none), klpd says so
    # before either is loaded.
    if variant != "klpvm_mod_vmlinux_sym":
        [dup_fn] = [s for s in compare.symbols(patch) if s["name"] == "dup_fn"]
        assert dup_fn["load_order_dependent"] == (CASES[variant][0] != CASES[variant][1]), dup_fn

    # Loaded, target absent: sysfs shows the object unpatched; klpd agrees and still calls the sections pending.
    before = compare.patch(result.step("status_before").json(), variant)
    sysfs_before = result.step("sysfs_before").json()[variant]
    assert sysfs_before["objects"][TARGET].get("patched") == compare.sysfs_patched(release, False)
    assert compare.sysfs_mismatches(before, sysfs_before) == []
    assert compare.obj(before, TARGET)["loaded"] is False
    assert {s["state"] for s in compare.sections(before, TARGET)} == states

    # The file moved away: the running kernel's view of the loaded patch gives the same verdicts — except where a
    # symbol of one object is used by another object's section, which only the file shows.
    no_file = compare.patch(result.step("status_no_file").json(), variant)
    assert no_file["path"] is None
    assert [w["code"] for w in no_file["problems"] if w["code"] == "no_patch_file"] == ["no_patch_file"]
    no_file_target = compare.obj(no_file, TARGET)
    assert [(s["name"], s["relocations"]) for s in no_file_target["sections"]] == [
        (s["name"], None) for s in compare.sections(before, TARGET)
    ]
    if variant != "klpvm_mod_vmlinux_sym":
        assert no_file_target["module_load"] == target["module_load"], no_file_target["reasons"]
        assert {s["state"] for s in no_file_target["sections"]} == states
        assert sorted((s["elf_name"], s["status"]) for s in compare.symbols(no_file)) == sorted(
            (s["elf_name"], s["status"]) for s in compare.symbols(patch)
        )
        if not kernel_loads_target:
            assert_refusal_predicted(result.step("status_no_file").json(), no_file, modprobe.dmesg)

    after = compare.patch(result.step("status_after").json(), variant)
    sysfs_after = result.step("sysfs_after").json()[variant]
    assert compare.sysfs_mismatches(after, sysfs_after) == []
    after_target = compare.obj(after, TARGET)
    if kernel_loads_target:
        assert sysfs_after["objects"][TARGET].get("patched") == compare.sysfs_patched(release, True)
        assert after_target["loaded"] is True and after_target["patched"] is compare.shown_patched(release, True)
        assert {s["state"] for s in after_target["sections"]} == {"applied"}
    else:
        assert sysfs_after["objects"][TARGET].get("patched") == compare.sysfs_patched(release, False)
        assert after_target["loaded"] is False


@pytest.mark.parametrize("variant", TARGET_FIRST_REFUSED)
def test_target_first_then_refused_patch(runs, variant):
    result = runs["target_first_refused"]
    assert result.step("modprobe").rc == 0, result.step("modprobe").err
    insmod = result.step(f"insmod_{variant}")
    assert insmod.rc != 0
    assert compare.symbol_verdict(insmod.dmesg).status == CASES[variant][1], insmod.dmesg

    check = result.step("check")
    assert check.rc == 1, check.err
    doc = check.json()
    patch = compare.patch(doc, variant)
    assert patch["will_load"] is False
    assert compare.obj(patch, TARGET)["loaded"] is True
    assert_refusal_predicted(doc, patch, insmod.dmesg)


@pytest.mark.parametrize("variant", TARGET_FIRST_LOADS)
def test_target_first_then_patch(env, runs, variant):
    result = runs[f"target_first_{variant}"]
    assert result.step("modprobe").rc == 0, result.step("modprobe").err
    insmod = result.step("insmod")
    assert insmod.rc == 0, insmod.err + "\n".join(insmod.dmesg)
    assert probe_symbol(result.step("probe").out, result.step("kallsyms").out) == CASES[variant][1]

    check = result.step("check")
    assert check.rc == 0, check.err
    patch = compare.patch(check.json(), variant)
    assert patch["will_load"] is True, patch["reasons"]
    assert compare.obj(patch, TARGET)["loaded"] is True
    assert all(s["status"] == "ok" for s in compare.symbols(patch)), compare.symbols(patch)

    status = compare.patch(result.step("status").json(), variant)
    sysfs = result.step("sysfs").json()[variant]
    assert sysfs["objects"][TARGET].get("patched") == compare.sysfs_patched(env.kernel.release, True)
    assert compare.sysfs_mismatches(status, sysfs) == []
    assert {s["state"] for s in compare.sections(status, TARGET)} == {"applied"}


def test_ftrace_copies_of_init_functions_do_not_count(runs):
    result = runs["ftrace_copies"]
    assert result.step("insmod_pos1").rc == 0 and result.step("modprobe").rc == 0
    lines = [line.split() for line in result.step("kallsyms").out.splitlines()]
    listed = [f for f in lines if f[2:] == ["dup_fn", f"[{TARGET}]"]]
    own = compare.kallsyms_addresses(result.step("kallsyms").out, "dup_fn", TARGET)
    assert len(own) == 2 and len(listed) > 2, listed  # the trap is there: more dup_fn lines than the kernel counts
    insmod = result.step("insmod")
    assert insmod.rc != 0
    assert compare.symbol_verdict(insmod.dmesg).status == "sympos_not_found", insmod.dmesg

    doc = result.step("check").json()
    patch = compare.patch(doc, "klpvm_mod_pos3")
    assert patch["will_load"] is False, patch
    [dup_fn] = [s for s in compare.symbols(patch) if s["name"] == "dup_fn"]
    assert dup_fn["occurrences"] == 2, dup_fn
    assert_refusal_predicted(doc, patch, insmod.dmesg)
