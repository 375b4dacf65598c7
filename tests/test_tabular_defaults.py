"""Issue #19: the tabular detector's preprocessing survives degenerate columns, and its model size
and training budget follow the table (diffcore.tasks.anomaly.tables, diffcore.DiffusionDetector)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")

from diffcore.detector import DiffusionDetector
from diffcore.tasks.anomaly.tables import MAX_STEPS, MIN_STEPS, PASSES, TAIL, TableScaler, table_budget

TINY = {"n_steps": 40, "hidden": 8, "layers": 1, "repeats": 1, "levels": 4, "batch_size": 16}


def _awkward(n: int = 200, seed: int = 0) -> np.ndarray:
    """Columns: constant, near-constant (0 but for 2 rows), one 1e6 outlier, mixed scales."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, 5))
    x[:, 0] = 3.0
    x[:, 1] = 0.0
    x[:2, 1] = [4.0, 7.0]
    x[:, 2] = rng.standard_normal(n)
    x[0, 2] = 1e6
    x[:, 3] = rng.standard_normal(n) * 1e4 + 5e4
    x[:, 4] = rng.standard_normal(n) * 1e-3
    return x


def test_constant_column_maps_to_zero_with_unit_scale() -> None:
    x = _awkward()
    z = TableScaler().fit(x).transform(x)
    assert np.isfinite(z).all()
    assert np.all(z[:, 0] == 0.0)
    assert TableScaler().fit(x).scale_[0] == 1.0


def test_heavy_tail_is_compressed_not_dominating() -> None:
    """One 1e6 value in a standard-normal column: finite, still the most extreme, but within
    TAIL + log(1e6) scaled units, and the other rows of that column keep unit-order values."""
    x = _awkward()
    z = TableScaler().fit(x).transform(x)
    assert z[0, 2] == z[:, 2].max() and z[0, 2] < TAIL + np.log(1e6)
    assert np.abs(z[1:, 2]).max() < 5.0
    assert np.abs(z).max() == z[0, 2]  # the outlier is the most extreme value but bounded


def test_near_constant_column_does_not_dominate() -> None:
    """Standardizing gives the two non-zero rows of a near-constant column z-scores near 10-15;
    the floor on the scale (half the 1-99% range) keeps them within the other columns' spread."""
    x = _awkward()
    standard = TableScaler("standard").fit(x).transform(x)
    robust = TableScaler().fit(x).transform(x)
    assert np.abs(standard[:2, 1]).max() > 9.0
    assert np.abs(robust[:2, 1]).max() < 4.0


def test_mixed_scales_become_comparable() -> None:
    x = _awkward()
    z = TableScaler().fit(x).transform(x)
    spreads = z[2:, 2:].std(axis=0)
    assert spreads.max() / spreads.min() < 2.0, spreads


def test_scaler_refuses_bad_rows() -> None:
    with pytest.raises(ValueError, match="NaN"):
        TableScaler().fit(np.array([[1.0, np.nan], [2.0, 3.0]]))
    with pytest.raises(ValueError, match="columns"):
        TableScaler().fit(np.ones((4, 3))).transform(np.ones((2, 2)))
    with pytest.raises(ValueError, match="scaling"):
        TableScaler("minmax")


def test_detector_scores_awkward_columns_finitely() -> None:
    x = _awkward()
    det = DiffusionDetector(**TINY, random_state=0).fit(x[50:])
    for method in ("recon", "recon_squared", "mahalanobis", "dte"):
        assert np.isfinite(det.anomaly_scores(x[:50], method)).all(), method


@pytest.mark.parametrize(("rows", "features"), [(50, 4), (500, 30), (5000, 64), (100_000, 200)])
def test_budget_follows_the_table(rows: int, features: int) -> None:
    b = table_budget(rows, features)
    assert MIN_STEPS <= b["steps"] <= MAX_STEPS and 64 <= b["batch_size"] <= 512
    # the cap is PASSES passes over the rows where that lies within [MIN_STEPS, MAX_STEPS]
    passes = b["steps"] * b["batch_size"] / rows
    assert passes >= PASSES - 1 or b["steps"] == MAX_STEPS
    assert b["hidden"] == (64 if features <= 16 else 128)
    assert b["eval_every"] <= b["steps"] and b["patience"] >= 1


def test_budget_grows_with_the_data() -> None:
    small, large = table_budget(200, 10), table_budget(2000, 10)
    assert large["batch_size"] > small["batch_size"] and large["steps"] >= small["steps"]
    assert table_budget(200, 64)["hidden"] > table_budget(200, 8)["hidden"]
    with pytest.raises(ValueError, match="n_rows"):
        table_budget(0, 3)


def test_early_stopping_keeps_the_best_held_out_step() -> None:
    x = np.random.default_rng(1).standard_normal((120, 3))
    det = DiffusionDetector(**{**TINY, "n_steps": 60, "batch_size": None}, random_state=0).fit(x)
    budget = det.budget_
    assert budget["steps_trained"] <= 60 and 0 < budget["best_step"] <= budget["steps_trained"]
    assert budget["batch_size"] == table_budget(108, 3)["batch_size"]  # 10% of 120 rows held out
    plain = DiffusionDetector(**TINY, early_stopping=False, random_state=0).fit(x)
    assert plain.budget_["steps_trained"] == 40 == plain.budget_["best_step"]


def test_mahalanobis_readout_is_whitened_by_the_training_rows() -> None:
    """Read from a recon fit, the whitened residual equals that of a mahalanobis fit with the same
    seed and does not depend on the other rows scored with it (it once whitened by those)."""
    rng = np.random.default_rng(2)
    x, far = rng.standard_normal((80, 3)), rng.standard_normal((10, 3)) * 6
    recon = DiffusionDetector(**TINY, random_state=0).fit(x)
    maha = DiffusionDetector("mahalanobis", **TINY, random_state=0).fit(x)
    both = recon.anomaly_scores(np.r_[x[:5], far], "mahalanobis")
    assert np.allclose(both[:5], recon.anomaly_scores(x[:5], "mahalanobis"))
    assert np.allclose(both, -maha.score_samples(np.r_[x[:5], far]))


def test_early_stopping_refuses_a_non_finite_first_held_out_error() -> None:
    """With no good round to fall back on, a NaN held-out error is a clear FloatingPointError (it
    was an opaque load_state_dict({}) failure); after a good round it counts as a stale round."""
    from types import SimpleNamespace

    import torch

    from diffcore.parameterization import make_parameterization
    from diffcore.plugins import get
    from diffcore.tasks.anomaly.fit import train_early_stopped

    def trainer() -> SimpleNamespace:
        t = SimpleNamespace(ema=torch.nn.Linear(3, 3), step=0, config=SimpleNamespace(steps=10))
        t.objective = SimpleNamespace(schedule=get("schedules", "linear")(), param=make_parameterization("epsilon"))
        t.run = {"dataset": {"kind": "tabular", "shape": [3], "num_classes": 0}}
        t.train = lambda: setattr(t, "step", t.config.steps)
        return t

    with pytest.raises(FloatingPointError, match="held-out error nan at step 10"):
        train_early_stopped(trainer(), steps=40, eval_every=10, patience=2, held_out_error=lambda pipe: float("nan"))
    errors = iter([1.0, float("nan"), float("nan")])
    done = train_early_stopped(trainer(), steps=40, eval_every=10, patience=2, held_out_error=lambda pipe: next(errors))
    assert (done["best_step"], done["steps_trained"], done["stopped_early"]) == (10, 30, True)


def test_stored_scaling_must_be_positive_and_finite() -> None:
    from diffcore.data.scaling import TableScaler as Stored

    good = {"mean": [0.0, 1.0], "std": [1.0, 2.0]}
    assert Stored.from_meta(good).scale_.tolist() == [1.0, 2.0]
    for bad in ({"mean": [0.0, 1.0], "std": [1.0, 0.0]}, {"mean": [float("nan"), 1.0], "std": [1.0, 2.0]}):
        with pytest.raises(ValueError, match="positive number"):
            Stored.from_meta(bad)
