"""Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Alg. 1).

Per interval: an Euler predictor to the next level, then the trapezoidal corrector with the
derivative at the predicted point; the last interval (to sigma 0) is a plain Euler step.
``steps`` intervals cost ``2 * steps - 1`` model evaluations, like diffusers' HeunDiscrete.
"""

from __future__ import annotations

from diffcore.samplers.base import program_sampler
from diffcore.samplers.builder import Builder


@program_sampler("heun", plan_style="karras", frame="ode")
def heun(b: Builder) -> None:
    """Heun's 2nd-order ODE solver (Karras et al. 2022, Alg. 1)."""
    d_first = b.history(1)
    for i in range(b.steps):
        p = b.model(i)
        if p.sigma_to > 0:
            d_first.push(p.d)
        b.update(p.x0 + p.sigma_to * p.d)  # Euler: x + (s' - s) d
        if p.sigma_to > 0:
            q = b.model(i + 1)
            b.update(q.x + (p.sigma_to - p.sigma) / 2 * (q.d - d_first[0]), level=i + 1)
