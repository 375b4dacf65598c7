"""iPNDM: the improved pseudo linear multistep method (Zhang & Chen 2023, "Fast Sampling of
Diffusion Models with Exponential Integrator"; diffusers' IPNDMScheduler, ComfyUI's ipndm), in VE units.

Each step is the Euler / DDIM transfer ``x' = x + (s' - s) e`` with ``e`` the fixed-coefficient
Adams-Bashforth combination of the last derivatives ``d = eps``, warming up with orders 1, 2, 3
instead of PNDM's Runge-Kutta steps. The steps are fourth order on equal sigma steps, but the
Euler first step (a starting value with error O(h^2)), and equal-step weights on a graded grid
(karras, timesteps), make the run second order.
"""

from __future__ import annotations

from diffcore.samplers.base import program_sampler
from diffcore.samplers.builder import Builder, History
from diffcore.samplers.expr import Expr

ADAMS_BASHFORTH = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))
"""Adams-Bashforth weights for equal steps, order 1..4, newest value first."""


def adams_bashforth(d: Expr, past: History) -> Expr:
    """The Adams-Bashforth combination of ``d`` and the values in ``past`` (newest first), of the
    highest order they allow (at most 4)."""
    weights = ADAMS_BASHFORTH[min(len(past), 3)]
    return weights[0] * d + sum(w * past[j] for j, w in enumerate(weights[1:]))


@program_sampler("ipndm", plan_style="karras")
def ipndm(b: Builder) -> None:
    """iPNDM (Zhang & Chen 2023): fourth-order fixed-step Adams-Bashforth on d, lower-order warm-up."""
    ds = b.history(3)  # d_{i-1}, d_{i-2}, d_{i-3}
    for i in range(b.steps):
        p = b.model(i)
        # the first step is Euler, written to stay finite at sigma = inf
        x_next = p.x0 + p.sigma_to * p.d if len(ds) == 0 else p.x + (p.sigma_to - p.sigma) * adams_bashforth(p.d, ds)
        ds.push(p.d)
        b.update(x_next)
