"""Anomaly scores by diffusion-time estimation (after Livernoche et al. 2024, "DTE"), for images
(B, C, H, W) in [-1, 1] and standardized tabular vectors (B, D).

The score is how much noise the model believes the input carries. DTE's analytic estimator reads the input as
``x = x0 + sigma * eps`` with x0 its nearest training sample: the posterior over sigma^2 is
inverse-gamma with mode ``r^2 / d`` for a residual r in d dimensions. Here the trained denoiser
supplies the projection onto the data: x is noised to each level of a log-spaced grid, the
model's one-shot estimate x0hat compared with x, and the score is the diffusion time (a
fraction of the schedule) at which the residual falls below half the injected noise variance,
i.e. from which the model explains x as noised data; an input off the data by r crosses at
``sigma ~ r / sqrt(d)``. No training sample is searched and no classifier trained. Two
estimators that were tried and dropped: the grid posterior with likelihood
``N(x; x0hat_t, sigma_t^2 I)`` (where the model cannot resolve the noise the residual equals it,
and the ``-d log sigma`` term puts every input at the smallest level), and matching the implied
noise norm of the *un-noised* input to d (biased by the denoiser's shrinkage: on Gaussian data
it never reaches d).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from diffcore.pipeline import Pipeline
from diffcore.schedules import EDMSchedule
from diffcore.tasks.anomaly.noise import keyed_noise
from diffcore.tasks.anomaly.scores import Detection, batches, check_input, pixel_map, progress_bar, sample_shape
from diffcore.tasks.levels import fraction_of_sigma, fraction_to_time, sigma_at_time, sigma_range
from diffcore.timesteps import Level

__all__ = ["dte_scores"]


_SIGMA_CAP = 50.0  # VE noise 50x the data scale is pure noise: no grid level beyond it


def _levels(schedule: Any, n: int, t_max: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``n`` noise levels spaced uniformly in log sigma from the schedule's smallest level up to
    the fraction ``t_max`` of it (at most sigma 50): (VE sigma, model time, alpha, std), float64."""
    top = float(fraction_to_time(schedule, torch.tensor([float(t_max)], dtype=torch.float64))[0])
    if isinstance(schedule, EDMSchedule):
        hi = min(top, _SIGMA_CAP)
        sigma = torch.logspace(math.log10(schedule.sigma_min * (1 + 1e-6)), math.log10(hi), n, dtype=torch.float64)
        return sigma, sigma.clone(), torch.ones_like(sigma), sigma.clone()
    lo, hi = sigma_range(schedule)[0], min(sigma_at_time(schedule, top), _SIGMA_CAP)
    sigma = torch.logspace(math.log10(lo), math.log10(hi), n, dtype=torch.float64)
    alpha, std = schedule.state(sigma)
    return sigma, schedule.sigma_to_t(sigma), alpha, std


def _scaled_residual(pipe: Pipeline, x: Tensor, z: Tensor, level: Level, sigma: float) -> Tensor:
    """``(x - x0hat)^2 / sigma^2`` (float64, on the CPU) for x noised to ``level``,
    ``alpha x + std z``, and the model's one-shot estimate x0hat from there."""
    x0 = pipe.predict_x0(level.alpha * x + level.std * z, level)
    return ((x.to(torch.float64) - x0.to(torch.float64)) ** 2 / sigma**2).cpu()


@torch.no_grad()
def dte_scores(
    pipe_or_model: Pipeline | Callable[..., Tensor],
    x: Tensor,
    *,
    levels: int = 25,
    t_max: float = 1.0,
    explained: float = 0.5,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool | None = None,
    schedule: Any = None,
    prediction: Any = None,
    sample_index: int = 0,
) -> Detection:
    """Diffusion-time estimation (see the module docstring): the noise level, as a fraction of
    the schedule, from which the model explains ``x`` as noised data.

    At each of ``levels`` noise levels (log-spaced from the schedule's smallest to the fraction
    ``t_max``, sigma <= 50) x is noised, ``alpha x + std z`` (row i's z keyed by (seed, level,
    ``sample_index`` + i)), and the model's one-shot estimate x0hat compared with x:
    ``rho = ||x - x0hat||^2 / (d sigma^2)``, the
    residual in units of the injected noise variance. Where the model cannot resolve the noise
    rho ~ 1; once it explains the input as noised data the residual falls below ``explained``.
    An input off the data by a distance r keeps ``r^2 / (d sigma^2)`` on top, so it crosses at
    ``sigma ~ r / sqrt(d)``: DTE's estimate (the posterior mode of sigma^2 given a residual r is
    ``r^2 / d``), with the model's projection in place of the nearest neighbour. The score is the
    first crossing, interpolated in log sigma (1 if it never crosses); the map is the per-pixel
    ``(x - x0hat)^2 / sigma^2`` at the crossing level (the last level if it never crosses)."""
    pipe = Pipeline.wrap(pipe_or_model, schedule, prediction)
    shape = sample_shape(pipe, x)
    x = check_input(x, shape).to(pipe.device)
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels={levels!r} must be an integer >= 2")
    if not 0 < t_max <= 1:
        raise ValueError(f"t_max={t_max!r} must be a fraction in (0, 1]")
    if not 0 < explained < 1:
        raise ValueError(f"explained={explained!r} must be in (0, 1)")
    sigmas, times, alphas, stds = _levels(pipe.schedule, levels, t_max)
    chunks = batches(x.shape[0], batch_size)
    n = x.shape[0]
    log_sigma = torch.full((n,), math.nan, dtype=torch.float64)  # crossing level, NaN until found
    prev_rho = torch.full((n,), math.nan, dtype=torch.float64)
    maps = torch.zeros(x.shape, dtype=torch.float64)
    with progress_bar(levels * len(chunks), "diffusion time", progress) as bar:
        for k in range(levels):
            level, sigma = Level(float(times[k]), float(alphas[k]), float(stds[k])), float(sigmas[k])
            z = keyed_noise(x, "gaussian", int(seed) * 1_000_003 + k, sample_index=sample_index)
            rho_k = torch.empty(n, dtype=torch.float64)
            for part in chunks:
                r2 = _scaled_residual(pipe, x[part], z[part], level, sigma)
                rho_k[part] = r2.flatten(1).sum(1) / math.prod(shape)
                new = log_sigma[part].isnan() & ((rho_k[part] < explained) | (k == levels - 1))
                maps[part] = torch.where(new.reshape(-1, *[1] * len(shape)), r2, maps[part])  # the last level if never
                bar.update(1)
            new = log_sigma.isnan() & (rho_k < explained)
            if k == 0:
                log_sigma[new] = math.log(sigma)
            else:
                lo = math.log(float(sigmas[k - 1]))
                w = ((prev_rho - explained) / (prev_rho - rho_k)).clamp(0, 1)
                log_sigma = torch.where(new, lo + w * (math.log(sigma) - lo), log_sigma)
            prev_rho = rho_k
    never = log_sigma.isnan()
    scores = fraction_of_sigma(pipe.schedule, log_sigma.nan_to_num(0.0).exp())
    scores[never] = 1.0
    settings = {"method": "dte", "levels": levels, "t_max": t_max, "explained": explained, "seed": seed}
    return Detection(scores, pixel_map(maps), "dte", settings=settings)
