"""DDIM, Euler and Euler ancestral: one first-order step, with an optional ancestral noise share.

In VE units (s = std / alpha) all three are ``x' = x0 + s_down * eps_hat + s_up * z`` with
``eps_hat = (x - x0) / s`` and ``s_up = eta * s' * sqrt(s^2 - s'^2) / s``,
``s_down = sqrt(s'^2 - s_up^2)``: DDIM with eta (Song et al. 2021, eq. 12 and 16), the Euler
step of the probability-flow ODE (Karras et al. 2022, Alg. 1) at eta = 0 and Euler ancestral
(k-diffusion) at eta = 1. They differ only in how their diffusers counterparts space timesteps.
"""

from __future__ import annotations

import math

import numpy as np

from diffcore.samplers.base import ProgramSampler
from diffcore.samplers.program import Cols, Program, Step, level_of
from diffcore.timesteps import Plan


def ancestral_row(cols: Cols, alpha: float, std: float, alpha_to: float, std_to: float, eta: float) -> np.ndarray:
    """Row over [x, x0, ..., z] of the step from (alpha, std) to (alpha_to, std_to), state space.

    ``std_z = eta * std_to * sqrt(1 - (alpha std_to)^2 / (alpha_to std)^2)`` is the VE ``s_up``
    scaled by alpha_to; the form stays finite at zero terminal SNR (alpha = 0).
    """
    if std_to == 0.0:
        return cols.row(x0=alpha_to)
    ratio = (alpha * std_to) / (alpha_to * std)
    std_z = eta * std_to * math.sqrt(max(1.0 - ratio * ratio, 0.0))
    direction = math.sqrt(max(std_to * std_to - std_z * std_z, 0.0))
    return cols.row(x=direction / std, x0=alpha_to - direction * alpha / std, z=std_z)


def _ancestral_program(plan: Plan, eta: float) -> Program:
    cols = Cols(0)
    prog = Program(slots=0)
    for i in range(plan.steps):
        alpha, std = plan.level(i)
        alpha_to, std_to = plan.target(i)
        row = ancestral_row(cols, alpha, std, alpha_to, std_to, eta)
        prog.steps.append(Step(level_of(plan, i), row[None], noise=eta > 0, sigma=float(plan.sigmas[i + 1])))
    return prog


def _ddim(plan: Plan, eta: float) -> Program:
    return _ancestral_program(plan, eta)


def _euler(plan: Plan) -> Program:
    return _ancestral_program(plan, 0.0)


ddim = ProgramSampler(
    "ddim",
    _ddim,
    plan_style="ddim",
    plan_rule="ddim",
    options={"eta": 0.0},
    doc="DDIM (Song et al. 2021); eta=0 deterministic, eta=1 matches the DDPM posterior variance.",
)

euler = ProgramSampler("euler", _euler, plan_style="karras", doc="Euler step of the probability-flow ODE (Karras et al. 2022, Alg. 1).")

euler_ancestral = ProgramSampler(
    "euler_ancestral",
    _ancestral_program,
    plan_style="karras",
    options={"eta": 1.0},
    stochastic=True,
    doc="Euler ancestral (k-diffusion): Euler to sigma_down, then noise of std sigma_up.",
)
