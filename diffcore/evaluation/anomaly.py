"""Evaluating anomaly detection: AUROC, the semi-supervised split, and the classical detectors
(scikit-learn) and reconstruction maps every diffcore score is compared with.

Scores are "higher = more anomalous" throughout. Detectors: IsolationForest, LocalOutlierFactor
(``novelty=True``, 20 neighbours), OneClassSVM (RBF, ``gamma="scale"``, ``nu=0.1``) and kNN (mean
distance to the 5 nearest training samples), each fitted on normal training rows only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffcore.baselines import knn_fill

__all__ = [
    "DETECTORS",
    "KNNDistance",
    "PyODDetector",
    "auprc",
    "auroc",
    "baseline_estimators",
    "classical_maps",
    "classical_scores",
    "nearest_train",
    "normal_split",
]

DETECTORS = ("isolation_forest", "lof", "ocsvm", "knn")


def auroc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve of ``scores`` (any shape) against 0/1 ``labels`` of the same size."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(labels).reshape(-1), np.asarray(scores, dtype=np.float64).reshape(-1)))


def auprc(labels: Any, scores: Any) -> float:
    """Area under the precision-recall curve (average precision) of ``scores`` for 0/1 ``labels``."""
    from sklearn.metrics import average_precision_score

    y = np.asarray(labels).reshape(-1)
    return float(average_precision_score(y, np.asarray(scores, dtype=np.float64).reshape(-1)))


class KNNDistance:
    """kNN novelty detector with sklearn's interface: ``score_samples`` is minus the mean distance
    to the ``k`` nearest training rows (higher = more normal)."""

    def __init__(self, k: int = 5) -> None:
        self.k = k

    def fit(self, X: Any, y: Any = None) -> KNNDistance:
        from sklearn.neighbors import NearestNeighbors

        self.nn_ = NearestNeighbors(n_neighbors=min(self.k, len(X))).fit(np.asarray(X, dtype=np.float64))
        return self

    def score_samples(self, X: Any) -> np.ndarray:
        return -np.asarray(self.nn_.kneighbors(np.asarray(X, dtype=np.float64))[0].mean(axis=1))


class PyODDetector:
    """A PyOD detector behind sklearn's novelty interface: ``score_samples = -decision_function``
    (PyOD's scores are higher = more anomalous). ``name``: ``ecod``, ``copod`` or ``deep_svdd``."""

    def __init__(self, name: str, seed: int = 0, epochs: int = 20) -> None:
        if name not in ("ecod", "copod", "deep_svdd"):
            raise ValueError(f"name={name!r}: expected 'ecod', 'copod' or 'deep_svdd'")
        self.name, self.seed, self.epochs = name, seed, epochs

    def fit(self, X: Any, y: Any = None) -> PyODDetector:
        X = np.asarray(X, dtype=np.float64)
        if self.name == "ecod":
            from pyod.models.ecod import ECOD

            self.model_: Any = ECOD()
        elif self.name == "copod":
            from pyod.models.copod import COPOD

            self.model_ = COPOD()
        else:
            from pyod.models.deep_svdd import DeepSVDD

            self.model_ = DeepSVDD(n_features=X.shape[1], epochs=self.epochs, random_state=self.seed, verbose=0)
        self.model_.fit(X)
        return self

    def score_samples(self, X: Any) -> np.ndarray:
        return -np.asarray(self.model_.decision_function(np.asarray(X, dtype=np.float64)), dtype=np.float64)


def baseline_estimators(seed: int = 0, *, pyod: bool = True, trees: int = 200) -> dict[str, Any]:
    """Unfitted novelty detectors, each with ``fit(X)`` and ``score_samples(X)`` (higher = more
    normal): IsolationForest, LOF (``novelty=True``, 20 neighbours), OneClassSVM (RBF,
    ``gamma="scale"``, ``nu=0.1``), kNN (mean distance to 5) and, with ``pyod`` (if it imports),
    PyOD's ECOD, COPOD and Deep SVDD."""
    out: dict[str, Any] = {m: KNNDistance() if m == "knn" else _detector(m, seed, trees) for m in DETECTORS}
    if pyod:
        try:
            import pyod as _pyod  # noqa: F401
        except ImportError:
            return out
        out.update({m: PyODDetector(m, seed) for m in ("ecod", "copod", "deep_svdd")})
    return out


def nearest_train(train: np.ndarray, test: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(distances, indices), each (len(test), k): the ``k`` training rows nearest to each test row (L2)."""
    from sklearn.neighbors import NearestNeighbors

    return NearestNeighbors(n_neighbors=k).fit(train).kneighbors(test)


def _detector(method: str, seed: int, trees: int) -> Any:
    from sklearn.ensemble import IsolationForest
    from sklearn.neighbors import LocalOutlierFactor
    from sklearn.svm import OneClassSVM

    if method == "isolation_forest":
        return IsolationForest(n_estimators=trees, random_state=seed)
    if method == "lof":
        return LocalOutlierFactor(n_neighbors=20, novelty=True)
    return OneClassSVM(gamma="scale", nu=0.1)


def classical_scores(
    train: np.ndarray, test: np.ndarray, seed: int = 0, *, trees: int = 100, methods: Sequence[str] = DETECTORS
) -> dict[str, np.ndarray]:
    """Anomaly scores of the test rows (N, D) by the classical ``methods`` fitted on ``train``
    (M, D) (``trees``: IsolationForest's; ``seed``: its random state), in the order of ``methods``."""
    unknown = [m for m in methods if m not in DETECTORS]
    if unknown:
        raise ValueError(f"methods {unknown}: expected names from {list(DETECTORS)}")
    return {
        m: nearest_train(train, test)[0].mean(axis=1)
        if m == "knn"
        else -_detector(m, seed, trees).fit(train).score_samples(test)
        for m in methods
    }


def classical_maps(train: Tensor, x: Tensor) -> dict[str, Tensor]:
    """Per-pixel |x - reconstruction| (N, H, W), channel mean, of the kNN (mean of the 5 nearest
    training images, :func:`diffcore.baselines.knn_fill`) and PCA (90% variance) baselines."""
    from sklearn.decomposition import PCA

    knn = knn_fill(train, train, x)
    pca = PCA(n_components=0.9, svd_solver="full").fit(train.flatten(1).numpy())
    rec = torch.from_numpy(pca.inverse_transform(pca.transform(x.flatten(1).numpy()))).reshape(x.shape).float()
    return {"knn_reconstruction": (knn - x).abs().mean(dim=1), "pca_reconstruction": (rec - x).abs().mean(dim=1)}


def normal_split(
    values: np.ndarray, anomalous: np.ndarray, train_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The semi-supervised split of rows ``values`` (N, D) with boolean ``anomalous`` (N,):
    ``train_fraction`` of the normal rows (shuffled by ``seed``) for training; the test set is the
    other normal rows, then every anomaly. Returns (train rows, test rows, test labels: 1 = anomaly)."""
    anomalous = np.asarray(anomalous, dtype=bool)
    if anomalous.shape != (len(values),):
        raise ValueError(f"anomalous has shape {anomalous.shape}; expected ({len(values)},), one flag per row")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction={train_fraction!r} must be in (0, 1)")
    normal = np.random.default_rng(seed).permutation(np.flatnonzero(~anomalous))
    cut = int(train_fraction * len(normal))
    test = np.concatenate([normal[cut:], np.flatnonzero(anomalous)])
    return values[normal[:cut]], values[test], anomalous[test].astype(int)
