"""Consistency-model samplers: multistep LCM and TCD, in VE units.

LCM (Luo et al. 2023, "Latent Consistency Models"; diffusers' LCMScheduler): each step
takes the consistency function ``D = c_skip x_t + c_out x0`` and re-noises it to the next level,
``x' = D + s' z``; the last step returns D. ``c_skip``/``c_out`` are the boundary condition of
Song et al. 2023 ("Consistency Models") on the integer training timestep times ``timestep_scaling``, with the
state ``x_t = alpha x``; on continuous model times (EDM sigma, flow) there is none, as in
diffusers' FlowMatchLCMScheduler and ComfyUI's lcm.

TCD (Zheng et al. 2024, "Trajectory Consistency Distillation"; diffusers' TCDScheduler):
each step moves along the ODE to the intermediate time ``(1 - gamma) t'`` (floored on an integer
grid), ``x_s = x0 + s_s d``, and re-noises from there to the next level: an ancestral step with
``s_down = s_s``. gamma = 0 is DDIM; gamma = 1 is x0-and-renoise.
"""

from __future__ import annotations

import math

import torch

from diffcore.samplers.base import program_sampler
from diffcore.samplers.builder import Builder, Point
from diffcore.samplers.expr import Expr
from diffcore.timesteps import sigma_at_time

SIGMA_DATA = 0.5  # the boundary condition's sigma_data (LCM, diffusers)


def _check_original_steps(name: str, original_inference_steps: object) -> None:
    """The plan's preset places the levels from it (:func:`diffcore.timesteps.lcm_timesteps`)."""
    value = original_inference_steps
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: original_inference_steps={value!r} must be an integer >= 1")


def boundary_scalings(t: float, timestep_scaling: float) -> tuple[float, float]:
    """(c_skip, c_out) at model time ``t``: with u = t * timestep_scaling, ``c_skip = sd^2 / (u^2
    + sd^2)``, ``c_out = u / sqrt(u^2 + sd^2)``; ``timestep_scaling = inf`` gives (0, 1)."""
    u = t * timestep_scaling if t > 0 else 0.0
    if math.isinf(u):
        return 0.0, 1.0
    return SIGMA_DATA**2 / (u * u + SIGMA_DATA**2), u / math.sqrt(u * u + SIGMA_DATA**2)


def _consistency(p: Point, timestep_scaling: float) -> Expr:
    """LCM's denoised sample ``c_skip x_t + c_out x0``; the state ``x_t = alpha x0 + std d``
    stays finite at alpha = 0. ``timestep_scaling = inf``: x0."""
    c_skip, c_out = boundary_scalings(p.level.t, timestep_scaling)
    if c_skip == 0.0:
        return c_out * p.x0
    return c_out * p.x0 + c_skip * (p.alpha * p.x0 + p.level.std * p.d)


@program_sampler("lcm", plan_style="lcm", stochastic=True, original_inference_steps=50, timestep_scaling=10.0)
def lcm(b: Builder, original_inference_steps: int, timestep_scaling: float) -> None:
    """Multistep latent consistency sampling (Luo et al. 2023)."""
    _check_original_steps("lcm", original_inference_steps)
    scaling = timestep_scaling
    if isinstance(scaling, bool) or not isinstance(scaling, (int, float)) or not scaling > 0:
        raise ValueError(f"lcm: timestep_scaling={scaling!r} must be a number > 0 (inf: no boundary condition)")
    if b.plan.timestep_dtype != torch.int64:  # continuous model times: no boundary condition
        scaling = math.inf
    for i in range(b.steps):
        p = b.model(i)
        if i == b.steps - 1:
            b.update(_consistency(p, float(scaling)), sigma=0.0)
        else:
            b.update(_consistency(p, float(scaling)) + p.sigma_to * b.noise)


def _intermediate_sigma(b: Builder, i: int, gamma: float) -> float:
    """VE sigma of TCD's intermediate time ``(1 - gamma) t_{i+1}`` (floored on an integer grid);
    the last step goes to the plan's end point."""
    if i == b.steps - 1:
        return b.sigma(b.steps)
    t_next = float(b.plan.timesteps[i + 1])
    t_s = (1.0 - gamma) * t_next
    if b.plan.timestep_dtype == torch.int64:
        t_s = math.floor(t_s)
    return b.sigma(i + 1) if t_s == t_next else min(sigma_at_time(b.plan, t_s), b.sigma(i + 1))


@program_sampler("tcd", plan_style="tcd", stochastic=True, gamma=0.3, original_inference_steps=50)
def tcd(b: Builder, gamma: float, original_inference_steps: int) -> None:
    """Trajectory consistency sampling (Zheng et al. 2024) with stochasticity ``gamma`` in [0, 1]."""
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0.0 <= gamma <= 1.0:
        raise ValueError(f"tcd: gamma={gamma!r} must be a number in [0, 1]")
    _check_original_steps("tcd", original_inference_steps)
    for i in range(b.steps):
        p = b.model(i)
        s_next, s_s = b.sigma(i + 1), _intermediate_sigma(b, i, float(gamma))
        s_up = math.sqrt(max(s_next * s_next - s_s * s_s, 0.0))
        b.update(p.x0 + s_s * p.d + s_up * b.noise, level=i + 1)
