"""Counter-based Gaussian noise: Philox4x32-10 + Box-Muller, in Torch.

The same generator as csrc/step_math.h: element ``i`` of the stream ``(seed, offset)`` comes
from the Philox block with counter ``(i // 4, offset)`` and key ``seed``; each block's four
32-bit words become four normals by two Box-Muller transforms. Every backend (this reference,
the C++ CPU kernels, the CUDA kernels) therefore draws identical noise for the same seed, and a
sampler can generate noise inside its fused step without a host-side generator.
(Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3".)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Counter offsets of the Philox streams. Sampler step k of a run draws at offset k; the streams
# below are not sampler steps and sit far above any step count, so no two streams of one seed overlap.
ADD_NOISE_OFFSET = 2**40  # noise added to clean data at the start level (sample_from: SDEdit, reconstruction)
REPAINT_KNOWN_OFFSET = 2**40  # RePaint: the known region noised to the level a step lands on (per walk seed)
REPAINT_JUMP_OFFSET = 2**40 + 1  # RePaint: a state noised back up one level (the resampling jump)
REPAINT_START_OFFSET = 2**40 + 2  # RePaint: the known region noised to the start level
INIT_NOISE_OFFSET = 2**40 + 3  # generation: the start noise x_T of each sample (Pipeline.generate)
BROWNIAN_OFFSET = 2**41  # Brownian-tree noise: node n of the tree draws at BROWNIAN_OFFSET + n (n < 2**27)

_MASK32 = 0xFFFFFFFF
_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85


def _mulhilo(a: int, b: Tensor) -> tuple[Tensor, Tensor]:
    """(hi, lo) 32-bit halves of a * b for a 32-bit constant and int64 tensor b < 2^32."""
    b_lo, b_hi = b & 0xFFFF, b >> 16
    p_lo, p_hi = a * b_lo, a * b_hi  # each < 2^48: no int64 overflow
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & _MASK32
    hi = (p_hi + (p_lo >> 16)) >> 16
    return hi & _MASK32, lo


def philox4x32_10(groups: Tensor, offset: int, seed: int) -> Tensor:
    """The four 32-bit outputs (as int64, shape (N, 4)) for counters ``(groups, offset)``."""
    c0 = groups & _MASK32
    c1 = (groups >> 32) & _MASK32
    c2 = torch.full_like(groups, offset & _MASK32)
    c3 = torch.full_like(groups, (offset >> 32) & _MASK32)
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for r in range(10):
        if r > 0:
            k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return torch.stack([c0, c1, c2, c3], dim=1)


def philox_normal(numel: int, seed: int, offset: int, device: torch.device | str = "cpu") -> Tensor:
    """The first ``numel`` standard normals of the stream ``(seed, offset)``, float32, flat."""
    if seed < 0 or offset < 0:
        raise ValueError(f"seed={seed} and offset={offset} must be >= 0")
    groups = torch.arange((numel + 3) // 4, dtype=torch.int64, device=device)
    words = philox4x32_10(groups, offset, seed).to(torch.float64)
    u = ((words + 0.5) * 2.0**-32).to(torch.float32).to(torch.float64)  # rounded like the kernels
    r = (-2.0 * u[:, 0::2].log()).sqrt()
    theta = 2.0 * math.pi * u[:, 1::2]
    out = torch.stack([r * theta.cos(), r * theta.sin()], dim=2).reshape(-1, 4)
    return out.reshape(-1)[:numel].to(torch.float32)


def fill_like(x: Tensor, seed: int, offset: int) -> Tensor:
    """A tensor like ``x`` (same strides when dense) holding the stream in its memory order."""
    out = torch.empty_like(x)
    flat = philox_normal(out.numel(), seed, offset, out.device).to(out.dtype)
    out.as_strided((out.numel(),), (1,)).copy_(flat)
    return out
