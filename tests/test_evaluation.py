"""diffcore.evaluation: the judges and baselines the demo and the quality benchmarks share."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffcore.analytic import GaussianMixture
from diffcore.evaluation import (
    DETECTORS,
    balanced_labels,
    class_gaussian_samples,
    classical_maps,
    classical_scores,
    estimated_order,
    nearest_train,
    normal_split,
    psnr_db,
    sampler_errors,
)
from diffcore.schedules import EDMSchedule


def _images(n: int = 120, classes: int = 3, seed: int = 0) -> SimpleNamespace:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    train = (labels[:, None, None, None] / classes + 0.3 * torch.randn(n, 1, 4, 4, generator=g)).clamp(-1, 1)
    return SimpleNamespace(train=train, train_labels=labels, num_classes=classes)


def test_class_gaussian_samples_match_one_draw_per_label_in_class_order() -> None:
    """Class-major labels draw the same noise as one (D,) draw per label (the demo's former loop)."""
    data = _images()
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    out = class_gaussian_samples(data, labels, seed=3)
    assert out.shape == (6, 1, 4, 4) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1
    g = torch.Generator().manual_seed(3)
    flat = data.train.flatten(1).double()
    rows = []
    for k in labels.tolist():
        xs = flat[data.train_labels == k]
        chol = torch.linalg.cholesky(torch.cov(xs.T) + 1e-4 * torch.eye(16, dtype=torch.float64))
        rows.append(xs.mean(0) + chol @ torch.randn(16, generator=g, dtype=torch.float64))
    expected = torch.stack(rows).float().clamp(-1, 1).reshape(out.shape)
    assert torch.allclose(out, expected, atol=1e-6)


def test_class_gaussian_samples_refuse_unknown_classes() -> None:
    with pytest.raises(ValueError, match="classes in 0..2"):
        class_gaussian_samples(_images(), torch.tensor([0, 3]))


def test_balanced_labels_cycle() -> None:
    assert balanced_labels(3, 7).tolist() == [0, 1, 2, 0, 1, 2, 0]
    with pytest.raises(ValueError, match="num_classes=0"):
        balanced_labels(0, 4)


def test_normal_split_trains_on_normals_only() -> None:
    values = np.arange(20.0)[:, None]
    anomalous = np.zeros(20, dtype=bool)
    anomalous[[3, 7, 11]] = True
    train, test, labels = normal_split(values, anomalous, 0.5, seed=0)
    assert len(train) == 8 and len(test) == 12 and labels.tolist() == [0] * 9 + [1] * 3
    assert not set(train[:, 0]) & {3.0, 7.0, 11.0}
    assert test[-3:, 0].tolist() == [3.0, 7.0, 11.0]
    assert set(train[:, 0]).isdisjoint(test[:, 0])
    again = normal_split(values, anomalous, 0.5, seed=0)
    assert np.array_equal(again[0], train)
    with pytest.raises(ValueError, match="one flag per row"):
        normal_split(values, anomalous[:5], 0.5, seed=0)


def test_classical_scores_flag_the_outlier() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(200, 3))
    test = np.vstack([rng.normal(size=(20, 3)), [[8.0, 8.0, 8.0]]])
    scores = classical_scores(train, test, seed=0)
    assert list(scores) == list(DETECTORS)
    for name, s in scores.items():
        assert s.shape == (21,) and int(np.argmax(s)) == 20, name
    assert np.allclose(scores["knn"], nearest_train(train, test)[0].mean(axis=1))
    with pytest.raises(ValueError, match="'svm'"):
        classical_scores(train, test, methods=("svm",))


def test_classical_maps_see_the_defect() -> None:
    data = _images(n=60)
    x = data.train[:4].clone()
    x[:, :, 1, 1] = 1.0 - x[:, :, 1, 1]
    maps = classical_maps(data.train[4:], x)
    assert set(maps) == {"knn_reconstruction", "pca_reconstruction"}
    for m in maps.values():
        assert m.shape == (4, 4, 4) and bool((m >= 0).all())


def test_sampler_errors_give_the_published_order() -> None:
    gm = GaussianMixture.ring(k=4, radius=2.0, std=0.5, dim=2)
    x_T = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = gm.ode_solution(x_T * 80.0, 80.0, 0.1, steps=400)
    steps = [24, 48]
    errors, calls = sampler_errors(gm, EDMSchedule(), "euler", x_T, ref, steps, sigma_min=0.1, sigma_max=80.0)
    assert calls == steps and errors[1] < errors[0]
    assert abs(estimated_order(steps, errors) - 1.0) < 0.3


def test_psnr_db_clamps_to_the_model_range() -> None:
    truth = torch.zeros(2, 1, 4, 4)
    assert psnr_db(truth + 5.0, truth) == pytest.approx(psnr_db(truth + 1.0, truth))
    assert psnr_db(truth + 1.0, truth) == pytest.approx(20 * np.log10(2.0))
