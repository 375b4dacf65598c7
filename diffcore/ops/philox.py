"""Counter-based Gaussian noise keyed per sample: Philox4x32-10 + Box-Muller, in Torch.

The same generator as csrc/step_math.h. Element ``j`` of sample ``s`` of the draw ``(seed, offset)``
comes from the Philox block with key ``seed`` and counter ``(j // 4, s, offset)``: a sample's
noise depends on ``(seed, offset, s, j)`` only, so it is the same in any batch, and a batch whose
first sample is number ``k`` of a sequence draws samples ``k, k+1, ...``. Each block's four 32-bit
words become four normals by two Box-Muller transforms, in one of two modes:

* ``exact``: uniforms ``(u + 0.5) / 2**32`` rounded to float32, the transform in float64;
* ``fast``: 24-bit uniforms and a float32 transform whose log and sin/cos are short polynomials,
  each operation one rounded float32 op (no FMA), for vectorized kernels.

Both are bit-identical between this reference and the C++ CPU kernels (and the CUDA kernels, which
use the same per-element code). (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3".)

**The default is ``fast``**: on CPU it draws 3-10x the normals per second of ``torch.randn`` at one
thread (``exact`` runs at ~0.2x: libm log/cos/sin in double; benchmarks/results/noise_cpu.md), and
it is built from correctly rounded float32 operations only (+, -, *, /, sqrt, integer and bit
operations; no FMA, no libm), so every IEEE backend computes the same bits: the CPU kernels and
this reference by test, CUDA by construction (the ``__f*_rn`` intrinsics). ``exact`` rests on
libm's double log/cos/sin agreeing after rounding to float32. ``fast``'s uniforms have 24 bits, so
its normals stop at |z| = 5.77 (``exact``: 6.66), a tail of probability 8e-9.
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

NOISE_MODES = ("exact", "fast")  # index = the fused ops' noise_mode argument
DEFAULT_NOISE_MODE = "fast"
MAX_SAMPLES = 2**32  # sample_index + batch must not exceed this (the counter's sample word)
MAX_PER_SAMPLE = 2**34  # elements per sample (the counter's block word)

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


def philox4x32_10(groups: Tensor, samples: Tensor, offset: int, seed: int) -> Tensor:
    """The four 32-bit outputs (as int64, shape (N, 4)) for counters ``(groups, samples, offset)``."""
    c0 = groups & _MASK32
    c1 = samples & _MASK32
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


def _exact(w1: Tensor, w2: Tensor) -> tuple[Tensor, Tensor]:
    u1 = ((w1.to(torch.float64) + 0.5) * 2.0**-32).to(torch.float32).to(torch.float64)  # rounded like the kernels
    u2 = ((w2.to(torch.float64) + 0.5) * 2.0**-32).to(torch.float32).to(torch.float64)
    r = (-2.0 * u1.log()).sqrt()
    theta = 2.0 * math.pi * u2
    return (r * theta.cos()).to(torch.float32), (r * theta.sin()).to(torch.float32)


def _f32(v: float) -> Tensor:
    return torch.tensor(v, dtype=torch.float32)


def _fast_log(u: Tensor) -> Tensor:
    """csrc/step_math.h fast_log, op for op in float32."""
    bits = u.view(torch.int32).to(torch.int64)
    e = (bits >> 23) - 127
    m = ((bits & 0x7FFFFF) | 0x3F800000).to(torch.int32).view(torch.float32)
    big = m > _f32(1.41421354)
    m = torch.where(big, m * _f32(0.5), m)
    e = e + big.to(torch.int64)
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    p = _f32(0.285714298) + s2 * _f32(0.222222224)
    p = _f32(0.400000006) + s2 * p
    p = _f32(0.666666687) + s2 * p
    log_m = 2.0 * s + (s * s2) * p
    ef = e.to(torch.float32)
    return ef * _f32(0.693359375) + (log_m + ef * _f32(-0.000212194442))


def _fast(w1: Tensor, w2: Tensor) -> tuple[Tensor, Tensor]:
    """csrc/step_math.h box_muller_fast, op for op in float32."""
    u1 = ((w1 >> 8) + 1).to(torch.float32) * _f32(5.96046448e-08)
    # correctly rounded float32 sqrt (torch's float32 sqrt on CPU is not): via float64, exact here
    r = (-2.0 * _fast_log(u1)).to(torch.float64).sqrt().to(torch.float32)
    q = w2 >> 30
    f = (((w2 >> 6) & 0xFFFFFF) - 8388608).to(torch.float32) * _f32(5.96046448e-08) + _f32(2.98023224e-08)
    y = f * _f32(1.57079637)
    y2 = y * y
    ps = _f32(0.00833333377) + y2 * _f32(-0.000198412701)
    ps = _f32(-0.166666672) + y2 * ps
    sn = y + (y * y2) * ps
    pc = _f32(-0.00138888892) + y2 * _f32(2.48015876e-05)
    pc = _f32(0.0416666679) + y2 * pc
    pc = _f32(-0.5) + y2 * pc
    cs = 1.0 + y2 * pc
    c = torch.where(q == 0, cs, torch.where(q == 1, -sn, torch.where(q == 2, -cs, sn)))
    s = torch.where(q == 0, sn, torch.where(q == 1, cs, torch.where(q == 2, -sn, -cs)))
    return r * c, r * s


def check_keys(batch: int, per_sample: int, sample_index: int, mode: str) -> None:
    """Raise ValueError unless ``sample_index`` and ``mode`` are valid for ``batch`` samples of
    ``per_sample`` elements."""
    if isinstance(sample_index, bool) or not isinstance(sample_index, int):
        raise ValueError(f"sample_index={sample_index!r} must be an integer")
    if sample_index < 0 or sample_index + batch > MAX_SAMPLES:
        raise ValueError(f"sample_index={sample_index} must be >= 0 with sample_index + batch ({batch}) <= 2**32")
    if per_sample > MAX_PER_SAMPLE:
        raise ValueError(f"{per_sample} elements per sample; in-kernel noise supports up to 2**34")
    if mode not in NOISE_MODES:
        raise ValueError(f"noise_mode={mode!r}: expected one of {NOISE_MODES}")


def philox_normal(
    batch: int,
    per_sample: int,
    seed: int,
    offset: int,
    sample_index: int = 0,
    mode: str = "exact",
    device: torch.device | str = "cpu",
) -> Tensor:
    """Samples ``sample_index .. sample_index + batch - 1`` of the draw ``(seed, offset)``, each
    ``per_sample`` standard normals: float32, shape (batch, per_sample)."""
    if seed < 0 or offset < 0:
        raise ValueError(f"seed={seed} and offset={offset} must be >= 0")
    check_keys(batch, per_sample, sample_index, mode)
    groups_per = (per_sample + 3) // 4
    groups = torch.arange(groups_per, dtype=torch.int64, device=device).repeat(batch)
    samples = torch.arange(sample_index, sample_index + batch, dtype=torch.int64, device=device)
    words = philox4x32_10(groups, samples.repeat_interleave(groups_per), offset, seed)
    transform = _fast if mode == "fast" else _exact
    a0, a1 = transform(words[:, 0], words[:, 1])
    b0, b1 = transform(words[:, 2], words[:, 3])
    out = torch.stack([a0, a1, b0, b1], dim=1).reshape(batch, 4 * groups_per)
    return out[:, :per_sample]


def fill_like(x: Tensor, seed: int, offset: int, sample_index: int = 0, mode: str = "exact") -> Tensor:
    """A tensor like ``x`` holding the draw: sample ``b`` (leading dimension) is sample
    ``sample_index + b`` of ``(seed, offset)`` in row-major order; a 0-d ``x`` is one sample."""
    batch = x.shape[0] if x.dim() else 1
    per = x.numel() // batch if batch else 0
    flat = philox_normal(batch, per, seed, offset, sample_index, mode, x.device)
    out = torch.empty_like(x)
    out.copy_(flat.reshape(x.shape).to(x.dtype))
    return out
