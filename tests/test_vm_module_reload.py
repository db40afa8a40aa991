"""A patched module removed and loaded again while its patch stays: the kernel's verdict differs by version.

On x86, kernels without 0c05e7bd2d01 "livepatch,x86: Clear relocation targets on a module removal" (6.3) keep the
relocation targets klp_module_coming() wrote into the patch; the module's next load finds them non-zero and is
refused (Debian's 5.10 and 6.1). Since, the module is patched again (6.12, 7.2). klpd sees that the module was
loaded since the patch from /proc/kallsyms (the patch's ``.klp.sym.<module>.*`` symbols keep the addresses the
kernel resolved) and predicts the reload through the running kernel's rules; this test holds it to the kernel's
answer, whichever it is.
"""

import pytest
from vm import compare
from vm.harness import session_environment

pytestmark = pytest.mark.vm

TARGET = "klpvm_target"
PATCH = "klpvm_mod_pos1"


@pytest.fixture(scope="module")
def result():
    env = session_environment()
    return env.vm().run(
        f"""
        P=$(install_patch {env.built.patch(PATCH)})
        step insmod insmod $P
        klp_wait
        step status_first klpctl status --direct --json
        step modprobe_first modprobe {TARGET}
        klp_wait
        step rmmod rmmod {TARGET}
        klp_wait
        step status_removed klpctl status --direct --json
        step kallsyms_removed grep -F '[{PATCH}]' /proc/kallsyms
        step modprobe_again modprobe {TARGET}
        klp_wait
        sysfs_dump sysfs_again
        step probe cat /sys/module/{TARGET}/parameters/probe
        """,
        timeout=300,
    )


def target(result, step):
    return compare.obj(compare.patch(result.step(step).json(), PATCH), TARGET)


def test_first_load_predicted_and_loads(result):
    assert target(result, "status_first")["module_load"] == "ok"
    assert result.step("modprobe_first").rc == 0, result.step("modprobe_first").err
    assert result.step("rmmod").rc == 0, result.step("rmmod").err


def test_reload_after_removal_predicted(result):
    again = result.step("modprobe_again")
    predicted = target(result, "status_removed")
    kernel_loads = again.rc == 0
    assert predicted["module_load"] == ("ok" if kernel_loads else "refused"), (
        predicted["reasons"],
        again.err,
        again.dmesg,
        result.step("kallsyms_removed").out,
    )
    if kernel_loads:
        # patched again: the patched function answers, and sysfs (where the kernel has the attribute) agrees
        assert int(result.step("probe").out, 16) != 0
        assert result.step("sysfs_again").json()[PATCH]["objects"][TARGET].get("patched", "1") == "1"
    else:
        doc = result.step("status_removed").json()
        refusal = set(compare.failure_lines(again.dmesg))
        assert refusal, again.dmesg
        assert refusal <= compare.predicted_messages(doc, compare.patch(doc, PATCH)), (refusal, predicted["reasons"])
        # 5.10 prints it as "module: x86/modules: Skipping ..." (the module loader's pr_fmt in front)
        nonzero = [line for line in again.dmesg if "existing value is nonzero" in line]
        assert nonzero and all("x86/modules: Skipping invalid relocation target" in line for line in nonzero)
