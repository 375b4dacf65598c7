"""Classical baselines and synthetic test data that the demo and the quality benchmarks share.

- :func:`wiener_fit` / :func:`wiener`: the linear MMSE denoiser of a Gaussian prior fitted on
  training images (the "Wiener" row of every denoising table).
- :func:`knn_fill`: the mean of the k training images whose keys (a known part, a low-resolution
  version) are nearest to a query's key (the inpainting / super-resolution baseline).
- :func:`add_defects`: half of a batch of images get a 3x3 patch set bright (+1) or inverted, with
  image- and pixel-level labels (the anomaly-detection test data).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["add_defects", "knn_fill", "wiener", "wiener_fit"]


def wiener_fit(train: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (D,) and covariance (D, D) of the flattened training images, float64."""
    flat = train.flatten(1).double()
    return flat.mean(0), torch.cov(flat.T)


def wiener(y: Tensor, mean: Tensor, cov: Tensor, sigma: float) -> Tensor:
    """The linear MMSE estimate under a Gaussian prior N(mean, cov) for noise std ``sigma``:
    ``mean + C (C + sigma^2 I)^-1 (y - mean)``, float32, shaped like ``y``."""
    if not sigma >= 0:
        raise ValueError(f"sigma={sigma!r} must be >= 0")
    if y[0].numel() != cov.shape[0]:
        raise ValueError(f"images of {y[0].numel()} values do not match a prior over {cov.shape[0]}")
    flat = y.flatten(1).double()
    gain = torch.linalg.solve(cov + sigma**2 * torch.eye(cov.shape[0], dtype=torch.float64), cov)  # symmetric C, A
    return (mean + (flat - mean) @ gain.T).reshape(y.shape).float()


def knn_fill(train: Tensor, train_keys: Tensor, keys: Tensor, k: int = 5) -> Tensor:
    """The mean of the ``k`` training images whose keys are nearest (L2) to each query key."""
    if len(train_keys) != len(train):
        raise ValueError(f"{len(train_keys)} training keys for {len(train)} training images")
    if not 1 <= k <= len(train):
        raise ValueError(f"k={k} must be between 1 and the {len(train)} training images")
    dist = torch.cdist(keys.flatten(1).double(), train_keys.flatten(1).double())
    return train[dist.topk(k, largest=False).indices].mean(dim=1)


def add_defects(images: Tensor, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Half the images (chosen by ``seed``) get a 3x3 patch set to +1 or inverted; returns
    (images, image labels (N,) bool, pixel labels (N, H, W) bool)."""
    if images.dim() != 4 or images.shape[-1] < 3 or images.shape[-2] < 3:
        raise ValueError(f"images have shape {tuple(images.shape)}; expected (N, C, H, W) with H, W >= 3")
    g = torch.Generator().manual_seed(seed)
    n, _, h, w = images.shape
    image_labels = torch.zeros(n, dtype=torch.bool)
    image_labels[torch.randperm(n, generator=g)[: n // 2]] = True
    pixel_labels = torch.zeros(n, h, w, dtype=torch.bool)
    out = images.clone()
    for i in image_labels.nonzero().flatten().tolist():
        r, c = (int(v) for v in torch.randint(0, h - 2, (2,), generator=g))
        bright = bool(torch.randint(0, 2, (1,), generator=g))
        out[i, :, r : r + 3, c : c + 3] = 1.0 if bright else -out[i, :, r : r + 3, c : c + 3]
        pixel_labels[i, r : r + 3, c : c + 3] = True
    return out, image_labels, pixel_labels
