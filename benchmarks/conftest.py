"""Shared hooks and fixtures of the diffcore benchmark suites (pytest-benchmark).

The machine description every JSON report carries, and a peak-memory probe for CPU runs
(torch allocations are invisible to tracemalloc; the profiler sees them).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from typing import Any

import pytest
import torch

THREADS_ENV = "DIFFCORE_BENCH_THREADS"


def pytest_configure(config: Any) -> None:
    """``DIFFCORE_BENCH_THREADS=n`` pins torch's intra-op threads (default: torch's own choice).

    One thread keeps timings stable on a machine whose cores are shared: a parallel op waits
    for its slowest thread, so one busy core can slow a 2-thread op by orders of magnitude.
    """
    threads = os.environ.get(THREADS_ENV)
    if threads:
        if not threads.isdigit() or int(threads) < 1:
            raise pytest.UsageError(f"{THREADS_ENV}={threads!r}: expected a positive integer")
        torch.set_num_threads(int(threads))


def pytest_collection_modifyitems(config: Any, items: list[pytest.Item]) -> None:
    """Let a suite order its own cases (``order_items(items)`` in its module)."""
    for module in {item.module for item in items if hasattr(item, "module")}:
        order = getattr(module, "order_items", None)
        if callable(order):
            order(items)


def diffusers_version() -> str | None:
    try:
        import diffusers
    except ImportError:
        return None
    return str(diffusers.__version__)


def pytest_benchmark_update_machine_info(config: Any, machine_info: dict[str, Any]) -> None:
    from diffcore import __version__, ops

    machine_info["diffcore"] = {
        "version": __version__,
        "kernel_backend": ops.backend(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "diffusers": diffusers_version(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "cuda": cuda_info(),
    }


def cuda_info() -> dict[str, Any] | None:
    """The GPU the CUDA suite runs on, or None without CUDA."""
    if not torch.cuda.is_available():
        return None
    from diffcore import ops

    p = torch.cuda.get_device_properties(0)
    return {
        "device": p.name,
        "capability": f"{p.major}.{p.minor}",
        "sm_count": p.multi_processor_count,
        "memory_gib": round(p.total_memory / 2**30, 1),
        "torch_cuda": torch.version.cuda,
        "kernel_backend": ops.backend("cuda"),
    }


@pytest.fixture
def peak_alloc() -> Callable[[Callable[[], Any]], int | None]:
    """The :func:`peak_alloc_bytes` probe."""
    return peak_alloc_bytes


def peak_alloc_bytes(fn: Callable[[], Any]) -> int | None:
    """Peak bytes allocated by ``fn()`` on the CPU above what was live at the start.

    Replays the allocation/free events the profiler records in time order. Returns None when
    the profiler cannot report them (its result object is not a stable API).
    """
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        events = prof.profiler.kineto_results.events()  # type: ignore[union-attr]
        deltas = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    except (AttributeError, RuntimeError, TypeError):
        return None
    live = peak = 0
    for _, nbytes in deltas:
        live += nbytes
        peak = max(peak, live)
    return peak
