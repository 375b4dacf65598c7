"""DPM-Solver++ multistep, ODE and SDE (Lu et al. 2022, "DPM-Solver++", Alg. 2; SDE variant of
sec. 5 / k-diffusion's dpmpp_2m_sde and dpmpp_3m_sde), in data prediction and VE units.

With lambda = -log(sigma), h = lambda' - lambda and h_eta = (1 + eta) h, one step is
``x' = (s'/s) e^{-eta h} x + (1 - e^{-h_eta}) D0 + c1 D1 - c2 D2 + s' sqrt(1 - e^{-2 eta h}) z``
where D0 is the newest x0 and D1, D2 the first and second differences of the x0 history. Order
schedule and ``lower_order_final`` follow diffusers' DPMSolverMultistepScheduler. The third-order
SDE term uses ``c2 = phi_2 / h_eta - 1/2``, the exact integral of the quadratic term (as
k-diffusion); diffusers 0.42 flips the sign of the 1/2 for the SDE (see tests/test_diffusers_parity.py).
"""

from __future__ import annotations

import math

from diffcore.samplers.base import program_sampler
from diffcore.samplers.builder import Builder, half_log_snr

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


def _one_minus_exp(h: float) -> float:
    """1 - e^{-h}, exact at h = inf."""
    return 1.0 if math.isinf(h) else -math.expm1(-h)


def _check_solver_type(solver_type: str) -> None:
    if solver_type not in SOLVER_TYPES:
        raise ValueError(f"dpmpp: solver_type={solver_type!r}: expected one of {SOLVER_TYPES}")


@program_sampler("dpmpp_2m", plan_style="dpm", solver_type="midpoint", lower_order_final=True)
def dpmpp_2m(b: Builder, solver_type: str, lower_order_final: bool) -> None:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2)."""
    _check_solver_type(solver_type)
    prev = b.history(1)  # the previous x0
    orders = dpm_orders(b.steps, 2, lower_order_final, b.sigma(b.steps) == 0)
    for i in range(b.steps):
        p = b.model(i)
        h = half_log_snr(p.sigma_to) - half_log_snr(p.sigma)
        x_next = p.sigma_to / p.sigma * p.x + _one_minus_exp(h) * p.x0
        if orders[i] == 2:
            d1 = (p.x0 - prev[0]) * (h / (half_log_snr(p.sigma) - half_log_snr(b.sigma(i - 1))))
            c1 = 0.5 * _one_minus_exp(h) if solver_type == "midpoint" else 1.0 - _one_minus_exp(h) / h
            x_next = x_next + c1 * d1
        prev.push(p.x0)
        b.update(x_next)


def _dpmpp_sde(b: Builder, order: int, eta: float, solver_type: str, lower_order_final: bool) -> None:
    prev = b.history(order - 1)  # x0_{i-1}, x0_{i-2}
    orders = dpm_orders(b.steps, order, lower_order_final, b.sigma(b.steps) == 0)
    lams = [half_log_snr(b.sigma(i)) for i in range(b.steps)]
    for i in range(b.steps):
        p = b.model(i)
        h = half_log_snr(p.sigma_to) - lams[i]
        h_eta = (1.0 + eta) * h
        one_m = _one_minus_exp(h_eta)
        phi2 = 1.0 - one_m / h_eta  # (e^{-h_eta} - 1) / h_eta + 1
        x_next = one_m * p.x0
        if p.sigma_to > 0:  # h = inf at sigma' = 0, where x and the noise drop out
            x_next = x_next + p.sigma_to / p.sigma * math.exp(-eta * h) * p.x
            x_next = x_next + p.sigma_to * math.sqrt(max(-math.expm1(-2.0 * eta * h), 0.0)) * b.noise
        if orders[i] >= 2:
            r0 = (lams[i] - lams[i - 1]) / h
            d1 = (p.x0 - prev[0]) / r0
            if orders[i] == 3:
                r1 = (lams[i - 1] - lams[i - 2]) / h
                d1_1 = (prev[0] - prev[1]) / r1
                d2 = (d1 - d1_1) / (r0 + r1)
                d1 = d1 + d2 * r0
                x_next = x_next - (phi2 / h_eta - 0.5) * d2
            x_next = x_next + (0.5 * one_m if orders[i] == 2 and solver_type == "midpoint" else phi2) * d1
        prev.push(p.x0)
        b.update(x_next)


@program_sampler(
    "dpmpp_2m_sde", plan_style="dpm", stochastic=True, eta=1.0, solver_type="midpoint", lower_order_final=True
)
def dpmpp_2m_sde(b: Builder, eta: float, solver_type: str, lower_order_final: bool) -> None:
    """DPM-Solver++(2M) SDE (diffusers' sde-dpmsolver++, k-diffusion dpmpp_2m_sde)."""
    _check_solver_type(solver_type)
    _dpmpp_sde(b, 2, eta, solver_type, lower_order_final)


@program_sampler("dpmpp_3m_sde", plan_style="dpm", stochastic=True, eta=1.0, lower_order_final=True)
def dpmpp_3m_sde(b: Builder, eta: float, lower_order_final: bool) -> None:
    """DPM-Solver++(3M) SDE (k-diffusion dpmpp_3m_sde; eta = 0 gives the 3M ODE solver)."""
    _dpmpp_sde(b, 3, eta, "midpoint", lower_order_final)
