"""DEIS multistep, tAB-DEIS in log rho (Zhang & Chen 2023, "Fast Sampling of Diffusion Models
with Exponential Integrator"; diffusers' DEISMultistepScheduler, ``solver_type="logrho"``), in VE units.

With rho = sigma (VE) the probability-flow ODE is ``dx/drho = eps(x, rho)``. A step of order k
fits a polynomial in ``log rho`` through the last k derivatives and integrates it exactly:
``x' = x + sum_j c_j d_{i-j}``, ``c_j = int_{rho_i}^{rho'} L_j(log rho) d rho`` with ``L_j`` the
Lagrange basis on ``log sigma_{i-j}``. The order schedule and ``lower_order_final`` follow
diffusers (as DPM-Solver's multistep scheduler picks them).
"""

from __future__ import annotations

import math

import numpy as np

from diffcore.samplers.base import program_sampler
from diffcore.samplers.builder import Builder
from diffcore.samplers.dpmpp import dpm_orders
from diffcore.samplers.lms import lagrange_basis


def deis_coefficients(sigmas: list[float], s_from: float, s_to: float) -> np.ndarray:
    """c_j = integral over rho in [s_from, s_to] of the Lagrange basis polynomial l_j in log rho on
    nodes ``log sigmas`` (``sigmas[0]`` the newest). With v = log(rho / s_from), ``p(v) e^v``
    integrates to ``e^v (p - p' + p'' - ...)``, which vanishes at rho = 0."""
    nodes = [math.log(s / s_from) for s in sigmas]
    v_to = -math.inf if s_to == 0 else math.log(s_to / s_from)
    out = np.zeros(len(nodes))
    for j, poly in enumerate(lagrange_basis(nodes)):
        q, term = np.polynomial.Polynomial([0.0]), poly
        for m in range(len(nodes)):
            q, term = q + (-1) ** m * term, term.deriv()
        upper = 0.0 if math.isinf(v_to) else math.exp(v_to) * q(v_to)
        out[j] = s_from * (upper - q(0.0))
    return out


@program_sampler("deis", plan_style="deis", solver_order=2, lower_order_final=True)
def deis(b: Builder, solver_order: int, lower_order_final: bool) -> None:
    """DEIS multistep of order ``solver_order`` in 1..3 (Zhang & Chen 2023, log-rho tAB)."""
    if isinstance(solver_order, bool) or solver_order not in (1, 2, 3):
        raise ValueError(f"deis: solver_order={solver_order!r} must be 1, 2 or 3")
    ds = b.history(solver_order - 1) if solver_order > 1 else None  # d_{i-1}, d_{i-2}
    orders = dpm_orders(b.steps, solver_order, bool(lower_order_final), False)
    for i in range(b.steps):
        p = b.model(i)
        order = orders[i]
        while order > 1 and math.isinf(b.sigma(i - order + 1)):  # a node at sigma = inf carries no weight
            order -= 1
        if order == 1:  # Euler, written to stay finite at sigma = inf
            x_next = p.x0 + p.sigma_to * p.d
        else:
            c = deis_coefficients([b.sigma(i - j) for j in range(order)], p.sigma, p.sigma_to)
            x_next = p.x + c[0] * p.d + sum(c[j] * ds[j - 1] for j in range(1, len(c)))  # type: ignore[index]
        if ds is not None:
            ds.push(p.d)
        b.update(x_next)
