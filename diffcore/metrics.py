"""Sample-quality metrics: Frechet distance of features, nearest-neighbour ratio, PSNR, SSIM.

All functions take torch tensors or numpy arrays, compute in float64 and return Python floats
(or, with ``reduction="none"``, one value per image). Bad input raises ValueError naming the
argument and what was expected.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "frechet_distance",
    "gaussian_stats",
    "nearest_neighbour_distances",
    "nearest_neighbour_ratio",
    "psnr",
    "ssim",
]

Reduction = Literal["mean", "none"]


def _as_float64(name: str, x: Any) -> Tensor:
    """``x`` as a float64 CPU tensor; raises ValueError for non-numeric, empty or non-finite input."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}: expected a tensor or array of numbers, got {type(x).__name__}") from exc
    if x.dtype == torch.bool or x.is_complex():
        raise ValueError(f"{name}: expected real numbers, got dtype {x.dtype}")
    x = x.detach().to("cpu", torch.float64)
    if x.numel() == 0:
        raise ValueError(f"{name}: is empty (shape {tuple(x.shape)})")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: contains NaN or inf")
    return x


def _features(name: str, x: Any) -> Tensor:
    x = _as_float64(name, x)
    if x.dim() != 2:
        raise ValueError(f"{name}: expected features of shape (N, D), got {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"{name}: a covariance needs at least 2 samples, got {x.shape[0]}")
    return x


# --------------------------------------------------------------------------- Frechet distance


def gaussian_stats(feats: Any) -> tuple[Tensor, Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), float64."""
    f = _features("feats", feats)
    mu = f.mean(dim=0)
    centered = f - mu
    return mu, centered.T @ centered / (f.shape[0] - 1)


def _sqrt_psd(m: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix (negative eigenvalues clipped)."""
    w, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(feats_a: Any, feats_b: Any) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N_a, D) and (N_b, D).

    ``||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))`` (Dowson & Landau 1982; the
    FID of Heusel et al. 2017 with Inception features). ``tr((S_a S_b)^(1/2))`` is computed as the
    sum of square roots of the eigenvalues of the symmetric PSD ``S_a^(1/2) S_b S_a^(1/2)``, which
    has the same spectrum, so the result is real and >= 0 up to rounding. Needs N >= 2 per set;
    with N <= D the covariances are singular, which is allowed but biases the estimate upward.
    """
    a, b = _features("feats_a", feats_a), _features("feats_b", feats_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feats_a has {a.shape[1]} features per sample, feats_b {b.shape[1]}: they must match")
    mu_a, cov_a = gaussian_stats(a)
    mu_b, cov_b = gaussian_stats(b)
    root_a = _sqrt_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    eig = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0)
    value = float(((mu_a - mu_b) ** 2).sum() + cov_a.trace() + cov_b.trace() - 2 * eig.sqrt().sum())
    return max(value, 0.0)


# --------------------------------------------------------------------------- nearest neighbours


def nearest_neighbour_distances(queries: Any, reference: Any, chunk: int = 1024) -> Tensor:
    """L2 distance (float64, (N,)) from each flattened query (N, ...) to its nearest reference (M, ...)."""
    q = _as_float64("queries", queries)
    r = _as_float64("reference", reference)
    if q.dim() < 2 or r.dim() < 2:
        raise ValueError(f"queries {tuple(q.shape)} and reference {tuple(r.shape)} must be batches (N, ...)")
    q, r = q.reshape(q.shape[0], -1), r.reshape(r.shape[0], -1)
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} values per sample, reference {r.shape[1]}: they must match")
    if chunk < 1:
        raise ValueError(f"chunk={chunk} must be >= 1")
    exact = "donot_use_mm_for_euclid_dist"  # the matmul shortcut loses precision near 0
    return torch.cat(
        [torch.cdist(q[i : i + chunk], r, compute_mode=exact).min(dim=1).values for i in range(0, q.shape[0], chunk)]
    )


def nearest_neighbour_ratio(samples: Any, train: Any, heldout: Any) -> float:
    """Mean distance of ``samples`` to their nearest ``train`` item / the same for ``heldout``.

    About 1 when samples are as far from the training set as fresh real data; near 0 when they
    copy training items (flattened L2, all three sets in the same space and shape per item).
    """
    sample_d = nearest_neighbour_distances(samples, train).mean()
    held = nearest_neighbour_distances(heldout, train).mean()
    if float(held) == 0.0:
        raise ValueError("heldout: every held-out item is also in train (mean nearest distance 0)")
    return float(sample_d / held)


# --------------------------------------------------------------------------- PSNR and SSIM


def _image_pair(x: Any, y: Any, data_range: float) -> tuple[Tensor, Tensor]:
    """``x``, ``y`` as float64 (N, C, H, W); accepts (H, W), (C, H, W) or (N, C, H, W)."""
    a, b = _as_float64("x", x), _as_float64("y", y)
    if a.shape != b.shape:
        raise ValueError(f"x has shape {tuple(a.shape)}, y {tuple(b.shape)}: they must match")
    if a.dim() not in (2, 3, 4):
        raise ValueError(f"x has shape {tuple(a.shape)}: expected (H, W), (C, H, W) or (N, C, H, W)")
    if isinstance(data_range, bool) or not isinstance(data_range, (int, float)) or not data_range > 0:
        raise ValueError(f"data_range={data_range!r}: expected a number > 0 (e.g. 2.0 for [-1, 1], 255 for uint8)")
    while a.dim() < 4:
        a, b = a.unsqueeze(0), b.unsqueeze(0)
    return a, b


def _reduce(values: Tensor, reduction: Reduction) -> float | Tensor:
    if reduction == "none":
        return values
    if reduction == "mean":
        return float(values.mean())
    raise ValueError(f"reduction={reduction!r}: expected 'mean' or 'none'")


def psnr(x: Any, y: Any, data_range: float, reduction: Reduction = "mean") -> float | Tensor:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)``, per image then averaged.

    ``data_range`` is max - min of the value range (2.0 for [-1, 1]); identical images give inf.
    """
    a, b = _image_pair(x, y, data_range)
    mse = ((a - b) ** 2).flatten(1).mean(dim=1)
    values = 10 * torch.log10(data_range**2 / mse)  # mse 0 -> inf
    return _reduce(values, reduction)


def _gaussian_window(size: int, sigma: float) -> Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(
    x: Any,
    y: Any,
    data_range: float,
    *,
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    reduction: Reduction = "mean",
) -> float | Tensor:
    """Structural similarity (Wang et al. 2004, eq. 13) with a Gaussian window, per image.

    Local means, variances and covariance use a ``win_size`` x ``win_size`` Gaussian window of
    std ``sigma`` (the paper's 11 / 1.5) over the valid region; images smaller than the window
    use the largest odd window that fits (7 for 8x8). Channels (grayscale or RGB) are scored
    separately and averaged, as is the SSIM map. ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2`` with
    ``L = data_range``. SSIM(x, x) = 1; lower is less similar. Equal (to 1e-10) to
    ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)`` on images of at least 11 x 11, which is all skimage accepts
    with those settings (tests/test_metrics.py).
    """
    a, b = _image_pair(x, y, data_range)
    if isinstance(win_size, bool) or not isinstance(win_size, int) or win_size < 1 or win_size % 2 == 0:
        raise ValueError(f"win_size={win_size!r}: expected an odd integer >= 1")
    if not sigma > 0:
        raise ValueError(f"sigma={sigma!r}: expected a number > 0")
    _, c, h, w = a.shape
    size = min(win_size, h if h % 2 else h - 1, w if w % 2 else w - 1)
    if size < 1:
        raise ValueError(f"images of size {h}x{w} are too small for SSIM")
    kernel = _gaussian_window(size, sigma).expand(c, 1, size, size).contiguous()

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, kernel, groups=c)

    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return _reduce((num / den).flatten(1).mean(dim=1), reduction)
