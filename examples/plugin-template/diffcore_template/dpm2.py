"""DPM-Solver-2 (Lu et al. 2022, "DPM-Solver", Alg. 1, r1 = 1/2), as k-diffusion's sample_dpm_2.

Per interval [s, s'] in VE sigma: an Euler step to the log-midpoint s_m = sqrt(s s'), a model
call there, then the full step with the midpoint derivative: x' = x + (s' - s) d(x_m, s_m).
Written as a coefficient program, so it uses diffcore's fused op like the built-in samplers.
"""

from __future__ import annotations

import math

import numpy as np

from diffcore.samplers.base import ProgramSampler
from diffcore.samplers.ddim import ancestral_row
from diffcore.samplers.program import Cols, Program, Step, level_of
from diffcore.timesteps import Plan


def _dpm_2(plan: Plan) -> Program:
    cols = Cols(1)  # slot 0 keeps x at the start of the interval
    prog = Program(slots=1)
    for i in range(plan.steps):
        alpha, std = plan.level(i)
        alpha_to, std_to = plan.target(i)
        if std_to == 0.0:  # last interval: an Euler step to sigma 0
            prog.steps.append(Step(level_of(plan, i), ancestral_row(cols, alpha, std, alpha_to, std_to, 0.0)[None]))
            continue
        s, s_to = std / alpha, std_to / alpha_to
        mid = plan.level_at(math.sqrt(s * s_to))
        to_mid = ancestral_row(cols, alpha, std, mid.alpha, mid.std, 0.0)
        prog.steps.append(Step(level_of(plan, i), np.stack([to_mid, cols.unit(cols.x)]), writes=(0,)))
        # x'_state = alpha' (x_i / alpha + (s' - s) d_mid),  d_mid = (x_mid - alpha_m x0_m) / std_m
        k = alpha_to * (s_to - s) / mid.std
        row = cols.row(x=k, x0=-k * mid.alpha)
        row[cols.h(0)] = alpha_to / alpha
        prog.steps.append(Step(mid, row[None], sigma=float(plan.sigmas[i + 1])))
    return prog


dpm_2 = ProgramSampler("dpm_2", _dpm_2, plan_style="karras", doc="DPM-Solver-2 (Lu et al. 2022), k-diffusion's dpm_2.")
