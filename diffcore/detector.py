"""``DiffusionDetector``: diffusion anomaly scores for tables behind scikit-learn's novelty-detection API.

``fit(X)`` scales the rows (N, D) (:class:`~diffcore.tasks.anomaly.tables.TableScaler`: median
and a floored robust spread, heavy tails log-compressed) and trains diffcore's tabular MLP on
them (epsilon prediction on the cosine schedule of :mod:`diffcore.evaluation.recipes`), its
width, batch and step cap from the table's size
(:func:`~diffcore.tasks.anomaly.tables.table_budget`), stopping early on 10% held-out rows. The
scores are those of :mod:`diffcore.tasks.anomaly` on the scaled rows:

- ``recon``: the reconstruction score (AnoDDPM; the table recipe: one-shot x0
  predictions from depths 0.1-0.5, ``repeats`` draws each, absolute error averaged over
  features; ``error="squared"`` for the squared error);
- ``mahalanobis``: the same signed residuals, whitened by their mean and covariance on the
  training rows (squared Mahalanobis distance);
- ``dte``: the diffusion-time estimate (the fraction of the schedule from which the model
  explains a row as noised data);
- ``dte_np``: DTE-NP of Livernoche et al. (ICLR 2024), the posterior mean of the diffusion time
  given the noised empirical distribution of the 5 nearest (scaled) training rows: it keeps the
  training rows and searches them at scoring time; the diffusion model is not used;
- ``dte_c``: DTE-C of Livernoche et al., the expected diffusion time under an MLP classifier over
  time bins trained on noised training rows (trained on first use, after the diffusion model).
  Both: :mod:`diffcore.tasks.anomaly.dte_variants`;
- ``recon_dte_np`` (the default): the mean of ``recon`` (with ``error``) and ``dte_np``, each
  standardized by its median and IQR on the training rows (DTE-NP leaving each training row out
  of its own neighbours); like ``dte_np`` it keeps the scaled training rows for scoring.

The defaults (method, error, scaling, budget) were chosen on the development half of
``benchmarks/quality/tabular_suite.py`` and reported on its held-out half (README, issue #19).
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

from diffcore.tasks.anomaly import defaults
from diffcore.tasks.anomaly.dte_variants import DTE_NP_BINS, median_iqr, standardized_mean
from diffcore.tasks.anomaly.fit import budget_for, held_out_split, table_train_options, train_early_stopped
from diffcore.tasks.anomaly.tables import SCALINGS, TableScaler

__all__ = ["AUTO_CONTAMINATION", "DETECTOR_METHODS", "DiffusionDetector"]

DETECTOR_METHODS = ("recon", "mahalanobis", "dte", "dte_np", "dte_c", "recon_dte_np")
# scores anomaly_scores reads from one fit besides DETECTOR_METHODS: the squared recon error
EXTRA_SCORES = ("recon_squared",)
DTE_C_BINS = 50  # DTE-C's time bins (diffcore.tasks.anomaly.dte_variants; DTE-NP's: DTE_NP_BINS there)
# The defaults live in diffcore.tasks.anomaly.defaults (chosen on the suite's development half, issue #19).
DEFAULT_METHOD, DEFAULT_ERROR = defaults.METHOD, defaults.ERROR
_CHUNK = 4096  # rows scored at once (scores do not depend on it)
AUTO_CONTAMINATION = 0.01  # contamination="auto": flag the training rows' most anomalous 1%


class DiffusionDetector(OutlierMixin, BaseEstimator):
    """Novelty detector on rows (N, D) scored by a diffusion model trained on normal rows.

    Parameters: ``method`` (one of :data:`DETECTOR_METHODS`; see the module docstring);
    ``error``: ``recon``'s per-feature error, ``"abs"`` or ``"squared"``;
    ``contamination``: the expected share of outliers in the training rows, which sets
    ``offset_`` so that this share of them is flagged (the threshold of
    :class:`~diffcore.tasks.anomaly.Calibration` at that false-positive rate); ``"auto"``:
    :data:`AUTO_CONTAMINATION` (1%), a target false-positive rate for normal training data;
    ``scaling``: the feature scaling (:class:`~diffcore.tasks.anomaly.tables.TableScaler`,
    ``"robust"`` or ``"standard"``); ``n_steps``, ``batch_size``, ``hidden``, ``layers``: the
    training budget and MLP size, None = from the table's size
    (:func:`~diffcore.tasks.anomaly.tables.table_budget`; ``n_steps`` is then a cap);
    ``early_stopping``: hold out ``validation_fraction`` of the rows (at least 20 rows needed)
    and keep the EMA weights with the lowest reconstruction error on them, stopping after
    ``patience`` evaluations without improvement; ``lr``; ``repeats``: noise draws per depth
    (``recon``, ``mahalanobis``); ``levels``: noise levels of the diffusion-time grid
    (``dte``); ``device``: where to train and score (:func:`diffcore.devices.resolve_device`);
    ``random_state``: seeds the initial weights, the batches and the scoring noise.

    Fitted attributes: ``pipeline_`` (the trained :class:`~diffcore.pipeline.Pipeline`, float64),
    ``scaler_`` (the fitted scaling), ``budget_`` (the size and budget used, ``steps_trained``
    included), ``offset_``, ``n_features_in_``, ``seed_``.
    """

    _parameter_constraints: dict[str, list[Any]] = {
        "method": [StrOptions(set(DETECTOR_METHODS))],
        "error": [StrOptions({"abs", "squared"})],
        "contamination": [StrOptions({"auto"}), Interval(Real, 0, 0.5, closed="right")],
        "scaling": [StrOptions(set(SCALINGS))],
        "n_steps": [Interval(Integral, 1, None, closed="left"), None],
        "batch_size": [Interval(Integral, 1, None, closed="left"), None],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "hidden": [Interval(Integral, 2, None, closed="left"), None],
        "layers": [Interval(Integral, 1, None, closed="left"), None],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 0.5, closed="neither")],
        "repeats": [Interval(Integral, 1, None, closed="left")],
        "levels": [Interval(Integral, 2, None, closed="left")],
        "device": [str],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        method: str = DEFAULT_METHOD,
        *,
        error: str = DEFAULT_ERROR,
        contamination: str | float = "auto",
        scaling: str = defaults.SCALING,
        n_steps: int | None = None,
        batch_size: int | None = None,
        lr: float = 1e-3,
        hidden: int | None = None,
        layers: int | None = None,
        early_stopping: bool = True,
        validation_fraction: float = 0.1,
        repeats: int = defaults.REPEATS,
        levels: int = 25,
        device: str = "cpu",
        random_state: Any = None,
    ) -> None:
        self.method = method
        self.error = error
        self.contamination = contamination
        self.scaling = scaling
        self.n_steps = n_steps
        self.batch_size = batch_size
        self.lr = lr
        self.hidden = hidden
        self.layers = layers
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
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
        self.scaler_ = TableScaler(self.scaling).fit(X)
        rows = torch.from_numpy(self.scaler_.transform(X))
        with torch.random.fork_rng(devices=[]):  # training seeds torch's global RNG: leave the caller's alone
            self.pipeline_ = self._train(rows)
        self._train_rows = rows  # the whitening's reference, when another method asks for mahalanobis
        self._whitening: tuple[Tensor, Tensor] | None = None
        self._variants: dict[str, Any] = {}  # DTE-NP / DTE-C estimators and ensemble statistics, built on use
        if self.method == "mahalanobis":
            self._whitening = self._fit_whitening()
        anomaly = self._anomaly(rows, self.method)
        self.offset_ = -self._threshold(anomaly)
        return self

    def _budget(self, n_rows: int, dim: int) -> dict[str, int]:
        """:func:`table_budget` with the sizes given as parameters in place of the derived ones."""
        given = {"steps": self.n_steps, "batch_size": self.batch_size, "hidden": self.hidden, "layers": self.layers}
        return budget_for(n_rows, dim, given)

    def _train(self, rows: Tensor) -> Any:
        """The EMA model trained on ``rows`` (float32), as a float64 Pipeline for scoring; with
        early stopping, the EMA weights with the lowest held-out reconstruction error
        (:func:`~diffcore.tasks.anomaly.fit.train_early_stopped`)."""
        from diffcore.evaluation.recipes import TABLE_PREDICTION, TABLE_SCHEDULE
        from diffcore.parameterization import make_parameterization
        from diffcore.pipeline import Pipeline
        from diffcore.plugins import get
        from diffcore.training.config import TrainConfig
        from diffcore.training.trainer import Trainer

        dim = rows.shape[1]
        keep, out = held_out_split(len(rows), self.validation_fraction, self.seed_, self.early_stopping)
        train, val = rows[keep], rows[out]
        self.budget_ = budget = self._budget(len(train), dim)
        torch.manual_seed(self.seed_)
        net = get("models", "mlp")(dim=dim, hidden=budget["hidden"], depth=budget["layers"])
        schedule = get("schedules", TABLE_SCHEDULE)()
        param = make_parameterization(TABLE_PREDICTION)
        options = table_train_options(budget, held=len(val) > 0, lr=self.lr, seed=self.seed_)
        config = TrainConfig(**options, checkpoint_every=10**9, log_every=10**9)
        data = SimpleNamespace(train=train.float(), train_labels=None, num_classes=0)
        run = {"dataset": {"kind": "tabular", "shape": [dim], "num_classes": 0}}
        trainer = Trainer(net, schedule, param, data, config, None, run, device=self.device, quiet=True)
        error = None
        if len(val):
            error = lambda pipe: float(  # noqa: E731
                self._residual_mean(pipe, val.to(pipe.device, torch.float32), signed=False, repeats=2).mean()
            )
        done = train_early_stopped(
            trainer, steps=budget["steps"], eval_every=budget["eval_every"], patience=budget["patience"],
            held_out_error=error,
        )  # fmt: skip
        self.budget_["steps_trained"], self.budget_["best_step"] = done["steps_trained"], done["best_step"]
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
        return -self.anomaly_scores(X)

    def anomaly_scores(self, X: Any, method: str | None = None) -> np.ndarray:
        """Anomaly score of each row (N,) float64, higher = more anomalous, by ``method`` (default:
        the detector's own) with the fitted model: any of :data:`DETECTOR_METHODS` and
        :data:`EXTRA_SCORES` can be read from one fit (the benchmark compares them this way)."""
        check_is_fitted(self)
        method = self.method if method is None else method
        if method not in (*DETECTOR_METHODS, *EXTRA_SCORES):
            raise ValueError(f"method={method!r}: expected one of {(*DETECTOR_METHODS, *EXTRA_SCORES)}")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return self._anomaly(torch.from_numpy(self.scaler_.transform(X)), method).numpy()

    def decision_function(self, X: Any) -> np.ndarray:
        """``score_samples(X) - offset_``: negative for outliers."""
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any) -> np.ndarray:
        """+1 for inliers, -1 for outliers (``decision_function < 0``)."""
        return np.where(self.decision_function(X) < 0, -1, 1)

    def _chunked(self, rows: Tensor, fn: Any) -> Tensor:
        """``fn`` of the rows, :data:`_CHUNK` at a time on the pipeline's device, float64 on the CPU."""
        device = self.pipeline_.device
        parts = [fn(rows[i : i + _CHUNK].to(device, torch.float64)).cpu() for i in range(0, rows.shape[0], _CHUNK)]
        return torch.cat(parts)

    def _fit_whitening(self) -> tuple[Tensor, Tensor]:
        """Mean and precision of the signed residuals of the (scaled) training rows, never of the
        rows being scored: anomalies among those would widen the covariance and hide themselves."""
        resid = self._chunked(self._train_rows, lambda x: self._residual_mean(self.pipeline_, x, signed=True))
        return _whitening(resid)

    def _anomaly(self, rows: Tensor, method: str) -> Tensor:
        """Anomaly scores (N,) float64 of scaled rows by ``method``, higher = more anomalous."""
        pipe = self.pipeline_
        if method in ("recon", "recon_squared"):
            squared = method == "recon_squared" or self.error == "squared" and method == "recon"
            err = "squared" if squared else "abs"
            return self._chunked(rows, lambda x: self._residual_mean(pipe, x, signed=False, error=err).mean(dim=1))
        if method == "mahalanobis":
            location, precision = self._whitening if self._whitening is not None else self._fit_whitening()
            d = self._chunked(rows, lambda x: self._residual_mean(pipe, x, signed=True)) - location
            return (d @ precision * d).sum(dim=1)
        if method in ("dte_np", "dte_c", "recon_dte_np"):
            return self._variant(rows, method)
        return self._chunked(rows, self._dte)

    def _variant(self, rows: Tensor, method: str) -> Tensor:
        """DTE-NP, DTE-C or the recon + DTE-NP ensemble of scaled rows (N,) float64; DTE-NP leaves a
        row out of its own neighbours where it is a training row (distance 0), so the training rows
        score as they did for the threshold in ``fit`` (sklearn's ``fit_predict``)."""
        from diffcore.tasks.anomaly.dte_variants import DTECategorical, DTENonParametric

        if method == "dte_np":
            if "dte_np" not in self._variants:
                nonparametric = DTENonParametric(bins=DTE_NP_BINS, schedule=self.pipeline_.schedule)
                self._variants["dte_np"] = nonparametric.fit(self._train_rows)
            return self._variants["dte_np"].score(rows, leave_one_out="exact")
        if method == "dte_c":
            if "dte_c" not in self._variants:
                b = self.budget_
                categorical = DTECategorical(
                    DTE_C_BINS,
                    hidden=b["hidden"],
                    layers=b["layers"],
                    steps=b["steps"],
                    batch_size=b["batch_size"],
                    schedule=self.pipeline_.schedule,
                    seed=self.seed_,
                    device=self.device,
                )
                self._variants["dte_c"] = categorical.fit(self._train_rows)
            return self._variants["dte_c"].score(rows)
        if "ensemble" not in self._variants:  # each part on the training rows, and its median and IQR
            train_parts = [self._anomaly(self._train_rows, "recon"), self._variant(self._train_rows, "dte_np")]
            self._variants["ensemble"] = (train_parts, [median_iqr(p) for p in train_parts])
        train_parts, stats = self._variants["ensemble"]
        # the training rows' parts are deterministic: fit's threshold reuses them instead of scoring twice
        parts = train_parts if rows is self._train_rows else [self._anomaly(rows, p) for p in ("recon", "dte_np")]
        return standardized_mean(parts, stats)

    def _residual_mean(
        self, pipe: Any, x: Tensor, *, signed: bool, error: str = "abs", repeats: int | None = None
    ) -> Tensor:
        """The table recipe's one-shot reconstruction residual of each row, ``x0hat - x`` (signed),
        its absolute value or its square, averaged over depths and ``repeats`` draws; draw r at
        depth k uses reconstruction_scores' noise of a one-row input (seed, k, r), for every row."""
        from diffcore.tasks.anomaly import depth_timesteps, recipe_for
        from diffcore.tasks.anomaly.noise import keyed_noise

        repeats = self.repeats if repeats is None else repeats
        recipe = recipe_for(x.shape[1:])
        starts = depth_timesteps(pipe.schedule, list(defaults.DEPTHS))
        total = torch.zeros_like(x)
        for k, t_start in enumerate(starts):
            for r in range(repeats):
                eps = keyed_noise(x[:1], "gaussian", self.seed_ * 1_000_003 + k * 1009 + r).expand_as(x)
                out = pipe.sample_from(
                    x,
                    t_start,
                    sampler=recipe["sampler"],
                    steps=recipe["steps"],
                    noise=eps,
                    seed=self.seed_ + 7919 * (k * repeats + r),
                )
                diff = out - x
                total += diff if signed else diff.abs() if error == "abs" else diff**2
        return total / (len(starts) * repeats)

    def _dte(self, x: Tensor) -> Tensor:
        """Diffusion-time estimate of each row (dte_scores' grid and crossing, the level's noise
        shared by all rows): the schedule fraction, interpolated in log sigma, at which the scaled
        one-shot residual ``||x - x0hat||^2 / (D sigma^2)`` first falls below 1/2 (1 if never)."""
        from diffcore.tasks.anomaly.noise import keyed_noise
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
            z = keyed_noise(x[:1], "gaussian", self.seed_ * 1_000_003 + k).expand_as(x)
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
