"""Whole 20-step ``diffcore.sample`` calls where the model is free, against the diffusers loop (issue #20).

The ``make bench`` form of :mod:`benchmarks.cpu_call_cost`: every case is timed by
pytest-benchmark, its rounds back to back (warm caches, as a loop of calls finds them), and
``summarize_calls.py`` takes the ratios of the minima of cases in the same JSON:

* ``call`` cases: a whole 20-step call on the "linear" schedule, setup included, with a model
  that returns one precomputed tensor: ``diffusers`` (``set_timesteps``, ``x_T *
  init_noise_sigma``, then ``scale_model_input -> model -> step``, all timed),
  ``diffcore`` (``diffcore.sample`` with its defaults: in-kernel noise) and, for stochastic
  samplers, ``diffcore-gen`` (a seeded torch.Generator, as diffusers draws);
* ``add`` cases: the memory floor of 20 steps, as adds. With 3 tensors, 20 back-to-back
  ``torch.add(x, y, out=z)`` (a step streaming n tensors is held to n/3 of them); with 5, adds
  round robin over 5 distinct tensors: the cost of a pass with unipc's working set live (x, the
  model output, 3 history slots: 20 MB at 1M elements, where the add's 3 take 12 MB);
* ``clocked``: a 20-step ddim call at 16K whose model stamps the clock; ``extra_info`` keeps
  the minimum over rounds of the setup (call to first model call) and of the median interval
  between model calls (one step: its host work plus its memory work).

Run alone: ``DIFFCORE_BENCH_THREADS=1 .venv/bin/python -m pytest benchmarks/test_sample_call.py
--benchmark-json=outputs/bench/calls.json`` then ``python benchmarks/summarize_calls.py
outputs/bench/calls.json``. No timing is asserted.
"""

from __future__ import annotations

import statistics
import time
import warnings
from typing import Any

import pytest
import torch
from cpu_call_cost import (
    DETERMINISTIC,
    SIZES,
    STEPS,
    STOCHASTIC,
    add_set_case,
    diffcore_call,
    diffusers_call,
    streamed,
    working_set,
)

import diffcore

CALL_SIZES = ("16K", "256K", "1M", "8M")  # 8M: deterministic samplers only (a stochastic diffusers call takes s)
BUDGET_S = 1.5  # timed seconds per case at most
ROUNDS = (3, 400)  # fewest and most timed rounds of a case
SET_TENSORS = (3, 5)  # working sets of the add floors: ddim, euler, heun, dpmpp_2m keep 3 tensors live, unipc 5


def _impls(sampler: str) -> list[str]:
    return ["diffusers", "diffcore", *(["diffcore-gen"] if sampler in STOCHASTIC else [])]


def _rounds(fn: Any) -> int:
    fn()
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    return max(ROUNDS[0], min(ROUNDS[1], int(BUDGET_S / max(once, 1e-9))))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' numpy-2 warnings
@pytest.mark.parametrize(
    "size,sampler,impl",
    [
        pytest.param(size, s, impl, id=f"{s}-{size}-{impl}")
        for size in CALL_SIZES
        for s in DETERMINISTIC + STOCHASTIC
        for impl in _impls(s)
        if size != "8M" or s in DETERMINISTIC
    ],
)
def test_call(benchmark: Any, size: str, sampler: str, impl: str) -> None:
    gen = torch.Generator().manual_seed(1234)
    x_T, out = torch.randn(SIZES[size], generator=gen), torch.randn(SIZES[size], generator=gen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if impl == "diffusers":
            fn = diffusers_call(sampler, x_T, out, STEPS)
            tensors, iterations, live = None, None, None
        else:
            fn = diffcore_call(sampler, x_T, out, STEPS, gen=impl == "diffcore-gen")
            tensors, iterations = streamed(sampler, gen=impl == "diffcore-gen")
            live = working_set(sampler) if sampler in DETERMINISTIC else None
        benchmark.group = f"call {size}"
        benchmark.extra_info.update(
            {
                "suite": "calls",
                "case": "call",
                "size": size,
                "numel": x_T.numel(),
                "sampler": sampler,
                "impl": impl,
                "stochastic": sampler in STOCHASTIC,
                "steps": STEPS,
                "tensors_streamed": tensors,
                "working_set": live,
                "iterations": iterations,
                "torch_threads": torch.get_num_threads(),
            }
        )
        with torch.no_grad():
            result = benchmark.pedantic(fn, rounds=_rounds(fn), iterations=1, warmup_rounds=1)
    assert result.shape == x_T.shape


@pytest.mark.parametrize("tensors", SET_TENSORS)
@pytest.mark.parametrize("size", CALL_SIZES)
def test_add_floor(benchmark: Any, size: str, tensors: int) -> None:
    """20 loop iterations' worth of adds over a working set of ``tensors`` distinct tensors
    (:func:`cpu_call_cost.add_set_case`); 3: twenty back-to-back adds on the same x, y, z."""
    fn, adds = add_set_case(SIZES[size], tensors, STEPS)
    benchmark.group = f"call {size}"
    benchmark.extra_info.update(
        {
            "suite": "calls",
            "case": "add",
            "size": size,
            "tensors": tensors,
            "adds": adds,
            "steps": STEPS,
            "torch_threads": torch.get_num_threads(),
        }
    )
    benchmark.pedantic(fn, rounds=_rounds(fn), iterations=1, warmup_rounds=1)


def test_clocked(benchmark: Any) -> None:
    """A 20-step ddim call at 16K whose model stamps the clock; ``extra_info`` gets the minima
    over rounds of the setup (call to first model call) and of a step (median model-call interval)."""
    x_T, out = torch.randn(SIZES["16K"]), torch.randn(SIZES["16K"])
    stamps: list[float] = []
    setups: list[float] = []
    steps: list[float] = []

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        stamps.append(time.perf_counter())
        return out

    def call() -> torch.Tensor:
        stamps.clear()
        start = time.perf_counter()
        x = diffcore.sample(model, x_T, sampler="ddim", steps=STEPS, schedule="linear")
        setups.append(stamps[0] - start)
        steps.append(statistics.median(b - a for a, b in zip(stamps, stamps[1:])))
        return x

    benchmark.group = "call 16K"
    benchmark.pedantic(call, rounds=300, iterations=1, warmup_rounds=1)
    assert len(stamps) == STEPS
    benchmark.extra_info.update(
        {
            "suite": "calls",
            "case": "clocked",
            "size": "16K",
            "sampler": "ddim",
            "setup_min_s": min(setups),
            "step_min_s": min(steps),
            "torch_threads": torch.get_num_threads(),
        }
    )
