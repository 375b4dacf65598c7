"""The classical baselines shared by the demo and the quality benchmarks."""

from __future__ import annotations

import torch

from diffcore.baselines import add_defects, knn_fill, wiener, wiener_fit


def test_wiener_is_the_posterior_mean_of_a_gaussian_prior() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    cov_true = a @ a.T / 6 + 0.1 * torch.eye(6, dtype=torch.float64)
    mean_true = torch.linspace(-0.5, 0.5, 6, dtype=torch.float64)
    train = mean_true + torch.randn(20000, 6, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov_true).T
    mean, cov = wiener_fit(train.reshape(-1, 1, 2, 3).float())
    assert torch.allclose(mean, mean_true, atol=0.03) and torch.allclose(cov, cov_true, atol=0.05)
    y = torch.randn(4, 1, 2, 3, generator=g)
    sigma = 0.7
    expected = (
        mean_true
        + (y.flatten(1).double() - mean_true)
        @ torch.linalg.solve(cov_true + sigma**2 * torch.eye(6, dtype=torch.float64), cov_true).T
    )
    assert torch.allclose(wiener(y, mean, cov, sigma).flatten(1).double(), expected, atol=0.03)
    assert torch.allclose(wiener(y, mean, cov, 1e-6), y, atol=1e-4)  # no noise: the input itself


def test_knn_fill_averages_the_nearest_keys() -> None:
    train = torch.arange(5, dtype=torch.float32).reshape(5, 1, 1, 1).expand(5, 1, 2, 2).clone()
    keys = train[:, :, :1]  # the top row is the key
    query = torch.full((1, 1, 1, 2), 3.2)
    assert torch.equal(knn_fill(train, keys, query, k=1), train[3:4])
    assert torch.allclose(knn_fill(train, keys, query, k=2), torch.full((1, 1, 2, 2), 3.5))


def test_add_defects_marks_half_the_images_with_one_3x3_patch() -> None:
    x = torch.zeros(10, 1, 8, 8)
    out, bad, pix = add_defects(x, seed=3)
    assert int(bad.sum()) == 5
    assert pix[bad].flatten(1).sum(1).tolist() == [9] * 5 and not pix[~bad].any()
    assert torch.equal(out[~bad], x[~bad])
    changed = (out != x).any(dim=1)
    assert not (changed & ~pix).any()  # nothing outside a patch changes
    again = add_defects(x, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(again, (out, bad, pix)))


def test_bad_arguments_are_named() -> None:
    import pytest

    train = torch.zeros(4, 1, 2, 2)
    with pytest.raises(ValueError, match="k=5 must be between 1 and the 4"):
        knn_fill(train, train, train[:1], k=5)
    with pytest.raises(ValueError, match="3 training keys for 4"):
        knn_fill(train, train[:3], train[:1])
    mean, cov = wiener_fit(train)
    with pytest.raises(ValueError, match="sigma=-1"):
        wiener(train, mean, cov, -1.0)
    with pytest.raises(ValueError, match="do not match a prior over 4"):
        wiener(torch.zeros(1, 1, 3, 3), mean, cov, 0.1)
    with pytest.raises(ValueError, match="H, W >= 3"):
        add_defects(torch.zeros(2, 1, 2, 8), seed=0)
