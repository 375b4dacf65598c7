"""Linear multistep (Adams-Bashforth in sigma) on the probability-flow ODE, as in k-diffusion and
diffusers' LMSDiscreteScheduler: ``x' = x + sum_j c_j d_{i-j}`` (VE units) where ``c_j`` integrates
the Lagrange basis polynomial of the last ``order`` sigmas over [s_i, s_{i+1}]. The integral is
computed exactly from polynomial coefficients (no numerical quadrature); the first steps warm up
with orders 1, 2, 3.
"""

from __future__ import annotations

import numpy as np

from diffcore.samplers.base import ProgramSampler
from diffcore.samplers.program import Cols, Program, Step, level_of, ve_sigma
from diffcore.timesteps import Plan


def lms_coefficients(sigmas: list[float], s_from: float, s_to: float) -> np.ndarray:
    """c_j = integral over [s_from, s_to] of the Lagrange basis polynomial l_j of ``sigmas``
    (``sigmas[0]`` is the newest node)."""
    out = np.zeros(len(sigmas))
    for j, sj in enumerate(sigmas):
        poly = np.polynomial.Polynomial([1.0])
        for k, sk in enumerate(sigmas):
            if k != j:
                poly = poly * np.polynomial.Polynomial([-sk, 1.0]) / (sj - sk)
        antider = poly.integ()
        out[j] = antider(s_to) - antider(s_from)
    return out


def _lms(plan: Plan, order: int) -> Program:
    if not isinstance(order, int) or not 1 <= order <= 4:
        raise ValueError(f"lms: order={order!r} must be an integer in [1, 4]")
    slots = order - 1
    cols = Cols(slots)
    prog = Program(slots=slots)
    ring: list[int] = []  # slots holding d_{i-1}, d_{i-2}, ... (newest first)
    for i in range(plan.steps):
        alpha, std = plan.level(i)
        alpha_to, std_to = plan.target(i)
        cur = min(i + 1, order)
        nodes = [ve_sigma(*plan.level(i - j)) for j in range(cur)]
        c = lms_coefficients(nodes, nodes[0], ve_sigma(alpha_to, std_to) if alpha_to > 0 else 0.0)
        # x'_state = alpha' (x / alpha + c_0 d_i + sum_{j>=1} c_j d_{i-j}),  d_i = (x - alpha x0) / std
        row = cols.row(x=alpha_to / alpha + alpha_to * c[0] / std, x0=-alpha_to * c[0] * alpha / std)
        for j in range(1, cur):
            row[cols.h(ring[j - 1])] = alpha_to * c[j]
        rows, writes = [row], ()
        if slots and i < plan.steps - 1:
            slot = ring[-1] if len(ring) == slots else len(ring)
            rows.append(cols.row(x=1.0 / std, x0=-alpha / std))
            writes = (slot,)
            ring = [slot] + [s for s in ring if s != slot]
        prog.steps.append(Step(level_of(plan, i), np.stack(rows), writes=writes, sigma=float(plan.sigmas[i + 1])))
    return prog


lms = ProgramSampler(
    "lms",
    _lms,
    plan_style="karras",
    options={"order": 4},
    doc="Linear multistep of order <= 4 in sigma (k-diffusion / diffusers LMSDiscrete).",
)
