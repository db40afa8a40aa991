"""klpd.predict.lookup.lookup against a literal transcription of klp_find_object_symbol() on random symbol tables."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from klpd.model import SymbolStatus
from klpd.predict.lookup import lookup
from tests.klp_reference import kernel_find_object_symbol

NAMES = st.sampled_from(["foo", "bar", "foo.isra.0", "baz", "qux"])
TABLE = st.lists(st.tuples(NAMES, st.sampled_from([0, 0x1000, 0x2000, 0xFFFFFFFF81000000])), max_size=30)


@settings(max_examples=3000, deadline=None)
@given(table=TABLE, name=NAMES, sympos=st.integers(min_value=0, max_value=6))
def test_lookup_agrees_with_the_kernel(table: list[tuple[str, int]], name: str, sympos: int) -> None:
    addresses = tuple(a for n, a in table if n == name)
    assert lookup(addresses, sympos, addresses_visible=True) == kernel_find_object_symbol(table, name, sympos)


@settings(max_examples=1000, deadline=None)
@given(table=st.lists(st.tuples(NAMES, st.just(0x1000)), max_size=30), name=NAMES, sympos=st.integers(0, 6))
def test_hidden_addresses_change_nothing(table: list[tuple[str, int]], name: str, sympos: int) -> None:
    """Without CAP_SYSLOG every address reads 0; the verdict must be the one real addresses give."""
    real = tuple(a for n, a in table if n == name)
    hidden = tuple(0 for _ in real)
    assert lookup(hidden, sympos, addresses_visible=False) == lookup(real, sympos, addresses_visible=True)


def test_examples_users_meet() -> None:
    assert lookup((0x10,), 0) is SymbolStatus.OK
    assert lookup((0x10, 0x20), 0) is SymbolStatus.AMBIGUOUS
    assert lookup((0x10, 0x20), 2) is SymbolStatus.OK
    assert lookup((0x10, 0x20), 3) is SymbolStatus.SYMPOS_NOT_FOUND
    assert lookup((), 0) is SymbolStatus.NOT_FOUND
    assert lookup((0x10,), 1) is SymbolStatus.OK  # sympos 1 of a unique name is fine
