"""Image helpers: model space ([-1, 1] tensors) <-> uint8 arrays, and PNG grids."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def to_uint8(x: Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8 (values outside [-1, 1] are clipped)."""
    if x.dim() != 4:
        raise ValueError(f"expected images (N, C, H, W), got shape {tuple(x.shape)}")
    arr = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return arr.permute(0, 2, 3, 1).cpu().numpy()


def grid(x: Tensor, nrow: int | None = None, pad: int = 1, scale: int = 1) -> np.ndarray:
    """Tile (N, C, H, W) images in [-1, 1] into one (rows*H, cols*W, C) uint8 array."""
    imgs = to_uint8(x)
    n, h, w, c = imgs.shape
    cols = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    out = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = imgs[i]
    if scale > 1:
        out = out.repeat(scale, axis=0).repeat(scale, axis=1)
    return out


def save_grid(x: Tensor, path: str | Path, nrow: int | None = None, scale: int | None = None) -> Path:
    """Write a PNG grid of (N, C, H, W) images in [-1, 1]; small images are upscaled for viewing."""
    from PIL import Image

    h = x.shape[-2]
    scale = scale or max(1, 64 // max(h, 1))
    arr = grid(x, nrow=nrow, scale=scale)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(path)
    return path
