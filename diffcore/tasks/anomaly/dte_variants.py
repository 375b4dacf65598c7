"""The non-parametric and categorical diffusion-time estimators of Livernoche et al., "On Diffusion
Modeling for Anomaly Detection" (ICLR 2024; DTE-NP and DTE-C), for table rows (N, D).

Both read a row ``y`` as a noised normal row in the variance-exploding form of the forward process,
``y = x0 + sigma_t eps`` (the paper's Sec. 3: a VP sample divided by sqrt(alpha_bar_t) is exactly
this, with ``sigma_t^2 = (1 - alpha_bar_t) / alpha_bar_t``), and score it by how much diffusion
time is needed to explain it: a row far from the normal data needs a large ``t``.

- **DTE-NP** (the paper's non-parametric estimator): with the normal training rows as the data
  distribution, ``p(x0) = (1/N) sum_i delta(x0 - x_i)``, the likelihood of the time is a Gaussian
  kernel mixture, ``p(y | t) = (1/N) sum_i N(y; x_i, sigma_t^2 I)``, and with a uniform prior over
  the T time bins the posterior is ``p(t | y) ∝ sum_i exp(-||y - x_i||^2 / (2 sigma_t^2)) /
  sigma_t^D``. The sum is dominated by the nearest rows, so, as in the paper, it runs over the
  ``k`` (5) nearest training rows only. For one neighbour this is the paper's inverse-gamma
  posterior over ``sigma_t^2`` (shape D/2 - 1, scale ||y - x_1||^2 / 2, mode ``r^2 / D``), which
  :mod:`diffcore.tasks.anomaly.dte` approximates with the trained denoiser in place of the nearest
  row. Score: the posterior mean of t (or its mode, ``statistic="mode"``).
- **DTE-C** (the paper's categorical estimator): an MLP classifier maps a noised row to a
  categorical distribution over the T time bins; it is trained on noised normal rows
  ``x_i + sigma_t eps`` with t drawn uniformly from the bins and the cross-entropy loss, so it
  learns ``p(t | y)`` under the normal data without a nearest-neighbour search at scoring time.
  Score: the expected time under the predicted distribution.

Times are fractions of the diffusion schedule (by default diffcore's table schedule), the bins
``t_k = k t_top / T`` for k = 1..T, where ``t_top`` is the fraction at which sigma reaches
:data:`SIGMA_CAP` (beyond it the rows are pure noise at the data's scale). The paper uses the
DDPM timesteps 1..T of a linear schedule; the time axis here is the schedule fraction, so scores
of different schedules are comparable.
"""

from __future__ import annotations

import hashlib
import math
import weakref
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "DTE_NP_BINS",
    "SIGMA_CAP",
    "DTECategorical",
    "DTENonParametric",
    "median_iqr",
    "standardized_mean",
    "recon_dte_np_detection",
    "time_grid",
]

SIGMA_CAP = 50.0  # VE noise 50x the data scale: no bin beyond it
STATISTICS = ("mean", "mode")
DTE_NP_BINS = 100  # DTE-NP's time bins in the detector and the recon + DTE-NP ensemble


def time_grid(bins: int, schedule: Any = None, t_max: float = 1.0) -> tuple[Tensor, Tensor]:
    """(times, sigmas), each (bins,) float64: the schedule fractions ``t_k = k t_top / bins``
    (k = 1..bins, ``t_top = min(t_max, fraction at SIGMA_CAP)``) and their VE sigmas.
    ``schedule``: a diffcore schedule (default: the table recipe's)."""
    from diffcore.tasks.levels import fraction_of_sigma, fraction_to_time, sigma_at_time

    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins={bins!r} must be an integer >= 2")
    if not 0 < t_max <= 1:
        raise ValueError(f"t_max={t_max!r} must be a fraction in (0, 1]")
    if schedule is None:
        from diffcore.evaluation.recipes import TABLE_SCHEDULE
        from diffcore.plugins import get

        schedule = get("schedules", TABLE_SCHEDULE)()
    top = min(float(t_max), float(fraction_of_sigma(schedule, torch.tensor(SIGMA_CAP, dtype=torch.float64))))
    times = torch.arange(1, bins + 1, dtype=torch.float64) * (top / bins)
    model_t = fraction_to_time(schedule, times)
    sigmas = torch.tensor([min(sigma_at_time(schedule, float(t)), SIGMA_CAP) for t in model_t], dtype=torch.float64)
    return times, sigmas


def _rows(x: Any, name: str, dim: int | None = None) -> np.ndarray:
    arr = np.asarray(x.detach().cpu().numpy() if isinstance(x, Tensor) else x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"{name} has shape {arr.shape}; expected non-empty rows (N, D)")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} has {arr.shape[1]} columns; the estimator was fitted on {dim}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return arr


def _summarise(log_post: Tensor, times: Tensor, statistic: str) -> Tensor:
    """Posterior mean or mode of t (N,) from unnormalised log posteriors (N, T)."""
    if statistic == "mode":
        return times[log_post.argmax(dim=1)]
    return (torch.softmax(log_post, dim=1) * times).sum(dim=1)


class DTENonParametric:
    """DTE-NP (module docstring): ``fit(train)`` stores the normal rows; ``score(x)`` is the
    posterior mean (``statistic="mean"``) or mode of the diffusion time of each row given the
    noised empirical distribution of the ``k`` nearest training rows, over ``bins`` time bins of
    ``schedule``."""

    def __init__(
        self, k: int = 5, bins: int = 100, schedule: Any = None, statistic: str = "mean", t_max: float = 1.0
    ) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k={k!r} must be an integer >= 1")
        if statistic not in STATISTICS:
            raise ValueError(f"statistic={statistic!r}: expected one of {STATISTICS}")
        self.k, self.statistic = k, statistic
        self.times, self.sigmas = time_grid(bins, schedule, t_max)

    def fit(self, train: Any) -> DTENonParametric:
        from sklearn.neighbors import NearestNeighbors

        self.train_ = _rows(train, "train")
        self.nn_ = NearestNeighbors().fit(self.train_)
        return self

    def log_posterior(self, x: Any, *, leave_one_out: bool | str = False) -> Tensor:
        """Unnormalised log p(t_k | y) (N, bins) of each row: log-sum-exp over its k nearest
        training rows of ``-r_i^2 / (2 sigma_k^2) - D log sigma_k`` (uniform prior; constants
        dropped). ``leave_one_out``: True: ``x`` are the training rows themselves, each left out of
        its own neighbours (its zero distance would put it at the smallest time); ``"exact"``: a
        row's nearest training row is left out where it is the row itself (distance 0), so training
        rows scored again score as they did left out (what a threshold fitted on them assumes)."""
        if leave_one_out not in (False, True, "exact"):
            raise ValueError(f"leave_one_out={leave_one_out!r}: expected False, True or 'exact'")
        rows = _rows(x, "x", self.train_.shape[1])
        skip = 1 if leave_one_out else 0
        k = min(self.k, len(self.train_) - skip)
        if k < 1:
            raise ValueError("leave_one_out needs at least 2 training rows")
        dist = self.nn_.kneighbors(rows, n_neighbors=k + skip)[0]
        exact = leave_one_out == "exact"
        dist = np.where(dist[:, :1] == 0, dist[:, 1:], dist[:, :k]) if exact else dist[:, skip:]
        r2 = torch.from_numpy(dist**2)  # (N, k)
        s2 = self.sigmas**2
        log_kernel = -r2[:, :, None] / (2 * s2) - rows.shape[1] * self.sigmas.log()  # (N, k, T)
        return torch.logsumexp(log_kernel, dim=1)

    def score(self, x: Any, *, leave_one_out: bool | str = False) -> Tensor:
        """The diffusion-time score (N,) float64, a schedule fraction: higher = more anomalous."""
        return _summarise(self.log_posterior(x, leave_one_out=leave_one_out), self.times, self.statistic)


class DTECategorical:
    """DTE-C (module docstring): an MLP (``layers`` hidden layers of ``hidden`` units, SiLU)
    classifying a noised row into one of ``bins`` time bins, trained for ``steps`` Adam steps
    (batches of ``batch_size`` rows, learning rate ``lr``) with the cross-entropy loss on
    ``x_i + sigma_t eps``, t uniform over the bins; ``score(x)`` is the expected time."""

    def __init__(
        self,
        bins: int = 50,
        *,
        hidden: int = 128,
        layers: int = 3,
        steps: int = 1000,
        batch_size: int = 128,
        lr: float = 1e-3,
        schedule: Any = None,
        seed: int = 0,
        device: str = "cpu",
        t_max: float = 1.0,
    ) -> None:
        for name, value in (("hidden", hidden), ("layers", layers), ("steps", steps), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be an integer >= 1")
        if not lr > 0:
            raise ValueError(f"lr={lr!r} must be > 0")
        self.hidden, self.layers, self.steps, self.batch_size, self.lr = hidden, layers, steps, batch_size, lr
        self.seed, self.device = int(seed), device
        self.times, self.sigmas = time_grid(bins, schedule, t_max)

    def _net(self, dim: int) -> nn.Module:
        widths = [dim] + [self.hidden] * self.layers
        blocks: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            blocks += [nn.Linear(a, b), nn.SiLU()]
        return nn.Sequential(*blocks, nn.Linear(widths[-1], len(self.times)))

    def fit(self, train: Any) -> DTECategorical:
        rows = torch.from_numpy(_rows(train, "train")).float().to(self.device)
        n, dim = rows.shape
        gen = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = self._net(dim).to(self.device)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        sigmas = self.sigmas.float().to(self.device)
        net.train()
        for _ in range(self.steps):
            pick = torch.randint(0, n, (min(self.batch_size, n),), generator=gen)
            label = torch.randint(0, len(self.times), (len(pick),), generator=gen)
            eps = torch.randn(len(pick), dim, generator=gen).to(self.device)
            noised = rows[pick.to(self.device)] + sigmas[label.to(self.device), None] * eps
            loss = nn.functional.cross_entropy(net(noised), label.to(self.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        self.net_ = net.double().eval()
        self.dim_ = dim
        return self

    @torch.no_grad()
    def log_posterior(self, x: Any) -> Tensor:
        """The classifier's log p(t_k | y) (N, bins), float64 on the CPU."""
        rows = torch.from_numpy(_rows(x, "x", self.dim_)).to(self.device)
        return torch.log_softmax(self.net_(rows), dim=1).cpu()

    def score(self, x: Any) -> Tensor:
        """The expected diffusion time (N,) float64, a schedule fraction: higher = more anomalous."""
        return _summarise(self.log_posterior(x), self.times, "mean")


def inverse_gamma_mode(r2: float, dim: int) -> float:
    """The paper's closed form for one neighbour: the mode of the inverse-gamma posterior over
    sigma^2 (shape D/2 - 1, scale r^2 / 2) is ``r^2 / D`` (a check for :class:`DTENonParametric`)."""
    if dim < 1 or not math.isfinite(r2) or r2 < 0:
        raise ValueError(f"r2={r2!r}, dim={dim!r}: expected r2 >= 0 and dim >= 1")
    return r2 / dim


def median_iqr(scores: Tensor) -> tuple[float, float]:
    """Median and interquartile range of ``scores`` (the range floored so that it divides)."""
    q1, med, q3 = torch.quantile(scores.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
    return med, max(q3 - q1, 1e-12 * max(1.0, abs(med)))


def recon_dte_np_detection(pipe: Any, x: Tensor, *, reference: Tensor, **options: Any) -> Any:
    """The recon + DTE-NP ensemble (``DiffusionDetector(method="recon_dte_np")``, the table
    default) of scaled rows ``x`` (N, D) for ``diffcore detect``: the reconstruction score
    (:func:`~diffcore.tasks.anomaly.reconstruction_scores` with ``options``) and DTE-NP among the
    normal ``reference`` rows (the run's scaled training rows), each standardized by the median and
    IQR of its scores on ``reference`` (DTE-NP leaving each reference row out of its own
    neighbours, and an input row out where it is a reference row), then averaged. Returns the
    reconstruction's Detection with these scores.

    The reference side (its reconstruction scores, the DTE-NP index, the medians and IQRs) is
    computed once per pipeline, reference rows and options and kept with the pipeline (a Ray
    worker or a loop over input files scores each batch against it without rescoring up to 10,000
    reference rows per batch); a change of the model's weights in place starts it anew."""
    from diffcore.tasks.anomaly.scores import reconstruction_scores

    ref = reference.to(torch.float64).cpu()
    if ref.dim() != 2 or ref.shape[0] < 2:
        raise ValueError(f"reference has shape {tuple(ref.shape)}: the ensemble needs >= 2 normal rows (N, D)")
    side = _reference_side(pipe, reference, ref, options)
    result = reconstruction_scores(pipe, x, **options)
    np_x = side.nonparametric.score(x, leave_one_out="exact")
    result.scores = standardized_mean([result.scores.cpu(), np_x], [side.recon, side.dte_np])
    result.method = "recon_dte_np"
    return result


def standardized_mean(parts: list[Tensor], stats: list[tuple[float, float]]) -> Tensor:
    """The recon + DTE-NP ensemble's score: each part's scores minus its reference median, over its
    reference IQR (:func:`median_iqr`), averaged over the parts; float64."""
    total = torch.zeros(parts[0].shape[0], dtype=torch.float64)
    for scores, (med, iqr) in zip(parts, stats, strict=True):
        total += (scores.double() - med) / iqr
    return total / len(parts)


class _ReferenceSide:
    """The ensemble's reference statistics: the DTE-NP index of the reference rows and the
    (median, IQR) of each part's scores on them."""

    def __init__(self, nonparametric: DTENonParametric, recon: tuple[float, float], dte_np: tuple[float, float]):
        self.nonparametric, self.recon, self.dte_np = nonparametric, recon, dte_np


# pipeline -> {(options, reference digest, weights version): _ReferenceSide}; entries die with the pipeline
_SIDES: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], _ReferenceSide]] = weakref.WeakKeyDictionary()
_SIDES_PER_PIPELINE = 4


def _reference_side(pipe: Any, reference: Tensor, ref: Tensor, options: dict[str, Any]) -> _ReferenceSide:
    """``reference`` as given (scored by the model in its dtype) and ``ref``, its float64 CPU copy."""
    from diffcore.tasks.anomaly.scores import reconstruction_scores

    digest = hashlib.sha1(ref.numpy().tobytes()).hexdigest()
    key = (_options_key(options), digest, tuple(ref.shape), str(reference.dtype), _weights(pipe))
    try:
        sides = _SIDES.setdefault(pipe, {})
    except TypeError:  # not weak-referenceable: compute every time
        sides = {}
    if key not in sides:
        # the reference rows keep their own keys (a Ray batch's sample_index would change them per batch)
        recon_ref = reconstruction_scores(
            pipe, reference, **{**options, "progress": False, "sample_index": 0}
        ).scores.cpu()
        nonparametric = DTENonParametric(bins=DTE_NP_BINS, schedule=getattr(pipe, "schedule", None)).fit(ref)
        np_ref = nonparametric.score(ref, leave_one_out=True)
        while len(sides) >= _SIDES_PER_PIPELINE:
            sides.pop(next(iter(sides)))
        sides[key] = _ReferenceSide(nonparametric, median_iqr(recon_ref), median_iqr(np_ref))
    return sides[key]


def _options_key(options: dict[str, Any]) -> str:
    """The scoring options that change the reference's scores, as a stable string."""
    kept = {k: v for k, v in options.items() if k not in ("progress", "sample_index")}
    return repr(sorted((k, repr(v)) for k, v in kept.items()))


def _weights(pipe: Any) -> tuple[int, ...]:
    """The in-place version counters of the model's parameters (an optimizer step bumps them)."""
    model = getattr(pipe, "model", pipe)
    params = model.parameters() if isinstance(model, nn.Module) else ()
    return (id(model), *(p._version for p in params))
