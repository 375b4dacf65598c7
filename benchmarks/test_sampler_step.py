"""Per-step time of every sampler: diffcore vs the same diffusers scheduler, in the same run.

The model is excluded: both sides call ``model(x, t)`` that returns one precomputed float32
tensor. A timed round is a whole run of ``STEPS`` sampler steps on the "linear" schedule,
the sampling loop only:

* diffcore, once per kernel backend (``reference`` and, when built, ``native-cpu``):
  ``run_program(denoiser, x, program)`` with the program (the host-side float64
  coefficients) built once outside the timer, as ``diffcore.sample`` would build it per call.
  Timed: the coefficient upload and buffer allocation ``run_program`` does per run, then per
  step the denoiser call and the one fused op. ``diffcore-<backend>`` runs the defaults of
  ``diffcore.sample`` (the denoiser checks each model output for NaN/inf);
  ``diffcore-<backend>-nocheck`` (active backend only) passes ``check_finite=False``.
* diffusers: ``set_timesteps`` outside the timer (its plan); timed: the loop
  ``scale_model_input -> model -> step``.

One "step" below is one loop iteration: one model call and one update. Heun's ``STEPS``
sampler steps are ``2*STEPS-1`` iterations on both sides; ``extra_info["iterations"]`` holds the
count and ``summarize.py`` divides by it. No timing is asserted anywhere.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch

import diffcore
from diffcore import ops
from diffcore.denoiser import Denoiser
from diffcore.parameterization import make_parameterization
from diffcore.samplers import SAMPLERS as BUILTIN_SAMPLERS
from diffcore.samplers.program import run_program
from diffcore.timesteps import make_plan

# name -> (shape, timed rounds); every case is float32
SIZES: dict[str, tuple[tuple[int, ...], int]] = {
    "16K": ((1, 4, 64, 64), 10),
    "256K": ((4, 4, 128, 128), 5),
    "1M": ((4, 4, 256, 256), 3),
}
STEPS = 20  # sampler steps per timed run (heun: 2*STEPS-1 model calls)
SAMPLERS = sorted(BUILTIN_SAMPLERS)  # the built-ins, not whatever plugins happen to be installed
BACKEND = ops.backend()  # the active one: native-cpu when the extension is built, unless forced
BACKENDS = list(dict.fromkeys(["reference", BACKEND]))
IMPLS = [*(f"diffcore-{b}" for b in BACKENDS), f"diffcore-{BACKEND}-nocheck", "diffusers"]
SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}


def _diffusers_scheduler(name: str) -> Any:
    """The diffusers scheduler whose update matches diffcore's ``name`` (same linear schedule)."""
    import diffusers as d

    cfg = dict(SCHEDULE, beta_schedule="linear")
    table: dict[str, Callable[[], Any]] = {
        "ddpm": lambda: d.DDPMScheduler(clip_sample=False, **cfg),
        "ddim": lambda: d.DDIMScheduler(clip_sample=False, **cfg),
        "euler": lambda: d.EulerDiscreteScheduler(**cfg),
        "euler_ancestral": lambda: d.EulerAncestralDiscreteScheduler(**cfg),
        "heun": lambda: d.HeunDiscreteScheduler(**cfg),
        "dpmpp_2m": lambda: d.DPMSolverMultistepScheduler(**cfg),
        "dpmpp_2m_sde": lambda: d.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", **cfg),
        "dpmpp_3m_sde": lambda: d.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=3, **cfg),
        "unipc": lambda: d.UniPCMultistepScheduler(**cfg),
        "lms": lambda: d.LMSDiscreteScheduler(**cfg),
    }
    if name not in table:
        pytest.skip(f"no diffusers counterpart for sampler {name!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return table[name]()


def _diffusers_case(name: str, x_T: torch.Tensor, model: Callable[..., torch.Tensor]) -> tuple[Callable, Callable, int]:
    if name == "lms":
        pytest.importorskip("scipy", reason="diffusers' LMSDiscreteScheduler needs scipy")
    sched = _diffusers_scheduler(name)
    takes_generator = "generator" in inspect.signature(sched.step).parameters
    sched.set_timesteps(STEPS)
    iterations = len(sched.timesteps)

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        sched.set_timesteps(STEPS)  # resets the step index and multistep history
        return (x_T * sched.init_noise_sigma, torch.Generator().manual_seed(0)), {}

    def run(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        extra = {"generator": g} if takes_generator else {}
        for t in sched.timesteps:
            out = model(sched.scale_model_input(x, t), t)
            x = sched.step(out, t, x, **extra).prev_sample
        return x

    return setup, run, iterations


def _diffcore_case(name: str, x_T: torch.Tensor, model: Callable[..., torch.Tensor],
                   check_finite: bool) -> tuple[Callable, Callable, int]:
    sampler = diffcore.get("samplers", name)
    schedule = diffcore.get("schedules", "linear")(**SCHEDULE)
    plan = make_plan(schedule, STEPS, "leading", sampler.plan_style, rule=sampler.plan_rule)
    program = sampler.program(plan)
    param = make_parameterization("epsilon")

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (x_T * plan.init_scale, torch.Generator().manual_seed(0)), {}

    def run(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        denoiser = Denoiser(model, param, timestep_dtype=plan.timestep_dtype, check_finite=check_finite)
        return run_program(denoiser, x, program, generator=g)

    return setup, run, len(program.steps)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' numpy-2 warnings
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampler_step(benchmark: Any, peak_alloc: Callable, monkeypatch: pytest.MonkeyPatch, sampler: str, size: str,
                      impl: str) -> None:
    shape, rounds = SIZES[size]
    gen = torch.Generator().manual_seed(1234)
    x_T = torch.randn(shape, generator=gen)
    out_buf = torch.randn(shape, generator=gen)

    def model(x: torch.Tensor, t: Any, *cond: Any) -> torch.Tensor:
        return out_buf

    if impl == "diffusers":
        pytest.importorskip("diffusers", reason="diffusers is not installed")
        setup, run, iterations = _diffusers_case(sampler, x_T, model)
    else:
        backend = impl.removeprefix("diffcore-").removesuffix("-nocheck")
        monkeypatch.setenv("DIFFCORE_KERNELS", "reference" if backend == "reference" else "native")
        assert ops.backend() == backend
        if not hasattr(diffcore.get("samplers", sampler), "program"):
            pytest.skip(f"sampler {sampler!r} is not a coefficient program")
        setup, run, iterations = _diffcore_case(sampler, x_T, model, check_finite=not impl.endswith("-nocheck"))

    args, _ = setup()
    peak = peak_alloc(lambda: run(*args))  # one untimed run: memory, and a warm-up

    benchmark.group = f"{sampler} {size}"
    benchmark.extra_info.update({
        "sampler": sampler,
        "numel": x_T.numel(),
        "shape": list(shape),
        "impl": "diffusers" if impl == "diffusers" else "diffcore",
        "torch_threads": torch.get_num_threads(),
        "variant": impl,
        "steps": STEPS,
        "iterations": iterations,
        "peak_alloc_bytes": peak,
    })
    result = benchmark.pedantic(run, setup=setup, rounds=rounds, iterations=1, warmup_rounds=1)
    assert result.shape == x_T.shape
