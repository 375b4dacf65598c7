"""Per-step time of every sampler: diffcore vs the same diffusers scheduler, in the same run.

The model is excluded: both sides call ``model(x, t)`` that returns one precomputed float32
tensor. A timed round is a whole run of ``STEPS`` sampler steps on the "linear" schedule,
the sampling loop only (the loops live in ``sampler_cases.py``):

* diffcore, once per kernel backend (``reference`` and, when built, ``native-cpu``):
  ``run_program(denoiser, x, program)`` with the program (the host-side float64
  coefficients) built once outside the timer, as ``diffcore.sample`` would build it per call.
  Timed: the coefficient upload and buffer allocation ``run_program`` does per run, then per
  step the denoiser call and the one fused op. ``diffcore-<backend>`` runs the defaults of
  ``diffcore.sample`` (the denoiser checks each model output for NaN/inf) with noise from a
  seeded torch.Generator; on the active backend, ``-nocheck`` passes ``check_finite=False`` and,
  for the stochastic samplers, ``-philox`` draws the noise inside the kernel (``seed=0``).
* diffusers: ``set_timesteps`` outside the timer (its plan); timed: the loop
  ``scale_model_input -> model -> step``.
* the memory floor: ``torch.add(x, y, out=z)`` (read 2, write 1 full-size tensor) at every
  size, ``STEPS`` calls per round, in the same run.

One "step" below is one loop iteration: one model call and one update. Heun's ``STEPS``
sampler steps are ``2*STEPS-1`` iterations on both sides; ``extra_info["iterations"]`` holds the
count and ``summarize.py`` divides by it. No timing is asserted anywhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from sampler_cases import diffcore_case, diffusers_case, layout_of, program_for

from diffcore import ops
from diffcore.samplers import SAMPLERS as BUILTIN_SAMPLERS

# name -> (shape, most timed rounds); every case is float32
# (a 16K run takes ~1 ms: with 10 rounds the minimum still carried warm-up noise of +-50%)
SIZES: dict[str, tuple[tuple[int, ...], int]] = {
    "16K": ((1, 4, 64, 64), 100),
    "256K": ((4, 4, 128, 128), 20),
    "1M": ((4, 4, 256, 256), 5),
    "8M": ((8, 4, 512, 512), 2),
}
# A case whose untimed (memory) run takes seconds gets fewer timed rounds: as many as fit in
# ROUND_BUDGET_S, at least one; the memory run is its warm-up when it took over WARMUP_S.
ROUND_BUDGET_S, WARMUP_S = 2.0, 0.5
# At 8M the reference backend runs only for three representative samplers (seconds per run).
REFERENCE_AT_8M = ("ddim", "dpmpp_2m", "unipc")  # no history / one slot / three slots, two writes
STEPS = 20  # sampler steps per timed run (heun: 2*STEPS-1 model calls)
# the built-in coefficient-program samplers (dpm_adaptive picks its steps at run time), not plugins
SAMPLERS = sorted(name for name, s in BUILTIN_SAMPLERS.items() if hasattr(s, "program"))
BACKEND = ops.backend()  # the active one: native-cpu when the extension is built, unless forced
BACKENDS = list(dict.fromkeys(["reference", BACKEND]))
IMPLS = [
    *(f"diffcore-{b}" for b in BACKENDS),
    f"diffcore-{BACKEND}-nocheck",
    f"diffcore-{BACKEND}-philox",  # stochastic samplers only
    "diffusers",
]


def _stochastic(sampler: str) -> bool:
    return layout_of(program_for(sampler, STEPS)[1]).stochastic


def _cases() -> Iterator[Any]:
    for sampler in SAMPLERS:
        for size in SIZES:
            for impl in IMPLS:
                if "-philox" in impl and not _stochastic(sampler):
                    continue
                if (
                    size == "8M"
                    and impl == "diffcore-reference"
                    and BACKEND != "reference"
                    and sampler not in REFERENCE_AT_8M
                ):
                    continue
                yield pytest.param(sampler, size, impl, id=f"{sampler}-{size}-{impl}")


def _parse(impl: str) -> tuple[str, bool, str]:
    """``diffcore-<backend>[-philox][-nocheck]`` -> (backend, check_finite, noise mode)."""
    rest = impl.removeprefix("diffcore-")
    check_finite = not rest.endswith("-nocheck")
    rest = rest.removesuffix("-nocheck")
    noise = "philox" if rest.endswith("-philox") else "generator"
    return rest.removesuffix("-philox"), check_finite, noise


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' numpy-2 warnings
@pytest.mark.parametrize("sampler,size,impl", list(_cases()))
def test_sampler_step(
    benchmark: Any, peak_alloc: Callable, monkeypatch: pytest.MonkeyPatch, sampler: str, size: str, impl: str
) -> None:
    shape, rounds = SIZES[size]
    gen = torch.Generator().manual_seed(1234)
    x_T = torch.randn(shape, generator=gen)
    out_buf = torch.randn(shape, generator=gen)

    def model(x: torch.Tensor, t: Any, *cond: Any) -> torch.Tensor:
        return out_buf

    layout = layout_of(program_for(sampler, STEPS)[1])
    noise = "generator"
    if impl == "diffusers":
        setup, run, iterations = diffusers_case(sampler, x_T, model, steps=STEPS)
    else:
        backend, check_finite, noise = _parse(impl)
        monkeypatch.setenv("DIFFCORE_KERNELS", "reference" if backend == "reference" else "native")
        assert ops.backend() == backend
        setup, run, iterations = diffcore_case(sampler, x_T, model, steps=STEPS, check_finite=check_finite, noise=noise)

    args, _ = setup()
    start = time.perf_counter()
    peak = peak_alloc(lambda: run(*args))  # one untimed run: memory, and a warm-up
    untimed_s = time.perf_counter() - start

    benchmark.group = f"{sampler} {size}"
    benchmark.extra_info.update(
        {
            "sampler": sampler,
            "numel": x_T.numel(),
            "shape": list(shape),
            "impl": "diffusers" if impl == "diffusers" else "diffcore",
            "torch_threads": torch.get_num_threads(),
            "variant": impl,
            "steps": STEPS,
            "iterations": iterations,
            "peak_alloc_bytes": peak,
            "x_bytes": x_T.numel() * x_T.element_size(),
            "slots": layout.slots,
            "max_writes": layout.max_writes,
            "noise": noise if layout.stochastic else "none",
            # full-size tensors diffcore's fused step reads + writes (diffusers makes many more passes)
            "tensors_streamed": None
            if impl == "diffusers"
            else layout.tensors_streamed(noise_tensor=noise == "generator"),
            "memory_bound_x": layout.memory_bound(),
        }
    )
    rounds = max(1, min(rounds, int(ROUND_BUDGET_S / untimed_s)))
    result = benchmark.pedantic(
        run, setup=setup, rounds=rounds, iterations=1, warmup_rounds=0 if untimed_s > WARMUP_S else 1
    )
    assert result.shape == x_T.shape


@pytest.mark.parametrize("size", list(SIZES))
def test_memory_floor(benchmark: Any, size: str) -> None:
    """``torch.add(x, y, out=z)``: 3 full-size tensors streamed, the memory-bound floor of a step."""
    shape, _ = SIZES[size]
    gen = torch.Generator().manual_seed(1234)
    x, y = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    z = torch.empty_like(x)

    def run() -> None:
        for _ in range(STEPS):  # timed like a sampling run: STEPS back-to-back passes per round
            torch.add(x, y, out=z)

    benchmark.group = f"floor {size}"
    benchmark.extra_info.update(
        {
            "floor": "torch.add(x, y, out=z)",
            "numel": x.numel(),
            "shape": list(shape),
            "torch_threads": torch.get_num_threads(),
            "iterations": STEPS,
            "tensors_streamed": 3,
            "bytes_per_iteration": 3 * x.numel() * x.element_size(),
        }
    )
    benchmark.pedantic(run, rounds=10, iterations=1, warmup_rounds=1)
    assert torch.equal(z, x + y)


def order_items(items: list[pytest.Item]) -> None:
    """Run this module's cases size by size, each size's memory floor first, then the native
    variants, the reference, diffusers: the floor and the native steps it is compared with are
    measured minutes apart at most, not at the two ends of the run. Other items keep their place."""
    sizes, phases = list(SIZES), ("floor", "native", "reference", "diffusers")

    def key(item: pytest.Item) -> tuple[int, int]:
        params = item.callspec.params  # type: ignore[attr-defined]
        impl = params.get("impl", "floor")
        phase = (
            "floor"
            if impl == "floor"
            else "diffusers"
            if impl == "diffusers"
            else ("reference" if impl.startswith("diffcore-reference") else "native")
        )
        return sizes.index(params["size"]), phases.index(phase)

    slots = [i for i, item in enumerate(items) if item.module.__name__ == __name__ and hasattr(item, "callspec")]
    for i, item in zip(slots, sorted((items[i] for i in slots), key=key)):  # sorted() is stable
        items[i] = item
