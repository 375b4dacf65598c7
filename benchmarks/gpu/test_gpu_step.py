"""Sampler steps on a CUDA GPU: per-step time, bandwidth, CUDA-graph loop and peak memory.

Skipped without CUDA. Every figure of the native-kernels issue's GPU part, in one run:

* ``test_gpu_step``: per-step time of every built-in sampler at 16K .. 64M elements, float32
  and bfloat16, a whole ``STEPS``-step ``run_program`` loop per round (model excluded: it
  returns a precomputed tensor; "step" = one loop iteration, heun has 2N-1). Variants:
  ``native`` (the CUDA kernels, in-kernel Philox noise ``seed=0``, ``diffcore.sample``'s default
  NaN/inf check), ``native-nocheck`` (``check_finite=False``), ``reference`` (the pure-Torch
  backend, noise from torch.randn into a buffer), ``compile`` (``torch.compile`` of the Torch
  reference step plugged into the same loop, check off, torch.randn noise) and ``diffusers``
  (float32 only). Peak memory: ``torch.cuda.max_memory_allocated`` above the start of one run.
* ``test_bandwidth``: at the largest size, ``y.copy_(x)`` (2 tensors moved: the device copy
  bandwidth), ``torch.add(x, y, out=z)`` and one native ddim step (3 tensors each).
* ``test_graph_loop``: a ``GRAPH_STEPS``-step loop of the native step kernel (no model), captured
  once in a CUDA graph; a round is one replay. Checked equal to ``run_program``'s result first.

Rounds are synchronised: each setup ends with ``torch.cuda.synchronize()`` and the timed call
ends with one, so a round times the GPU work it launched. No timing is asserted.

``DIFFCORE_BENCH_SIZES=16K,1M`` restricts the sizes; ``DIFFCORE_BENCH_DEVICE=cpu`` runs this
file's code paths on the CPU (a smoke check of the suite itself; graph cases skip).
"""

from __future__ import annotations

import os
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from diffcore import ops
from diffcore.denoiser import Denoiser
from diffcore.ops import reference
from diffcore.parameterization import Parameterization, make_parameterization
from diffcore.samplers import SAMPLERS as BUILTIN_SAMPLERS
from diffcore.samplers.program import Program, run_program

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared loops
from sampler_cases import Layout, diffcore_case, diffusers_case, layout_of, program_for  # noqa: E402

DEVICE = torch.device(os.environ.get("DIFFCORE_BENCH_DEVICE", "cuda"))
ON_CUDA = DEVICE.type == "cuda"
pytestmark = [
    pytest.mark.skipif(ON_CUDA and not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # diffusers' numpy-2 warnings
]

# name -> (shape, most timed rounds: fewer when a run is slow, see ROUND_BUDGET_S). No dimension
# of size 1, and the first shape's dimensions all differ: torch.compile's dynamic shapes would
# specialise a size-1 dimension or tie equal ones, and recompile at the next size.
ALL_SIZES: dict[str, tuple[tuple[int, ...], int]] = {
    "16K": ((2, 4, 32, 64), 20),
    "256K": ((4, 4, 128, 128), 20),
    "1M": ((4, 4, 256, 256), 20),
    "4M": ((16, 4, 256, 256), 10),
    "16M": ((16, 4, 512, 512), 5),
    "64M": ((16, 4, 1024, 1024), 3),
}
_chosen = [s.strip() for s in os.environ.get("DIFFCORE_BENCH_SIZES", "").split(",") if s.strip()]
if unknown := sorted(set(_chosen) - set(ALL_SIZES)):
    raise pytest.UsageError(f"DIFFCORE_BENCH_SIZES: unknown size(s) {unknown}; known: {', '.join(ALL_SIZES)}")
SIZES = {k: v for k, v in ALL_SIZES.items() if not _chosen or k in _chosen}
LARGEST = list(SIZES)[-1]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
STEPS = 20  # sampler steps per timed run_program round
ROUND_BUDGET_S = 1.0  # a case gets at most its size's rounds, fewer when they would take longer than this
GRAPH_STEPS, GRAPH_SIZES, GRAPH_ROUNDS = 50, [s for s in ("16K", "1M") if s in SIZES], 50
BANDWIDTH_REPS, BANDWIDTH_ROUNDS = 20, 10  # calls per round, rounds
SAMPLERS = sorted(BUILTIN_SAMPLERS)
IMPLS = ("native", "native-nocheck", "reference", "compile", "diffusers")


def sync() -> None:
    if ON_CUDA:
        torch.cuda.synchronize(DEVICE)


def native_backend() -> str:
    """The native backend's name for DEVICE (native-cuda), or skip when it is not built."""
    name = ops.backend(DEVICE)
    if name == "reference":
        pytest.skip(f"diffcore's native kernels are not built for {DEVICE.type}")
    return name


def peak_extra_bytes(fn: Callable[[], Any], cpu_probe: Callable[[Callable[[], Any]], int | None]) -> int | None:
    """Peak bytes allocated on DEVICE by ``fn()`` above what was allocated at its start
    (``cpu_probe``, the profiler's view, off CUDA)."""
    if not ON_CUDA:
        return cpu_probe(fn)
    sync()
    torch.cuda.reset_peak_memory_stats(DEVICE)
    start = torch.cuda.memory_allocated(DEVICE)
    fn()
    sync()
    return torch.cuda.max_memory_allocated(DEVICE) - start


def _inputs(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_T, model output): standard normal, seeded, on DEVICE."""
    gen = torch.Generator(device=DEVICE).manual_seed(1234)
    return (
        torch.randn(shape, generator=gen, device=DEVICE, dtype=dtype),
        torch.randn(shape, generator=gen, device=DEVICE, dtype=dtype),
    )


# --- torch.compile of the reference step ------------------------------------------------------

_compiled: dict[str, Callable[..., None]] = {}


def _reference_update(
    x: torch.Tensor,
    m: torch.Tensor,
    coeffs: torch.Tensor,
    history: torch.Tensor | None,
    noise: torch.Tensor | None,
    writes: tuple[int, ...],
) -> None:
    reference.sampler_step(x, m, coeffs, history, noise, list(writes))


def compiled_step_kernels(layout: Layout) -> Callable[[Any], tuple[Callable[..., None], Callable[..., None]]]:
    """A drop-in for ``ops.step_kernels``: the reference step under ``torch.compile``.

    One compiled function with dynamic shapes serves every size. Dynamo keys its cache on the
    code object, and looks entries up one after another, so each history layout gets its own
    copy of the function: its cache holds that layout's specialisations only (written slots,
    dtype; at most 6 for the built-ins), as a user compiling one sampler's step would see.
    The recompile limit is raised and hitting it fails instead of silently running eagerly.
    """
    key = f"k{layout.slots}_{'noise' if layout.stochastic else 'ode'}"
    if key not in _compiled:
        cfg = torch._dynamo.config
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(cfg, name):
                setattr(cfg, name, max(getattr(cfg, name), 64))
        if hasattr(cfg, "fail_on_recompile_limit_hit"):
            cfg.fail_on_recompile_limit_hit = True
        # Without duck sizing: equal sizes (a coefficient view's offset and length, say) would
        # be tied by the first compilation and break at the next step's view.
        import torch.fx.experimental._config as fx_config

        if hasattr(fx_config, "use_duck_shape"):
            fx_config.use_duck_shape = False
        code = _reference_update.__code__.replace(co_name=f"_reference_update_{key}")
        fn = types.FunctionType(code, _reference_update.__globals__, code.co_name)
        _compiled[key] = torch.compile(fn, dynamic=True, fullgraph=True)
    fn = _compiled[key]

    def step(x, m, coeffs, history, noise, writes, seed, offset):  # the op schema's positional order
        if seed >= 0:
            raise ValueError("the compiled reference step takes a noise tensor, not a Philox seed")
        fn(x, m, coeffs, history, noise, tuple(writes))

    def cfg_step(*args: Any) -> None:
        raise NotImplementedError("the benchmark's model returns one output: no guidance")

    return lambda device: (step, cfg_step)


# --- per-step time of run_program ----------------------------------------------------------------


def _cases() -> Iterator[Any]:
    for dtype in DTYPES:  # dtype-major: a stage cut short by its budget still has all of float32
        for sampler in SAMPLERS:
            for size in SIZES:
                for impl in IMPLS:
                    if impl == "diffusers" and dtype != "float32":
                        continue  # diffusers' schedulers are compared in float32 only
                    yield pytest.param(sampler, size, dtype, impl, id=f"{sampler}-{size}-{dtype}-{impl}")


@pytest.mark.parametrize("sampler,size,dtype,impl", list(_cases()))
def test_gpu_step(
    benchmark: Any,
    peak_alloc: Callable,
    monkeypatch: pytest.MonkeyPatch,
    sampler: str,
    size: str,
    dtype: str,
    impl: str,
) -> None:
    shape, rounds = SIZES[size]  # at most
    x_T, out_buf = _inputs(shape, DTYPES[dtype])

    def model(x: torch.Tensor, t: Any, *cond: Any) -> torch.Tensor:
        return out_buf

    layout = layout_of(program_for(sampler, STEPS)[1])
    if impl == "diffusers":
        setup, run, iterations = diffusers_case(sampler, x_T, model, steps=STEPS)
        variant, noise = "diffusers", "generator"
    elif impl.startswith("native"):
        backend = native_backend()
        monkeypatch.setenv("DIFFCORE_KERNELS", "native")
        noise, check = "philox", impl == "native"
        setup, run, iterations = diffcore_case(sampler, x_T, model, steps=STEPS, check_finite=check, noise=noise)
        variant = f"diffcore-{backend}" + ("" if check else "-nocheck")
    else:
        monkeypatch.setenv("DIFFCORE_KERNELS", "reference")
        assert ops.backend(DEVICE) == "reference"
        noise, check = "generator", impl == "reference"
        if impl == "compile":
            monkeypatch.setattr(ops, "step_kernels", compiled_step_kernels(layout))
        setup, run, iterations = diffcore_case(sampler, x_T, model, steps=STEPS, check_finite=check, noise=noise)
        variant = "diffcore-reference-compile" if impl == "compile" else "diffcore-reference"

    def synced_setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        args = setup()
        sync()
        return args

    def timed(*args: Any) -> torch.Tensor:
        out = run(*args)
        sync()
        return out

    try:
        timed(*synced_setup()[0])  # warm-up: lazy initialisation, torch.compile's compilation
    except Exception as exc:
        if impl != "compile":
            raise
        pytest.skip(f"torch.compile of the reference step failed: {type(exc).__name__}: {str(exc)[:300]}")
    args, _ = synced_setup()
    start = time.perf_counter()
    peak = peak_extra_bytes(lambda: run(*args), peak_alloc)
    rounds = max(1, min(rounds, int(ROUND_BUDGET_S / (time.perf_counter() - start))))  # slow loops: fewer

    benchmark.group = f"{sampler} {size} {dtype}"
    benchmark.extra_info.update(
        {
            "sampler": sampler,
            "numel": x_T.numel(),
            "shape": list(shape),
            "dtype": dtype,
            "device": str(DEVICE),
            "impl": "diffusers" if impl == "diffusers" else "diffcore",
            "variant": variant,
            "noise": noise if layout.stochastic else "none",
            "check_finite": impl in ("native", "reference"),
            "steps": STEPS,
            "iterations": iterations,
            "peak_alloc_bytes": peak,
            "x_bytes": x_T.numel() * x_T.element_size(),
            "slots": layout.slots,
            "max_writes": layout.max_writes,
            "tensors_streamed": None
            if impl == "diffusers"
            else layout.tensors_streamed(noise_tensor=noise == "generator"),
            "memory_bound_x": layout.memory_bound(),
        }
    )
    result = benchmark.pedantic(timed, setup=synced_setup, rounds=rounds, iterations=1, warmup_rounds=0)
    assert result.shape == x_T.shape and result.dtype == x_T.dtype and result.device.type == DEVICE.type


# --- the memory-bound figures: copy, add and one native step at the largest size --------------


def coefficient_views(program: Program, param: Parameterization, x: torch.Tensor) -> list[torch.Tensor]:
    """Every step's coefficient vector ``[a, b, rows...]`` as views of one device buffer (the
    layout ``run_program`` uploads); checked against ``ops.coeff_width``."""
    vectors = []
    for st in program.steps:
        a, b = param.x0_coeffs(st.level.alpha, st.level.std)
        vectors.append(np.concatenate([[a, b], st.rows.reshape(-1)]))
        assert len(vectors[-1]) == ops.coeff_width(program.slots, len(st.writes))
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    flat = torch.from_numpy(np.concatenate(vectors)).to(device=x.device, dtype=dtype)
    offsets = np.cumsum([0] + [len(v) for v in vectors])
    return [flat[offsets[k] : offsets[k + 1]] for k in range(len(vectors))]


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("op", ["copy", "add", "ddim-step"])
def test_bandwidth(benchmark: Any, op: str, dtype: str) -> None:
    shape, _ = SIZES[LARGEST]
    x, y = _inputs(shape, DTYPES[dtype])
    x_start, z = x.clone(), torch.empty_like(x)
    if op == "copy":
        call, tensors = (lambda: y.copy_(x)), 2
    elif op == "add":
        call, tensors = (lambda: torch.add(x, y, out=z)), 3
    else:  # one ddim step from the middle of a 20-step run, in place on x, y as the model output
        native_backend()  # skips unless the native kernels are built and not overridden
        _, program = program_for("ddim", STEPS)
        k = STEPS // 2
        coeffs = coefficient_views(program, make_parameterization("epsilon"), x)[k]
        step, _ = ops.step_kernels(DEVICE)
        call, tensors = (lambda: step(x, y, coeffs, None, None, [], -1, k)), 3

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        x.copy_(x_start)  # the step updates x in place: every round starts from the same state
        sync()
        return (), {}

    def timed() -> None:
        for _ in range(BANDWIDTH_REPS):
            call()
        sync()

    benchmark.group = f"bandwidth {LARGEST} {dtype}"
    benchmark.extra_info.update(
        {
            "bandwidth": op,
            "numel": x.numel(),
            "shape": list(shape),
            "dtype": dtype,
            "device": str(DEVICE),
            "iterations": BANDWIDTH_REPS,
            "tensors_streamed": tensors,
            "bytes_per_iteration": tensors * x.numel() * x.element_size(),
        }
    )
    setup()
    timed()  # warm-up
    benchmark.pedantic(timed, setup=setup, rounds=BANDWIDTH_ROUNDS, iterations=1, warmup_rounds=0)
    if op == "copy":
        assert torch.equal(y, x)
    elif op == "add":
        assert torch.equal(z, x + y)
    else:
        assert not torch.equal(x, x_start)


# --- a GRAPH_STEPS-step loop of the native kernel in one CUDA graph ----------------------------


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("size", GRAPH_SIZES)
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_graph_loop(benchmark: Any, monkeypatch: pytest.MonkeyPatch, sampler: str, size: str, dtype: str) -> None:
    if not ON_CUDA:
        pytest.skip("CUDA graphs need a CUDA device")
    backend = native_backend()
    monkeypatch.setenv("DIFFCORE_KERNELS", "native")
    shape, _ = SIZES[size]
    x_T, out_buf = _inputs(shape, DTYPES[dtype])
    plan, program = program_for(sampler, GRAPH_STEPS)
    param = make_parameterization("epsilon")
    x_start = x_T * plan.init_scale
    x = x_start.clone()
    coeffs = coefficient_views(program, param, x)
    history = torch.zeros((program.slots, *shape), dtype=x.dtype, device=DEVICE) if program.slots else None
    step, _ = ops.step_kernels(DEVICE)

    def loop() -> None:  # what run_program does per step, minus the model call
        for k, (st, c) in enumerate(zip(program.steps, coeffs)):
            step(x, out_buf, c, history, None, st.writes, 0 if st.noise else -1, k)

    def reset() -> tuple[tuple[Any, ...], dict[str, Any]]:
        x.copy_(x_start)
        if history is not None:
            history.zero_()
        sync()
        return (), {}

    # The loop must compute what run_program computes (same coefficients, same Philox noise).
    expected = run_program(
        Denoiser(lambda xx, t: out_buf, param, timestep_dtype=plan.timestep_dtype, check_finite=False),
        x_start.clone(),
        program,
        seed=0,
    )
    reset()
    loop()
    torch.testing.assert_close(x, expected, rtol=0, atol=0, equal_nan=True)

    side = torch.cuda.Stream(DEVICE)
    side.wait_stream(torch.cuda.current_stream(DEVICE))
    with torch.cuda.stream(side):  # warm-up outside the capture
        reset()
        loop()
    torch.cuda.current_stream(DEVICE).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    reset()
    with torch.cuda.graph(graph):
        loop()
    reset()
    graph.replay()
    sync()
    torch.testing.assert_close(x, expected, rtol=0, atol=0, equal_nan=True)

    def replay() -> None:
        graph.replay()
        sync()

    benchmark.group = f"graph {size} {dtype}"
    benchmark.extra_info.update(
        {
            "graph_loop": sampler,
            "variant": f"diffcore-{backend}-graph",
            "numel": x.numel(),
            "shape": list(shape),
            "dtype": dtype,
            "device": str(DEVICE),
            "steps": GRAPH_STEPS,
            "iterations": len(program.steps),
        }
    )
    benchmark.pedantic(replay, setup=reset, rounds=GRAPH_ROUNDS, iterations=1, warmup_rounds=2)
