"""Numbers in kernel files, configuration and the environment: text that str.isdigit() accepts but int() refuses
('²'), signs where none belong, and lengths that make int() raise (past 4,300 digits) are reported as malformed,
never a traceback."""

from __future__ import annotations

import pytest

from klpd.config import parse_config
from klpd.daemon.kernel_log import parse_kmsg_record
from klpd.daemon.systemd_notify import watchdog_interval
from klpd.errors import ConfigError, FormatError
from klpd.numbers import kernel_decimal
from klpd.sources.kernel import parse_tainted
from klpd.sources.livepatch_sysfs import parse_function_dir, parse_int_attribute
from klpd.sources.proc_modules import parse_module_line

HOSTILE = ["²", "1²", "--5", "+5", "", "9" * 5000, "0x10"]


def test_kernel_decimal():
    assert kernel_decimal("0") == 0
    assert kernel_decimal("18446744073709551615") == 2**64 - 1
    assert kernel_decimal(b"42") == 42
    assert kernel_decimal("-1", signed=True) == -1
    assert kernel_decimal("-1") is None
    assert kernel_decimal(" 5") is None  # callers strip what the kernel pads
    for text in HOSTILE:
        assert kernel_decimal(text, signed=True) is None, text


@pytest.mark.parametrize("text", HOSTILE)
def test_sources_report_malformed_numbers(text):
    with pytest.raises(FormatError):
        parse_tainted(text, "/proc/sys/kernel/tainted")
    with pytest.raises(FormatError):
        parse_int_attribute(text, "/sys/kernel/livepatch/p/stack_order")
    assert parse_function_dir(f"fn,{text}") is None
    assert parse_module_line(f"ext4 {text} 1 - Live 0xffffffffc0000000") is None
    assert parse_module_line(f"ext4 16384 {text} - Live 0xffffffffc0000000") is None
    assert parse_kmsg_record(f"4,{text},1,-;livepatch: enabling patch 'p'".encode()) is None
    assert watchdog_interval({"WATCHDOG_USEC": text}, 1) is None


def test_the_kernels_own_numbers_still_parse():
    assert parse_module_line("ext4 16384 -1 - Live 0xffffffffc0000000").refcount == -1  # type: ignore[union-attr]
    assert parse_function_dir("fn.isra.0,2").sympos == 2  # type: ignore[union-attr]
    assert parse_kmsg_record(b"4,7,1000,-;x").seq == 7  # type: ignore[union-attr]
    assert watchdog_interval({"WATCHDOG_USEC": "60000000"}, 1) == 30.0


def test_config_port_and_patch_dirs(tmp_path):
    with pytest.raises(ConfigError, match="is not a number"):
        parse_config(f'listen = "127.0.0.1:{"9" * 5000}"', tmp_path / "klpd.toml")
    with pytest.raises(ConfigError, match=r"patch_dirs\[0\].*NUL"):
        parse_config('patch_dirs = ["/var/lib/kpatch\\u0000x"]', tmp_path / "klpd.toml")
    assert parse_config('patch_dirs = ["/x/{release}"]').patch_dirs == ("/x/{release}",)
