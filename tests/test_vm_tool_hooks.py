"""Patch descriptions as the patch tools' own init code hands them to the kernel: kpatch's and klp-build's hooks.

klpd reads kpatch-build's ``.kpatch.funcs`` and klp-build's ``.init.klp_objects`` (klpd/elf/description/) and
predicts from them what klp_enable_patch() will do. Here the modules are built with the tools' real runtime code
(tests/vm/tool_hooks.py: kpatch's livepatch-patch-hook.c and create-klp-module from trixie's kpatch-build on
bookworm's 6.1; scripts/livepatch/init.c of the guest's own linux-source on sid's 7.x), the diff step written by
hand (tests/vm/hook_modules/). One boot per kernel: each module is checked with ``klpctl check --json`` and
``klpctl inspect --json``, then loaded; the insmod's status, the kernel's messages, /sys/kernel/livepatch and
``cat /proc/cmdline`` (which the loading patches replace) are the kernel's verdict.
"""

import re

import pytest
from vm import compare, tool_hooks
from vm.harness import session_environment
from vm.series import selected

pytestmark = pytest.mark.vm

# What kmod's insmod prints for each errno the cases meet.
EINVAL, EBUSY = "Invalid parameters", "Device or resource busy"
ERRNO = {EINVAL: "EINVAL", EBUSY: "EBUSY"}
MISSING = "livepatch: symbol 'klpvm_no_such_function' not found in symbol table"

# case: (insmod error or None when it loads, the status of each function, the kernel's lines). {dup} stands for the
# vmlinux name kallsyms lists twice. Lines as in test_vm_descriptions: livepatch/sysfs/kobject lines of the insmod,
# "enabling patch" and transition lines left out.
CASES = {
    "klpvm_kp_missing": (EINVAL, ["not_found"], [MISSING]),
    "klpvm_kp_ambiguous": (
        EINVAL,
        ["ambiguous"],
        ["livepatch: unresolvable ambiguity for symbol '{dup}' in object '(null)'"],
    ),
    "klpvm_kp_load": (None, ["ok", "ok"], []),
    "klpvm_kb_missing": (EINVAL, ["not_found"], [MISSING]),
    # Two diff objects of one patch, both of vmlinux: two klp_objects named NULL, the second one's kobject clashes.
    # klp_enable_patch()'s -EEXIST reaches insmod as EBUSY on 7.1+ (do_init_module()).
    "klpvm_kb_two_files": (
        EBUSY,
        ["ok", "ok"],
        [
            "sysfs: cannot create duplicate filename '/kernel/livepatch/klpvm_kb_two_files/vmlinux'",
            "kobject: kobject_add_internal failed for vmlinux with -EEXIST, don't try to register things with the"
            " same name in the same directory.",
        ],
    ),
    "klpvm_kb_load": (None, ["ok", "ok"], []),
}
TOOL = {case: tool for tool in tool_hooks.TOOLS for case in CASES if case.startswith(tool_hooks.TOOLS[tool][1])}
LOADS = [case for case, (error, _, _) in CASES.items() if error is None]
CALLBACK_LINE = {"kpatch": "klpvm: kpatch pre-patch callback for vmlinux",
                 "klp-build": "klpvm: klp-build pre-patch callback for vmlinux"}  # fmt: skip


# Every kernel line worth comparing: the livepatch core's, sysfs's and kobject's (not the stack dump), without the
# lines of a successful enable (as test_vm_descriptions).
_RELEVANT = re.compile(r"^(livepatch: |sysfs: |(kobject: )?kobject_add_internal )")
_NOISE = re.compile(r"livepatch: (enabling patch '|'[^']+': (starting \w+ transition|\w+ complete)$)")


def _session_tool() -> str | None:
    series = selected()[0].name
    return next((tool for tool, (s, _) in tool_hooks.TOOLS.items() if s == series), None)


def _needs_tool(case: str) -> None:
    """Skip a case whose tool is proven on another kernel than this session's (it would build nothing here)."""
    tool, series = TOOL[case], tool_hooks.TOOLS[TOOL[case]][0]
    if _session_tool() != tool:
        pytest.skip(f"{tool}'s hook is proven on the {series} kernel series only; this session boots the "
                    f"{selected()[0].name} series (KLPD_VM_KERNEL)")  # fmt: skip


@pytest.fixture(scope="module")
def env():
    return session_environment()


@pytest.fixture(scope="module")
def hooks(env):
    return tool_hooks.build(env)


@pytest.fixture(scope="module")
def run(env, hooks):
    cases = [c for c in CASES if TOOL[c] == hooks.tool]
    assert sorted(cases) == sorted(tool_hooks.cases(hooks.tool)), "a hook module without a case here, or the reverse"
    script = "".join(
        f"""
        p=$(install_patch {hooks.patch(case)})
        step check_{case} klpctl check --json $p
        step inspect_{case} klpctl inspect --json $p
        step insmod_{case} insmod $p
        klp_wait
        sysfs_dump sysfs_{case}
        step cmdline_{case} cat /proc/cmdline
        """
        for case in sorted(cases, key=lambda c: CASES[c][0] is None)  # the refusals first, on a pristine kernel
    )
    # no_timer_check: see test_vm_descriptions.runs.
    return env.run_many({"hooks": script}, timeout=900, kernel_args={"hooks": ["no_timer_check"]})["hooks"]


def kernel_lines(step) -> list[str]:
    return [line for line in step.dmesg if _RELEVANT.match(line) and not _NOISE.match(line)]


def expected_lines(case, hooks) -> list[str]:
    return [line.format(dup=hooks.duplicated) for line in CASES[case][2]]


# ---------------------------------------------------------------------------------------------------------------
# What the kernel does with the tools' init code (green on their own)


@pytest.mark.parametrize("case", CASES)
def test_kernel_verdict(case, request):
    _needs_tool(case)
    run, hooks = request.getfixturevalue("run"), request.getfixturevalue("hooks")
    error = CASES[case][0]
    step = run.step(f"insmod_{case}")
    if error is None:
        assert step.rc == 0, (step.err, step.dmesg)
    else:
        assert step.rc != 0 and error in step.err, (step.rc, step.err)
    assert kernel_lines(step) == expected_lines(case, hooks), step.dmesg
    sysfs = run.step(f"sysfs_{case}").json()
    assert (case in sysfs) is (error is None), sysfs


@pytest.mark.parametrize("case", LOADS)
def test_kernel_runs_the_loaded_patch(case, request):
    """The replacement runs (it prints the patch's name), with its klp relocation applied (kpatch's reads
    vmlinux's saved_command_line through .klp.rela.vmlinux..text), after the hook's pre-patch callback."""
    _needs_tool(case)
    run = request.getfixturevalue("run")
    words = run.step(f"cmdline_{case}").out.split()
    assert words[0] == case, words
    if TOOL[case] == "kpatch":
        assert "console=ttyS0" in words[1:], words  # the kernel's own command line, read through the klp relocation
    assert CALLBACK_LINE[TOOL[case]] in run.step(f"insmod_{case}").dmesg


# ---------------------------------------------------------------------------------------------------------------
# klpctl against the kernel: `klpctl check` and `klpctl inspect` on the same file, before its insmod


def checked(run, case):
    step = run.step(f"check_{case}")
    doc = step.json()
    assert [p["name"] for p in doc["patches"]] == [case], doc["patches"]
    return doc, doc["patches"][0], step.rc


@pytest.mark.parametrize("case", CASES)
def test_check_predicts_the_kernel(case, request):
    _needs_tool(case)
    run, hooks = request.getfixturevalue("run"), request.getfixturevalue("hooks")
    _, statuses, _ = CASES[case]
    doc, patch, rc = checked(run, case)
    loaded = run.step(f"insmod_{case}").rc == 0
    assert patch["will_load"] is loaded, patch.get("reasons")
    assert rc == (0 if loaded else 1), run.step(f"check_{case}").err
    functions = [f for o in patch["objects"] for f in o.get("functions") or []]
    assert [f["status"] for f in functions] == statuses, functions
    if not loaded:  # the check klpd refuses it for gives the errno insmod printed
        failing = [c for c in patch["load_checks"] if c["result"] == "fails"]
        assert failing and failing[0]["errno"] == ERRNO[CASES[case][0]], failing
    lines = [line for line in expected_lines(case, hooks) if line.startswith(("livepatch: ", "kobject"))]
    texts = compare.quoted(doc, patch)
    missing = [line for line in lines if not any(compare.normalize(line) in t for t in texts)]
    assert not missing, f"the kernel said {missing}; klpctl quotes {sorted(texts)}"


@pytest.mark.parametrize("case", LOADS)
def test_inspect_description_matches_sysfs(case, request):
    """What `klpctl inspect` reads of the tool's description is what the kernel built from it (sysfs shows sympos 0
    as 1), found by the tool's own format, with the callback the hook ran."""
    _needs_tool(case)
    run = request.getfixturevalue("run")
    sysfs = run.step(f"sysfs_{case}").json()[case]
    [file] = run.step(f"inspect_{case}").json()["files"]
    description = file["description"]
    assert description["found_by"] == TOOL[case]
    described = {
        o["name"] if o["name"] is not None else "vmlinux": sorted(
            f"{f['old_name']},{f['old_sympos'] or 1}" for f in o["functions"]
        )
        for o in description["objects"]
    }
    assert described == {name: o["functions"] for name, o in sysfs["objects"].items()}
    assert [o["callbacks"] for o in description["objects"]] == [["pre_patch"]]
