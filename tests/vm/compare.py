"""Reading the kernel's verdict (dmesg, sysfs) and klpd's ("klpd.status/1" JSON) so that the VM cases compare them.

The kernel's failure messages are those of kernel/livepatch/core.c (6.1): the first symbol-level one names the
symbol and says why; a refused module load adds "failed to initialize patch" and "refusing to load module" lines.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from klpd.kernel_version import semantics_for

PREFIX = "livepatch: "

# kernel message -> klpd SymbolStatus value, in klp_resolve_symbols()/klp_find_object_symbol() wording.
SYMBOL_FAILURES = (
    (re.compile(r"unresolvable ambiguity for symbol '(?P<name>[^']+)' in object '[^']*'$"), "ambiguous"),
    (
        re.compile(r"symbol position \d+ for symbol '(?P<name>[^']+)' in object '[^']*' not found$"),
        "sympos_not_found",
    ),
    (re.compile(r"symbol '(?P<name>[^']+)' not found in symbol table$"), "not_found"),
    (re.compile(r"symbol (?P<name>\S+) has an incorrectly formatted name$"), "malformed_name"),
    # 6.19+ names the relocation: "symbol X at rela sec N idx M is not marked as a livepatch symbol" (7.2)
    (
        re.compile(r"symbol (?P<name>\S+)(?: at rela sec \d+ idx -?\d+)? is not marked as a livepatch symbol$"),
        "not_livepatch_symbol",
    ),
    (
        re.compile(r"invalid access to vmlinux symbol '(?P<name>[^']+)' from module-specific livepatch relocation"),
        "vmlinux_from_module_section",
    ),
)
MODULE_REFUSAL = (
    re.compile(r"failed to initialize patch '[^']+' for module '[^']+' \(-?\d+\)$"),
    re.compile(r"patch '[^']+' failed for module '[^']+', refusing to load module '[^']+'$"),
)


def normalize(message: str) -> str:
    return message.strip().removeprefix(PREFIX)


@dataclass(frozen=True)
class KernelVerdict:
    status: str  # a klpd SymbolStatus value
    name: str  # the symbol as the kernel names it: the part of .klp.sym, or the whole ELF name
    message: str  # the kernel's line, without "livepatch: "


def livepatch_lines(dmesg: Iterable[str]) -> Iterator[str]:
    for line in dmesg:
        if line.startswith(PREFIX):
            yield normalize(line)


def symbol_verdict(dmesg: Iterable[str]) -> KernelVerdict | None:
    """The first symbol-level livepatch failure the kernel logged (it stops at the first), or None."""
    for line in livepatch_lines(dmesg):
        for pattern, status in SYMBOL_FAILURES:
            m = pattern.match(line)
            if m:
                return KernelVerdict(status, m.group("name"), line)
    return None


def failure_lines(dmesg: Iterable[str]) -> list[str]:
    """Every livepatch failure message in ``dmesg`` (symbol-level and module refusal)."""
    patterns = [p for p, _ in SYMBOL_FAILURES] + list(MODULE_REFUSAL)
    return [line for line in livepatch_lines(dmesg) if any(p.match(line) for p in patterns)]


# ------------------------------------------------------------------------------------------------------------------
# klpd's side


def patch(doc: dict[str, Any], name: str) -> dict[str, Any]:
    assert doc.get("schema") == "klpd.status/1", doc.get("schema")
    found = [p for p in doc["patches"] if p["name"] == name]
    assert len(found) == 1, f"klpd lists {len(found)} patches named {name}: {[p['name'] for p in doc['patches']]}"
    return found[0]


def obj(patch_doc: dict[str, Any], name: str) -> dict[str, Any]:
    found = [o for o in patch_doc["objects"] if o["name"] == name]
    assert len(found) == 1, f"patch {patch_doc['name']}: {len(found)} objects named {name}"
    return found[0]


def symbols(patch_doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for o in patch_doc["objects"] for s in o["symbols"]]


def sections(patch_doc: dict[str, Any], object_name: str | None = None) -> list[dict[str, Any]]:
    return [s for o in patch_doc["objects"] if object_name in (None, o["name"]) for s in o["sections"]]


def problems(patch_doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(patch_doc["problems"])


def predicted_messages(doc: dict[str, Any], patch_doc: dict[str, Any]) -> set[str]:
    """Every kernel message klpd predicts for a patch: symbols', problems', and the reasons it quotes."""
    texts = [s.get("kernel_message") for s in symbols(patch_doc)]
    texts += [p.get("kernel_message") for p in problems(patch_doc) + list(doc.get("problems", []))]
    texts += list(patch_doc["reasons"])
    for o in patch_doc["objects"]:
        texts += list(o["reasons"])
        texts += [r for s in o["sections"] for r in s["reasons"]]
    return {normalize(t) for t in texts if t}


def matches_verdict(patch_doc: dict[str, Any], verdict: KernelVerdict) -> bool:
    """klpd flags the symbol the kernel failed on, with the same verdict (as a symbol status or a problem code)."""
    for s in symbols(patch_doc):
        if s["status"] == verdict.status and verdict.name in (s["name"], s["elf_name"]):
            return True
    return any(
        p["code"] == verdict.status and verdict.name in ((p.get("subject") or "") + " " + p["message"])
        for p in problems(patch_doc)
    )


def shown_patched(release: str, patched: bool) -> bool | None:
    """An object's ``patched`` as kernel ``release`` shows it (sysfs, and so klpd's JSON and metrics): None where
    the kernel has no such attribute (before 6.1; KernelSemantics.sysfs_object_patched)."""
    return patched if semantics_for(release).sysfs_object_patched else None


def sysfs_patched(release: str, patched: bool) -> str | None:
    """The text of /sys/kernel/livepatch/<patch>/<object>/patched on kernel ``release``, None where it is absent."""
    shown = shown_patched(release, patched)
    return None if shown is None else str(int(shown))


def attribute_mismatches(release: str, sysfs: dict[str, Any]) -> list[str]:
    """Where the attributes kernel ``release`` creates under /sys/kernel/livepatch/<patch> (a sysfs_dump entry)
    differ from what KernelSemantics records for its version: ``replace`` (6.11), ``stack_order`` (6.14),
    ``<object>/patched`` (6.1)."""
    rules = semantics_for(release)
    out = [
        f"{key}: kernel {'has' if key in sysfs else 'lacks'} it, KernelSemantics says {expected}"
        for key, expected in (("replace", rules.sysfs_replace), ("stack_order", rules.sysfs_stack_order))
        if (key in sysfs) != expected
    ]
    out += [
        f"object {name}: kernel {'has' if 'patched' in sobj else 'lacks'} 'patched', KernelSemantics says "
        f"{rules.sysfs_object_patched}"
        for name, sobj in sysfs["objects"].items()
        if ("patched" in sobj) != rules.sysfs_object_patched
    ]
    return out


def sysfs_mismatches(patch_doc: dict[str, Any], sysfs: dict[str, Any]) -> list[str]:
    """Where klpd's view of a loaded patch differs from /sys/kernel/livepatch/<patch> (guest.sh's sysfs_dump)."""
    out = []

    def flag(value: str | None) -> bool | None:
        return None if value is None else value == "1"

    for key in ("enabled", "transition", "replace"):
        if key in sysfs and patch_doc.get(key) != flag(sysfs[key]):
            out.append(f"{key}: klpd {patch_doc.get(key)!r}, sysfs {sysfs[key]!r}")
    if "stack_order" in sysfs and patch_doc.get("stack_order") != int(sysfs["stack_order"]):
        out.append(f"stack_order: klpd {patch_doc.get('stack_order')!r}, sysfs {sysfs['stack_order']!r}")
    if not patch_doc.get("loaded"):
        out.append("loaded: klpd False, yet sysfs has the patch")
    klpd_objects = {o["name"]: o for o in patch_doc["objects"]}
    for name, sobj in sysfs["objects"].items():
        kobj = klpd_objects.get(name)
        if kobj is None:
            out.append(f"object {name}: in sysfs, not in klpd")
            continue
        if "patched" in sobj and kobj.get("patched") != flag(sobj["patched"]):
            out.append(f"object {name} patched: klpd {kobj.get('patched')!r}, sysfs {sobj['patched']!r}")
        # klpd gives sympos as the patch does (from its description); sysfs prints 0 as 1 (klp_init_func())
        functions = sorted(f"{f['name']},{f['sympos'] or 1}" for f in kobj.get("functions", []))
        if functions != sorted(sobj["functions"]):
            out.append(f"object {name} functions: klpd {functions}, sysfs {sorted(sobj['functions'])}")
    return out


def kallsyms_addresses(kallsyms: str, name: str, module: str | None = None) -> list[int]:
    """Addresses of ``name`` in /proc/kallsyms order, in vmlinux or in ``module``'s own symbol table.

    Only the module's first contiguous block of lines counts: /proc/kallsyms lists, after every module's symbols,
    ftrace's copies of module init functions freed while a function was traced (ftrace_mod_get_kallsym(), type
    'T', under the module's name) — seen on 6.1 for a target module loaded after a patch of it. The kernel's
    sympos lookup never sees those.
    """
    found: list[int] = []
    state = "before"  # before / inside / after the module's block
    for line in kallsyms.splitlines():
        fields = line.split()
        owner = fields[3].strip("[]") if len(fields) > 3 else None
        if owner == module:
            if state == "after":
                break
            state = "inside"
            if fields[2] == name:
                found.append(int(fields[0], 16))
        elif state == "inside":
            state = "after"
    return found


# ------------------------------------------------------------------------------------------------------------------
# The module loader (kernel/module/*.c): refusals before the livepatch core sees the patch

# Notices load_module() prints once per boot on the way, for the first module that gets that far (6.1
# check_modinfo(), check_modinfo_livepatch(), load_module()): taints, never why a load fails.
TAINT_NOTICE = re.compile(
    r": (loading out-of-tree module taints kernel\.|tainting kernel with TAINT_\w+"
    r"|module verification failed: signature and/or required key missing - tainting kernel)$"
)


def loader_lines(dmesg: Iterable[str]) -> list[str]:
    """What the kernel logged about an insmod, once-per-boot taint notices left out."""
    return [line for line in dmesg if not TAINT_NOTICE.search(line)]


def load_check(patch_doc: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in patch_doc["load_checks"] if c["check"] == name]
    assert len(found) == 1, (
        f"patch {patch_doc['name']}: {len(found)} load checks named {name}: {patch_doc['load_checks']}"
    )
    return found[0]


def failing_checks(patch_doc: dict[str, Any]) -> list[str]:
    return [c["check"] for c in patch_doc["load_checks"] if c["result"] == "fails"]


def assert_load_refusal_predicted(
    doc: dict[str, Any], name: str, check: str, errno: str, kernel_lines: list[str]
) -> None:
    """klpd refuses the patch for the one check the kernel refused it for, with the kernel's errno and lines.

    Where the kernel logs more than one line (a CRC mismatch: "disagrees about version", then "Unknown symbol"),
    the check quotes one of them and ``reasons`` holds all of them.
    """
    patch_doc = patch(doc, name)
    assert patch_doc["will_load"] is False, patch_doc["load_checks"]
    assert failing_checks(patch_doc) == [check], patch_doc["load_checks"]
    verdict = load_check(patch_doc, check)
    assert verdict["errno"] == errno, verdict
    if kernel_lines:
        assert verdict["kernel_message"] in kernel_lines, (verdict, kernel_lines)
    else:
        assert verdict["kernel_message"] is None, verdict
    missing = set(kernel_lines) - {normalize(r) for r in patch_doc["reasons"]}
    assert not missing, f"kernel said {sorted(missing)}; klpd's reasons: {patch_doc['reasons']}"


def assert_load_predicted(doc: dict[str, Any], name: str) -> dict[str, Any]:
    """klpd says the patch loads, and no loader check of it fails."""
    patch_doc = patch(doc, name)
    assert patch_doc["will_load"] is True, (patch_doc["reasons"], patch_doc.get("load_checks"))
    assert failing_checks(patch_doc) == [], patch_doc["load_checks"]
    return patch_doc


def quoted(doc: dict[str, Any], patch: dict[str, Any]) -> set[str]:
    """Every text klpctl gives as a reason or a kernel message, for the patch and its objects and functions."""
    texts = list(patch.get("reasons", []))
    for o in patch.get("objects", []):
        texts += o.get("reasons", [])
        texts += [f.get("kernel_message") for f in o.get("functions") or []]
    texts += [p.get("kernel_message") for p in patch.get("problems", []) + doc.get("problems", [])]
    return {normalize(t) for t in texts if t}
