"""In-kernel noise throughput (issue #20 point 3): torch.randn vs diffcore's Philox draw in its
``exact`` and ``fast`` modes, filling a preallocated float32 tensor, at 64K and 1M elements.

Run at one torch thread, as the issue's targets are stated::

    DIFFCORE_BENCH_THREADS=1 .venv/bin/python -m pytest benchmarks/test_noise.py --benchmark-only

``extra_info["elements"]`` holds the size, so normals/s = elements / mean time. No timing is
asserted; the figures go to benchmarks/results/noise_cpu.md.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from diffcore import ops

SIZES = {"64K": 1 << 16, "1M": 1 << 20}
NATIVE = ops.backend("cpu") == "native-cpu"


def _filler(impl: str, out: torch.Tensor) -> Callable[[], object]:
    if impl == "torch.randn":
        g = torch.Generator().manual_seed(0)
        return lambda: torch.randn(out.shape, generator=g, out=out)
    mode = impl.split("-")[1]
    code = ops.noise_mode_code(mode)
    return lambda: torch.ops.diffcore.philox_normal_(out, 7, 0, 0, code)


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("impl", ["torch.randn", "philox-exact", "philox-fast"])
def test_noise_fill(benchmark, impl: str, size: str) -> None:
    if impl != "torch.randn" and not NATIVE:
        pytest.skip("diffcore._C is not built")
    out = torch.empty(1, SIZES[size])
    benchmark.group = f"noise {size}"
    benchmark.extra_info.update(elements=SIZES[size], threads=torch.get_num_threads())
    benchmark.pedantic(_filler(impl, out), rounds=50 if size == "64K" else 10, warmup_rounds=2)
