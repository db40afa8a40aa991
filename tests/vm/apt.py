"""Debian's archive through apt: the host's own configuration for the host's suite, a private one for the others.

The host's apt installs the harness's own tools and, for the host's kernel (bookworm's 6.1), its headers. Another
suite's packages (bullseye's 5.10, trixie's 6.12, sid's 7.x) come through a :class:`PrivateApt`: its own
sources.list, package lists, dpkg status (empty) and archive cache under the harness's cache directory, passed to
apt-get and apt-cache with ``-o`` options. The machine's sources and dpkg database are never touched.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .errors import HarnessError, Unavailable, run

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
MIRROR = "http://deb.debian.org"


def _apt_env() -> dict[str, str]:
    return {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise Unavailable(f"{what} needs root (apt-get); run the suite as root or via ./dev.sh test")


_apt_updated = False


def apt_updated() -> bool:
    return _apt_updated


def apt_update_once() -> None:
    global _apt_updated  # noqa: PLW0603 - one `apt-get update` per test session is the point
    if not _apt_updated:
        _require_root("apt-get update")
        run(["apt-get", "update", "-qq"], env=_apt_env())
        _apt_updated = True


def _installed(package: str) -> bool:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False)
    return proc.returncode == 0 and "install ok installed" in proc.stdout


def apt_install(packages: Sequence[str]) -> None:
    """Install the packages that are not installed yet (no apt call at all when none is missing)."""
    missing = [p for p in packages if not _installed(p)]
    if not missing:
        return
    _require_root(f"installing {' '.join(missing)}")
    apt_update_once()
    run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=300", *missing],
        env=_apt_env(),
    )


def apt_query(args: Sequence[str]) -> str:
    """A host apt-cache query; an empty answer triggers one `apt-get update` (fresh machines have no lists)."""
    out = subprocess.run(["apt-cache", *args], capture_output=True, text=True, check=False).stdout
    if not out.strip() and os.geteuid() == 0:
        apt_update_once()
        out = subprocess.run(["apt-cache", *args], capture_output=True, text=True, check=False).stdout
    return out


def candidate_version(package: str, query: object = apt_query) -> str:
    m = re.search(r"Candidate: (\S+)", query(["policy", package]))  # type: ignore[operator]
    if not m or m.group(1) == "(none)":
        raise Unavailable(f"apt has no candidate for {package}")
    return m.group(1)


def fetch_deb(package: str, version: str, dest: Path, options: Sequence[str] = ()) -> Path:
    """``apt-get download package=version`` into ``dest`` (kept there: a warm cache downloads nothing)."""
    name = f"{package}_{version.replace(':', '%3a')}_"
    found = sorted(dest.glob(f"{name}*.deb"))
    if found:
        return found[0]
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / "partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    # root downloads as _apt, which cannot write into a root-owned cache: download as root instead.
    run(["apt-get", *options, "download", "-qq", "-o", "APT::Sandbox::User=root", f"{package}={version}"], cwd=tmp)
    debs = list(tmp.glob("*.deb"))
    if len(debs) != 1:
        raise HarnessError(f"apt-get download {package}={version} gave {debs}")
    final = dest / debs[0].name
    debs[0].rename(final)
    tmp.rmdir()
    return final


class PrivateApt:
    """apt over ``suites`` ((archive, suite) pairs, e.g. ("debian", "trixie")) with all its state under ``root``."""

    def __init__(self, root: Path, suites: Sequence[tuple[str, str]]) -> None:
        self.root = root
        self.suites = tuple(suites)
        self._updated = False

    def options(self) -> list[str]:
        r = self.root
        return [
            "-o", f"Dir::Etc::SourceList={r / 'sources.list'}",
            "-o", f"Dir::Etc::SourceParts={r / 'empty.d'}",
            "-o", f"Dir::Etc::PreferencesParts={r / 'empty.d'}",
            "-o", f"Dir::Etc::Preferences={r / 'empty.d' / 'none'}",
            "-o", f"Dir::State={r / 'state'}",
            "-o", f"Dir::State::status={r / 'status'}",
            "-o", f"Dir::Cache={r / 'cache'}",
            "-o", "APT::Sandbox::User=root",
        ]  # fmt: skip

    def _configure(self) -> None:
        lines = "".join(f"deb [signed-by={KEYRING}] {MIRROR}/{a} {suite} main\n" for a, suite in self.suites)
        for d in ("empty.d", "state/lists/partial", "cache/archives/partial"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        (self.root / "sources.list").write_text(lines)
        (self.root / "status").touch()

    def update(self) -> None:
        """Fetch the suites' package lists: once per session, or at first use when there are none yet."""
        _require_root("apt-get update")
        self._configure()
        run(["apt-get", *self.options(), "update", "-qq"], env=_apt_env())
        self._updated = True

    def update_if_stale(self) -> bool:
        """Update once per session; False when it was done already (a retry would not help)."""
        if self._updated:
            return False
        self.update()
        return True

    def query(self, args: Sequence[str]) -> str:
        if not any((self.root / "state" / "lists").glob("*Packages*")):
            self.update()
        return run(["apt-cache", *self.options(), *args])

    def candidate(self, package: str) -> str:
        return candidate_version(package, self.query)

    def download(self, package: str, version: str, dest: Path) -> Path:
        return fetch_deb(package, version, dest, self.options())

    def download_closure(self, packages: Sequence[str], dest: Path) -> list[Path]:
        """The packages and everything they depend on (against an empty dpkg status), downloaded into ``dest``."""
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "partial").mkdir(exist_ok=True)
        run(
            ["apt-get", *self.options(), "-o", f"Dir::Cache::archives={dest}", "install", "--download-only", "-y",
             "-qq", "--no-install-recommends", *packages],
            env=_apt_env(),
        )  # fmt: skip
        return sorted(dest.glob("*.deb"))
