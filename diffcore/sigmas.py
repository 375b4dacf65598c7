"""Sigma spacings: where the ``n`` noise levels of a sampling run sit (float64, descending).

A schedule's ``sigma_spacing`` names one (:data:`SIGMA_SPACINGS`; ``"timesteps"`` keeps the
levels of the spaced training timesteps). Three kinds:

- *between two ends* (:data:`BETWEEN_ENDS`): n levels from ``hi`` down to ``lo`` — karras,
  exponential, beta, kl_optimal;
- *on the training grid* (:data:`ON_TRAINING_GRID`): levels at (fractional) training timesteps
  from the top — simple, sgm_uniform (ComfyUI's scheduler names);
- *a published table*: align_your_steps, log-linearly interpolated to other step counts.

Pure functions of numbers; :mod:`diffcore.timesteps` picks the ends for each plan preset.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

BETWEEN_ENDS = ("karras", "exponential", "beta", "kl_optimal")
ON_TRAINING_GRID = ("simple", "sgm_uniform")
SIGMA_SPACINGS = ("timesteps", *BETWEEN_ENDS, "align_your_steps", *ON_TRAINING_GRID)

# Sabour et al. 2024, "Align Your Steps" (AYS): the 10-step schedules of the project page's quickstart
# (research.nvidia.com/labs/toronto-ai/AlignYourSteps/howto.html), as diffusers 0.42.1 ships them
# (diffusers.schedulers.AysSchedules). Each ends at its model's smallest noise level (SD1.5/SDXL:
# training timestep 0; SVD: sigma 0.002), which a sampling run replaces with 0 (diffusers, ComfyUI).
AYS_SIGMAS: dict[str, tuple[float, ...]] = {
    "sd15": (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029),
    "sdxl": (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029),
    "svd": (700.0, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002),
}
# The same schedules as training timesteps of the SD1.5 / SDXL scaled_linear schedule (the quickstart's
# lists without their final 0; diffusers' StableDiffusionTimesteps / StableDiffusionXLTimesteps).
AYS_TIMESTEPS: dict[str, tuple[int, ...]] = {
    "sd15": (999, 850, 736, 645, 545, 455, 343, 233, 124, 24),
    "sdxl": (999, 845, 730, 587, 443, 310, 193, 116, 53, 13),
}
AYS_MODELS = tuple(AYS_SIGMAS)


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> Tensor:
    """n sigmas from sigma_max down to sigma_min, uniform in sigma**(1/rho) (Karras et al. 2022, eq. 5)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, n: int) -> Tensor:
    """n sigmas from sigma_max down to sigma_min, uniform in log sigma."""
    return torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp()


def beta_sigmas(sigma_min: float, sigma_max: float, n: int, a: float = 0.6, b: float = 0.6) -> Tensor:
    """n sigmas from sigma_max down to sigma_min at the quantiles ``1 - i / (n - 1)`` of Beta(a, b)
    (Lee et al. 2024, "Beta Sampling is All You Need", with their a = b = 0.6), as diffusers'
    ``use_beta_sigmas`` places them. (ComfyUI's ``beta`` takes the quantiles of training timesteps.)"""
    from scipy.stats import beta  # scikit-learn's dependency; imported only for this spacing

    q = torch.from_numpy(beta.ppf(1 - np.linspace(0, 1, n), a, b)).to(torch.float64)
    return sigma_min + q * (sigma_max - sigma_min)


def kl_optimal_sigmas(sigma_min: float, sigma_max: float, n: int) -> Tensor:
    """n sigmas uniform in arctan(sigma): ``tan((1 - u) atan(sigma_max) + u atan(sigma_min))``,
    ``u = i / (n - 1)`` — the schedule that minimizes the KL divergence bound of Sabour et al. 2024
    ("Align Your Steps", Theorem 3.1); ComfyUI's and A1111's ``kl_optimal`` (A1111 PR #15608)."""
    u = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    sigmas = ((1 - u) * math.atan(sigma_max) + u * math.atan(sigma_min)).tan()
    sigmas[0] = sigma_max  # the ends exactly (tan(atan(1)) rounds below 1: flow time 1 must stay 1)
    if n > 1:
        sigmas[-1] = sigma_min
    return sigmas


def loglinear_interp(levels: Tensor, n: int) -> Tensor:
    """``n`` points of the descending positive ``levels``, linear in log level over the normalized
    index ``[0, 1]`` (the AYS quickstart's rule for other step counts); ``levels`` itself when it
    already has n points."""
    if levels.numel() == n:
        return levels.to(torch.float64).clone()
    xs = np.linspace(0, 1, levels.numel())
    ys = np.log(levels.to(torch.float64).numpy())
    return torch.from_numpy(np.exp(np.interp(np.linspace(0, 1, n), xs, ys[::-1])[::-1]).copy())


def ays_sigmas(model: str, n: int, start: float | None = None) -> Tensor:
    """The n positive levels of an n-step Align Your Steps run for ``model`` (a key of
    :data:`AYS_SIGMAS`): the table's 11 levels log-linearly interpolated to n + 1, the last of
    which the run replaces with 0. ``start``: the same curve from the level ``start`` (<= the
    table's first) instead of from its top, for runs that start from data."""
    if model not in AYS_SIGMAS:
        raise ValueError(f"ays_model={model!r}: expected one of {AYS_MODELS}")
    table = torch.tensor(AYS_SIGMAS[model], dtype=torch.float64)
    if start is None:
        return loglinear_interp(table, n + 1)[:-1]
    if not 0 < start <= float(table[0]):
        raise ValueError(
            f"start sigma {start:.6g} is outside the align_your_steps {model!r} table (0, {float(table[0])}]"
        )
    log_table = table.log().flip(0).numpy()  # ascending
    grid = np.linspace(1, 0, table.numel())  # normalized index of each ascending entry
    u0 = float(np.interp(math.log(start), log_table, grid))
    u = np.linspace(u0, 1, n + 1)[:-1]
    return torch.from_numpy(np.exp(np.interp(u, grid[::-1], log_table[::-1])))


def log_interp(levels: Tensor, index: Tensor) -> Tensor:
    """``levels`` (one per training timestep) at fractional ``index``, linear in log level
    (ComfyUI's ModelSamplingDiscrete.sigma; diffcore's ``sigma_to_t`` is its inverse)."""
    log_levels = levels.to(torch.float64).log()
    lo = index.floor().long().clamp(0, levels.numel() - 1)
    hi = (lo + 1).clamp(max=levels.numel() - 1)
    w = index - lo
    return ((1 - w) * log_levels[lo] + w * log_levels[hi]).exp()


def simple_indices(num_train_timesteps: int, n: int) -> Tensor:
    """ComfyUI's ``simple``: training timesteps ``T - 1 - floor(i T / n)``, i < n (every T/n-th
    level from the top)."""
    T = num_train_timesteps
    return torch.tensor([T - 1 - (i * T) // n for i in range(n)], dtype=torch.float64)


def sgm_uniform_indices(num_train_timesteps: int, n: int) -> Tensor:
    """ComfyUI's ``sgm_uniform`` (the uniform discretization of Stability AI's generative-models):
    ``n + 1`` fractional timesteps uniform from ``T - 1`` to 0, without the last."""
    return torch.linspace(num_train_timesteps - 1, 0, n + 1, dtype=torch.float64)[:-1]


def grid_indices(spacing: str, num_train_timesteps: int, n: int) -> Tensor:
    """The training-grid (fractional) timesteps of ``simple`` or ``sgm_uniform``."""
    if spacing == "simple":
        return simple_indices(num_train_timesteps, n)
    if spacing == "sgm_uniform":
        return sgm_uniform_indices(num_train_timesteps, n)
    raise ValueError(f"sigma_spacing={spacing!r} is not a training-grid spacing {ON_TRAINING_GRID}")


def between_ends(spacing: str, lo: float, hi: float, n: int, rho: float = 7.0) -> Tensor:
    """n levels from ``hi`` down to ``lo`` in one of :data:`BETWEEN_ENDS`."""
    if spacing == "karras":
        return karras_sigmas(lo, hi, n, rho)
    if spacing == "exponential":
        return exponential_sigmas(lo, hi, n)
    if spacing == "beta":
        return beta_sigmas(lo, hi, n)
    if spacing == "kl_optimal":
        return kl_optimal_sigmas(lo, hi, n)
    raise ValueError(f"sigma_spacing={spacing!r} is not a spacing between two ends {BETWEEN_ENDS}")


def discrete_sigmas(
    spacing: str, n: int, lo: float, hi: float, train: Tensor, rho: float = 7.0, ays_model: str = "sd15"
) -> Tensor:
    """The n descending VE levels of ``spacing`` on a discrete schedule whose training levels are
    ``train`` (ascending, one per timestep): between ``lo`` and ``hi``, on the training grid, or
    from the AYS table."""
    if spacing in BETWEEN_ENDS:
        return between_ends(spacing, lo, hi, n, rho)
    if spacing == "align_your_steps":
        return ays_sigmas(ays_model, n)
    return log_interp(train, grid_indices(spacing, train.numel(), n))
