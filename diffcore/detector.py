"""``DiffusionDetector``: diffusion anomaly scores for tables behind scikit-learn's novelty-detection API.

``fit(X)`` standardizes the rows (N, D) and trains diffcore's tabular MLP on them (the recipe of
:mod:`diffcore.evaluation.recipes`: epsilon prediction on the cosine schedule, a small default
budget); the scores are those of :mod:`diffcore.tasks.anomaly` on the standardized rows:

- ``recon``: the reconstruction score (AnoDDPM; the table recipe: one-shot x0 predictions from
  depths 0.1-0.5, ``repeats`` draws each, absolute error averaged over features);
- ``mahalanobis``: the same signed residuals, whitened by their mean and covariance on the
  training rows (squared Mahalanobis distance);
- ``dte``: the diffusion-time estimate (the fraction of the schedule from which the model
  explains a row as noised data).

Each draw's noise is shared by all rows, so a row's score depends on the row alone, not on the
batch it comes in or its position there (sklearn's subset and order invariance); scoring runs in
float64. For one row the scores equal :func:`~diffcore.tasks.anomaly.reconstruction_scores` and
:func:`~diffcore.tasks.anomaly.dte_scores` with the same seed (tests/test_detector.py).
``score_samples`` follows sklearn (higher = more normal: minus the anomaly score),
``decision_function = score_samples - offset_`` and ``predict`` gives +1 (inlier) / -1 (outlier).
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, OutlierMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import Tensor

__all__ = ["AUTO_CONTAMINATION", "DETECTOR_METHODS", "DiffusionDetector"]

DETECTOR_METHODS = ("recon", "mahalanobis", "dte")
_CHUNK = 4096  # rows scored at once (scores do not depend on it)
AUTO_CONTAMINATION = 0.01  # contamination="auto": flag the training rows' most anomalous 1%


class DiffusionDetector(OutlierMixin, BaseEstimator):
    """Novelty detector on rows (N, D) scored by a diffusion model trained on normal rows.

    Parameters: ``method`` (``"recon"``, ``"mahalanobis"`` or ``"dte"``; see the module
    docstring); ``contamination``: the expected share of outliers in the training rows, which
    sets ``offset_`` so that this share of them is flagged (the threshold of
    :class:`~diffcore.tasks.anomaly.Calibration` at that false-positive rate); ``"auto"``:
    :data:`AUTO_CONTAMINATION` (1%), a target false-positive rate for normal training data;
    ``n_steps``, ``batch_size``, ``lr``, ``hidden``, ``layers``: the MLP's training budget and
    size; ``repeats``: noise draws per depth (``recon``, ``mahalanobis``); ``levels``: noise
    levels of the diffusion-time grid (``dte``); ``device``: where to train and score
    (:func:`diffcore.devices.resolve_device`); ``random_state``: seeds the initial weights, the
    batches and the scoring noise (an int makes ``fit`` and the scores reproducible).

    Fitted attributes: ``pipeline_`` (the trained :class:`~diffcore.pipeline.Pipeline`, float64),
    ``mean_`` / ``scale_`` (the standardization), ``offset_``, ``n_features_in_``, ``seed_``.
    """

    _parameter_constraints: dict[str, list[Any]] = {
        "method": [StrOptions(set(DETECTOR_METHODS))],
        "contamination": [StrOptions({"auto"}), Interval(Real, 0, 0.5, closed="right")],
        "n_steps": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "hidden": [Interval(Integral, 2, None, closed="left")],
        "layers": [Interval(Integral, 1, None, closed="left")],
        "repeats": [Interval(Integral, 1, None, closed="left")],
        "levels": [Interval(Integral, 2, None, closed="left")],
        "device": [str],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        method: str = "recon",
        *,
        contamination: str | float = "auto",
        n_steps: int = 1000,
        batch_size: int = 64,
        lr: float = 1e-3,
        hidden: int = 128,
        layers: int = 3,
        repeats: int = 16,
        levels: int = 25,
        device: str = "cpu",
        random_state: Any = None,
    ) -> None:
        self.method = method
        self.contamination = contamination
        self.n_steps = n_steps
        self.batch_size = batch_size
        self.lr = lr
        self.hidden = hidden
        self.layers = layers
        self.repeats = repeats
        self.levels = levels
        self.device = device
        self.random_state = random_state

    # ------------------------------------------------------------------ fit
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any = None) -> DiffusionDetector:
        """Train on the rows of ``X`` (normal data; ``y`` is ignored) and set ``offset_``."""
        X = validate_data(self, X, dtype=np.float64, ensure_min_samples=2)
        self.seed_ = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        self.mean_ = X.mean(axis=0)
        scale = X.std(axis=0)
        self.scale_ = np.where(scale > 1e-12 * np.maximum(1.0, np.abs(self.mean_)), scale, 1.0)
        rows = torch.from_numpy(self._standardize(X))
        with torch.random.fork_rng(devices=[]):  # training seeds torch's global RNG: leave the caller's alone
            self.pipeline_ = self._train(rows)
        if self.method == "mahalanobis":
            resid = self._chunked(rows, lambda x: self._residual_mean(x, signed=True))
            self.location_, self.precision_ = _whitening(resid)
        anomaly = self._anomaly(rows)
        self.offset_ = -self._threshold(anomaly)
        return self

    def _train(self, rows: Tensor) -> Any:
        """The EMA model trained on ``rows`` (float32), as a float64 Pipeline for scoring."""
        from diffcore.evaluation.recipes import TABLE_PREDICTION, TABLE_SCHEDULE, TABLE_TRAIN
        from diffcore.parameterization import make_parameterization
        from diffcore.pipeline import Pipeline
        from diffcore.plugins import get
        from diffcore.training.config import TrainConfig
        from diffcore.training.trainer import Trainer

        dim = rows.shape[1]
        torch.manual_seed(self.seed_)
        net = get("models", "mlp")(dim=dim, hidden=self.hidden, depth=self.layers)
        schedule = get("schedules", TABLE_SCHEDULE)()
        param = make_parameterization(TABLE_PREDICTION)
        recipe = {k: v for k, v in TABLE_TRAIN.items() if k not in ("steps", "batch_size", "lr", "warmup_steps")}
        config = TrainConfig(
            steps=self.n_steps,
            batch_size=self.batch_size,
            lr=self.lr,
            warmup_steps=min(TABLE_TRAIN["warmup_steps"], self.n_steps // 10),
            checkpoint_every=self.n_steps,
            log_every=self.n_steps,
            seed=self.seed_,
            **recipe,
        )
        data = SimpleNamespace(train=rows.float(), train_labels=None, num_classes=0)
        run = {"dataset": {"kind": "tabular", "shape": [dim], "num_classes": 0}}
        trainer = Trainer(net, schedule, param, data, config, None, run, device=self.device, quiet=True)
        trainer.train()
        model = trainer.ema.double().eval()
        return Pipeline(model, schedule, param, run=run, sampler="ddim", steps=1)

    def _threshold(self, anomaly: Tensor) -> float:
        """The anomaly score above which a row is an outlier (see ``contamination``)."""
        from diffcore.tasks.anomaly import Calibration

        share = AUTO_CONTAMINATION if self.contamination == "auto" else float(self.contamination)
        return Calibration.fit(anomaly, fpr=share, method=self.method).threshold

    # ------------------------------------------------------------------ scores
    def score_samples(self, X: Any) -> np.ndarray:
        """Normality of each row (N,): minus its anomaly score (higher = more normal)."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return -self._anomaly(torch.from_numpy(self._standardize(X))).numpy()

    def decision_function(self, X: Any) -> np.ndarray:
        """``score_samples(X) - offset_``: negative for outliers."""
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any) -> np.ndarray:
        """+1 for inliers, -1 for outliers (``decision_function < 0``)."""
        return np.where(self.decision_function(X) < 0, -1, 1)

    def _standardize(self, X: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((X - self.mean_) / self.scale_)

    def _chunked(self, rows: Tensor, fn: Any) -> Tensor:
        """``fn`` of the rows, :data:`_CHUNK` at a time on the pipeline's device, float64 on the CPU."""
        device = self.pipeline_.device
        parts = [fn(rows[i : i + _CHUNK].to(device, torch.float64)).cpu() for i in range(0, rows.shape[0], _CHUNK)]
        return torch.cat(parts)

    def _anomaly(self, rows: Tensor) -> Tensor:
        """Anomaly scores (N,) float64 of standardized rows, higher = more anomalous."""
        if self.method == "recon":
            return self._chunked(rows, lambda x: self._residual_mean(x, signed=False).mean(dim=1))
        if self.method == "mahalanobis":
            d = self._chunked(rows, lambda x: self._residual_mean(x, signed=True)) - self.location_
            return (d @ self.precision_ * d).sum(dim=1)
        return self._chunked(rows, self._dte)

    def _residual_mean(self, x: Tensor, *, signed: bool) -> Tensor:
        """The table recipe's one-shot reconstruction residual of each row, ``x0hat - x`` (signed)
        or its absolute value, averaged over depths and ``repeats`` draws; draw r at depth k uses
        reconstruction_scores' noise of a one-row input (seed, k, r), for every row."""
        from diffcore.tasks.anomaly import depth_timesteps, recipe_for

        pipe = self.pipeline_
        recipe = recipe_for(x.shape[1:])
        starts = depth_timesteps(pipe.schedule, recipe["depth"])
        total = torch.zeros_like(x)
        for k, t_start in enumerate(starts):
            for r in range(self.repeats):
                g = torch.Generator().manual_seed(self.seed_ * 1_000_003 + k * 1009 + r)
                eps = torch.randn((1, x.shape[1]), generator=g, dtype=x.dtype).to(x.device).expand_as(x)
                out = pipe.sample_from(
                    x,
                    t_start,
                    sampler=recipe["sampler"],
                    steps=recipe["steps"],
                    noise=eps,
                    seed=self.seed_ + 7919 * (k * self.repeats + r),
                )
                diff = out - x
                total += diff if signed else diff.abs()
        return total / (len(starts) * self.repeats)

    def _dte(self, x: Tensor) -> Tensor:
        """Diffusion-time estimate of each row (dte_scores' grid and crossing, the level's noise
        shared by all rows): the schedule fraction, interpolated in log sigma, at which the scaled
        one-shot residual ``||x - x0hat||^2 / (D sigma^2)`` first falls below 1/2 (1 if never)."""
        from diffcore.tasks.levels import fraction_of_sigma, fraction_to_time, sigma_at_time, sigma_range
        from diffcore.timesteps import Level

        schedule, explained = self.pipeline_.schedule, 0.5
        top = sigma_at_time(schedule, float(fraction_to_time(schedule, torch.tensor([1.0], dtype=torch.float64))[0]))
        sigmas = torch.logspace(
            math.log10(sigma_range(schedule)[0]), math.log10(min(top, 50.0)), self.levels, dtype=torch.float64
        )
        times, (alphas, stds) = schedule.sigma_to_t(sigmas), schedule.state(sigmas)
        rho = torch.empty(self.levels, x.shape[0], dtype=torch.float64)
        for k in range(self.levels):
            g = torch.Generator().manual_seed(self.seed_ * 1_000_003 + k)
            z = torch.randn((1, x.shape[1]), generator=g, dtype=x.dtype).to(x.device).expand_as(x)
            level = Level(float(times[k]), float(alphas[k]), float(stds[k]))
            x0 = self.pipeline_.predict_x0(level.alpha * x + level.std * z, level)
            rho[k] = ((x - x0) ** 2).mean(dim=1).cpu() / float(sigmas[k]) ** 2
        below = rho < explained
        crossed = below.any(dim=0)
        first = below.to(torch.int64).argmax(dim=0)  # the first level below, where there is one
        log_s = sigmas.log()
        prev = (first - 1).clamp(min=0)
        rho_hi, rho_lo = rho.gather(0, prev[None])[0], rho.gather(0, first[None])[0]
        w = ((rho_hi - explained) / (rho_hi - rho_lo)).clamp(0, 1)
        log_sigma = torch.where(first == 0, log_s[first], log_s[prev] + w * (log_s[first] - log_s[prev]))
        scores = fraction_of_sigma(schedule, log_sigma.exp())
        return torch.where(crossed, scores, torch.ones_like(scores))


def _whitening(resid: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (D,) and precision (D, D) of the reference residuals, their covariance ridged by 1e-3 x
    its mean variance as :func:`diffcore.tasks.anomaly.reconstruction_scores` does."""
    location = resid.mean(dim=0)
    centred = resid - location
    cov = centred.T @ centred / max(1, resid.shape[0] - 1)
    spread = float(cov.diagonal().mean())
    ridge = 1e-3 * spread if spread > 0 else 1e-12
    eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
    return location, torch.linalg.inv(cov + ridge * eye)
