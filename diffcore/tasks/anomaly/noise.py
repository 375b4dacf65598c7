"""The noise of partial diffusion: simplex noise (Perlin 2001; Gustavson's formulation), spatially
correlated noise for AnoDDPM-style partial diffusion of images (Wyatt et al. 2022), and
:func:`keyed_noise`, whose rows depend on (seed, row index) only so that scores do not depend on
how the rows are batched or split across workers."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from diffcore import ops
from diffcore.ops.philox import ADD_NOISE_OFFSET

__all__ = ["keyed_noise", "simplex_noise"]

_GOLDEN = 0x9E3779B97F4A7C15  # 2^64 / phi: spreads (seed, row) pairs over 64-bit generator seeds
_F2, _G2 = 0.5 * (math.sqrt(3.0) - 1.0), (3.0 - math.sqrt(3.0)) / 6.0  # 2-D simplex skew / unskew


def _simplex_octave(n: int, h: int, w: int, freq: float, g: torch.Generator) -> Tensor:
    """One octave of 2-D simplex noise (Perlin 2001; Gustavson's formulation) for ``n`` fields
    (N, H, W): random unit gradients on a per-field lattice, radial falloff ``(0.5 - r^2)^4``."""
    period = math.ceil(max(h, w) * freq * (1 + _F2)) + 3  # no lattice repeat inside an image
    angles = torch.rand(n, period * period, generator=g, dtype=torch.float64) * (2 * math.pi)
    shift = torch.rand(n, 2, 1, 1, generator=g, dtype=torch.float64) * period
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    px, py = xs * freq + shift[:, 0], ys * freq + shift[:, 1]
    skew = (px + py) * _F2
    i, j = (px + skew).floor(), (py + skew).floor()
    unskew = (i + j) * _G2
    x0, y0 = px - (i - unskew), py - (j - unskew)
    i1 = (x0 > y0).to(torch.float64)
    total = torch.zeros_like(x0)
    for ci, cj, dx, dy in (
        (0.0, 0.0, x0, y0),
        (i1, 1 - i1, x0 - i1 + _G2, y0 - (1 - i1) + _G2),
        (1.0, 1.0, x0 - 1 + 2 * _G2, y0 - 1 + 2 * _G2),
    ):
        idx = (((i + ci) % period) * period + (j + cj) % period).long().reshape(n, -1)
        a = angles.gather(1, idx).reshape(n, h, w)
        falloff = (0.5 - dx * dx - dy * dy).clamp_min(0)
        total = total + falloff**4 * (a.cos() * dx + a.sin() * dy)
    return 70.0 * total


def simplex_noise(
    shape: Sequence[int],
    *,
    frequency: float | None = None,
    octaves: int | None = None,
    persistence: float = 0.5,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Multi-octave 2-D simplex noise of ``shape`` (N, C, H, W), each field normalised to mean 0
    and variance 1: spatially correlated noise for AnoDDPM-style partial diffusion.

    ``frequency``: lattice cells per pixel of the first octave (default ``2 / max(H, W)``: about
    two cells across the image); each octave doubles it and scales its amplitude by
    ``persistence``; ``octaves`` defaults to as many as keep the frequency <= 0.5 per pixel."""
    if len(shape) != 4 or any(int(s) < 1 for s in shape):
        raise ValueError(f"simplex noise needs an image shape (N, C, H, W), got {tuple(shape)}")
    n, c, h, w = (int(s) for s in shape)
    if h * w < 2:
        raise ValueError(f"simplex noise needs at least 2 pixels per image, got {h}x{w}")
    freq = 2.0 / max(h, w) if frequency is None else float(frequency)
    if not freq > 0:
        raise ValueError(f"frequency={frequency!r} must be > 0")
    if octaves is None:
        octaves = max(1, math.floor(math.log2(0.5 / freq) + 1e-9) + 1) if freq < 0.5 else 1
    if isinstance(octaves, bool) or not isinstance(octaves, int) or octaves < 1:
        raise ValueError(f"octaves={octaves!r} must be an integer >= 1")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    field_ = _simplex_octave(n * c, h, w, freq, g)  # the octaves' weighted sum, 1 * first + p * second + ...
    for k in range(1, octaves):
        field_ = field_ + persistence**k * _simplex_octave(n * c, h, w, freq * 2**k, g)
    field_ = field_ - field_.mean(dim=(1, 2), keepdim=True)
    field_ = field_ / field_.flatten(1).std(dim=1).clamp_min(1e-12).reshape(-1, 1, 1)
    return field_.reshape(n, c, h, w).to(dtype)


def keyed_noise(like: Tensor, kind: str, seed: int, *, sample_index: int = 0) -> Tensor:
    """Noise shaped like ``like`` (N, ...) whose row ``b`` is a function of ``(seed,
    sample_index + b)`` only: ``gaussian`` rows from the Philox stream of ``seed`` at
    :data:`~diffcore.ops.philox.ADD_NOISE_OFFSET` keyed by the row's global index, ``simplex``
    rows (images) each from a generator seeded by ``(seed, index)``."""
    if kind == "gaussian":
        return ops.philox_noise_like(like, seed, offset=ADD_NOISE_OFFSET, sample_index=sample_index)
    keys = [(seed * _GOLDEN + sample_index + b) % 2**64 for b in range(like.shape[0])]
    rows = [simplex_noise((1, *like.shape[1:]), generator=torch.Generator().manual_seed(k)) for k in keys]
    return torch.cat(rows).to(like.device, like.dtype)
