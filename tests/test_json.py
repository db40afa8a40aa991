"""The one JSON codec: what the daemon sends is exactly what klpctl renders (round trip)."""

from __future__ import annotations

import json

import pytest
from status_fixture import KALLSYMS, evaluate, hidden, patch_with, system, target_symtab

from klpd.model import HostStatus, SymbolStatus
from klpd.outputs.json import STATUS_SCHEMA, decode, dumps, status_document, status_from_document


def statuses() -> list[HostStatus]:
    symtab = target_symtab(("tgt_fn", ".text"), ("tgt_fn", ".init.text"))
    m = patch_with(
        ("vmlinux", "dup_fn", 0), ("target_mod", "tgt_fn", 0), ("dummy", "x", 1), ("loaded_mod", "mod_fn", 0)
    )
    return [
        evaluate(m, system(), {"target_mod": symtab})[0],
        evaluate(m, system(hidden(KALLSYMS)), {"target_mod": symtab})[0],
    ]


@pytest.mark.parametrize("status", statuses())
def test_round_trip(status: HostStatus) -> None:
    doc = json.loads(dumps(status_document(status, "daemon", {"refusals_seen": 1})))
    assert doc["schema"] == STATUS_SCHEMA and doc["daemon"] == {"refusals_seen": 1}
    assert status_from_document(doc) == status


def test_vocabulary_is_verbatim() -> None:
    doc = status_document(statuses()[0], "direct")
    found = {s["status"] for p in doc["patches"] for o in p["objects"] for s in o["symbols"]}
    assert found <= {s.value for s in SymbolStatus} | {None}
    assert "ambiguous" in found and None in found


def test_decode_rejects_wrong_types() -> None:
    with pytest.raises(ValueError, match="expected a boolean"):
        decode(HostStatus, {**status_document(statuses()[0], "x")["host"], "livepatch_supported": "yes",
                            "patches": [], "problems": []})  # fmt: skip
    with pytest.raises(ValueError, match="unsupported schema"):
        status_from_document({"schema": "klpd.status/99"})


def test_incomplete_document_is_a_value_error() -> None:
    doc = status_document(statuses()[0], "daemon")
    del doc["patches"][0]["will_load"]
    with pytest.raises(ValueError, match="missing will_load"):
        status_from_document(doc)
