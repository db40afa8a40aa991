from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from klpd.model_loader import TrustedKey
from klpd.root import SystemRoot
from klpd.sources.module_signing import (
    KEYRING_UNKNOWN,
    key_description,
    parse_lockdown,
    parse_proc_keys,
    read_module_signing,
)
from tests.fixtures import FixtureRoot, asymmetric_describe, keyring_describe, proc_key_line

DEBIAN_CA = "Debian Secure Boot CA: 6ccece7e4c6c0d1f6149f3dd27dfcc5cbb419ea1"
DEBIAN_SIGNER = "Debian Secure Boot Signer 2022 - linux: 14011249c2675ea8e5148542202005810584b25f"
MS_CA = "Microsoft Corporation UEFI CA 2011: 13adbf4309bd82709c8cd54f316ed5228eb63b83"
MS_PCA = "Microsoft Windows Production PCA 2011: a92902398e16c49778cd90f99e4f9ae17c55af53"


def keyring(serial: int, name: str, links: int | None, perm: int = 0x1F0B0000) -> str:
    return proc_key_line(serial, "keyring", keyring_describe(name, links), perm=perm)


def key(serial: int, description: str, perm: int, flags: str = "I------") -> str:
    return proc_key_line(serial, "asymmetric", asymmetric_describe(description), perm=perm, flags=flags)


def debian_secure_boot() -> list[str]:
    """/proc/keys of a Debian 12 host booted with Secure Boot, as root (serials are random)."""
    return [
        proc_key_line(0x039C36B9, "keyring", "_uid_ses.0: 1", perm=0x1F3F0000, flags="I--Q---", gid=65534),
        keyring(0x1C62BDA3, ".builtin_trusted_keys", 2),
        keyring(0x0BD7E2D1, ".secondary_trusted_keys", 1),  # its one link: .builtin_trusted_keys
        keyring(0x2F0C1A44, ".platform", 2, perm=0x3F010000),
        keyring(0x37F483E4, ".blacklist", 1, perm=0x0F0B0000),
        key(0x0A1B2C3D, DEBIAN_CA, 0x1F030000),
        key(0x3A1B2C3D, DEBIAN_SIGNER, 0x1F030000),
        key(0x11223344, MS_CA, 0x1F010000),
        key(0x55667788, MS_PCA, 0x1F010000),
        proc_key_line(0x66778899, "blacklist", "bin:47ff1b63b140b6fc04ed79131331e6", perm=0x01010000),
    ]


def secure_boot_host(tmp_path: Path) -> FixtureRoot:
    fx = FixtureRoot(tmp_path)
    fx.sig_enforce(True)
    fx.lockdown("integrity")
    fx.keys(debian_secure_boot())
    fx.modules_disabled(False)
    return fx


# -- the live host ------------------------------------------------------------------------------------------------

LIVE_FILES = {
    "sig_enforce": "/sys/module/module/parameters/sig_enforce",
    "lockdown": "/sys/kernel/security/lockdown",
    "keys": "/proc/keys",
    "modules_disabled": "/proc/sys/kernel/modules_disabled",
}


def test_live_host_reads_what_exists_and_reports_nothing_absent():
    read = read_module_signing(SystemRoot.at("/"))
    for field, path in LIVE_FILES.items():
        value = getattr(read.value, field)
        if not os.path.exists(path):
            assert value is None, field  # absent: the kernel lacks the feature, not a problem
            assert not [p for p in read.problems if p.subject == path]
        elif field != "keys" or os.geteuid() == 0:
            assert value is not None, (field, read.problems)
            assert not [p for p in read.problems if p.subject == path], read.problems
    if read.value.lockdown is not None:
        assert read.value.lockdown in ("none", "integrity", "confidentiality")


def test_live_proc_keys_parses_without_odd_lines():
    if not os.path.exists("/proc/keys"):
        assert read_module_signing(SystemRoot.at("/")).value.keys is None
        return
    text = Path("/proc/keys").read_text()
    read = parse_proc_keys(text, "/proc/keys")
    assert read.problems == ()
    assert len(read.value) == len(text.splitlines())


# -- fixtures -----------------------------------------------------------------------------------------------------


def test_secure_boot_host(tmp_path):
    read = read_module_signing(secure_boot_host(tmp_path).root)
    assert read.problems == ()
    signing = read.value
    assert (signing.sig_enforce, signing.lockdown, signing.modules_disabled) == (True, "integrity", False)
    assert signing.keys == (
        TrustedKey(".builtin_trusted_keys", DEBIAN_CA),
        TrustedKey(".builtin_trusted_keys", DEBIAN_SIGNER),
        TrustedKey(".platform", MS_CA),
        TrustedKey(".platform", MS_PCA),
    )


def test_nothing_there_is_none_without_problems(tmp_path):
    read = read_module_signing(FixtureRoot(tmp_path).root)
    assert read.problems == ()
    assert (read.value.sig_enforce, read.value.lockdown, read.value.keys, read.value.modules_disabled) == (
        None, None, None, None,
    )  # fmt: skip


def test_not_enforced_and_disabled(tmp_path):
    fx = FixtureRoot(tmp_path)
    fx.sig_enforce(False)
    fx.lockdown("none")
    fx.modules_disabled(True)
    signing = read_module_signing(fx.root).value
    assert (signing.sig_enforce, signing.lockdown, signing.modules_disabled) == (False, "none", True)


@pytest.mark.parametrize(
    ("field", "path", "text"),
    [
        ("sig_enforce", "/sys/module/module/parameters/sig_enforce", "1\n"),
        ("lockdown", "/sys/kernel/security/lockdown", "none integrity confidentiality\n"),
        ("lockdown", "/sys/kernel/security/lockdown", "[none] [integrity]\n"),
        ("modules_disabled", "/proc/sys/kernel/modules_disabled", "2\n"),
        ("modules_disabled", "/proc/sys/kernel/modules_disabled", "\n"),
    ],
)
def test_malformed_attribute_is_a_problem_naming_it(tmp_path, field, path, text):
    fx = secure_boot_host(tmp_path)
    fx.write(path, text)
    read = read_module_signing(fx.root)
    assert getattr(read.value, field) is None
    (problem,) = read.problems
    assert problem.code == "attribute_malformed" and problem.subject == path and path in problem.message
    assert read.value.keys is not None  # the other files are still read


@pytest.mark.parametrize("path", list(LIVE_FILES.values()))
def test_fifo_in_place_of_a_file_is_unreadable_not_a_hang(tmp_path, path):
    fx = secure_boot_host(tmp_path)
    target = fx.root.path(path)
    target.unlink()
    os.mkfifo(target)
    result: list[object] = []
    reader = threading.Thread(target=lambda: result.append(read_module_signing(fx.root)), daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert result, "read_module_signing() blocked on a FIFO"
    read = result[0]
    field = next(f for f, p in LIVE_FILES.items() if p == path)
    assert getattr(read.value, field) is None  # type: ignore[attr-defined]
    (problem,) = read.problems  # type: ignore[attr-defined]
    assert problem.code == "source_unreadable" and problem.subject == path and "not a regular file" in problem.message


def test_directory_in_place_of_a_file_is_unreadable(tmp_path):
    fx = secure_boot_host(tmp_path)
    fx.root.path("/proc/keys").unlink()
    fx.mkdir("/proc/keys")
    read = read_module_signing(fx.root)
    assert read.value.keys is None
    assert [p.subject for p in read.problems] == ["/proc/keys"]


def test_lockdown_levels():
    assert parse_lockdown("[none] integrity confidentiality\n", "x") == "none"
    assert parse_lockdown("none integrity [confidentiality]\n", "x") == "confidentiality"


# -- /proc/keys: which keyring -------------------------------------------------------------------------------------


def keys_of(tmp_path: Path, lines: list[str], sig_enforce: bool | None = True):
    fx = FixtureRoot(tmp_path)
    if sig_enforce is not None:
        fx.sig_enforce(sig_enforce)
    fx.keys(lines)
    return read_module_signing(fx.root)


def test_platform_and_machine_both_holding_keys_cannot_be_told_apart(tmp_path):
    lines = [*debian_secure_boot(), keyring(0x12121212, ".machine", 1, perm=0x3F010000)]
    lines.append(key(0x13131313, "Local MOK: 00112233445566778899aabbccddeeff00112233", 0x1F010000))
    keys = keys_of(tmp_path, lines).value.keys
    assert keys is not None
    by_description = {k.description: k.keyring for k in keys}
    assert by_description[DEBIAN_CA] == ".builtin_trusted_keys"
    assert by_description[MS_CA] == by_description[MS_PCA] == KEYRING_UNKNOWN
    assert by_description["Local MOK: 00112233445566778899aabbccddeeff00112233"] == KEYRING_UNKNOWN


def test_count_mismatch_leaves_keys_unplaced(tmp_path):
    # The wireless regdb key is created like a built-in one, in .builtin_regdb_keys: two candidates, one link.
    lines = [
        keyring(1, ".builtin_trusted_keys", 1),
        keyring(2, ".builtin_regdb_keys", 1),
        key(3, DEBIAN_CA, 0x1F030000),
        key(4, "sforshee: 00b28ddf47aef9cea7", 0x1F030000),
    ]
    keys = keys_of(tmp_path, lines).value.keys
    assert keys == (TrustedKey(KEYRING_UNKNOWN, DEBIAN_CA), TrustedKey(KEYRING_UNKNOWN, "sforshee: 00b28ddf47aef9cea7"))


def test_runtime_secondary_key_is_listed_unplaced(tmp_path):
    lines = [
        keyring(1, ".builtin_trusted_keys", 1),
        keyring(2, ".secondary_trusted_keys", 2, perm=0x1F0F0000),
        key(3, DEBIAN_CA, 0x1F030000),
        key(4, "klpd test signer: 0a0b0c0d", 0x3F010000, flags="I--Q---"),
    ]
    keys = keys_of(tmp_path, lines).value.keys
    assert keys == (
        TrustedKey(".builtin_trusted_keys", DEBIAN_CA),
        TrustedKey(KEYRING_UNKNOWN, "klpd test signer: 0a0b0c0d"),
    )


def test_revoked_and_dead_keys_are_left_out(tmp_path):
    lines = [keyring(1, ".builtin_trusted_keys", 1), key(3, DEBIAN_CA, 0x1F030000)]
    lines += [key(5, "gone: 01", 0x3F010000, flags="IR-----"), key(6, "dead: 02", 0x3F010000, flags="I-D----")]
    assert keys_of(tmp_path, lines).value.keys == (TrustedKey(".builtin_trusted_keys", DEBIAN_CA),)


def test_empty_builtin_keyring_is_no_keys(tmp_path):
    read = keys_of(tmp_path, [keyring(0x1C62BDA3, ".builtin_trusted_keys", 0)])
    assert read.value.keys == () and read.problems == ()


def test_unprivileged_reader_sees_no_trusted_keyring(tmp_path):
    lines = [proc_key_line(0x0083C4A2, "keyring", "_ses: 2", perm=0x3F030000, uid=1000, gid=1000, flags="I--Q---")]
    read = keys_of(tmp_path, lines)
    assert read.value.keys is None
    (problem,) = read.problems
    assert problem.code == "keys_not_visible" and problem.subject == "/proc/keys" and "root" in problem.message
    # Without CONFIG_MODULE_SIG the keys do not matter: nothing to report.
    assert keys_of(tmp_path / "no_module_sig", lines, sig_enforce=None).problems == ()


def test_odd_proc_keys_lines_are_counted(tmp_path):
    lines = [keyring(1, ".builtin_trusted_keys", 1), "garbage\n", key(3, DEBIAN_CA, 0x1F030000), "1234 I------ x\n"]
    read = keys_of(tmp_path, lines)
    assert read.value.keys == (TrustedKey(".builtin_trusted_keys", DEBIAN_CA),)
    (problem,) = read.problems
    assert problem.code == "malformed_lines" and "2 malformed lines, first at line 2" in problem.message


def test_key_description_keeps_colons_of_its_own():
    assert key_description(asymmetric_describe("Acme: Kernel: ab12")) == "Acme: Kernel: ab12"
    assert key_description("no subtype yet") == "no subtype yet"
