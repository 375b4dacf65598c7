"""PNDM: pseudo numerical methods (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models
on Manifolds"), in VE units,
as diffusers' PNDMScheduler runs them (``skip_prk_steps=False``).

PNDM's transfer ``phi`` is the DDIM step, in VE units ``x' = x + (s' - s) e`` for a
derivative estimate ``e``. The first three steps are pseudo Runge-Kutta (F-PNDM): RK4 on
``e = eps`` with the half step in model time, four model calls each; the rest are pseudo linear
multistep (PLMS), fourth-order Adams-Bashforth on the eps of the step starts. On
diffusers' grid the half step is ``(T // n) // 2`` timesteps: the first stage lands at
``t - half`` and the model then sees ``t_next + half`` (the same level unless the timesteps are
unevenly spaced); PLMS steps land on the plan's target ``t - T // n``. Fourth order on equal
sigma steps; on a graded grid (karras, timesteps) the equal-step weights make it second order.
"""

from __future__ import annotations

import math

import torch

from diffcore.samplers.base import program_sampler
from diffcore.samplers.builder import Builder
from diffcore.samplers.ipndm import adams_bashforth
from diffcore.timesteps import sigma_at_time

RK_STEPS = 3  # Runge-Kutta warm-up steps, which give PLMS its first three eps


def _half_step_levels(b: Builder, i: int) -> tuple[float, float, float]:
    """(sigma the first RK stage lands on, sigma of the midpoint model calls, sigma of the step's
    end) for the RK step from plan level i, placed by model time as diffusers places them."""
    plan = b.plan
    t = float(plan.timesteps[i])
    s_end = b.sigma(i + 1) if i + 1 < b.steps else _target_sigma(b, i)
    t_end = float(plan.timesteps[i + 1]) if i + 1 < b.steps else _time(b, s_end)
    if plan.timestep_dtype == torch.int64:  # diffusers' integer grid: half of T // n, from both ends
        half = (round(t) - round(_time(b, _target_sigma(b, i)))) // 2
        return sigma_at_time(plan, t - half), sigma_at_time(plan, t_end + half), s_end
    mid = sigma_at_time(plan, (t + t_end) / 2)
    return mid, mid, s_end


def _time(b: Builder, sigma: float) -> float:
    return b.plan.level_at(sigma).t


def _target_sigma(b: Builder, i: int) -> float:
    alpha, std = b.plan.target(i)
    return std / alpha


@program_sampler("pndm", plan_style="pndm")
def pndm(b: Builder) -> None:
    """F-PNDM (Liu et al. 2022): three pseudo-RK4 steps, then PLMS (4th-order Adams-Bashforth)."""
    eps = b.history(3)  # eps at the last step starts, newest first
    start = b.history(1)  # the RK step's start state, then its partial sum
    for i in range(b.steps):
        p = b.model(i)
        if math.isinf(p.sigma):  # zero terminal SNR or flow t = 1: the DDIM step, every transfer's limit
            eps.push(p.d)
            b.update(p.x0 + p.sigma_to * p.d)
            continue
        if i >= RK_STEPS:
            x_next = p.x + (p.sigma_to - p.sigma) * adams_bashforth(p.d, eps)
            eps.push(p.d)
            b.update(x_next)
            continue
        s, (s_land, s_mid, s_end) = p.sigma, _half_step_levels(b, i)
        land = {"level": i + 1} if i + 1 < b.steps else {"sigma": s_end}
        eps.push(p.d)
        start.push(p.x)
        b.update(p.x + (s_land - s) * p.d, sigma=s_land)
        m = b.model_at(s_mid)  # e2
        b.update(start[0] + (s_mid - s) * m.d, sigma=s_mid)
        m = b.model_at(s_mid)  # e3, at the state x_i + (s_mid - s) e2
        e2_weight = 2 * (s_end - s) / 6 / (s_mid - s) if s_mid != s else 0.0
        start.push(start[0] + (s_end - s) / 6 * (eps[0] + 2 * m.d) + e2_weight * (m.x - start[0]))
        b.update(start[0] + (s_end - s) * m.d, **land)
        m = b.model(i + 1) if i + 1 < b.steps else b.model_at(s_end)  # e4
        b.update(start[0] + (s_end - s) / 6 * m.d, **land)
