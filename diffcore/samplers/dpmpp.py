"""DPM-Solver++ multistep, ODE and SDE (Lu et al. 2022, "DPM-Solver++", Alg. 2; SDE variant of
sec. 5 / k-diffusion's dpmpp_2m_sde and dpmpp_3m_sde), in data prediction.

With lambda = log(alpha / std), h = lambda' - lambda and h_eta = (1 + eta) h, one step is
``x' = (std'/std) e^{-eta h} x + alpha' (1 - e^{-h_eta}) D0 + alpha' c1 D1 + alpha' c2 D2
+ std' sqrt(1 - e^{-2 eta h}) z`` where D0 is the newest x0 and D1, D2 the first and second
differences of the x0 history (eq. 3.x of the paper, data-prediction form). Order schedule and
``lower_order_final`` follow diffusers' DPMSolverMultistepScheduler. The third-order SDE term
uses ``c2 = -(phi_2 / h_eta - 1/2)``, the exact integral of the quadratic term (as k-diffusion);
diffusers 0.42 flips the sign of the 1/2 for the SDE (see tests/test_diffusers_parity.py).
"""

from __future__ import annotations

import math

import numpy as np

from diffcore.samplers.base import ProgramSampler
from diffcore.samplers.program import Cols, Program, Step, lam, level_of
from diffcore.timesteps import Plan

SOLVER_TYPES = ("midpoint", "heun")


def dpm_orders(n: int, solver_order: int, lower_order_final: bool, final_zero: bool) -> list[int]:
    """Order used at each step, as DPMSolverMultistepScheduler picks it."""
    orders = []
    for i in range(n):
        warm = min(i, solver_order)
        last = i == n - 1 and ((lower_order_final and n < 15) or final_zero)
        second_last = i == n - 2 and lower_order_final and n < 15
        if solver_order == 1 or warm < 1 or last:
            orders.append(1)
        elif solver_order == 2 or warm < 2 or second_last:
            orders.append(2)
        else:
            orders.append(3)
    return orders


def _expm1_neg(h: float) -> float:
    """1 - e^{-h}, exact at h = inf."""
    return 1.0 if math.isinf(h) else -math.expm1(-h)


def _dpmpp(plan: Plan, order: int, eta: float, solver_type: str, lower_order_final: bool) -> Program:
    if solver_type not in SOLVER_TYPES:
        raise ValueError(f"dpmpp: solver_type={solver_type!r}: expected one of {SOLVER_TYPES}")
    slots = order - 1
    cols = Cols(slots)
    prog = Program(slots=slots)
    lams = [lam(*plan.level(i)) for i in range(plan.steps)]
    orders = dpm_orders(plan.steps, order, lower_order_final, float(plan.sigmas[-1]) == 0.0)
    ring: list[int] = []  # slots of x0_{i-1}, x0_{i-2} (newest first)
    for i in range(plan.steps):
        alpha, std = plan.level(i)
        alpha_to, std_to = plan.target(i)
        h = lam(alpha_to, std_to) - lams[i]
        h_eta = (1.0 + eta) * h
        # terms over [x0_i, x0_{i-1}, x0_{i-2}] for D0, D1, D2
        d0 = np.array([1.0, 0.0, 0.0])
        d1 = np.zeros(3)
        d2 = np.zeros(3)
        p = orders[i]
        if p >= 2:
            r0 = (lams[i] - lams[i - 1]) / h
            d1_0 = np.array([1.0, -1.0, 0.0]) / r0
            d1 = d1_0
            if p == 3:
                r1 = (lams[i - 1] - lams[i - 2]) / h
                d1_1 = np.array([0.0, 1.0, -1.0]) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
        one_m = _expm1_neg(h_eta)  # 1 - e^{-h_eta}
        if std_to == 0.0:
            x_coef, noise = 0.0, 0.0
            phi2, phi3 = 1.0, 0.0
        else:
            x_coef = (std_to / std) * math.exp(-eta * h)
            noise = std_to * math.sqrt(max(-math.expm1(-2.0 * eta * h), 0.0))
            phi2 = 1.0 - one_m / h_eta  # (e^{-h_eta} - 1) / h_eta + 1
            phi3 = phi2 / h_eta - 0.5
        if p == 2 and solver_type == "midpoint":
            c1 = 0.5 * one_m
        else:
            c1 = phi2
        x0_terms = alpha_to * (one_m * d0 + c1 * d1 - phi3 * d2 * (p == 3))
        row = cols.row(x=x_coef, x0=x0_terms[0], z=noise)
        for j in range(1, p):
            row[cols.h(ring[j - 1])] += x0_terms[j]
        rows, writes = [row], ()
        if slots and i < plan.steps - 1:
            slot = ring[-1] if len(ring) == slots else len(ring)
            rows.append(cols.unit(cols.x0))
            writes = (slot,)
            ring = [slot] + [s for s in ring if s != slot]
        prog.steps.append(
            Step(level_of(plan, i), np.stack(rows), writes=writes, noise=eta > 0, sigma=float(plan.sigmas[i + 1]))
        )
    return prog


def _dpmpp_2m(plan: Plan, solver_type: str, lower_order_final: bool) -> Program:
    return _dpmpp(plan, 2, 0.0, solver_type, lower_order_final)


def _dpmpp_2m_sde(plan: Plan, eta: float, solver_type: str, lower_order_final: bool) -> Program:
    return _dpmpp(plan, 2, eta, solver_type, lower_order_final)


def _dpmpp_3m_sde(plan: Plan, eta: float, lower_order_final: bool) -> Program:
    return _dpmpp(plan, 3, eta, "midpoint", lower_order_final)


dpmpp_2m = ProgramSampler(
    "dpmpp_2m",
    _dpmpp_2m,
    plan_style="dpm",
    options={"solver_type": "midpoint", "lower_order_final": True},
    doc="DPM-Solver++(2M) (Lu et al. 2022, Alg. 2).",
)
dpmpp_2m_sde = ProgramSampler(
    "dpmpp_2m_sde",
    _dpmpp_2m_sde,
    plan_style="dpm",
    options={"eta": 1.0, "solver_type": "midpoint", "lower_order_final": True},
    stochastic=True,
    doc="DPM-Solver++(2M) SDE (diffusers' sde-dpmsolver++, k-diffusion dpmpp_2m_sde).",
)
dpmpp_3m_sde = ProgramSampler(
    "dpmpp_3m_sde",
    _dpmpp_3m_sde,
    plan_style="dpm",
    options={"eta": 1.0, "lower_order_final": True},
    stochastic=True,
    doc="DPM-Solver++(3M) SDE (k-diffusion dpmpp_3m_sde; eta=0 gives the 3M ODE solver).",
)
