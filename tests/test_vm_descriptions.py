"""Patch *descriptions* (klp_patch / klp_object / klp_func / klp_state) judged by Debian 6.1's livepatch core.

Each case is one small static-struct livepatch (tests/vm/desc_modules/klpvm_d_<case>.c) that gets one thing of its
description wrong, or right. Before every insmod the guest runs ``klpctl check --json`` and ``klpctl inspect --json``
on the file; then the insmod's exit status and error, the kernel messages it caused and /sys/kernel/livepatch are
kept. Three boots:

- ``lookups``: vmlinux function lookups, then the same kinds of lookup in klpvm_d_target, loaded before the patches;
- ``coming``: patches of klpvm_d_target loaded before it, each followed by a modprobe of the target
  (klp_module_coming() decides it) and then disabled and removed; then klp_state and atomic replace;
- ``objects``: object names, duplicate objects, NULL funcs, NULL and empty old_name, an orphan ``.klp.rela``.

The kernel's outcomes are asserted by the first group of tests (what the cases were built to show, and the exact
lines klpd's message table quotes); the second group compares klpctl's prediction with them.
"""

import re

import pytest
from vm import compare, desc_build
from vm.harness import session_environment

from klpd.kernel_version import semantics_for

pytestmark = pytest.mark.vm

TARGET = desc_build.TARGET
# What kmod's insmod prints for EINVAL and EEXIST (modprobe prints strerror: "Invalid argument").
EINVAL, EEXIST = "Invalid parameters", "File exists"

# case: (insmod error or None when it loads, function status the kernel's verdict amounts to, the kernel's
# lines). {dup}/{notrace} stand for the vmlinux names desc_build picked. Lines are the ones the insmod (or, for the
# "coming" cases, the target's modprobe) logs, without timestamps, in order; "enabling patch" and transition lines
# of loads are left out. klp_find_object_symbol() prints a vmlinux object as '(null)' when ambiguous, as 'vmlinux'
# when the sympos is past the count.
LOOKUPS = {
    "vm_missing": (EINVAL, "not_found", ["livepatch: symbol 'klpvm_no_such_function' not found in symbol table"]),
    "vm_ambiguous": (EINVAL, "ambiguous", ["livepatch: unresolvable ambiguity for symbol '{dup}' in object '(null)'"]),
    "vm_past": (
        EINVAL,
        "sympos_not_found",
        ["livepatch: symbol position 3 for symbol '{dup}' in object 'vmlinux' not found"],
    ),
    "vm_notrace": (
        EINVAL,
        "not_traceable",
        [
            "livepatch: failed to find location for function '{notrace}'",
            "livepatch: failed to patch object 'vmlinux'",
            "livepatch: failed to enable patch 'klpvm_d_vm_notrace'",
        ],
    ),
    "vm_pos1": (None, "ok", []),
    "vm_pos2": (None, "ok", []),
    "mod_missing": (EINVAL, "not_found", ["livepatch: symbol 'klpvm_no_such_function' not found in symbol table"]),
    "mod_ambiguous": (
        EINVAL,
        "ambiguous",
        [f"livepatch: unresolvable ambiguity for symbol 'dup_fn' in object '{TARGET}'"],
    ),
    "mod_past": (
        EINVAL,
        "sympos_not_found",
        [f"livepatch: symbol position 3 for symbol 'dup_fn' in object '{TARGET}' not found"],
    ),
    "mod_notrace": (
        EINVAL,
        "not_traceable",
        [
            "livepatch: failed to find location for function 'klpvm_d_notrace_fn'",
            f"livepatch: failed to patch object '{TARGET}'",
            "livepatch: failed to enable patch 'klpvm_d_mod_notrace'",
        ],
    ),
    "mod_pos1": (None, "ok", []),
    "mod_pos2": (None, "ok", []),
}
VMLINUX_LOOKUPS = [c for c in LOOKUPS if c.startswith("vm_")]
MODULE_LOOKUPS = [c for c in LOOKUPS if c.startswith("mod_")]
# Patch loaded first: the patch loads, the target's modprobe gets the lookup's verdict.
COMING = {
    "mod_missing": [
        "livepatch: symbol 'klpvm_no_such_function' not found in symbol table",
        f"livepatch: failed to initialize patch 'klpvm_d_mod_missing' for module '{TARGET}' (-22)",
        f"livepatch: patch 'klpvm_d_mod_missing' failed for module '{TARGET}', refusing to load module '{TARGET}'",
    ],
    "mod_ambiguous": [
        f"livepatch: unresolvable ambiguity for symbol 'dup_fn' in object '{TARGET}'",
        f"livepatch: failed to initialize patch 'klpvm_d_mod_ambiguous' for module '{TARGET}' (-22)",
        f"livepatch: patch 'klpvm_d_mod_ambiguous' failed for module '{TARGET}', refusing to load module '{TARGET}'",
    ],
    "mod_past": [
        f"livepatch: symbol position 3 for symbol 'dup_fn' in object '{TARGET}' not found",
        f"livepatch: failed to initialize patch 'klpvm_d_mod_past' for module '{TARGET}' (-22)",
        f"livepatch: patch 'klpvm_d_mod_past' failed for module '{TARGET}', refusing to load module '{TARGET}'",
    ],
    "mod_notrace": [
        f"livepatch: applying patch 'klpvm_d_mod_notrace' to loading module '{TARGET}'",
        "livepatch: failed to find location for function 'klpvm_d_notrace_fn'",
        f"livepatch: failed to apply patch 'klpvm_d_mod_notrace' to module '{TARGET}' (-22)",
        f"livepatch: patch 'klpvm_d_mod_notrace' failed for module '{TARGET}', refusing to load module '{TARGET}'",
    ],
}
COMING_REFUSED = list(COMING)
COMING_LOADS = ["mod_pos1", "mod_pos2"]
INCOMPATIBLE = "livepatch: Livepatch patch (klpvm_d_{}) is not compatible with the already installed livepatches."
STATES = {
    "state_a": (None, []),
    "state_b": (EINVAL, [INCOMPATIBLE.format("state_b")]),
    "replace_nostate": (EINVAL, [INCOMPATIBLE.format("replace_nostate")]),
    "replace": (None, []),
}
OBJECTS = {
    # case: (insmod error or None, the kernel's lines)
    "obj_dotko": (None, []),
    "obj_dash": (None, []),
    "obj_vmlinux": (None, []),
    "obj_long": (EINVAL, []),
    "obj_dup_vmlinux": (
        EEXIST,
        [
            "sysfs: cannot create duplicate filename '/kernel/livepatch/klpvm_d_obj_dup_vmlinux/vmlinux'",
            "kobject_add_internal failed for vmlinux with -EEXIST, don't try to register things with the same name"
            " in the same directory.",
        ],
    ),
    "obj_dup_named": (
        EEXIST,
        [
            "sysfs: cannot create duplicate filename '/kernel/livepatch/klpvm_d_obj_dup_named/klpvm_d_absent'",
            "kobject_add_internal failed for klpvm_d_absent with -EEXIST, don't try to register things with the same"
            " name in the same directory.",
        ],
    ),
    "obj_nofuncs": (EINVAL, []),
    "func_null": (EINVAL, []),
    "func_empty": (EINVAL, ["livepatch: symbol '' not found in symbol table"]),
    "rela_orphan": (None, []),
}
# Loads, yet the kernel never applies (part of) what it describes: the object's name matches no module ever.
NEVER_APPLIED = {"obj_dotko": "dummy.ko", "obj_dash": "my-mod", "obj_vmlinux": "vmlinux", "rela_orphan": None}

# Every line of the kernel log worth comparing: the livepatch core's, sysfs's and kobject's (not the stack dump).
# lib/kobject.c prefixes its messages with "kobject: " (a pr_fmt added after 6.1; 6.12 has it): compared without it.
_RELEVANT = re.compile(r"^(livepatch: |sysfs: |(kobject: )?kobject_add_internal )")
_KOBJECT = "kobject: "
_NOISE = re.compile(r"livepatch: (enabling patch '|'[^']+': (starting \w+ transition|\w+ complete)$)")


@pytest.fixture(scope="module")
def env():
    return session_environment()


@pytest.fixture(scope="module")
def desc(env):
    return desc_build.build(env)


def _prelude(desc) -> str:
    """Shell functions for the guest, and klpvm_d_target installed where modprobe and klpd look (modules.dep)."""
    return f"""
        try_patch() {{
            local p
            p=$(install_patch {desc.directory}/klpvm_d_$1.ko)
            step check_$1 klpctl check --json $p
            step inspect_$1 klpctl inspect --json $p
            step insmod_$1 insmod $p
            klp_wait
            sysfs_dump sysfs_$1
        }}
        remove_patch() {{
            echo 0 > /sys/kernel/livepatch/klpvm_d_$1/enabled && klp_wait && rmmod klpvm_d_$1
        }}
        M=/lib/modules/$(uname -r)
        mkdir -p /tmp/mods/upper /tmp/mods/work
        mount -t overlay -o lowerdir=$M,upperdir=/tmp/mods/upper,workdir=/tmp/mods/work overlay $M
        cp {desc.target} $M/extra/ && depmod -a
        mount -t tracefs nodev /sys/kernel/tracing
    """


def _scripts(desc) -> dict[str, str]:
    filters = "/sys/kernel/tracing/available_filter_functions"
    lookups = _prelude(desc) + f"step ftrace_vmlinux grep -c -x '{desc.notrace}' {filters}\n"
    lookups += "".join(f"try_patch {c}\n" for c in VMLINUX_LOOKUPS)
    lookups += f"step modprobe modprobe {TARGET}\nstep ftrace_module grep -c 'klpvm_d_notrace_fn' {filters}\n"
    lookups += "".join(f"try_patch {c}\n" for c in MODULE_LOOKUPS)

    coming = _prelude(desc)
    for c in COMING_REFUSED:
        coming += f"try_patch {c}\nstep modprobe_{c} modprobe {TARGET}\nklp_wait\nsysfs_dump sysfs_target_{c}\n"
        coming += f"rmmod {TARGET} 2>/dev/null\nremove_patch {c}\n"
    coming += "".join(f"try_patch {c}\n" for c in COMING_LOADS)
    coming += f"step modprobe modprobe {TARGET}\nklp_wait\nsysfs_dump sysfs_target\n"
    coming += "".join(f"try_patch {c}\n" for c in STATES)
    # The replaced patches are freed by a work item after the transition: wait for it, boundedly, as klp_wait does.
    coming += 'for i in $(seq 100); do [ "$(ls /sys/kernel/livepatch)" = klpvm_d_replace ] && break; sleep 0.2; done\n'
    coming += "sysfs_dump sysfs_replaced\nstep cmdline cat /proc/cmdline\n"
    coming += "step replace_dir ls /sys/kernel/livepatch/klpvm_d_replace\n"

    objects = _prelude(desc)
    objects += "".join(f"try_patch {c}\nstep cmdline_{c} cat /proc/cmdline\n" for c in OBJECTS)
    return {"lookups": lookups, "coming": coming, "objects": objects}


@pytest.fixture(scope="module")
def runs(env, desc):
    # no_timer_check: on a loaded host a TCG guest can fail the early IO-APIC timer check and panic ("IO-APIC +
    # timer doesn't work!") before the script starts, seen here; the check says nothing about livepatch.
    scripts = _scripts(desc)
    return env.run_many(scripts, timeout=1200, kernel_args={name: ["no_timer_check"] for name in scripts})


def kernel_lines(dmesg, raw=False) -> list[str]:
    """The relevant lines; ``raw``: as printed, else without kobject's prefix (which only some kernels print)."""
    said = [line for line in dmesg if _RELEVANT.match(line) and not _NOISE.match(line)]
    return said if raw else [line.removeprefix(_KOBJECT) for line in said]


def expand(lines, desc) -> list[str]:
    return [line.format(dup=desc.duplicated, notrace=desc.notrace) for line in lines]


def assert_insmod(step, error, lines, desc):
    if error is None:
        assert step.rc == 0, (step.err, step.dmesg)
    else:
        assert step.rc != 0 and error in step.err, (step.rc, step.err)
    assert kernel_lines(step.dmesg) == expand(lines, desc), step.dmesg


# ---------------------------------------------------------------------------------------------------------------
# What the kernel does (green on their own)


@pytest.mark.parametrize("case", LOOKUPS)
def test_kernel_function_lookup(runs, desc, case):
    result = runs["lookups"]
    error, _, lines = LOOKUPS[case]
    if case.startswith("mod_"):
        assert result.step("modprobe").rc == 0, result.step("modprobe").err
    assert_insmod(result.step(f"insmod_{case}"), error, lines, desc)
    sysfs = result.step(f"sysfs_{case}").json()
    if error is None:
        obj = "vmlinux" if case.startswith("vm_") else TARGET
        name = desc.duplicated if case.startswith("vm_") else "dup_fn"
        patch = sysfs[f"klpvm_d_{case}"]
        assert patch["objects"] == {obj: {"patched": "1", "functions": [f"{name},{case[-1]}"]}}, patch
        assert (patch["enabled"], patch["transition"]) == ("1", "0")
    else:
        assert f"klpvm_d_{case}" not in sysfs


def test_kernel_notrace_functions_have_no_ftrace_record(runs):
    """The notrace cases are what they claim: kallsyms has the function, ftrace has no record of it."""
    result = runs["lookups"]
    assert result.step("ftrace_vmlinux").out.strip() == "0"
    assert result.step("ftrace_module").out.strip() == "0"


@pytest.mark.parametrize("case", COMING_REFUSED)
def test_kernel_refuses_target_after_patch(runs, desc, case):
    result = runs["coming"]
    assert_insmod(result.step(f"insmod_{case}"), None, [], desc)  # the target is absent: nothing looked up yet
    patch = result.step(f"sysfs_{case}").json()[f"klpvm_d_{case}"]
    assert patch["objects"][TARGET]["patched"] == "0"
    modprobe = result.step(f"modprobe_{case}")
    assert modprobe.rc != 0 and "Invalid argument" in modprobe.err, modprobe.err
    assert kernel_lines(modprobe.dmesg) == expand(COMING[case], desc), modprobe.dmesg
    assert result.step(f"sysfs_target_{case}").json()[f"klpvm_d_{case}"]["objects"][TARGET]["patched"] == "0"


def test_kernel_loads_target_after_patches(runs):
    result = runs["coming"]
    for case in COMING_LOADS:
        assert result.step(f"insmod_{case}").rc == 0, result.step(f"insmod_{case}").err
    modprobe = result.step("modprobe")
    assert modprobe.rc == 0, (modprobe.err, modprobe.dmesg)
    sysfs = result.step("sysfs_target").json()
    for case in COMING_LOADS:
        assert sysfs[f"klpvm_d_{case}"]["objects"][TARGET] == {"patched": "1", "functions": [f"dup_fn,{case[-1]}"]}


@pytest.mark.parametrize("case", STATES)
def test_kernel_states(runs, desc, case):
    error, lines = STATES[case]
    assert_insmod(runs["coming"].step(f"insmod_{case}"), error, lines, desc)


def test_kernel_atomic_replace(env, runs):
    result = runs["coming"]
    before, after = result.step("sysfs_state_a").json(), result.step("sysfs_replaced").json()
    assert {"klpvm_d_state_a", "klpvm_d_mod_pos1", "klpvm_d_mod_pos2"} <= set(before)
    assert list(after) == ["klpvm_d_replace"], list(after)  # every patch it replaced is gone from sysfs
    assert result.step("cmdline").out.strip() == "klpvm_d_replace"
    # The replace attribute came with 6.11 (klpd's kernel_version table says which kernel has it): 1 for this patch.
    has_attribute = semantics_for(env.kernel.release).sysfs_replace
    assert ("replace" in result.step("replace_dir").out.split()) is has_attribute
    assert after["klpvm_d_replace"].get("replace") == ("1" if has_attribute else None)
    if has_attribute:
        assert before["klpvm_d_state_a"]["replace"] == "0"


@pytest.mark.parametrize("case", OBJECTS)
def test_kernel_object_descriptions(runs, desc, case):
    result = runs["objects"]
    error, lines = OBJECTS[case]
    assert_insmod(result.step(f"insmod_{case}"), error, lines, desc)
    sysfs = result.step(f"sysfs_{case}").json()
    cmdline = result.step(f"cmdline_{case}").out.strip()
    if error is not None:
        assert f"klpvm_d_{case}" not in sysfs
    elif case == "rela_orphan":  # loads; its section is never applied, so the replacement reads address 0
        assert cmdline == "klpvm_d_rela_orphan 0"
        assert sysfs["klpvm_d_rela_orphan"]["objects"]["vmlinux"]["patched"] == "1"
    else:  # the object exists in sysfs, unpatched, and vmlinux's cmdline_proc_show is untouched
        assert sysfs[f"klpvm_d_{case}"]["objects"] == {
            NEVER_APPLIED[case]: {"patched": "0", "functions": ["cmdline_proc_show,1"]}
        }
        assert not cmdline.startswith("klpvm_d_"), cmdline


# ---------------------------------------------------------------------------------------------------------------
# klpctl against the kernel: `klpctl check` and `klpctl inspect` run in the same guest before each insmod


def checked(result, case):
    """patches[0] of `klpctl check --json` on the case's file, and the exit status."""
    step = result.step(f"check_{case}")
    doc = step.json()
    assert [p["name"] for p in doc["patches"]] == [f"klpvm_d_{case}"], doc["patches"]
    return doc, doc["patches"][0], step.rc


def assert_quotes(doc, patch, lines):
    texts = compare.quoted(doc, patch)
    missing = [line for line in lines if not any(compare.normalize(line) in t for t in texts)]
    assert not missing, f"the kernel said {missing}; klpctl quotes {sorted(texts)}"


def functions(patch):
    return [f for o in patch["objects"] for f in o.get("functions") or []]


def failure_lines(lines):
    """The lines a reason should quote: the verdict, not the 'failed to enable/patch' epilogue."""
    return [line for line in lines if not re.match(r"livepatch: failed to (enable patch|patch object)", line)]


@pytest.mark.parametrize("case", LOOKUPS)
def test_check_predicts_function_lookup(runs, desc, case):
    result = runs["lookups"]
    error, status, lines = LOOKUPS[case]
    doc, patch, rc = checked(result, case)
    assert patch["will_load"] is (result.step(f"insmod_{case}").rc == 0), patch["reasons"]
    assert rc == (0 if error is None else 1)
    [function] = functions(patch)
    assert function["status"] == status, function
    assert_quotes(doc, patch, failure_lines(expand(lines, desc)))


@pytest.mark.parametrize("case", COMING_REFUSED + COMING_LOADS)
def test_check_predicts_target_module_load(runs, desc, case):
    result = runs["coming"]
    doc, patch, _ = checked(result, case)
    assert patch["will_load"] is (result.step(f"insmod_{case}").rc == 0), patch["reasons"]
    target = compare.obj(patch, TARGET)
    refused = case in COMING_REFUSED and result.step(f"modprobe_{case}").rc != 0
    assert target["module_load"] == ("refused" if refused else "ok"), target
    [function] = functions(patch)
    assert function["status"] == LOOKUPS[case][1], function
    if refused:
        assert_quotes(doc, patch, [line for line in COMING[case] if "failed for module" not in line][:1])


@pytest.mark.parametrize("case", STATES)
def test_check_predicts_states(runs, desc, case):
    result = runs["coming"]
    _, lines = STATES[case]
    doc, patch, _ = checked(result, case)
    assert patch["will_load"] is (result.step(f"insmod_{case}").rc == 0), patch["reasons"]
    assert_quotes(doc, patch, lines)


@pytest.mark.parametrize("case", OBJECTS)
def test_check_predicts_object_descriptions(runs, desc, case):
    result = runs["objects"]
    _, lines = OBJECTS[case]
    doc, patch, rc = checked(result, case)
    assert patch["will_load"] is (result.step(f"insmod_{case}").rc == 0), patch["reasons"]
    assert_quotes(doc, patch, [line for line in lines if line.startswith("livepatch: ")])
    # kobject's line, exactly as this kernel printed it (its prefix came after 6.1), is the one klpctl quotes.
    kobject = {line for line in kernel_lines(result.step(f"insmod_{case}").dmesg, raw=True) if "kobject_add" in line}
    quoted_exactly = {p.get("kernel_message") for p in patch["problems"] + doc.get("problems", [])}
    assert kobject <= quoted_exactly, (kobject, quoted_exactly)
    if case in NEVER_APPLIED:  # loads, but part of it is silently dead: an error all the same
        assert rc == 1, result.step(f"check_{case}").err
        severities = {p["severity"] for p in patch["problems"] + doc.get("problems", [])}
        assert "error" in severities, patch["problems"]
    if case == "func_null":
        assert [f["status"] for f in functions(patch)] == ["ok", "invalid"], functions(patch)


LOADED = [("lookups", c) for c, v in LOOKUPS.items() if v[0] is None]
LOADED += [("coming", c) for c in [*COMING_REFUSED, *COMING_LOADS, "state_a", "replace"]]
LOADED += [("objects", c) for c, v in OBJECTS.items() if v[0] is None]


@pytest.mark.parametrize(("boot", "case"), LOADED)
def test_inspect_description_matches_sysfs(runs, boot, case):
    """What `klpctl inspect` reads of the description is what the kernel made of it (sysfs prints sympos 0 as 1)."""
    result = runs[boot]
    sysfs = result.step(f"sysfs_{case}").json()[f"klpvm_d_{case}"]
    [file] = result.step(f"inspect_{case}").json()["files"]
    described = {
        o["name"] if o["name"] is not None else "vmlinux": sorted(
            f"{f['old_name']},{f['old_sympos'] or 1}" for f in o["functions"]
        )
        for o in file["description"]["objects"]
    }
    assert described == {name: o["functions"] for name, o in sysfs["objects"].items()}
