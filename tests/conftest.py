"""Which real-kernel cases this session runs: all of them on 6.1 and 6.12, the core ones on 5.10 and 7.x.

One pytest session boots one kernel (``KLPD_VM_KERNEL``, see tests/vm/series.py). On a series marked core-only the
other VM test files are deselected — listed as deselected in the summary, never skipped — to keep CI's whole run
under an hour on a 2-core machine (README, "The real-kernel matrix").
"""

from __future__ import annotations

import pytest
from vm.series import CORE_CASES, selected


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        series, _ = selected()
    except ValueError:
        return  # a bad KLPD_VM_KERNEL fails every VM test with the message, from session_environment()
    if not series.core_only:
        return
    keep, drop = [], []
    for item in items:
        outside_core = item.get_closest_marker("vm") is not None and item.path.name not in CORE_CASES
        (drop if outside_core else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
