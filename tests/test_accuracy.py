"""Closed-form oracle: on a Gaussian mixture the exact denoiser is known, so every deterministic
sampler must converge to the probability-flow ODE solution at its published order."""

from __future__ import annotations

import math

import pytest
import torch

import diffcore
from diffcore.analytic import GaussianMixture, exact_model
from diffcore.schedules import EDMSchedule, karras_sigmas

SIGMA_MAX, SIGMA_MIN = 80.0, 0.1
MIXTURE = GaussianMixture.ring(k=4, radius=2.0, std=0.5, dim=2)
SCHEDULE = EDMSchedule()


@pytest.fixture(scope="module")
def problem() -> tuple[torch.Tensor, torch.Tensor]:
    x_T = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = MIXTURE.ode_solution(x_T * SIGMA_MAX, SIGMA_MAX, SIGMA_MIN, steps=1000)
    return x_T, exact


def _error(sampler: str, n: int, x_T: torch.Tensor, exact: torch.Tensor, **options) -> float:
    out = diffcore.sample(
        exact_model(MIXTURE, SCHEDULE),
        x_T,
        sampler=sampler,
        schedule=SCHEDULE,
        sigmas=karras_sigmas(SIGMA_MIN, SIGMA_MAX, n + 1, 7.0),
        sampler_options=options or None,
    )
    return (out - exact).pow(2).mean().sqrt().item()


# sampler -> (published order, step counts whose error ratio measures it, options)
ORDERS = {
    "ddim": (1, (48, 96), {}),
    "euler": (1, (48, 96), {}),
    "heun": (2, (48, 96), {}),
    "dpmpp_2m": (2, (48, 96), {}),
    # UniPC-2 with the bh2 corrector is third order (Zhao et al. 2023, Thm. 3.3); its default
    # first-order final step (lower_order_final, as diffusers) caps a run at second order
    "unipc": (3, (48, 96), {"lower_order_final": False}),
    # LMS-4 starts with orders 1..3 like k-diffusion/diffusers; order 4 shows once steps are fine
    "lms": (4, (96, 192), {}),
}


@pytest.mark.parametrize("sampler", list(ORDERS))
@pytest.mark.slow
def test_converges_at_published_order(sampler: str, problem) -> None:
    order, (n1, n2), options = ORDERS[sampler]
    x_T, exact = problem
    e1, e2 = _error(sampler, n1, x_T, exact, **options), _error(sampler, n2, x_T, exact, **options)
    slope = math.log(e1 / e2) / math.log(n2 / n1)
    assert abs(slope - order) <= 0.3, f"{sampler}: measured order {slope:.2f}, published {order}"


def test_gaussian_closed_form_is_the_ode_reference() -> None:
    """For one Gaussian the ODE maps x(S) to mu + (x(S) - mu) sqrt((s^2 + sd^2) / (S^2 + sd^2)) per dimension."""
    f64 = torch.float64
    g = GaussianMixture(
        torch.tensor([[0.5, -1.0]], dtype=f64), torch.tensor([[0.3, 2.0]], dtype=f64), torch.ones(1, dtype=f64)
    )
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 10
    closed = g.means + (x - g.means) * ((0.05**2 + g.stds**2) / (10.0**2 + g.stds**2)).sqrt()
    assert torch.allclose(g.ode_solution(x, 10.0, 0.05, steps=400), closed, atol=1e-8)
    out = diffcore.sample(
        exact_model(g, SCHEDULE),
        x / 10.0,
        sampler="heun",
        schedule=SCHEDULE,
        sigmas=karras_sigmas(0.05, 10.0, 200, 7.0),
    )
    assert torch.allclose(out, closed, atol=5e-4)


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "unipc", "euler_ancestral", "dpmpp_2m_sde"])
def test_samples_follow_the_mixture(sampler: str) -> None:
    """End to end on a discrete VP schedule: samples land on the mixture's modes with its spread."""
    schedule = diffcore.get("schedules", "linear")()
    gm = GaussianMixture.ring(k=8, radius=2.0, std=0.2, dim=2)
    x_T = torch.randn(2000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = diffcore.sample(
        exact_model(gm, schedule),
        x_T,
        sampler=sampler,
        steps=40,
        schedule=schedule,
        generator=torch.Generator().manual_seed(2),
    )
    dist = torch.cdist(out, gm.means).min(dim=1).values
    radial = out.norm(dim=1)
    assert dist.median() < 0.3, f"{sampler}: median distance to the nearest mode {dist.median():.3f}"
    assert abs(radial.mean().item() - 2.0) < 0.1
