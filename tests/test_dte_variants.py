"""DTE-NP and DTE-C (Livernoche et al., ICLR 2024): diffcore.tasks.anomaly.dte_variants and the
DiffusionDetector methods built on them (issue #19)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from diffcore.detector import DiffusionDetector
from diffcore.tasks.anomaly.dte_variants import DTECategorical, DTENonParametric, time_grid

TINY = {"n_steps": 40, "hidden": 8, "layers": 1, "repeats": 1, "levels": 4, "batch_size": 16}


def _brute_posterior(train: np.ndarray, y: float, sigmas: np.ndarray) -> np.ndarray:
    """p(t_k | y) ∝ (1/N) sum_i N(y; x_i, sigma_k^2), uniform prior: the paper's posterior, by hand."""
    dens = np.array([np.mean(np.exp(-((y - train) ** 2) / (2 * s**2)) / (np.sqrt(2 * np.pi) * s)) for s in sigmas])
    return dens / dens.sum()


def test_time_grid_is_increasing_and_capped() -> None:
    times, sigmas = time_grid(20)
    assert times.shape == sigmas.shape == (20,)
    assert bool((times.diff() > 0).all()) and bool((sigmas.diff() > 0).all())
    assert float(times[0]) > 0 and float(times[-1]) <= 1.0 and float(sigmas[-1]) <= 50.0


def test_np_matches_brute_force_posterior_on_1d_gaussian() -> None:
    train = np.random.default_rng(0).standard_normal(200)
    est = DTENonParametric(k=200, bins=30).fit(train[:, None])
    sig = est.sigmas.numpy()
    for y in (0.0, 1.5, 4.0):
        post = _brute_posterior(train, y, sig)
        ours = torch.softmax(est.log_posterior(np.array([[y]])), dim=1)[0].numpy()
        np.testing.assert_allclose(ours, post, rtol=1e-8, atol=1e-12)
        expected_mean = float((post * est.times.numpy()).sum())
        assert float(est.score(np.array([[y]]))[0]) == pytest.approx(expected_mean, rel=1e-8)


def test_np_k_nearest_uses_only_the_nearest_rows() -> None:
    rng = np.random.default_rng(1)
    train = rng.standard_normal(100)
    y = 0.7
    near = train[np.argsort(np.abs(train - y))[:5]]
    est = DTENonParametric(k=5, bins=25).fit(train[:, None])
    post = _brute_posterior(near, y, est.sigmas.numpy())
    np.testing.assert_allclose(torch.softmax(est.log_posterior(np.array([[y]])), 1)[0].numpy(), post, rtol=1e-8)


def test_np_scores_rise_with_distance_and_mode_too() -> None:
    train = np.random.default_rng(2).standard_normal((300, 3))
    probes = np.array([[d, 0.0, 0.0] for d in (0.0, 2.0, 4.0, 8.0, 16.0)])
    for statistic in ("mean", "mode"):
        scores = DTENonParametric(statistic=statistic).fit(train).score(probes).numpy()
        assert np.all(np.diff(scores) > 0), (statistic, scores)


def test_np_leave_one_out_scores_training_rows_like_new_rows() -> None:
    rng = np.random.default_rng(3)
    train, fresh = rng.standard_normal((200, 4)), rng.standard_normal((200, 4))
    est = DTENonParametric().fit(train)
    own, loo, new = est.score(train), est.score(train, leave_one_out=True), est.score(fresh)
    assert float(own.mean()) < 0.5 * float(loo.mean())  # a row is its own nearest neighbour
    assert abs(float(loo.mean()) - float(new.mean())) < 0.2 * float(new.mean())


def test_np_exact_leaves_out_only_a_rows_own_copy() -> None:
    """``leave_one_out="exact"``: training rows score as left out, other rows as usual."""
    rng = np.random.default_rng(4)
    train, fresh = rng.standard_normal((100, 3)), rng.standard_normal((20, 3))
    est = DTENonParametric().fit(train)
    assert torch.equal(est.score(train, leave_one_out="exact"), est.score(train, leave_one_out=True))
    assert torch.equal(est.score(fresh, leave_one_out="exact"), est.score(fresh))
    with pytest.raises(ValueError, match="leave_one_out"):
        est.score(fresh, leave_one_out="yes")


def test_categorical_expected_time_rises_with_noise_level() -> None:
    rng = np.random.default_rng(4)
    train = rng.standard_normal((400, 2)) * 0.3
    est = DTECategorical(bins=10, hidden=16, layers=2, steps=200, batch_size=64, seed=0).fit(train)
    clean = rng.standard_normal((300, 2)) * 0.3
    means = [float(est.score(clean + s * rng.standard_normal(clean.shape)).mean()) for s in (0.0, 0.5, 2.0, 8.0)]
    assert all(b > a for a, b in zip(means, means[1:])), means
    probs = torch.exp(est.log_posterior(clean[:3]))
    assert torch.allclose(probs.sum(dim=1), torch.ones(3, dtype=torch.float64))


def test_categorical_is_seeded() -> None:
    train = np.random.default_rng(5).standard_normal((100, 3))
    a = DTECategorical(bins=10, hidden=16, steps=30, seed=7).fit(train).score(train[:5])
    b = DTECategorical(bins=10, hidden=16, steps=30, seed=7).fit(train).score(train[:5])
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("make", "word"),
    [
        (lambda: DTENonParametric(k=0), "k="),
        (lambda: DTENonParametric(statistic="median"), "statistic"),
        (lambda: DTENonParametric(bins=1), "bins"),
        (lambda: DTECategorical(steps=0), "steps"),
        (lambda: DTECategorical(lr=0.0), "lr"),
    ],
)
def test_bad_parameters_name_the_value(make, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        make()


def test_wrong_columns_raise() -> None:
    est = DTENonParametric().fit(np.zeros((10, 3)) + np.arange(10)[:, None])
    with pytest.raises(ValueError, match="columns"):
        est.score(np.zeros((2, 4)))


def test_detector_methods_separate_a_shifted_cluster() -> None:
    """DiffusionDetector(method="dte_np" / "dte_c") and the recon + DTE-NP ensemble rank rows far
    from the training cloud above fresh normal rows; the dte_np threshold scores the training rows
    leave-one-out (so a normal training row is not flagged for being its own neighbour)."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(6)
    train, test = rng.standard_normal((120, 4)), rng.standard_normal((40, 4))
    outliers = rng.standard_normal((40, 4)) + 4.0
    rows, truth = np.r_[test, outliers], np.r_[np.zeros(40), np.ones(40)]
    det = DiffusionDetector("dte_np", **TINY, random_state=0).fit(train)
    assert (det.predict(test) == 1).mean() > 0.8
    for method in ("dte_np", "recon_dte_np"):
        assert roc_auc_score(truth, det.anomaly_scores(rows, method)) > 0.9, method
    # DTE-C trains its classifier for the detector's step budget: 40 steps leave it near uniform
    det_c = DiffusionDetector("dte_c", **{**TINY, "n_steps": 300}, random_state=0).fit(train)
    assert roc_auc_score(truth, -det_c.score_samples(rows)) > 0.9


def test_ensemble_reference_side_is_computed_once_per_pipeline_and_weights(monkeypatch) -> None:
    """diffcore detect's recon + DTE-NP scores a batch against the reference rows' statistics;
    they are computed once per (pipeline, reference, options, weights), not per batch, and the
    cached answer equals a fresh one; an in-place weight change computes them anew."""
    from diffcore.tasks.anomaly import dte_variants, scores

    fitted = DiffusionDetector("recon", **TINY, random_state=0).fit(np.random.default_rng(0).standard_normal((60, 3)))
    pipe, ref = fitted.pipeline_, fitted._train_rows[:40]
    x = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    opts = {"depth": [0.2, 0.4], "repeats": 2, "error": "abs", "seed": 0, "progress": False}
    calls: list[int] = []
    real = scores.reconstruction_scores

    def counting(p, rows, **o):
        calls.append(len(rows))
        return real(p, rows, **o)

    monkeypatch.setattr(scores, "reconstruction_scores", counting)
    first = dte_variants.recon_dte_np_detection(pipe, x, reference=ref, **opts).scores
    again = dte_variants.recon_dte_np_detection(pipe, x[:3], reference=ref.clone(), **opts).scores
    assert calls == [40, 7, 3]  # the reference rows were scored once
    torch.testing.assert_close(again, first[:3], rtol=0, atol=1e-12)
    dte_variants._SIDES.clear()
    fresh = dte_variants.recon_dte_np_detection(pipe, x, reference=ref, **opts).scores
    torch.testing.assert_close(fresh, first, rtol=0, atol=0)
    with torch.no_grad():
        next(pipe.model.parameters()).mul_(1.5)
    changed = dte_variants.recon_dte_np_detection(pipe, x, reference=ref, **opts).scores
    assert calls[-2:] == [40, 7] and not torch.equal(changed, first)


def test_ensemble_and_direct_cpu_step_refuse_bad_input() -> None:
    """The ensemble's reference must be rows (N >= 2, D); the direct CPU step entry checks shapes
    like the op, naming the mismatch."""
    from diffcore import ops
    from diffcore.tasks.anomaly.dte_variants import recon_dte_np_detection

    with pytest.raises(ValueError, match=r"reference has shape \(5,\)"):
        recon_dte_np_detection(lambda x, t: x, torch.randn(4, 3), reference=torch.randn(5))
    step, _ = ops.step_kernels("cpu")
    coeffs = torch.zeros(1, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"model_out has shape \[2, 7\] but x has shape \[2, 8\]"):
        step(torch.randn(2, 8), torch.randn(2, 7), coeffs, torch.empty(0), None, [], -1, 0)
