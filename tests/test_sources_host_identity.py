"""Which host and boot the daemon's documents name: read from the root, None for what is missing or malformed."""

from __future__ import annotations

from fixtures import FixtureRoot

from klpd.sources.host_identity import HostIdentity, read_host_identity


def test_read_from_the_root(tmp_path):
    fx = FixtureRoot(tmp_path)
    fx.write("/proc/sys/kernel/hostname", "web-12.example\n")
    fx.write("/etc/machine-id", "3d1219c7c4c5404aaa1f6d2a48adfda4\n")
    fx.write("/proc/sys/kernel/random/boot_id", "57dcdc39-6b28-4cf3-8556-443c7dfe1473\n")
    assert read_host_identity(fx.root) == HostIdentity(
        "web-12.example", "3d1219c7c4c5404aaa1f6d2a48adfda4", "57dcdc39-6b28-4cf3-8556-443c7dfe1473"
    )


def test_missing_or_malformed_is_none_never_a_guess(tmp_path):
    fx = FixtureRoot(tmp_path)
    fx.write("/etc/machine-id", "uninitialized\n")  # machine-id(5): what an image carries before first boot
    fx.mkdir("/proc/sys/kernel/random/boot_id")  # not a regular file
    fx.write("/proc/sys/kernel/hostname", "two words\n")
    assert read_host_identity(fx.root) == HostIdentity(None, None, None)
    assert read_host_identity(FixtureRoot(tmp_path / "empty").root).as_json() == {
        "hostname": None, "machine_id": None, "boot_id": None
    }
