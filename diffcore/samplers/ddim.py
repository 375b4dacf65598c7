"""DDIM, Euler and Euler ancestral: one first-order step with an optional ancestral noise share.

In VE units all three are ``x' = x0 + s_down * d + s_up * z``: DDIM with eta (Song et al. 2021,
eq. 12 and 16; its eta noise equals k-diffusion's ancestral split), the Euler step of the
probability-flow ODE (Karras et al. 2022, Alg. 1) at eta = 0 and Euler ancestral (k-diffusion) at
eta = 1. ``x0 + s' d`` equals Euler's ``x + (s' - s) d`` and stays finite at sigma = inf. They
differ only in how their diffusers counterparts place the levels.
"""

from __future__ import annotations

import math

from diffcore.samplers.base import program_sampler
from diffcore.samplers.builder import Builder


def ancestral_split(sigma: float, sigma_to: float, eta: float) -> tuple[float, float]:
    """(sigma_down, sigma_up) of an ancestral step from ``sigma`` to ``sigma_to`` (k-diffusion's
    get_ancestral_step): ``s_up = eta * s' * sqrt(1 - s'^2 / s^2)``, ``s_down^2 + s_up^2 = s'^2``."""
    ratio = sigma_to / sigma  # 0 at sigma = inf
    s_up = eta * sigma_to * math.sqrt(max(1.0 - ratio * ratio, 0.0))
    return math.sqrt(max(sigma_to * sigma_to - s_up * s_up, 0.0)), s_up


def ancestral_steps(b: Builder, eta: float, renoise: str = "d") -> None:
    """``x' = x0 + s_down * dir + s_up * z`` at every level, ``dir`` the derivative ``p.d`` (or
    CFG++'s unconditional ``p.du``)."""
    for i in range(b.steps):
        p = b.model(i)
        s_down, s_up = ancestral_split(p.sigma, p.sigma_to, eta)
        b.update(p.x0 + s_down * getattr(p, renoise) + s_up * b.noise)


@program_sampler("ddim", plan_style="ddim", eta=0.0, step_rule="diffusers")
def ddim(b: Builder, eta: float, step_rule: str) -> None:
    """DDIM (Song et al. 2021); eta = 0 deterministic, eta = 1 the DDPM posterior variance.
    ``step_rule`` is the plan's: diffusers' ``t - T // n`` targets, or ``exact`` (the next level)."""
    ancestral_steps(b, eta)


@program_sampler("euler", plan_style="karras", frame="ode")
def euler(b: Builder) -> None:
    """Euler step of the probability-flow ODE (Karras et al. 2022, Alg. 1)."""
    ancestral_steps(b, 0.0)


@program_sampler("euler_ancestral", plan_style="karras", stochastic=True, eta=1.0)
def euler_ancestral(b: Builder, eta: float) -> None:
    """Euler ancestral (k-diffusion): an Euler step to sigma_down, then noise of std sigma_up."""
    for i in range(b.steps):
        p = b.model(i)
        s_down, s_up = ancestral_split(p.sigma, p.sigma_to, eta)
        b.update(p.x0 + s_down * p.d + s_up * b.noise)
