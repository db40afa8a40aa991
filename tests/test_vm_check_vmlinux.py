"""``klpctl check`` against the real kernel for patches whose ``.klp.rela.vmlinux.*`` sections the loader applies.

klpd is asked about a patch module, then the module is insmod-ed: klpd's ``will_load`` must be the insmod outcome;
when the kernel refuses, klpd must flag the same symbol for the same reason and quote the kernel's own message;
when it loads, ``klpctl status --direct`` must agree with /sys/kernel/livepatch. The variants (tests/vm/modules.py)
are built so that each trips one rule of klp_resolve_symbols(); the first assertions check that the kernel still
does what the variant was built for.

A refused insmod leaves no livepatch state behind, so the refused variants share one boot (one ``klpctl check`` of
all of them, then one insmod each); each variant that loads gets a pristine kernel of its own. The boots of the
module run together (Environment.run_many), the tests then read their results.
"""

import pytest
from vm import compare
from vm.harness import session_environment

pytestmark = pytest.mark.vm

REFUSED = {
    # variant: the kernel's verdict on its insmod
    "klpvm_vm_dup_pos0": "ambiguous",
    "klpvm_vm_dup_past": "sympos_not_found",
    "klpvm_vm_missing": "not_found",
    "klpvm_vm_malformed": "malformed_name",
    "klpvm_vm_not_klp": "not_livepatch_symbol",
}


@pytest.fixture(scope="module")
def env():
    return session_environment()


LOADS = ["klpvm_vm_unique", "klpvm_vm_dup_pos2", "klpvm_vm_ordinary_rela"]


@pytest.fixture(scope="module")
def runs(env):
    installs = "\n".join(f"P_{v}=$(install_patch {env.built.patch(v)})" for v in REFUSED)
    checked = " ".join(f"$P_{v}" for v in REFUSED)
    insmods = "\n".join(f"step insmod_{v} insmod $P_{v}\nklp_wait" for v in REFUSED)
    scripts = {"refused": f"{installs}\nstep check klpctl check --json {checked}\n{insmods}"}
    for variant in LOADS:
        scripts[variant] = f"""
            P=$(install_patch {env.built.patch(variant)})
            step check klpctl check --json $P
            step insmod insmod $P
            klp_wait
            step status klpctl status --direct --json
            sysfs_dump sysfs
            step kallsyms cat /proc/kallsyms
        """
    return env.run_many(scripts)


@pytest.mark.parametrize("variant", REFUSED)
def test_check_predicts_refused_insmod(runs, variant):
    refused_run = runs["refused"]
    insmod = refused_run.step(f"insmod_{variant}")
    verdict = compare.symbol_verdict(insmod.dmesg)
    assert insmod.rc != 0 and verdict is not None, (insmod.err, insmod.dmesg)
    assert verdict.status == REFUSED[variant], insmod.dmesg  # the variant still does what it was built for

    check = refused_run.step("check")
    assert check.rc == 1, check.err
    doc = check.json()
    patch = compare.patch(doc, variant)
    assert patch["will_load"] is False
    assert patch["reasons"]
    assert compare.matches_verdict(patch, verdict), (verdict, compare.symbols(patch), patch["problems"])
    assert verdict.message in compare.predicted_messages(doc, patch)
    assert any(s["state"] == "fails" for s in compare.sections(patch, "vmlinux")), compare.sections(patch)


@pytest.mark.parametrize("variant", ["klpvm_vm_unique", "klpvm_vm_dup_pos2"])
def test_check_predicts_load_and_status_matches_sysfs(env, runs, variant):
    result = runs[variant]
    insmod = result.step("insmod")
    assert insmod.rc == 0, (insmod.err, insmod.dmesg)
    symbol = env.built.symbols.unique if variant == "klpvm_vm_unique" else env.built.symbols.duplicated

    check = result.step("check")
    assert check.rc == 0, check.err
    before = compare.patch(check.json(), variant)
    assert before["will_load"] is True, before["reasons"]
    assert all(s["status"] == "ok" for s in compare.symbols(before)), compare.symbols(before)
    [checked] = [s for s in compare.symbols(before) if s["name"] == symbol]
    assert checked["occurrences"] == len(compare.kallsyms_addresses(result.step("kallsyms").out, symbol))
    assert not checked["load_order_dependent"]

    status = result.step("status")
    assert status.rc == 0, status.err
    after = compare.patch(status.json(), variant)
    sysfs = result.step("sysfs").json()
    assert compare.sysfs_mismatches(after, sysfs[variant]) == []
    assert after["enabled"] is True and after["transition"] is False
    assert compare.obj(after, "vmlinux")["patched"] is compare.shown_patched(env.kernel.release, True)
    assert [s["state"] for s in compare.sections(after, "vmlinux")] == ["applied"]


def test_livepatch_symbol_left_in_ordinary_rela(runs):
    """The kernel loads it and writes address 0 where the symbol is used: only a tool can catch this."""
    variant = "klpvm_vm_ordinary_rela"
    result = runs[variant]
    insmod = result.step("insmod")
    assert insmod.rc == 0, insmod.err
    resolved = [m for m in insmod.dmesg if m.startswith(f"{variant}: resolved ")]
    assert resolved and resolved[0].endswith(" at 0"), insmod.dmesg  # the kernel used address 0, silently

    patch = compare.patch(result.step("check").json(), variant)
    assert patch["will_load"] is True  # the kernel does load it
    codes = {p["code"] for p in compare.problems(patch)}
    assert "livepatch_symbol_in_ordinary_rela" in codes, patch["problems"]
