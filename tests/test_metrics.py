"""diffcore.metrics: closed-form cases for Frechet distance, NN ratio, PSNR and SSIM; bad input raises."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import linalg

from diffcore.metrics import frechet_distance, gaussian_stats, nearest_neighbour_ratio, psnr, ssim


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --------------------------------------------------------------------------- Frechet distance


def test_fd_of_a_set_with_itself_is_zero() -> None:
    a = _randn(400, 12)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


@pytest.mark.parametrize("shift", [0.1, 1.0, 3.0])
def test_fd_of_a_mean_shift_is_its_squared_norm(shift: float) -> None:
    a = _randn(300, 8) @ _randn(8, 8, seed=1)  # correlated features
    delta = torch.linspace(-1, 1, 8, dtype=torch.float64) * shift
    assert frechet_distance(a, a + delta) == pytest.approx(float((delta**2).sum()), rel=1e-6, abs=1e-8)


def test_fd_matches_scipy_sqrtm() -> None:
    a, b = _randn(500, 10), _randn(300, 10, seed=2) * 1.7 + 0.2
    mu_a, s_a = gaussian_stats(a)
    mu_b, s_b = gaussian_stats(b)
    root = linalg.sqrtm(s_a.numpy() @ s_b.numpy()).real
    expected = float(((mu_a - mu_b) ** 2).sum() + s_a.trace() + s_b.trace()) - 2 * np.trace(root)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-8)


def test_fd_accepts_numpy_and_float32() -> None:
    a = _randn(100, 4)
    assert frechet_distance(a.float().numpy(), (a + 1).float()) == pytest.approx(4.0, rel=1e-4)


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        (torch.zeros(1, 4), torch.zeros(5, 4), "at least 2 samples"),
        (torch.zeros(5, 4), torch.zeros(5, 3), "must match"),
        (torch.zeros(5), torch.zeros(5), r"\(N, D\)"),
        (torch.full((5, 2), float("nan")), torch.zeros(5, 2), "NaN"),
        (torch.zeros(0, 2), torch.zeros(5, 2), "empty"),
        ("abc", torch.zeros(5, 2), "feats_a"),
    ],
)
def test_fd_bad_input_raises(a: object, b: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        frechet_distance(a, b)


# --------------------------------------------------------------------------- nearest-neighbour ratio


def test_nn_ratio_is_about_one_for_fresh_real_data() -> None:
    train, held, fresh = _randn(600, 16, seed=3), _randn(300, 16, seed=4), _randn(300, 16, seed=5)
    assert nearest_neighbour_ratio(fresh, train, held) == pytest.approx(1.0, abs=0.05)


def test_nn_ratio_is_small_for_copies_of_the_training_set() -> None:
    train, held = _randn(600, 1, 4, 4, seed=6), _randn(300, 1, 4, 4, seed=7)
    assert nearest_neighbour_ratio(train[:300], train, held) == 0.0
    near_copies = train[:300] + 0.01 * _randn(300, 1, 4, 4, seed=8)
    assert nearest_neighbour_ratio(near_copies, train, held) < 0.05


def test_nn_ratio_bad_input_raises() -> None:
    train = _randn(10, 4)
    with pytest.raises(ValueError, match="must match"):
        nearest_neighbour_ratio(_randn(5, 3), train, train)
    with pytest.raises(ValueError, match="held-out item is also in train"):
        nearest_neighbour_ratio(train, train, train[:3])


# --------------------------------------------------------------------------- PSNR


def test_psnr_known_value() -> None:
    x = torch.zeros(2, 1, 8, 8, dtype=torch.float64)
    assert psnr(x, x + 0.1, data_range=1.0) == pytest.approx(20.0, rel=1e-9)  # MSE 0.01
    assert psnr(x, x + 0.1, data_range=2.0) == pytest.approx(20 + 20 * math.log10(2), rel=1e-9)
    per_image = psnr(x, torch.cat([x[:1] + 0.1, x[1:] + 0.01]), data_range=1.0, reduction="none")
    assert per_image.tolist() == pytest.approx([20.0, 40.0])
    assert psnr(x, x, data_range=1.0) == math.inf


def test_psnr_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="must match"):
        psnr(torch.zeros(1, 8, 8), torch.zeros(1, 8, 7), 1.0)
    with pytest.raises(ValueError, match="data_range"):
        psnr(torch.zeros(8, 8), torch.zeros(8, 8), 0)
    with pytest.raises(ValueError, match="reduction"):
        psnr(torch.zeros(8, 8), torch.ones(8, 8), 1.0, reduction="sum")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- SSIM


@pytest.mark.parametrize("shape", [(8, 8), (3, 16, 16), (4, 1, 28, 28), (2, 3, 32, 32)])
def test_ssim_of_an_image_with_itself_is_one(shape: tuple[int, ...]) -> None:
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    assert ssim(x, x, data_range=1.0) == pytest.approx(1.0, abs=1e-12)


def test_ssim_decreases_with_noise() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 32, 32, generator=g)
    noise = torch.randn(x.shape, generator=g)
    scores = [ssim(x, x + s * noise, data_range=1.0) for s in (0.01, 0.05, 0.2, 0.5)]
    assert all(a > b for a, b in itertools.pairwise(scores)), scores
    assert scores[0] > 0.99 and scores[-1] < 0.5


def test_ssim_of_constant_images_is_the_luminance_term() -> None:
    # constant images: variances and covariance vanish, so SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 0.2, 0.7, 0.01**2
    x, y = torch.full((1, 1, 12, 12), a), torch.full((1, 1, 12, 12), b)
    assert ssim(x, y, data_range=1.0) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-6)


def test_ssim_is_per_image_and_symmetric() -> None:
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(3, 1, 8, 8, generator=g), torch.rand(3, 1, 8, 8, generator=g)
    per = ssim(x, y, data_range=1.0, reduction="none")
    assert per.shape == (3,)
    assert ssim(y, x, data_range=1.0) == pytest.approx(float(per.mean()), rel=1e-12)
    assert ssim(x[1], y[1], data_range=1.0) == pytest.approx(float(per[1]), rel=1e-12)


def test_ssim_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="win_size"):
        ssim(torch.zeros(8, 8), torch.zeros(8, 8), 1.0, win_size=4)
    with pytest.raises(ValueError, match="expected \\(H, W\\)"):
        ssim(torch.zeros(8), torch.zeros(8), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        ssim(torch.full((8, 8), float("inf")), torch.zeros(8, 8), 1.0)


@pytest.mark.parametrize(
    ("shape", "data_range"),
    [((11, 11), 2.0), ((32, 32), 2.0), ((3, 40, 33), 2.0), ((1, 28, 28), 1.0), ((3, 64, 64), 255.0)],
)
def test_ssim_matches_scikit_image(shape: tuple[int, ...], data_range: float) -> None:
    """Issue #18 point 12: the same numbers as skimage.metrics.structural_similarity with the paper's
    settings (Gaussian window, sigma 1.5, population covariances), per image and channel-averaged."""
    skimage_metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(sum(shape))
    lo = -1.0 if data_range == 2.0 else 0.0
    x = rng.uniform(lo, lo + data_range, size=shape)
    y = np.clip(x + rng.normal(0, 0.15 * data_range, size=shape), lo, lo + data_range)
    if data_range == 255.0:
        x, y = x.round(), y.round()  # uint8-like values
    settings = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False, "data_range": data_range}
    channels = {"channel_axis": 0} if len(shape) == 3 else {}
    expected = skimage_metrics.structural_similarity(x, y, **settings, **channels)
    assert ssim(x, y, data_range=data_range) == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_ssim_of_a_batch_is_the_mean_of_scikit_image_per_image() -> None:
    skimage_metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, size=(4, 3, 24, 24))
    y = np.clip(x + rng.normal(0, 0.3, size=x.shape), -1, 1)
    settings = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False, "data_range": 2.0}
    expected = [skimage_metrics.structural_similarity(a, b, channel_axis=0, **settings) for a, b in zip(x, y)]
    per_image = ssim(torch.from_numpy(x), torch.from_numpy(y), data_range=2.0, reduction="none")
    assert per_image.tolist() == pytest.approx(expected, rel=1e-10)
