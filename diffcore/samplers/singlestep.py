"""Single-step two-stage solvers: DPM-Solver-2 and DPM-Solver++(2S), ODE, ancestral and SDE.

All in VE units with lambda = -log(sigma) (Lu et al. 2022, "DPM-Solver" Alg. 1 and "DPM-Solver++"
Alg. 1). Each interval evaluates the model at its start and at an intermediate level, then steps
from the start with the intermediate estimate. The intermediate level is the log-midpoint
(k-diffusion's ``sample_dpm_2``, ``sample_dpm_2_ancestral``, ``sample_dpmpp_2s_ancestral``,
``sample_dpmpp_sde`` and diffusers' KDPM2 / KDPM2Ancestral / DPMSolverSDE schedulers) or, for
``dpmpp_2s``, the next planned level (diffusers' DPMSolverSinglestepScheduler, order 2).
"""

from __future__ import annotations

import math

from diffcore.samplers.base import program_sampler
from diffcore.samplers.builder import Builder, Point, half_log_snr
from diffcore.samplers.ddim import ancestral_split
from diffcore.samplers.dpmpp import SOLVER_TYPES, _one_minus_exp
from diffcore.samplers.expr import Expr


def _exp_step(p: Point, x0: Expr, sigma_to: float) -> Expr:
    """DPM-Solver++ first-order step from ``p`` to ``sigma_to`` with x0 estimate ``x0``:
    ``x' = (s'/s) x + (1 - e^{-h}) x0``, h = lambda' - lambda."""
    return sigma_to / p.sigma * p.x + _one_minus_exp(half_log_snr(sigma_to) - half_log_snr(p.sigma)) * x0


@program_sampler("dpm_2", plan_style="karras", frame="ode")
def dpm_2(b: Builder) -> None:
    """DPM-Solver-2 (Lu et al. 2022, Alg. 1, r1 = 1/2): Euler to the log-midpoint, then the full
    step with the midpoint derivative (k-diffusion's sample_dpm_2, diffusers' KDPM2)."""
    start = b.history(1)
    for i in range(b.steps):
        p = b.model(i)
        if p.sigma_to == 0:
            b.update(p.x0)  # Euler to sigma 0
            continue
        s_mid = math.sqrt(p.sigma * p.sigma_to)
        start.push(p.x)
        b.update(p.x + (s_mid - p.sigma) * p.d, sigma=s_mid)
        m = b.model_at(s_mid)
        b.update(start[0] + (p.sigma_to - p.sigma) * m.d, level=i + 1)


def _ancestral_pairs(b: Builder, eta: float, exponential: bool) -> None:
    """Per interval: the ancestral split, a midpoint step to ``sqrt(s s_down)`` and the full step to
    ``s_down`` with the midpoint's estimate (Euler in sigma, or DPM-Solver++'s exponential step),
    then noise ``s_up z``; from sigma = inf or into sigma = 0 one first-order step."""
    start = b.history(1)
    for i in range(b.steps):
        p = b.model(i)
        s_down, s_up = ancestral_split(p.sigma, p.sigma_to, eta)
        if s_down == 0 or math.isinf(p.sigma):
            b.update(p.x0 + s_down * p.d + s_up * b.noise)
            continue
        s_mid = math.sqrt(p.sigma * s_down)
        start.push(p.x)
        b.update(_exp_step(p, p.x0, s_mid) if exponential else p.x + (s_mid - p.sigma) * p.d, sigma=s_mid)
        m = b.model_at(s_mid)
        if exponential:
            x_next = s_down / p.sigma * start[0] + _one_minus_exp(math.log(p.sigma / s_down)) * m.x0
        else:
            x_next = start[0] + (s_down - p.sigma) * m.d
        b.update(x_next + s_up * b.noise, level=i + 1)


@program_sampler("dpm_2_ancestral", plan_style="karras", stochastic=True, eta=1.0)
def dpm_2_ancestral(b: Builder, eta: float) -> None:
    """DPM-Solver-2 to sigma_down, then noise of std sigma_up (k-diffusion's sample_dpm_2_ancestral,
    diffusers' KDPM2Ancestral)."""
    _ancestral_pairs(b, eta, exponential=False)


@program_sampler("dpmpp_2s_ancestral", plan_style="karras", stochastic=True, eta=1.0)
def dpmpp_2s_ancestral(b: Builder, eta: float) -> None:
    """DPM-Solver++(2S) (Lu et al. 2022, Alg. 1, r = 1/2) to sigma_down, then noise of std sigma_up
    (k-diffusion's sample_dpmpp_2s_ancestral; eta = 0 is the deterministic 2S solver)."""
    _ancestral_pairs(b, eta, exponential=True)


@program_sampler("dpmpp_sde", plan_style="karras", stochastic=True, eta=1.0)
def dpmpp_sde(b: Builder, eta: float) -> None:
    """DPM-Solver++ SDE (k-diffusion's sample_dpmpp_sde, r = 1/2; diffusers' DPMSolverSDE): two
    ancestral exponential sub-steps per interval, with Brownian-tree noise, so one seed gives
    one noise path at any step count (:mod:`diffcore.samplers.brownian`)."""
    start = b.history(1)
    for i in range(b.steps):
        p = b.model(i)
        if p.sigma_to == 0 or math.isinf(p.sigma):  # to sigma 0, or from pure noise: one first-order step
            down, up = ancestral_split(p.sigma, p.sigma_to, eta)
            b.update(p.x0 + down * p.d + up * b.noise_between(p.sigma, p.sigma_to))
            continue
        s_mid = math.sqrt(p.sigma * p.sigma_to)
        down, up = ancestral_split(p.sigma, s_mid, eta)
        start.push(p.x)
        b.update(_exp_step(p, p.x0, down) + up * b.noise_between(p.sigma, s_mid), sigma=s_mid)
        m = b.model_at(s_mid)
        down, up = ancestral_split(p.sigma, p.sigma_to, eta)
        b.update(
            down / p.sigma * start[0]
            + _one_minus_exp(math.log(p.sigma / down)) * m.x0
            + up * b.noise_between(p.sigma, p.sigma_to),
            level=i + 1,
        )


def _singlestep_orders(n: int, lower_order_final: bool) -> list[int]:
    """DPMSolverSinglestepScheduler's order list for solver_order 2 (its final sigma is 0)."""
    if lower_order_final:
        orders = [1, 2] * (n // 2 - 1) + [1, 1] if n % 2 == 0 else [1, 2] * (n // 2) + [1]
    else:
        orders = [1, 2] * (n // 2) + [1] * (n % 2)
    orders[-1] = 1
    return orders


@program_sampler("dpmpp_2s", plan_style="dpm", solver_type="midpoint", lower_order_final=True)
def dpmpp_2s(b: Builder, solver_type: str, lower_order_final: bool) -> None:
    """DPM-Solver++(2S) on the planned levels (diffusers' DPMSolverSinglestepScheduler, order 2):
    a first-order step to the next level, whose model output then serves a second-order step
    from the pair's start to the level after."""
    if solver_type not in SOLVER_TYPES:
        raise ValueError(f"dpmpp_2s: solver_type={solver_type!r}: expected one of {SOLVER_TYPES}")
    start, first = b.history(1), b.history(1)  # the pair's start state and its x0
    for i, order in enumerate(_singlestep_orders(b.steps, lower_order_final)):
        p = b.model(i)
        if order == 1:
            start.push(p.x)
            first.push(p.x0)
            b.update(_exp_step(p, p.x0, p.sigma_to))
            continue
        s0 = b.sigma(i - 1)
        h = half_log_snr(p.sigma_to) - half_log_snr(s0)
        d1 = (p.x0 - first[0]) * (h / (half_log_snr(p.sigma) - half_log_snr(s0)))
        c1 = 0.5 * _one_minus_exp(h) if solver_type == "midpoint" else 1.0 - _one_minus_exp(h) / h
        b.update(p.sigma_to / s0 * start[0] + _one_minus_exp(h) * first[0] + c1 * d1)
