"""The noise level of noisy images: its units, its estimate and the model level that matches it.

A noisy image ``y = x0 + sigma * n`` in model space [-1, 1] is, scaled by ``alpha_t``, exactly the
diffusion state at the level whose VE noise ``std_t / alpha_t`` equals sigma
(:func:`match_level`). ``sigma="auto"`` estimates sigma per image with the robust median estimator
of Donoho & Johnstone (1994): ``median(|HH|) / 0.6745`` over the finest diagonal Daubechies-2
wavelet coefficients (what scikit-image's ``estimate_sigma`` computes, here in torch without
PyWavelets).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from diffcore.schedules import DiscreteSchedule, Schedule
from diffcore.tasks.levels import sigma_range

__all__ = [
    "check_sigma",
    "estimate_sigma",
    "match_level",
    "parse_sigma",
    "resolve_sigma",
    "sigma_to_model",
    "sigma_range",
]

_MAD_TO_STD = 0.6744897501960817  # the 75% quantile of N(0, 1): median |N(0, s^2)| = 0.6745 s
_RANGE_SIGMAS = 10.0  # |y| beyond 1 + 10 sigma is not noise on [-1, 1] data: probably 0..255 pixels


def sigma_to_model(sigma: Any, scale: float = 255.0) -> Any:
    """A noise std measured on a value range of width ``scale`` (255: 0..255 pixels, 1: [0, 1],
    2: model space) in model-space units ([-1, 1], width 2): ``2 * sigma / scale``."""
    return sigma * (2.0 / scale)


def estimate_sigma(images: Tensor) -> Tensor:
    """Per-image noise std (B,) of (B, C, H, W) images, in the images' units.

    Donoho & Johnstone (1994, sec. 4.2): the finest diagonal wavelet coefficients of an image are
    almost pure noise, so ``sigma = median(|HH|) / 0.6745``. As scikit-image's ``estimate_sigma``:
    Daubechies-2 (4-tap) filters, half-sample symmetric extension, coefficients that are exactly 0
    (flat or clipped regions) left out, channels estimated separately and averaged. Small images
    give rough estimates: an 8x8 image has 25 coefficients, several touching the border.
    """
    x = images if images.dim() == 4 else images[None]
    b, c, h, w = x.shape
    if h < 3 or w < 3:
        raise ValueError(f"images of {h}x{w} are too small to estimate sigma (need at least 3x3)")
    hh = _highpass(_highpass(x.to(torch.float64)).transpose(-1, -2))
    mags = hh.abs().flatten(2)  # (B, C, N)
    out = torch.empty(b, c, dtype=torch.float64)
    for i in range(b):
        for j in range(c):
            nonzero = mags[i, j][mags[i, j] > 0]
            out[i, j] = _median(nonzero) / _MAD_TO_STD if nonzero.numel() else 0.0
    return out.mean(dim=1).to(images.dtype if images.is_floating_point() else torch.float32)


_R3 = math.sqrt(3.0)
# Daubechies-2 decomposition high-pass filter, (-(1+r3), 3+r3, -(3-r3), 1-r3) / (4 sqrt 2)
_DB2_HIGH = tuple(v / (4 * math.sqrt(2.0)) for v in (-(1 + _R3), 3 + _R3, -(3 - _R3), 1 - _R3))


def _highpass(x: Tensor) -> Tensor:
    """The finest-level detail coefficients along the last axis: the signal extended by 3 samples
    mirrored at each end (edge sample repeated), convolved with the db2 high-pass and
    downsampled by 2, ``floor((N + 3) / 2)`` outputs (the convention of the DWT in PyWavelets)."""
    n = x.shape[-1]
    ext = torch.cat([x[..., :3].flip(-1), x, x[..., -3:].flip(-1)], dim=-1)
    taps = torch.tensor(_DB2_HIGH[::-1], dtype=x.dtype, device=x.device)  # convolution = correlation, flipped
    return (ext.unfold(-1, 4, 1) @ taps)[..., 1::2][..., : (n + 3) // 2]


def _median(v: Tensor) -> float:
    """The median as numpy defines it (the mean of the two middle values for an even count)."""
    s = v.sort().values
    n = s.numel()
    return float(s[n // 2]) if n % 2 else float((s[n // 2 - 1] + s[n // 2]) / 2)


def check_sigma(sigma: Any, n: int, scale: float = 2.0) -> Tensor | None:
    """``sigma`` (a number, one per image, or ``"auto"``) as a (n,) float64 model-space tensor,
    or None for ``"auto"``; ``scale`` is the width of the range sigma is measured on."""
    if isinstance(sigma, str):
        if sigma.strip().lower() != "auto":
            raise ValueError(f"sigma={sigma!r}: expected a number > 0 or 'auto'")
        return None
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
        raise ValueError(
            f"sigma_scale={scale!r} must be a number > 0 (255 for 0..255 pixels, 1 for [0, 1], 2 for model space)"
        )
    try:
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).cpu()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"sigma must be a number, one number per image or 'auto', got {sigma!r}") from exc
    bad = ~(torch.isfinite(s) & (s > 0))
    if bool(bad.any()):
        shown = float(s[0]) if s.numel() == 1 else s[bad].tolist()[:8]
        raise ValueError(f"sigma={shown} must be > 0 and finite (the noise std)")
    if s.numel() == 1:
        s = s.expand(n)
    if s.shape[0] != n:
        raise ValueError(f"sigma has {s.shape[0]} values for {n} images")
    return sigma_to_model(s, scale)


def resolve_sigma(images: Tensor, sigma: Any, schedule: Schedule, *, sigma_scale: float = 2.0) -> Tensor:
    """The model-space noise std (B,) float64 of checked noisy ``images`` (B, C, H, W): ``sigma``
    converted by :func:`check_sigma`, or for ``"auto"`` :func:`estimate_sigma` raised to the
    schedule's smallest level (and lowered to its largest). Raises when the images' range is
    not noise of that std around [-1, 1] (e.g. 0..255 pixels)."""
    sig = check_sigma(sigma, images.shape[0], sigma_scale)
    if sig is None:
        lo, hi = sigma_range(schedule)
        sig = estimate_sigma(images).double().cpu().clamp(lo, hi)
    _check_range(images, sig)
    return sig


def match_level(schedule: Schedule, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(t, alpha, std) per model-space sigma (n,), float64, with ``std / alpha == sigma``.

    Discrete schedules: ``t`` is the fractional timestep where the piecewise-linear interpolation
    of the training sigmas (as :func:`~diffcore.timesteps.partial_plan` and the samplers use it)
    equals sigma; EDM schedules: ``t = sigma``; flow schedules: the flow time ``t' = sigma / (1 +
    sigma)``, ``t = t' T``, ``(alpha, std) = (1 - t', t')``. Sigma must lie within the model's
    levels (:func:`~diffcore.tasks.levels.sigma_range`)."""
    s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
    lo, hi = sigma_range(schedule)
    if bool((s > hi).any()) or bool((s < lo).any()):
        bad = s[(s > hi) | (s < lo)].tolist()[:8]
        raise ValueError(f"noise level(s) {bad} (model space) outside the model's range [{lo:.4g}, {hi:.4g}]")
    if not isinstance(schedule, DiscreteSchedule):  # EDM: (sigma, 1, sigma); flow: its own state and time
        alpha, std = schedule.state(s)
        return schedule.sigma_to_t(s), alpha, std
    train = schedule.train_sigmas()
    idx = (torch.searchsorted(train, s, right=True) - 1).clamp(0, train.shape[0] - 2)
    s_lo, s_hi = train[idx], train[idx + 1]
    t = idx + ((s - s_lo) / (s_hi - s_lo)).clamp(0, 1)
    alpha = 1 / (1 + s * s).sqrt()
    return t, alpha, s * alpha


def _check_range(images: Tensor, sigma: Tensor, name: str = "images") -> None:
    peak = images.abs().flatten(1).amax(dim=1).double().cpu()
    bad = (peak > 1 + _RANGE_SIGMAS * sigma).nonzero().flatten().tolist()
    if bad:
        i = bad[0]
        raise ValueError(
            f"{name}: image {i} reaches |value| {float(peak[i]):.4g}, more than noise of std "
            f"{float(sigma[i]):.4g} around model space [-1, 1] explains; scale 0..255 pixels with "
            "x / 127.5 - 1 (and sigma with sigma_scale=255)"
        )


def parse_sigma(text: str | float) -> float | str:
    """``"auto"`` or a positive finite number (the command line's ``--sigma``)."""
    if isinstance(text, str) and text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"sigma={text!r}: expected a number > 0 or 'auto'") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"sigma={value!r} must be > 0 and finite (the noise std), or 'auto'")
    return value
