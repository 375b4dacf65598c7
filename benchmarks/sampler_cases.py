"""The sampling loops the benchmark suites time: diffcore's and the matching diffusers scheduler's.

Shared by ``test_sampler_step.py`` (CPU) and ``gpu/test_gpu_step.py`` (CUDA). Each case returns
``(setup, run, iterations)`` for ``benchmark.pedantic``: ``setup`` builds the run's fresh inputs
outside the timer, ``run`` is the timed sampling loop (model excluded: it returns a precomputed
tensor), ``iterations`` the loop iterations of one run (one model call + one update each).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch

import diffcore
from diffcore.denoiser import Denoiser
from diffcore.parameterization import make_parameterization
from diffcore.samplers.program import Program, run_program
from diffcore.timesteps import Plan, make_plan

SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}  # "linear", as diffusers'
NOISE_MODES = ("generator", "philox")

Case = tuple[Callable[[], tuple[tuple[Any, ...], dict[str, Any]]], Callable[..., torch.Tensor], int]


@dataclass(frozen=True)
class Layout:
    """What one fused step of a program streams: ``slots`` history buffers (K), at most
    ``max_writes`` of them written per step (W), and whether any step draws noise."""

    slots: int
    max_writes: int
    stochastic: bool

    def tensors_streamed(self, noise_tensor: bool) -> int:
        """Full-size tensors one fused step reads + writes: x (read and write), the model output,
        K history slots read, W written, and the noise tensor when one is passed (not with the
        in-kernel Philox noise)."""
        return self.slots + self.max_writes + 3 + (1 if noise_tensor and self.stochastic else 0)

    def memory_bound(self) -> int:
        """The issue's bound on a run's peak extra memory, in multiples of x: history + 2."""
        return self.slots + 2


def program_for(name: str, steps: int) -> tuple[Plan, Program]:
    """The plan and coefficient program of built-in sampler ``name`` on the linear schedule."""
    sampler = diffcore.get("samplers", name)
    if not hasattr(sampler, "program"):
        pytest.skip(f"sampler {name!r} is not a coefficient program")
    schedule = diffcore.get("schedules", "linear")(**SCHEDULE)
    plan = make_plan(schedule, steps, "leading", sampler.plan_style)
    return plan, sampler.program(plan)


def layout_of(program: Program) -> Layout:
    return Layout(
        slots=program.slots,
        max_writes=max((len(st.writes) for st in program.steps), default=0),
        stochastic=any(st.noise for st in program.steps),
    )


def diffcore_case(
    name: str, x_T: torch.Tensor, model: Callable[..., torch.Tensor], *, steps: int, check_finite: bool, noise: str
) -> Case:
    """``run_program`` of sampler ``name`` with the program built once, outside the timer (what
    ``diffcore.sample`` builds per call). ``noise="generator"``: torch.randn from a seeded
    generator into a preallocated buffer; ``"philox"``: ``seed=0``, noise drawn in the kernel."""
    if noise not in NOISE_MODES:
        raise ValueError(f"noise={noise!r}: expected one of {NOISE_MODES}")
    plan, program = program_for(name, steps)
    param = make_parameterization("epsilon")

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (x_T * plan.init_scale, torch.Generator(device=x_T.device).manual_seed(0)), {}

    def run(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        denoiser = Denoiser(model, param, timestep_dtype=plan.timestep_dtype, check_finite=check_finite)
        if noise == "philox":
            return run_program(denoiser, x, program, seed=0)
        return run_program(denoiser, x, program, generator=g)

    return setup, run, len(program.steps)


def diffusers_scheduler(name: str) -> Any:
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


def diffusers_case(name: str, x_T: torch.Tensor, model: Callable[..., torch.Tensor], *, steps: int) -> Case:
    """The diffusers loop ``scale_model_input -> model -> step``; ``set_timesteps`` (its plan) runs
    in the setup, outside the timer. Noise: a seeded generator on x's device, as in a pipeline."""
    pytest.importorskip("diffusers", reason="diffusers is not installed")
    if name == "lms":
        pytest.importorskip("scipy", reason="diffusers' LMSDiscreteScheduler needs scipy")
    sched = diffusers_scheduler(name)
    takes_generator = "generator" in inspect.signature(sched.step).parameters
    on_device = {"device": x_T.device} if "device" in inspect.signature(sched.set_timesteps).parameters else {}
    sched.set_timesteps(steps, **on_device)
    iterations = len(sched.timesteps)

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        sched.set_timesteps(steps, **on_device)  # resets the step index and multistep history
        return (x_T * sched.init_noise_sigma, torch.Generator(device=x_T.device).manual_seed(0)), {}

    def run(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        extra = {"generator": g} if takes_generator else {}
        for t in sched.timesteps:
            out = model(sched.scale_model_input(x, t), t)
            x = sched.step(out, t, x, **extra).prev_sample
        return x

    return setup, run, iterations
