"""Moved to :mod:`klpd.predict`; this name stays only until every importer is updated in this change."""

from klpd.predict import (
    PatchInput,
    SymbolIndex,
    SystemState,
    compute_status,
    has_problems,
    patch_has_problems,
    undetermined,
)

__all__ = [
    "PatchInput",
    "SymbolIndex",
    "SystemState",
    "compute_status",
    "has_problems",
    "patch_has_problems",
    "undetermined",
]
