"""Scoring restored images (denoised, inpainted, translated) against the clean ones."""

from __future__ import annotations

from torch import Tensor

from diffcore.metrics import psnr

__all__ = ["psnr_db"]


def psnr_db(x: Tensor, truth: Tensor) -> float:
    """Mean PSNR in dB of images ``x`` (N, C, H, W) in model space, clamped to [-1, 1], against
    ``truth`` (data range 2: the same as range 255 on 0..255 pixels)."""
    return float(psnr(x.float().clamp(-1, 1), truth, data_range=2.0))
