"""DDPM ancestral sampling (Ho et al. 2020, eq. 6-7 and Alg. 2) over a timestep subsequence.

The posterior q(x' | x, x0) between consecutive levels, in VE units with q = s'^2 / s^2: mean
``x0 + q (x - x0) = x0 + (s'^2 / s) d`` and variance ``s'^2 (1 - q)`` ("fixed_small", the
posterior variance) or the forward-step variance ("fixed_large", 1 - abar / abar' on the
variance-preserving state). Both forms stay finite at zero terminal SNR (s = inf).
"""

from __future__ import annotations

import math

from diffcore.samplers.base import program_sampler
from diffcore.samplers.builder import Builder

VARIANCE_TYPES = ("fixed_small", "fixed_large")


@program_sampler("ddpm", plan_style="ddpm", stochastic=True, variance_type="fixed_small")
def ddpm(b: Builder, variance_type: str) -> None:
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2) with fixed_small or fixed_large variance."""
    if variance_type not in VARIANCE_TYPES:
        raise ValueError(f"ddpm: variance_type={variance_type!r}: expected one of {VARIANCE_TYPES}")
    for i in range(b.steps):
        p = b.model(i)
        s, s_to = p.sigma, p.sigma_to
        q = (s_to / s) ** 2
        if s_to == 0:
            var = 0.0
        elif variance_type == "fixed_small":
            var = max(s_to * s_to * (1.0 - q), 1e-20 / p.alpha_to**2)
        else:  # (std^2 - (alpha / alpha')^2 std'^2) / alpha'^2, with std = alpha s
            var = max(p.level.std**2 * (1.0 - q), 1e-20) / p.alpha_to**2
        b.update(p.x0 + s_to * s_to / s * p.d + math.sqrt(var) * b.noise)
