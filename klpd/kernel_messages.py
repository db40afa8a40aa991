"""The kernel's own messages that klpd predicts or reads back from the kernel log: one table for both.

Each :class:`KernelMessage` is a printk format of the kernel rewritten with named fields. The prediction formats it
(:meth:`KernelMessage.format`) to quote what the kernel will print; the daemon matches the kernel log against the
same entry (:meth:`KernelMessage.match`). Where a version changed a text, both variants are here and
:class:`~klpd.kernel_version.KernelSemantics` chooses (:func:`not_livepatch_symbol`).

Sources: kernel/livepatch/core.c and transition.c (``pr_fmt`` = ``"livepatch: "``: :data:`LIVEPATCH`), the module
loader (kernel/module/*.c, no prefix). The texts below are 6.1's unless a variant says otherwise; the transition
texts have been stable since 4.12.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from klpd.kernel_version import KernelSemantics

LIVEPATCH = "livepatch: "  # pr_fmt of kernel/livepatch/*.c: every livepatch message starts with it

# What each named field matches when a message is read back from the log.
_NAME = r"[^']{1,64}"  # module and patch names: at most 55 characters, never a quote
_FIELDS = {
    "patch": _NAME,
    "module": _NAME,
    "object": _NAME,
    "errno": r"-?\d+",
    "action": r"patching|unpatching",
    "type": r"\d+",
    "loc": r"\S+",
    "val": r"[0-9a-f]+",
}
_FIELD = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class KernelMessage:
    """One kernel message: its text with ``{field}`` placeholders, and the printk prefix it carries."""

    template: str
    prefix: str = LIVEPATCH
    _pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_pattern", _compile(self.template))

    def format(self, **fields: Any) -> str:
        """The message as the kernel prints it (prefix included)."""
        return self.prefix + self.template.format(**fields)

    def match(self, body: str) -> dict[str, str] | None:
        """The fields of ``body`` (the text after the prefix) when it is this message, else None."""
        m = self._pattern.fullmatch(body)
        return m.groupdict() if m else None


def _compile(template: str) -> re.Pattern[str]:
    """A template as a regex: literal text escaped, the first use of a field captured, later uses matched alike
    (the kernel prints the same module name twice in a refusal)."""
    parts: list[str] = []
    seen: set[str] = set()
    pos = 0
    for m in _FIELD.finditer(template):
        parts.append(re.escape(template[pos : m.start()]))
        name = m[1]
        pattern = _FIELDS.get(name, r".+?")
        parts.append(f"(?:{pattern})" if name in seen else f"(?P<{name}>{pattern})")
        seen.add(name)
        pos = m.end()
    parts.append(re.escape(template[pos:]))
    return re.compile("".join(parts), re.DOTALL)


# --- klp_resolve_symbols(), klp_write_section_relocs(), klp_find_object_symbol() (kernel/livepatch/core.c) ----------
NOT_LIVEPATCH_SYMBOL = KernelMessage("symbol {symbol} is not marked as a livepatch symbol")
NOT_LIVEPATCH_SYMBOL_AT = KernelMessage(
    "symbol {symbol} at rela sec {symtab_section} idx {relocation} is not marked as a livepatch symbol"
)
MALFORMED_SYMBOL_NAME = KernelMessage("symbol {symbol} has an incorrectly formatted name")
MALFORMED_SECTION_NAME = KernelMessage("section {section} has an incorrectly formatted name")
VMLINUX_FROM_MODULE_SECTION = KernelMessage(
    "invalid access to vmlinux symbol '{name}' from module-specific livepatch relocation section"
)
SYMBOL_NOT_FOUND = KernelMessage("symbol '{name}' not found in symbol table")
# klp_find_object_symbol() passes objname NULL for vmlinux here and printk prints "(null)" (seen on 6.1); only the
# sympos message maps it to "vmlinux".
AMBIGUOUS_SYMBOL = KernelMessage("unresolvable ambiguity for symbol '{name}' in object '{object}'")
SYMPOS_NOT_FOUND = KernelMessage("symbol position {sympos} for symbol '{name}' in object '{object}' not found")

# --- arch/x86/kernel/module.c apply_relocate_add(): a relocation target already written (5.10, 6.1) ----------------
RELOCATION_TARGET_NONZERO = KernelMessage(
    "Skipping invalid relocation target, existing value is nonzero for type {type}, loc {loc}, val {val}",
    prefix="x86/modules: ",
)

# --- klp_enable_patch(), klp_module_coming(), klp_module_going() ---------------------------------------------------
NOT_LIVEPATCH_MODULE = KernelMessage("module {module} is not marked as a livepatch module")
PATCH_INIT_FAILED = KernelMessage("failed to initialize patch '{patch}' for module '{module}' ({errno})")
MODULE_LOAD_REFUSED = KernelMessage("patch '{patch}' failed for module '{module}', refusing to load module '{module}'")
APPLYING = KernelMessage("applying patch '{patch}' to loading module '{module}'")
REVERTING = KernelMessage("reverting patch '{patch}' on unloading module '{module}'")
ENABLING = KernelMessage("enabling patch '{patch}'")
NOT_COMPATIBLE = KernelMessage(
    "Livepatch patch ({patch}) is not compatible with the already installed livepatches."
)  # klp_enable_patch(), klp_is_patch_compatible() (5.5+)
KALLSYMS_SIZE_FAILED = KernelMessage("kallsyms size lookup failed for '{name}'")  # klp_init_object_loaded()
# klp_patch_func(): no ftrace location (6.1+: ftrace_location(), the first record inside the function).
NO_FTRACE_LOCATION = KernelMessage("failed to find location for function '{name}'")
PATCH_OBJECT_FAILED = KernelMessage("failed to patch object '{object}'")  # __klp_enable_patch()
ENABLE_FAILED = KernelMessage("failed to enable patch '{patch}'")  # __klp_enable_patch()
APPLY_TO_MODULE_FAILED = KernelMessage("failed to apply patch '{patch}' to module '{module}' ({errno})")
# lib/kobject.c kobject_add_internal(): two objects, or two functions of one object, with one sysfs name. Without
# pr_fmt up to 6.3, "kobject: " since (see kobject_exists()).
_KOBJECT_EXISTS_TEXT = (
    "kobject_add_internal failed for {name} with -EEXIST, don't try to register things with the same name in the"
    " same directory."
)
KOBJECT_EXISTS = KernelMessage(_KOBJECT_EXISTS_TEXT, prefix="")
KOBJECT_EXISTS_PREFIXED = KernelMessage(_KOBJECT_EXISTS_TEXT, prefix="kobject: ")

# --- kernel/livepatch/transition.c -------------------------------------------------------------------------------
TRANSITION_INIT = KernelMessage("'{patch}': initializing {action} transition")  # pr_debug
TRANSITION_START = KernelMessage("'{patch}': starting {action} transition")
TRANSITION_COMPLETE = KernelMessage("'{patch}': {action} complete")
SIGNALING = KernelMessage("signaling remaining tasks")
FORCING = KernelMessage("forcing remaining tasks to the patched state")

# --- the module loader (kernel/module/main.c check_modinfo_livepatch(): no prefix) ----------------------------------
LIVEPATCH_DISABLED = KernelMessage(
    "{module}: module is marked as livepatch module, but livepatch support is disabled", prefix=""
)


def kobject_exists(semantics: KernelSemantics, name: str) -> str:
    """kobject_add_internal()'s message for a second sysfs directory of one name."""
    message = KOBJECT_EXISTS_PREFIXED if semantics.kobject_messages_prefixed else KOBJECT_EXISTS
    return message.format(name=name)


def not_livepatch_symbol(semantics: KernelSemantics, symbol: str, symtab_section: int, relocation: int) -> str:
    """klp_resolve_symbols()'s message for a relocation against a symbol that is not SHN_LIVEPATCH."""
    if semantics.not_livepatch_symbol_names_position:
        return NOT_LIVEPATCH_SYMBOL_AT.format(symbol=symbol, symtab_section=symtab_section, relocation=relocation)
    return NOT_LIVEPATCH_SYMBOL.format(symbol=symbol)


# --- the module loader: kernel/module/signing.c, version.c, main.c (no prefix; "%s" is the module's name) -------
# module_sig_check(): "Loading of %s is rejected" with "unsigned module", "module with unsupported crypto" or
# "module with unavailable key" (pr_notice; 6.1's text, 5.4 and 7.x's seen alike).
SIGNATURE_REJECTED = KernelMessage("Loading of {what} is rejected", prefix="")
# security/lockdown/lockdown.c lockdown_is_locked_down(), ratelimited; "%s" the loading command (current->comm).
LOCKED_DOWN = KernelMessage("Lockdown: {comm}: {what} is restricted; see man kernel_lockdown.7", prefix="")
VERMAGIC_MISMATCH = KernelMessage("{module}: version magic '{have}' should be '{want}'", prefix="")
SYMBOL_VERSION_MISMATCH = KernelMessage("{module}: disagrees about version of symbol {symbol}", prefix="")
UNKNOWN_SYMBOL = KernelMessage("{module}: Unknown symbol {symbol} (err {errno})", prefix="")
THIS_MODULE_SIZE = KernelMessage(
    "module {module}: .gnu.linkonce.this_module section size must match the kernel's built struct module size at"
    " run time",
    prefix="",
)
