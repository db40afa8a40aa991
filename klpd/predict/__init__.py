"""The pure prediction: a system state and some patch modules in, a :class:`~klpd.model.HostStatus` out.

No I/O happens here: the daemon and ``klpctl`` gather their inputs (``klpd/collect.py``) and call
:func:`compute_status`, so both always give the same answer for the same inputs. Every rule that depends on the
kernel's version asks ``SystemState.semantics`` (:mod:`klpd.kernel_version`); every kernel message quoted comes
from :mod:`klpd.kernel_messages`.

The modules, in the order the kernel meets them:

- :mod:`~klpd.predict.inputs`: what the prediction is given (SystemState, PatchInput);
- :mod:`~klpd.predict.lookup`: klp_find_object_symbol();
- :mod:`~klpd.predict.symbols`: klp_resolve_symbols() for one ``.klp.sym`` symbol;
- :mod:`~klpd.predict.sections`: when each ``.klp.rela`` section is applied, and whether it fails;
- :mod:`~klpd.predict.running`: a loaded patch without its file, as the kernel shows it;
- :mod:`~klpd.predict.module_load`: klp_module_coming(): later loads of patched modules;
- :mod:`~klpd.predict.loader`: insmod of the patch (the module loader, then klp_enable_patch());
- :mod:`~klpd.predict.patch`: one patch and the whole host;
- :mod:`~klpd.predict.verdicts`: what a status means for exit codes and health.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from klpd.predict.inputs import PatchInput, SymbolIndex, SystemState
    from klpd.predict.patch import compute_status
    from klpd.predict.verdicts import has_problems, patch_has_problems, undetermined

# Loaded on first use: a klpctl that only renders the daemon's answer needs verdicts, not the prediction.
_HOMES = {
    "PatchInput": "inputs",
    "SymbolIndex": "inputs",
    "SystemState": "inputs",
    "compute_status": "patch",
    "has_problems": "verdicts",
    "patch_has_problems": "verdicts",
    "undetermined": "verdicts",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)


__all__ = [
    "PatchInput",
    "SymbolIndex",
    "SystemState",
    "compute_status",
    "has_problems",
    "patch_has_problems",
    "undetermined",
]
