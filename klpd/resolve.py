"""Moved: :class:`~klpd.model.Occurrences` to the model, the lookup to :mod:`klpd.predict.lookup` (temporary)."""

from klpd.model import Occurrences
from klpd.predict.lookup import lookup, lookup_occurrences

__all__ = ["Occurrences", "lookup", "lookup_occurrences"]
