"""Brownian-tree noise: SDE noise that is one fixed Brownian path per seed, at any step count.

Stochastic samplers such as DPM-Solver++ SDE (k-diffusion's ``dpmpp_sde``) draw the noise of a
step from the increment of one Brownian motion between the step's noise levels, so a run with
20 steps and a run with 50 steps follow the same path and converge to the same SDE solution
(Li et al. 2020, "Scalable Gradients for Stochastic Differential Equations", sec. 4: the virtual
Brownian tree). The path lives on the fixed time ``u = sigma / (1 + sigma)`` in [0, 1], so it does
not depend on the schedule's range either. ``W(u)`` is built by Brownian-bridge bisection from
``W(0) = 0``, ``W(1) ~ N(0, I)`` down to a dyadic grid of depth :data:`DEPTH` (resolution 2**-24);
each midpoint's normal comes from the counter-based Philox stream keyed by (seed, node), sample b
of the batch keyed ``sample_index + b`` (so a sample's path does not depend on its batch).
"""

from __future__ import annotations

import math

from torch import Tensor

from diffcore import ops
from diffcore.ops.philox import BROWNIAN_OFFSET, DEFAULT_NOISE_MODE

DEPTH = 24


def _time(sigma: float) -> int:
    """The dyadic grid index of ``u = sigma / (1 + sigma)``; sigma = inf is u = 1."""
    u = 1.0 if math.isinf(sigma) else sigma / (1.0 + sigma)
    return round(u * 2**DEPTH)


class BrownianPath:
    """``W(u)`` of one Brownian motion per seed, shaped and placed like ``like``."""

    def __init__(self, like: Tensor, seed: int, sample_index: int = 0, noise_mode: str = DEFAULT_NOISE_MODE) -> None:
        ops.check_seed(seed)
        self.like, self.seed, self.sample_index, self.noise_mode = like, seed, sample_index, noise_mode
        self._end = self._normal(1)  # W(1)

    def _normal(self, node: int) -> Tensor:
        return ops.philox_noise_like(
            self.like,
            self.seed,
            offset=BROWNIAN_OFFSET + node,
            sample_index=self.sample_index,
            noise_mode=self.noise_mode,
        )

    def value(self, k: int) -> Tensor:
        """W at grid point ``k / 2**DEPTH`` by bisection from the root (heap-numbered nodes)."""
        lo, hi, w_lo, w_hi, node = 0, 2**DEPTH, self.like.new_zeros(()), self._end, 2
        while k not in (lo, hi):
            mid = (lo + hi) // 2
            w_mid = 0.5 * (w_lo + w_hi) + math.sqrt((hi - lo) / 2 ** (DEPTH + 2)) * self._normal(node)
            if k < mid:
                hi, w_hi, node = mid, w_mid, 2 * node
            else:
                lo, w_lo, node = mid, w_mid, 2 * node + 1
        return w_lo if k == lo else w_hi

    def noise(self, sigma: float, sigma_next: float) -> Tensor:
        """The standard-normal increment ``(W(u') - W(u)) / sqrt(|u' - u|)`` between two levels."""
        a, b = _time(sigma), _time(sigma_next)
        if a == b:
            raise ValueError(f"Brownian noise between sigma {sigma} and {sigma_next}: the levels coincide on the grid")
        return (self.value(b) - self.value(a)) / math.sqrt(abs(b - a) / 2**DEPTH)
