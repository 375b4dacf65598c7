"""Fake (meta) kernels of the native ops, so torch.compile and FakeTensor tracing see their shapes."""

from __future__ import annotations

import torch
from torch import Tensor


def _same_device(x: Tensor, *others: Tensor | None) -> None:
    """A call mixing meta (fake) tensors with real ones reaches the fake kernel; refuse it rather
    than return uninitialized memory."""
    for t in others:
        if t is not None and t.device != x.device:
            raise RuntimeError(f"diffcore: operands are on {t.device} and {x.device}; expected one device")


@torch.library.register_fake("diffcore::forward_noise")
def _forward_noise(x0: Tensor, noise: Tensor, t: Tensor, table: Tensor) -> tuple[Tensor, Tensor]:
    _same_device(x0, noise, t, table)
    return torch.empty_like(x0, memory_format=torch.contiguous_format), torch.empty_like(
        x0, memory_format=torch.contiguous_format
    )


@torch.library.register_fake("diffcore::sampler_step")
def _sampler_step(
    x: Tensor,
    model_out: Tensor,
    coeffs: Tensor,
    history: Tensor | None,
    noise: Tensor | None,
    writes: list[int],
    seed: int = -1,
    offset: int = 0,
    sample_index: int = 0,
    noise_mode: int = 1,
    x0_clip: float | None = None,
    x0_ratio: float | None = None,
    x0_max: float = 1.0,
    nonfinite: Tensor | None = None,
) -> None:
    _same_device(x, model_out, coeffs, history, noise)
    return None


@torch.library.register_fake("diffcore::cfg_sampler_step")
def _cfg_sampler_step(
    x: Tensor,
    uncond: Tensor,
    cond: Tensor,
    guidance: Tensor,
    coeffs: Tensor,
    history: Tensor | None,
    noise: Tensor | None,
    writes: list[int],
    seed: int = -1,
    offset: int = 0,
    sample_index: int = 0,
    noise_mode: int = 1,
    x0_clip: float | None = None,
    x0_ratio: float | None = None,
    x0_max: float = 1.0,
    nonfinite: Tensor | None = None,
) -> None:
    _same_device(x, uncond, cond, guidance, coeffs, history, noise)
    return None


@torch.library.register_fake("diffcore::cfg_rescale_factor")
def _cfg_rescale_factor(uncond: Tensor, cond: Tensor, scale: Tensor, phi: float) -> Tensor:
    _same_device(uncond, cond, scale)
    dtype = torch.float64 if uncond.dtype == torch.float64 else torch.float32
    return uncond.new_empty((uncond.shape[0],), dtype=dtype)


@torch.library.register_fake("diffcore::philox_normal_")
def _philox_normal(out: Tensor, seed: int, offset: int, sample_index: int = 0, noise_mode: int = 1) -> None:
    return None
