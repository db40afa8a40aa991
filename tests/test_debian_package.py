"""The Debian package built from this tree (debian/): `dpkg-buildpackage -us -uc -b` works, the .deb holds what
a host needs where Debian puts it, depends only on Debian's python3-* packages, starts the service on install,
and what it installs runs: klpctl on /usr/bin/python3, the unit through `systemd-analyze verify`."""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from debian_package import DEBIAN_ENV, build_deb
from fixtures import RELEASE, one_symbol_root

PYTHON_DEPENDS = {"python3-pyelftools", "python3-pyudev", "python3-prometheus-client", "python3-systemd",
                  "python3-zstandard"}  # fmt: skip


def tool(name: str) -> str:
    path = shutil.which(name, path=DEBIAN_ENV["PATH"])
    if path is None:
        pytest.fail(f"{name} is needed (./dev.sh test installs it)")
    return path


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    return build_deb(tmp_path_factory.mktemp("deb"))


@pytest.fixture(scope="module")
def installed(deb, tmp_path_factory) -> Path:
    """The package's files as dpkg would lay them out."""
    root = tmp_path_factory.mktemp("installed")
    subprocess.run([tool("dpkg-deb"), "-x", str(deb), str(root)], check=True)
    return root


def field(deb: Path, name: str) -> str:
    out = subprocess.run([tool("dpkg-deb"), "-f", str(deb), name], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def control_file(deb: Path, name: str) -> str:
    out = subprocess.run([tool("dpkg-deb"), "-I", str(deb), name], capture_output=True, text=True, check=False)
    assert out.returncode == 0, f"the package has no {name}: {out.stderr}"
    return out.stdout


def test_the_package_holds_every_file_a_host_needs(deb):
    listing = subprocess.run([tool("dpkg-deb"), "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    # Units are in /lib/systemd/system with bookworm's debhelper, /usr/lib/systemd/system with later ones.
    paths = {line.split()[-1].removeprefix(".").replace("/usr/lib/systemd/", "/lib/systemd/")
             for line in listing.splitlines()}  # fmt: skip
    expected = {"/usr/bin/klpd", "/usr/bin/klpctl", "/lib/systemd/system/klpd.service",
                "/lib/systemd/system/klpd-textfile.service", "/lib/systemd/system/klpd-textfile.timer",
                "/usr/lib/sysusers.d/klpd.conf", "/etc/klpd/klpd.toml",
                "/usr/share/klpd/prometheus/klpd-alerts.yml", "/usr/share/klpd/grafana/klpd-dashboard.json",
                "/usr/share/klpd/prometheus/alertmanager-inhibit.example.yml", "/usr/share/doc/klpd/README.md",
                "/usr/lib/python3/dist-packages/klpd/cli/__init__.py", "/usr/share/man/man1/klpctl.1.gz",
                "/usr/share/bash-completion/completions/klpctl", "/usr/share/zsh/vendor-completions/_klpctl",
                "/usr/lib/python3/dist-packages/klpd/elf/reloc_tables.py"}  # fmt: skip
    assert expected - paths == set()
    assert not [p for p in paths if "/tests/" in p or p.endswith(".test.yml")], "test files were packaged"
    assert re.search(r"^-rwxr-xr-x root/root .* \./usr/bin/klpctl$", listing, re.MULTILINE)


def test_it_depends_only_on_debian_packages(deb):
    depends = {re.sub(r"\s*\(.*\)", "", d).strip() for d in field(deb, "Depends").split(",")}
    assert depends >= PYTHON_DEPENDS
    # Nothing from PyPI's names (systemd-python, prometheus-client...) and nothing the package does not use.
    assert all(d.startswith("python3") or "sysusers" in d for d in depends), depends
    assert field(deb, "Architecture") == "all"


def test_the_config_is_a_conffile_and_install_creates_the_user_and_starts_the_service(deb):
    assert control_file(deb, "conffiles").split() == ["/etc/klpd/klpd.toml"]
    postinst = control_file(deb, "postinst")
    assert "systemd-sysusers" in postinst and "klpd.conf" in postinst
    assert "deb-systemd-helper enable 'klpd.service'" in postinst
    assert "deb-systemd-invoke $_dh_action 'klpd.service'" in postinst
    assert "deb-systemd-invoke stop 'klpd.service'" in control_file(deb, "prerm")
    # The textfile timer is the other way to run klpd: installed, left to the administrator to enable.
    assert "deb-systemd-invoke $_dh_action 'klpd-textfile" not in postinst
    assert "if deb-systemd-helper debian-installed 'klpd-textfile.timer'; then" in postinst


def test_the_installed_klpctl_runs_on_debians_python(installed, tmp_path):
    """/usr/bin/klpctl as installed, its klpd package from the .deb and nothing from this checkout or a venv."""
    klpctl = installed / "usr/bin/klpctl"
    assert klpctl.read_text().startswith("#!/usr/bin/python3\n")
    fx = one_symbol_root(tmp_path)
    env = {**DEBIAN_ENV, "PYTHONPATH": str(installed / "usr/lib/python3/dist-packages"), "PYTHONNOUSERSITE": "1"}
    code = "import klpd, sys; print(klpd.__file__)"
    where = subprocess.run(["/usr/bin/python3", "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                           check=True)  # fmt: skip
    assert where.stdout.startswith(str(installed))
    run = subprocess.run(["/usr/bin/python3", str(klpctl), "status", "--direct", "--root", str(fx.path)], env=env,
                         cwd=tmp_path, capture_output=True, text=True, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert f"kernel {RELEASE}" in run.stdout


def test_the_man_page_and_completions_are_the_packaged_klpctls(installed):
    """Generated at build time from the package's own parser: the same text its klpctl prints."""
    env = {**DEBIAN_ENV, "PYTHONPATH": str(installed / "usr/lib/python3/dist-packages"), "PYTHONNOUSERSITE": "1"}

    def klpctl(*args: str) -> str:
        return subprocess.run(["/usr/bin/python3", str(installed / "usr/bin/klpctl"), *args], env=env,
                              capture_output=True, text=True, check=True).stdout  # fmt: skip

    man = gzip.decompress((installed / "usr/share/man/man1/klpctl.1.gz").read_bytes()).decode()
    assert man == klpctl("manpage") and man.startswith(".TH KLPCTL 1 ")
    assert (installed / "usr/share/bash-completion/completions/klpctl").read_text() == klpctl("completion", "bash")
    assert (installed / "usr/share/zsh/vendor-completions/_klpctl").read_text() == klpctl("completion", "zsh")


def test_the_runbook_the_alerts_link_is_installed_uncompressed(installed):
    rules = (installed / "usr/share/klpd/prometheus/klpd-alerts.yml").read_text()
    urls = set(re.findall(r'runbook_url: "file://([^"#]+)#', rules))
    assert urls == {"/usr/share/doc/klpd/README.md"}
    assert "\n## Runbook\n" in (installed / "usr/share/doc/klpd/README.md").read_text()


def test_the_installed_unit_verifies(installed, tmp_path):
    """`systemd-analyze verify` of the unit the package installs; its commands are looked up in the unpacked
    package (verify insists that ExecStart names an existing executable)."""
    [unit] = [u for u in (installed / d / "klpd.service" for d in ("lib/systemd/system", "usr/lib/systemd/system"))
              if u.exists()]  # fmt: skip
    text = unit.read_text()
    assert "ExecStart=/usr/bin/klpd " in text and (installed / "usr/bin/klpd").is_file()
    copy = tmp_path / unit.name
    copy.write_text(text.replace("ExecStart=/usr/bin/klpd ", f"ExecStart={installed}/usr/bin/klpd "))
    result = subprocess.run([tool("systemd-analyze"), "verify", str(copy)], capture_output=True, text=True,
                            check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [line for line in (result.stdout + result.stderr).splitlines() if "klpd" in line] == []
