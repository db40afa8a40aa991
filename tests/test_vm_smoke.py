"""The QEMU harness itself, and the suite's test modules, against the real kernel — no klpd involved.

If these fail, every other VM case is meaningless: the guest must boot the Debian kernel, load an upstream
livepatch module, and the suite's own .klp.rela modules must resolve exactly what they were built to resolve.
"""

import re

import pytest
from elftools.elf.elffile import ELFFile
from vm import compare
from vm.harness import session_environment

pytestmark = pytest.mark.vm

RESOLVING = {"unique": "klpvm_vm_unique", "dup_pos2": "klpvm_vm_dup_pos2"}


@pytest.fixture(scope="module")
def env():
    return session_environment()


@pytest.fixture(scope="module")
def runs(env):
    scripts = {
        "sample": f"""
            step insmod insmod {env.built.upstream_module("livepatch-sample")}
            klp_wait
            sysfs_dump patched
            step cmdline cat /proc/cmdline
            echo 0 > /sys/kernel/livepatch/livepatch_sample/enabled
            klp_wait
            sysfs_dump unpatched
            step rmmod rmmod livepatch_sample
            step lsmod cat /proc/modules
        """,
        "target": """
            step modprobe modprobe klpvm_target
            step kallsyms cat /proc/kallsyms
            step probe cat /sys/module/klpvm_target/parameters/probe
        """,
    }
    for key, variant in RESOLVING.items():
        scripts[key] = f"""
            step insmod insmod {env.built.patch(variant)}
            step kallsyms cat /proc/kallsyms
            klp_wait
            step cmdline cat /proc/cmdline
        """
    return env.run_many(scripts)


def test_upstream_sample_patches_and_unpatches(env, runs):
    result = runs["sample"]
    assert result.exit_code == 0, result.stderr
    assert result.step("insmod").rc == 0
    assert "livepatch: enabling patch 'livepatch_sample'" in result.step("insmod").dmesg
    patched = result.step("patched").json()["livepatch_sample"]
    assert patched["enabled"] == "1" and patched["transition"] == "0"
    assert patched["objects"]["vmlinux"]["functions"] == ["cmdline_proc_show,1"]
    assert patched["objects"]["vmlinux"].get("patched") == compare.sysfs_patched(env.kernel.release, True)
    assert result.step("cmdline").out == "this has been live patched\n"
    assert result.step("unpatched").json() == {}  # the patch dir goes when unpatching completes, before rmmod
    assert result.step("rmmod").rc == 0
    assert "livepatch_sample" not in result.step("lsmod").out


@pytest.mark.parametrize(("key", "position"), [("unique", 1), ("dup_pos2", 2)])
def test_klp_rela_module_resolves_the_kallsyms_occurrence(env, runs, key, position):
    """A converted module loads, and the loader wrote the address of the sympos-th /proc/kallsyms occurrence."""
    variant = RESOLVING[key]
    name = env.built.symbols.unique if key == "unique" else env.built.symbols.duplicated
    result = runs[key]
    insmod = result.step("insmod")
    assert insmod.rc == 0, insmod.err + "\n".join(insmod.dmesg)
    addresses = compare.kallsyms_addresses(result.step("kallsyms").out, name)
    assert len(addresses) == position  # the symbol was picked as unique, or as named exactly twice
    logged = [m for m in insmod.dmesg if m.startswith(f"{variant}: resolved ")]
    assert len(logged) == 1, insmod.dmesg
    assert int(logged[0].rsplit(" ", 1)[1], 16) == addresses[position - 1]
    # the patched cmdline_proc_show runs the relocated code too
    assert re.fullmatch(rf"{variant} \S+ {addresses[position - 1]:x}\n", result.step("cmdline").out)


def test_target_module_symtabs_differ_between_load_orders(env, runs):
    """klpvm_target is built so that dup_fn has 3 full-symtab occurrences (.text, .init.text, .text) and 2 core."""
    [target] = [t for t in env.built.targets if t.name == "klpvm_target.ko"]
    with open(target, "rb") as f:
        elf = ELFFile(f)
        full = [
            elf.get_section(s["st_shndx"]).name
            for s in elf.get_section_by_name(".symtab").iter_symbols()
            if s.name == "dup_fn"
        ]
    assert full == [".text", ".init.text", ".text"]
    result = runs["target"]
    assert result.step("modprobe").rc == 0, result.step("modprobe").err
    assert len(compare.kallsyms_addresses(result.step("kallsyms").out, "dup_fn", "klpvm_target")) == 2
    assert result.step("probe").out == "0\n"  # unpatched
