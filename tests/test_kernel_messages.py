"""One table of kernel messages: what the prediction formats is what the log reader parses back."""

from __future__ import annotations

import pytest

from klpd import kernel_messages as msg
from klpd.daemon.kernel_log import LivepatchEvent, parse_livepatch_message

ALL = {name: m for name, m in vars(msg).items() if isinstance(m, msg.KernelMessage)}
FIELDS = {"patch": "lp_1", "module": "xfs", "object": "(null)", "errno": -22, "action": "patching", "symbol":
          ".klp.sym.vmlinux.f,0", "name": "f", "sympos": 3, "section": ".klp.rela.xfs.text", "symtab_section": 41,
          "relocation": 7, "what": "unsigned module", "comm": "insmod", "have": "6.1.0-57-amd64 SMP mod_unload ",
          "want": "6.1.0-57-amd64 SMP preempt mod_unload modversions ", "type": 2, "loc": "000000003c7f1a2b",
          "val": "ffffffffc0a01010"}  # fmt: skip


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_message_reads_back_the_fields_it_was_formatted_with(name: str) -> None:
    message = ALL[name]
    text = message.format(**FIELDS)
    assert text.startswith(message.prefix)
    fields = message.match(text.removeprefix(message.prefix))
    assert fields is not None
    assert {k: str(FIELDS[k]) for k in fields} == fields


def test_livepatch_messages_carry_the_prefix_once_and_loader_messages_none() -> None:
    assert msg.SYMBOL_NOT_FOUND.format(name="f") == "livepatch: symbol 'f' not found in symbol table"
    assert msg.LIVEPATCH_DISABLED.format(module="lp") == (
        "lp: module is marked as livepatch module, but livepatch support is disabled"
    )


def test_the_refusal_the_prediction_quotes_is_the_event_the_daemon_counts() -> None:
    text = msg.MODULE_LOAD_REFUSED.format(patch="lp_1", module="xfs")
    assert text == "livepatch: patch 'lp_1' failed for module 'xfs', refusing to load module 'xfs'"
    parsed = parse_livepatch_message(text)
    assert parsed is not None and parsed.kind is LivepatchEvent.MODULE_LOAD_REFUSED
    assert (parsed.patch, parsed.module) == ("lp_1", "xfs")
    # A message that only looks alike is not that event.
    assert parse_livepatch_message(text.replace("refusing", "allowing")) is None
