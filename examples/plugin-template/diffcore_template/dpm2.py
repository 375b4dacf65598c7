"""DPM-Solver-2 (Lu et al. 2022, "DPM-Solver", Alg. 1, r1 = 1/2), as k-diffusion's sample_dpm_2.

Per interval [s, s'] in VE sigma: an Euler step to the log-midpoint s_m = sqrt(s s'), a model
call there, then the full step with the midpoint derivative: x' = x + (s' - s) d(x_m, s_m).
Written with diffcore's sampler builder, so it runs through the same fused op as the built-ins.
"""

from __future__ import annotations

import math

from diffcore.samplers import program_sampler


@program_sampler("dpm_2", plan_style="karras")
def dpm_2(b):
    """DPM-Solver-2 (Lu et al. 2022), k-diffusion's dpm_2."""
    start = b.history(1)  # x at the start of the interval
    for i in range(b.steps):
        p = b.model(i)
        if p.sigma_to == 0:  # last interval: an Euler step to sigma 0
            b.update(p.x0)
            continue
        s_mid = math.sqrt(p.sigma * p.sigma_to)
        start.push(p.x)
        b.update(p.x + (s_mid - p.sigma) * p.d, sigma=s_mid)
        m = b.model_at(s_mid)
        b.update(start[0] + (p.sigma_to - p.sigma) * m.d, level=i + 1)
