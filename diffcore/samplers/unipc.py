"""UniPC (Zhao et al. 2023, "UniPC", Alg. 1-2 with B(h) = e^h - 1, "bh2"), data prediction, VE units.

Each step first applies the corrector UniC to the current point, using the model output just
computed there (no extra evaluation), then the predictor UniP of order p to the next level.
The corrected point is kept in a history because the next corrector starts from it. Order
schedule and ``lower_order_final`` follow diffusers' UniPCMultistepScheduler; the rho
coefficients solve the same small linear systems (eq. 8 of the paper) in float64.
"""

from __future__ import annotations

import math

import numpy as np

from diffcore.samplers.base import program_sampler
from diffcore.samplers.builder import Builder, half_log_snr
from diffcore.samplers.expr import Expr


def _b_vector(h: float, order: int) -> tuple[np.ndarray, float, float]:
    """(b, h_phi_1, B_h) of UniPC-bh2 for step size h in lambda (data prediction: hh = -h)."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    b_h = h_phi_1
    b = []
    factorial = 1.0
    for k in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return np.array(b), h_phi_1, b_h


def _uni(
    x: Expr, x0s: list[Expr], lams: list[float], sigma_from: float, sigma_to: float, x0_new: Expr | None = None
) -> Expr:
    """UniP (``x0_new`` None) or UniC of order ``len(x0s)`` from state ``x`` at ``lams[0]`` to
    ``sigma_to``: ``x0s[k]`` is the model output at ``lams[k]``, ``x0_new`` the one at the end."""
    order = len(x0s)
    h = half_log_snr(sigma_to) - lams[0]
    b, h_phi_1, b_h = _b_vector(h, order)
    rks = [(lams[k] - lams[0]) / h for k in range(1, order)]
    d1s = [(x0s[k] - x0s[0]) / rks[k - 1] for k in range(1, order)]
    out = (sigma_to / sigma_from) * x - h_phi_1 * x0s[0]
    r = np.array([[rk ** (i - 1) for rk in rks + [1.0]] for i in range(1, order + 1)])
    if x0_new is not None:  # corrector: rho solves the full system
        rhos = np.array([0.5]) if order == 1 else np.linalg.solve(r, b)
        return out - b_h * (sum(rhos[k] * d1s[k] for k in range(order - 1)) + rhos[-1] * (x0_new - x0s[0]))
    if order == 1:
        return out
    rhos = np.array([0.5]) if order == 2 else np.linalg.solve(r[:-1, :-1], b[:-1])
    return out - b_h * sum(rhos[k] * d1s[k] for k in range(order - 1))


@program_sampler("unipc", plan_style="unipc", order=2, lower_order_final=True)
def unipc(b: Builder, order: int, lower_order_final: bool) -> None:
    """UniPC-bh2 predictor-corrector (Zhao et al. 2023), data prediction."""
    if not isinstance(order, int) or not 1 <= order <= 3:
        raise ValueError(f"unipc: order={order!r} must be an integer in [1, 3]")
    x0s, start = b.history(order), b.history(1)  # x0_{i-1}, x0_{i-2}, ...; the last corrected point
    lams = [half_log_snr(b.sigma(i)) for i in range(b.steps)]
    prev_order = 0
    for i in range(b.steps):
        p = b.model(i)
        this_order = min(order, i + 1, b.steps - i if lower_order_final else order)
        if p.sigma_to == 0:  # lambda' = inf: only the first-order update is defined
            this_order = 1
        hist = [x0s[k] for k in range(len(x0s))]
        x_c = (
            p.x
            if i == 0
            else _uni(start[0], hist[:prev_order], lams[i - 1 :: -1][:prev_order], b.sigma(i - 1), p.sigma, p.x0)
        )
        x_next = _uni(
            x_c, [p.x0] + hist[: this_order - 1], [lams[i - k] for k in range(this_order)], p.sigma, p.sigma_to
        )
        x0s.push(p.x0)
        start.push(x_c)
        b.update(x_next)
        prev_order = this_order
