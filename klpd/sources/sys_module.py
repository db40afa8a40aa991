"""/sys/module/<name>/: what sysfs tells about one module (kernel/module/sysfs.c, kernel/params.c).

- ``initstate`` (live/coming/going) exists for loadable modules only: a built-in module with parameters also
  has a /sys/module/<name>/ directory, without it;
- ``srcversion`` (modules built with CONFIG_MODULE_SRCVERSION_ALL or MODULE_VERSION) and ``taint`` (since 3.4:
  the module's taint letters, an empty line when none) are optional;
- ``sections/`` lists the module's SHF_ALLOC sections by name (files of mode 0400, readable by root only, but
  the names are listable by everyone); for a loaded patch module its ``.klp.rela.*`` sections are among them.

Missing attributes are None: the model's way to say "this kernel or module does not say".
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from klpd.model import Problem
from klpd.names import KLP_RELA_PREFIX
from klpd.regular_file import read_regular_text
from klpd.root import HostPath, SystemRoot
from klpd.sources.result import Read, unreadable


@dataclass(frozen=True, slots=True)
class SysModule:
    """``/sys/module/<name>/``; attributes this module or kernel does not have are None."""

    name: str
    initstate: str | None  # "live", "coming", "going"; None for a built-in module
    srcversion: str | None
    taint: str | None  # "" when untainted
    sections: tuple[str, ...] | None  # sorted; None when there is no sections/ directory

    @property
    def klp_rela_sections(self) -> tuple[str, ...]:
        return tuple(s for s in self.sections or () if s.startswith(KLP_RELA_PREFIX))


def parse_attribute(text: str) -> str:
    """A sysfs attribute's value: its one line, without the newline the kernel appends."""
    return text[:-1] if text.endswith("\n") else text


def _attribute(path: HostPath, problems: list[Problem]) -> str | None:
    try:
        return parse_attribute(read_regular_text(path))  # a FIFO planted under --root: a problem, not a hang
    except FileNotFoundError:
        return None
    except OSError as error:
        problems.append(unreadable(path.host, error))
        return None


def read_sys_module(root: SystemRoot, name: str) -> Read[SysModule | None]:
    """``/sys/module/<name>/`` under ``root``; value None when the directory does not exist."""
    directory = root.sys_module.child(name)
    if not directory.local.is_dir():
        return Read(None)
    problems: list[Problem] = []
    values = {
        attribute: _attribute(directory.child(attribute), problems)
        for attribute in ("initstate", "srcversion", "taint")
    }
    sections: tuple[str, ...] | None
    try:
        sections = tuple(sorted(os.listdir(directory.local / "sections")))
    except FileNotFoundError:
        sections = None
    except OSError as error:
        problems.append(unreadable(directory.child("sections").host, error))
        sections = None
    if not directory.local.is_dir():  # unloaded while we read: what was read may be half gone
        return Read(None)
    module = SysModule(name, values["initstate"], values["srcversion"], values["taint"], sections)
    return Read(module, tuple(problems))
