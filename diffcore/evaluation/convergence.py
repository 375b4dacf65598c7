"""Sampler accuracy on closed-form data: errors against the exact probability-flow ODE solution
and the estimated order of convergence.

On a Gaussian mixture (:class:`diffcore.analytic.GaussianMixture`) the exact denoiser is known, so
a sampler run through explicit Karras sigmas (Karras et al. 2022, eq. 5) can be compared with an
RK4 solution of the ODE between the same two levels. The order is minus the least-squares slope of
log(error) against log(steps).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from diffcore.analytic import GaussianMixture, exact_model
from diffcore.sampling import sample
from diffcore.schedules import karras_sigmas

__all__ = ["adaptive_errors", "estimated_order", "mixture_log_density", "rms_error", "sampler_errors"]


def rms_error(x: Tensor, ref: Tensor) -> float:
    """sqrt(mean over points of ||x - ref||^2) for (N, D) tensors."""
    return float((x.to(torch.float64) - ref).pow(2).sum(-1).mean().sqrt())


def estimated_order(steps: Sequence[int], errors: Sequence[float]) -> float:
    """Minus the least-squares slope of log(error) against log(steps) (two points: the exact slope)."""
    if len(steps) != len(errors) or len(steps) < 2:
        raise ValueError(f"{len(steps)} step counts and {len(errors)} errors: expected two or more of each, paired")
    lx = torch.tensor(list(steps), dtype=torch.float64).log()
    ly = torch.tensor(list(errors), dtype=torch.float64).log()
    lx, ly = lx - lx.mean(), ly - ly.mean()
    return float(-(lx * ly).sum() / (lx * lx).sum())


def mixture_log_density(gm: GaussianMixture, x: Tensor) -> Tensor:
    """log p(x) (N,) of each row of x (N, D) under the mixture."""
    z = (x.to(torch.float64)[:, None, :] - gm.means[None]) / gm.stds[None]
    comp = -0.5 * (z**2).sum(-1) - gm.stds.log().sum(-1)[None] - 0.5 * gm.dim * math.log(2 * math.pi)
    return torch.logsumexp(comp + gm.weights.log()[None], dim=1)


def _counted(model: Callable[..., Tensor]) -> tuple[Callable[..., Tensor], list[int]]:
    calls = [0]

    def wrapped(x: Tensor, t: Tensor, *rest: Any) -> Tensor:
        calls[0] += 1
        return model(x, t, *rest)

    return wrapped, calls


def sampler_errors(
    gm: GaussianMixture,
    schedule: Any,
    sampler: str,
    x_T: Tensor,
    reference: Tensor,
    steps: Sequence[int],
    *,
    sigma_min: float,
    sigma_max: float,
    rho: float = 7.0,
    prediction: str = "epsilon",
    options: dict[str, Any] | None = None,
    tick: Callable[[str], None] | None = None,
) -> tuple[list[float], list[int]]:
    """RMS errors of ``sampler`` against ``reference`` (the ODE solution at ``sigma_min`` of the
    noise ``x_T * sigma_max``), and its model evaluations, for each step count in ``steps``.

    Each run samples ``gm``'s exact ``prediction`` model from ``x_T`` (unit-variance noise, (N, D))
    through ``n + 1`` Karras sigmas from ``sigma_max`` to ``sigma_min``; ``tick`` is called before each.
    """
    errors, evaluations = [], []
    for n in steps:
        if tick is not None:
            tick(f"{sampler} {n} steps")
        model, calls = _counted(exact_model(gm, schedule, prediction=prediction))
        x = sample(
            model,
            x_T,
            sampler=sampler,
            schedule=schedule,
            prediction=prediction,
            sigmas=karras_sigmas(sigma_min, sigma_max, n + 1, rho),
            sampler_options=options,
        )
        errors.append(rms_error(x, reference))
        evaluations.append(calls[0])
    return errors, evaluations


def adaptive_errors(
    gm: GaussianMixture,
    schedule: Any,
    x_T: Tensor,
    reference: Tensor,
    rtols: Sequence[float],
    *,
    sigma_min: float,
    sigma_max: float,
    atol: float = 1e-4,
    prediction: str = "epsilon",
    options: dict[str, Any] | None = None,
    tick: Callable[[str], None] | None = None,
) -> tuple[list[float], list[int]]:
    """RMS errors of ``dpm_adaptive`` against ``reference`` (as :func:`sampler_errors`, from
    ``sigma_max`` to ``sigma_min``), and the model evaluations it took, for each ``rtol``
    (``atol`` fixed, small enough that rtol controls the step size)."""
    errors, evaluations = [], []
    for rtol in rtols:
        if tick is not None:
            tick(f"dpm_adaptive rtol {rtol:g}")
        model, calls = _counted(exact_model(gm, schedule, prediction=prediction))
        x = sample(
            model,
            x_T,
            sampler="dpm_adaptive",
            schedule=schedule,
            prediction=prediction,
            sigmas=torch.tensor([sigma_max, sigma_min], dtype=torch.float64),
            sampler_options={**(options or {}), "rtol": rtol, "atol": atol},
        )
        errors.append(rms_error(x, reference))
        evaluations.append(calls[0])
    return errors, evaluations
