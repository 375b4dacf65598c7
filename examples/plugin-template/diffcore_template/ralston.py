"""Ralston's second-order Runge-Kutta method (Ralston 1962, the RK2 with minimum error bound,
alpha = 2/3) on the probability-flow ODE dx/dsigma = d(x, sigma), in VE sigma units.

Per interval [s, s']: d1 at s, a stage at s + 2/3 (s' - s), then x' = x + (s' - s)(d1/4 + 3 d2/4).
Written with diffcore's sampler builder, so it runs through the same fused op as the built-ins.
"""

from __future__ import annotations

from diffcore.samplers import program_sampler


@program_sampler("ralston", plan_style="karras")
def ralston(b):
    """Ralston's RK2 (alpha = 2/3) on the probability-flow ODE; the last interval is Euler."""
    start, d1 = b.history(1), b.history(1)
    for i in range(b.steps):
        p = b.model(i)
        if p.sigma_to == 0:  # last interval: an Euler step to sigma 0
            b.update(p.x0)
            continue
        dt = p.sigma_to - p.sigma
        start.push(p.x)
        d1.push(p.d)
        b.update(p.x + 2 / 3 * dt * p.d, sigma=p.sigma + 2 / 3 * dt)
        m = b.model_at(p.sigma + 2 / 3 * dt)
        b.update(start[0] + dt * (d1[0] / 4 + 3 / 4 * m.d), level=i + 1)
