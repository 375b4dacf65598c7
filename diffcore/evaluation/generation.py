"""Evaluating class-conditional generation: prompted labels, the per-class Gaussian baseline and
the real-vs-real Frechet distance a perfect generator would reach."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from diffcore.metrics import frechet_distance

__all__ = ["balanced_labels", "class_gaussian_samples", "real_fd", "train_subset"]


def balanced_labels(num_classes: int, n: int) -> Tensor:
    """``n`` labels cycling 0..K-1 (equal counts when K divides n)."""
    if num_classes < 1 or n < 0:
        raise ValueError(f"num_classes={num_classes}, n={n}: expected num_classes >= 1 and n >= 0")
    return torch.arange(n) % num_classes


def class_gaussian_samples(data: Any, labels: Tensor, seed: int = 0, jitter: float = 1e-4) -> Tensor:
    """Samples of a class-conditional Gaussian, one per label: per class the mean and covariance of
    ``data.train``'s flattened images (+ ``jitter`` * I, since constant border pixels have zero
    variance), clamped to [-1, 1]. Returns (len(labels), *image shape) float32.

    The draws of class 0 come first, then class 1, ...: each label's noise depends only on the
    labels of its own class before it.
    """
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or (len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < data.num_classes):
        raise ValueError(f"labels must be a 1-D tensor of classes in 0..{data.num_classes - 1}")
    g = torch.Generator().manual_seed(seed)
    x = data.train.flatten(1).double()
    out = torch.empty(len(labels), x.shape[1], dtype=torch.float64)
    for c in range(data.num_classes):
        rows = x[data.train_labels == c]
        mu = rows.mean(0)
        cov = torch.cov(rows.T) + jitter * torch.eye(x.shape[1], dtype=torch.float64)
        chol = torch.linalg.cholesky(cov)
        pick = (labels == c).nonzero().squeeze(1)
        z = torch.randn(len(pick), x.shape[1], generator=g, dtype=torch.float64)
        out[pick] = mu + z @ chol.T
    return out.float().reshape(len(labels), *data.train.shape[1:]).clamp(-1, 1)


def train_subset(data: Any, n: int, seed: int) -> Tensor:
    """``min(n, len(data.train))`` train images in a random order fixed by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return data.train[torch.randperm(len(data.train), generator=g)[: min(n, len(data.train))]]


def real_fd(evaluator: Any, data: Any, n: int, seed: int) -> dict[str, Any]:
    """FD of ``n`` real train images vs the held-out split in ``evaluator``'s features: the floor
    a perfect generator reaches with ``n`` samples."""
    subset = train_subset(data, n, seed)
    return {
        "fd_train_subset_vs_heldout": frechet_distance(evaluator.features(subset), evaluator.features(data.test)),
        "n_subset": len(subset),
        "n_heldout": len(data.test),
    }
