"""A time budget for the GPU suite, so a run on a rented machine ends with its JSON written.

``DIFFCORE_BENCH_DEADLINE=<unix time>``: every test that would start after it is skipped, so
pytest finishes normally and pytest-benchmark saves what was measured. ``run_device_checks.sh``
sets it a little before its hard ``timeout`` for the stage.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

DEADLINE_ENV = "DIFFCORE_BENCH_DEADLINE"


def _deadline() -> float | None:
    value = os.environ.get(DEADLINE_ENV)
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise pytest.UsageError(f"{DEADLINE_ENV}={value!r}: expected a unix time in seconds") from None


def pytest_configure(config: Any) -> None:
    _deadline()  # a malformed value fails at start, not at the first test


def pytest_runtest_setup(item: pytest.Item) -> None:
    deadline = _deadline()
    if deadline is not None and time.time() > deadline:
        pytest.skip(f"{DEADLINE_ENV} passed: the stage's time budget is spent")
