"""The patch modules installed for every kernel release (``klpctl list``): :mod:`klpd.installed` reads them."""

from __future__ import annotations

from dataclasses import dataclass

from klpd.model import Problem


@dataclass(frozen=True)
class InstalledPatch:
    release: str  # the release whose patch directory holds the file
    name: str | None  # modinfo name= (None: unreadable)
    path: str
    built_for: str | None  # vermagic's release
    loaded: bool  # a module of this name is loaded now (the running release only)
    problem: str | None = None  # why the file could not be read

    @property
    def release_mismatch(self) -> bool:
        return self.built_for is not None and self.built_for != self.release


@dataclass(frozen=True)
class InstalledReleases:
    running: str
    next_boot: str | None  # None: not known (no default-kernel link)
    releases: tuple[str, ...]  # every release with a patch directory or modules, sorted
    patches: tuple[InstalledPatch, ...]
    problems: tuple[Problem, ...] = ()
