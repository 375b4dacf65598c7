"""Pure-Torch reference of the fused ops: the canonical definition of their math.

Every native kernel (csrc/ CPU, csrc/cuda/) must reproduce these functions. Inputs are
validated by :mod:`diffcore.ops` before they reach a backend, so nothing here checks.

Coefficient layout of the sampler step (see ``diffcore.ops.sampler_step``)::

    coeffs = [a, b, row_0, row_1, ..., row_W]      each row = [c_x, c_x0, c_h0 .. c_h{K-1}, c_z]

``x0 = a*x + b*model_out``, then the optional x0 limit (clip or dynamic thresholding,
:func:`limit_x0`); row 0 gives ``x_next``, row ``j >= 1`` the new value of history slot
``writes[j-1]``; every row reads the values from before the call.
"""

from __future__ import annotations

import torch
from torch import Tensor

Limit = tuple[float | None, float | None, float]  # (clip, dynamic ratio, max value) of limit_x0


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp16/bf16 accumulate in fp32; fp32 and fp64 keep their precision."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _per_sample(c: Tensor, ndim: int) -> Tensor:
    """View a (B,) coefficient so it broadcasts over a (B, ...) tensor; scalars pass through."""
    if c.dim() == 0:
        return c
    return c.reshape(c.shape[0], *([1] * (ndim - 1)))


def forward_noise(x0: Tensor, noise: Tensor, t: Tensor, table: Tensor) -> tuple[Tensor, Tensor]:
    """Noise a batch and produce its training target in one pass.

    ``table`` is (T, 4) with rows ``[c_x0, c_noise, target_x0, target_noise]``; sample ``i`` uses
    row ``t[i]``: ``x_t = c_x0*x0 + c_noise*noise`` and ``target = target_x0*x0 + target_noise*noise``.
    """
    acc = _acc_dtype(x0.dtype)
    rows = table.index_select(0, t).to(acc)
    x0a, na = x0.to(acc), noise.to(acc)
    c = [_per_sample(rows[:, k], x0.dim()) for k in range(4)]
    x_t = c[0] * x0a + c[1] * na
    target = c[2] * x0a + c[3] * na
    return x_t.to(x0.dtype), target.to(x0.dtype)


def limit_x0(x0: Tensor, clip: float | None, ratio: float | None, max_value: float) -> Tensor:
    """The x0 limit (:class:`diffcore.x0_limit.X0Limit`) on an accumulation-dtype (B, ...) x0:
    clamp to ``[-clip, clip]``, or dynamic thresholding ``clamp(x0, -s, s) / s`` with
    ``s = clamp(quantile(|x0|, ratio), 1, max_value)`` per sample (Saharia et al. 2022)."""
    if clip is not None:
        return x0.clamp(-clip, clip)
    if ratio is None:
        return x0
    flat = x0.reshape(x0.shape[0], -1)
    s = _per_sample(torch.quantile(flat.abs(), ratio, dim=1).clamp(1.0, max_value), x0.dim())
    return torch.clamp(x0, -s, s) / s


def _mix(
    x: Tensor,
    m: Tensor,
    coeffs: Tensor,
    history: Tensor | None,
    noise: Tensor | None,
    writes: list[int],
    limit: Limit = (None, None, 1.0),
    nonfinite: Tensor | None = None,
) -> None:
    acc = _acc_dtype(x.dtype)
    k = 0 if history is None else history.shape[0]
    width = 3 + k
    c = coeffs.to(acc)
    nd = x.dim()

    def col(j: int) -> Tensor:
        return _per_sample(c[..., j], nd)

    xa = x.to(acc)
    raw = col(0) * xa + col(1) * m
    if nonfinite is not None:  # a flag on the device, no host read
        nonfinite.copy_(torch.maximum(nonfinite, (~torch.isfinite(raw)).any().to(nonfinite.dtype)))
    x0 = limit_x0(raw, *limit)
    hist = [history[j].to(acc) for j in range(k)] if history is not None else []
    za = noise.to(acc) if noise is not None else None

    outputs = []
    for r in range(1 + len(writes)):
        base = 2 + r * width
        out = col(base) * xa + col(base + 1) * x0
        for j in range(k):
            out = out + col(base + 2 + j) * hist[j]
        if za is not None:
            out = out + col(base + 2 + k) * za
        outputs.append(out)
    x.copy_(outputs[0].to(x.dtype))
    for slot, value in zip(writes, outputs[1:]):
        assert history is not None  # writes name history slots
        history[slot].copy_(value.to(history.dtype))


def sampler_step(
    x: Tensor,
    model_out: Tensor,
    coeffs: Tensor,
    history: Tensor | None,
    noise: Tensor | None,
    writes: list[int],
    limit: Limit = (None, None, 1.0),
    nonfinite: Tensor | None = None,
) -> None:
    """One fused sampler step, in place on ``x`` and the written history slots. ``limit``: the x0
    limit (:func:`limit_x0`); ``nonfinite``: a one-element int tensor set to 1 when an x0 (before
    the limit) is NaN or inf."""
    acc = _acc_dtype(x.dtype)
    _mix(x, model_out.to(acc), coeffs, history, noise, writes, limit, nonfinite)


def cfg_sampler_step(
    x: Tensor,
    uncond: Tensor,
    cond: Tensor,
    guidance: Tensor,
    coeffs: Tensor,
    history: Tensor | None,
    noise: Tensor | None,
    writes: list[int],
    limit: Limit = (None, None, 1.0),
    nonfinite: Tensor | None = None,
) -> None:
    """Sampler step whose model output is ``r * (uncond + w * (cond - uncond))``.

    ``guidance`` is (2,) or (B, 2) holding ``[w, r]``: the guidance scale and the rescale factor
    from :func:`cfg_rescale_factor` (1 when guidance rescale is off).
    """
    acc = _acc_dtype(x.dtype)
    g = guidance.to(acc)
    w = _per_sample(g[..., 0], x.dim())
    r = _per_sample(g[..., 1], x.dim())
    u = uncond.to(acc)
    m = r * (u + w * (cond.to(acc) - u))
    _mix(x, m, coeffs, history, noise, writes, limit, nonfinite)


def cfg_rescale_factor(uncond: Tensor, cond: Tensor, scale: Tensor, phi: float) -> Tensor:
    """Per-sample factor of guidance rescale (Lin et al. 2023, "Common Diffusion Noise Schedules
    and Sample Steps are Flawed", eq. 15-16): ``phi * std(cond) / std(cfg) + (1 - phi)``, and 1
    where ``std(cfg) = 0``.

    ``scale`` is a scalar or (B,) tensor of guidance scales; returns a (B,) float32/64 tensor.
    """
    acc = _acc_dtype(uncond.dtype)
    u, c = uncond.to(acc), cond.to(acc)
    w = _per_sample(scale.to(acc), u.dim())
    cfg = u + w * (c - u)
    dims = list(range(1, u.dim()))
    std_cond = c.std(dim=dims)
    std_cfg = cfg.std(dim=dims)
    # a guided output with zero spread cannot be rescaled: factor 1 instead of 0 / 0
    return torch.where(std_cfg > 0, phi * std_cond / std_cfg + (1.0 - phi), torch.ones_like(std_cfg))
