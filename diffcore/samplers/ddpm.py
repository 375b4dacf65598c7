"""DDPM ancestral sampling (Ho et al. 2020, eq. 6-7 and Alg. 2) over a timestep subsequence.

The posterior q(x' | x, x0) between consecutive levels, in VE units (s = std / alpha):
mean ``x0 + (s'^2 / s^2) (x - x0)``, variance ``s'^2 (s^2 - s'^2) / s^2`` ("fixed_small", the
posterior variance) or the forward-step variance ``s^2 - s'^2`` ("fixed_large"), both scaled
by alpha' into the state space.
"""

from __future__ import annotations

import math

from diffcore.samplers.base import ProgramSampler
from diffcore.samplers.program import Cols, Program, Step, level_of
from diffcore.timesteps import Plan

VARIANCE_TYPES = ("fixed_small", "fixed_large")


def _ddpm(plan: Plan, variance_type: str) -> Program:
    if variance_type not in VARIANCE_TYPES:
        raise ValueError(f"ddpm: variance_type={variance_type!r}: expected one of {VARIANCE_TYPES}")
    cols = Cols(0)
    prog = Program()
    for i in range(plan.steps):
        alpha, std = plan.level(i)
        alpha_to, std_to = plan.target(i)
        # q = alpha^2 std'^2 / (alpha'^2 std^2) = s'^2 / s^2; stays finite at zero terminal SNR
        q = (alpha * std_to) ** 2 / (alpha_to * std) ** 2
        c_x = alpha * std_to**2 / (alpha_to * std**2)  # alpha' q / alpha
        c_x0 = alpha_to * (1.0 - q)
        post_var = std_to**2 * (1.0 - q)
        # forward-step variance from level i+1 to level i: 1 - abar/abar' on a VP state
        fwd_var = std**2 - (alpha / alpha_to) ** 2 * std_to**2
        var = post_var if variance_type == "fixed_small" else fwd_var
        var = max(var, 1e-20) if std_to > 0 else 0.0
        row = cols.row(x=c_x, x0=c_x0, z=math.sqrt(var))
        prog.steps.append(Step(level_of(plan, i), row[None], noise=True, sigma=float(plan.sigmas[i + 1])))
    return prog


ddpm = ProgramSampler(
    "ddpm",
    _ddpm,
    plan_style="ddim",
    options={"variance_type": "fixed_small"},
    stochastic=True,
    doc="DDPM ancestral sampling (Ho et al. 2020, Alg. 2) with fixed_small or fixed_large variance.",
)
