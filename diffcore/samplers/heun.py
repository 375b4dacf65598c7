"""Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Alg. 1).

Per interval: an Euler predictor to the next level, then the trapezoidal corrector with the
derivative at the predicted point; the last interval (to sigma 0) is a plain Euler step.
``steps`` intervals cost ``2 * steps - 1`` model evaluations, like diffusers' HeunDiscrete.
In VE units the derivative is ``d = (x - x0) / s = eps_hat``; slot 0 keeps the first one.
"""

from __future__ import annotations

import numpy as np

from diffcore.samplers.base import ProgramSampler
from diffcore.samplers.ddim import ancestral_row
from diffcore.samplers.program import Cols, Program, Step, level_of, ve_sigma
from diffcore.timesteps import Plan


def _heun(plan: Plan) -> Program:
    cols = Cols(1)
    prog = Program(slots=1)
    for i in range(plan.steps):
        alpha, std = plan.level(i)
        alpha_to, std_to = plan.target(i)
        euler = ancestral_row(cols, alpha, std, alpha_to, std_to, 0.0)
        sigma_to = float(plan.sigmas[i + 1])
        if std_to == 0.0:
            prog.steps.append(Step(level_of(plan, i), euler[None], sigma=sigma_to))
            continue
        d = cols.row(x=1.0 / std, x0=-alpha / std)  # eps_hat, the VE derivative
        prog.steps.append(Step(level_of(plan, i), np.stack([euler, d]), writes=(0,), sigma=sigma_to))
        # corrector at level i+1: x' = x_pred + alpha' dt/2 (d2 - d1), d2 = (x_pred - alpha' x0') / std'
        dt = ve_sigma(alpha_to, std_to) - ve_sigma(alpha, std)
        half = alpha_to * dt / 2.0
        row = cols.row(x=1.0 + half / std_to, x0=-half * alpha_to / std_to)
        row[cols.h(0)] = -half
        prog.steps.append(Step(level_of(plan, i + 1), row[None], sigma=sigma_to))
    return prog


heun = ProgramSampler("heun", _heun, plan_style="karras", doc="Heun's 2nd-order ODE solver (Karras et al. 2022, Alg. 1).")
