"""Column scaling of table rows into model space, fitted on training rows and stored with a run.

:class:`TableScaler` ``kind="robust"`` (the default everywhere: ``diffcore train --dataset
tabular``, :class:`diffcore.DiffusionDetector`): centre each column on its median and divide by
``max(IQR / 1.349, RANGE_SHARE * range')``, where range' is the column's range on the training
rows without its most extreme value at either end (the second smallest to the second largest);
a column that does not vary gets scale 1. A plain z-score inflates near-constant columns (an
image border pixel that is 0 in all but a few rows gets z-scores of 10-50 there, which then
dominate every distance and residual), while the floor keeps mixed scales comparable and neither
the interquartile range nor range' is moved by a single extreme value (the choice is measured in
:mod:`diffcore.tasks.anomaly.tables`). Values beyond ``TAIL`` scaled units are compressed
logarithmically (``sign(z) (TAIL + log1p(|z| - TAIL))``, monotone, so order and extremeness
survive) so a heavy tail, such as one value of 1e6 in a column of ones, cannot dominate the loss
or the scores. ``kind="standard"``: mean and population std, no tail compression (what runs
stored before issue #19, as ``meta["mean"]`` / ``meta["std"]``).

The fitted scaler is stored in a tabular dataset's meta (:meth:`TableScaler.to_meta`) and read
back by everything that maps raw rows in or samples out (:meth:`TableScaler.from_meta`, which
also reads the old mean/std). The tail compression is inverted exactly
(:meth:`TableScaler.inverse_transform`); a model-space value so far out that its inverse would
overflow float64 is clipped to ``MAX_LOG_EXCESS`` scaled log-units first.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["MAX_LOG_EXCESS", "RANGE_SHARE", "SCALINGS", "TAIL", "TableScaler", "check_rows"]

RANGE_SHARE = 0.5  # the scale's floor, a share of the column's range without its extreme values
TAIL = 5.0  # scaled units beyond which values are log-compressed
SCALINGS = ("robust", "standard")
MAX_LOG_EXCESS = 700.0  # expm1(700) ~ 1e304: the largest excess beyond TAIL that inverts to a finite value


class TableScaler:
    """Column scaling of rows (N, D) fitted on training rows; ``kind="robust"`` (the default, see
    the module docstring) or ``"standard"`` (mean and std, constant columns scale 1, no tail
    compression)."""

    def __init__(self, kind: str = "robust") -> None:
        if kind not in SCALINGS:
            raise ValueError(f"scaling={kind!r}: expected one of {SCALINGS}")
        self.kind = kind

    def fit(self, X: np.ndarray) -> TableScaler:
        X = check_rows(X)
        if self.kind == "standard":
            self.center_ = X.mean(axis=0)
            scale = X.std(axis=0)
        else:
            self.center_ = np.median(X, axis=0)
            q1, q3 = np.quantile(X, [0.25, 0.75], axis=0)
            ordered = np.sort(X, axis=0)
            inner = ordered[-2] - ordered[1] if len(X) >= 4 else ordered[-1] - ordered[0]
            scale = np.maximum((q3 - q1) / 1.349, RANGE_SHARE * inner)
        tiny = 1e-12 * np.maximum(1.0, np.abs(self.center_))
        self.flat_ = ~(scale > tiny)  # the columns without spread on the fitted rows: scale 1
        self.scale_ = np.where(self.flat_, 1.0, scale)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Scaled rows (N, D) float64."""
        X = check_rows(X)
        if X.shape[1] != self.center_.shape[0]:
            raise ValueError(f"rows have {X.shape[1]} columns; the scaler was fitted on {self.center_.shape[0]}")
        z = (X - self.center_) / self.scale_
        if self.kind == "robust":
            over = np.abs(z) > TAIL
            z = np.where(over, np.sign(z) * (TAIL + np.log1p(np.maximum(np.abs(z) - TAIL, 0.0))), z)
        return np.ascontiguousarray(z)

    def inverse_transform(self, Z: Any) -> np.ndarray:
        """Raw rows (N, D) float64 from model-space rows: the tail compression undone
        (``|z| = TAIL + expm1(|z'| - TAIL)`` beyond ``TAIL``, the excess clipped to
        :data:`MAX_LOG_EXCESS`), then ``z * scale + center``."""
        Z = np.asarray(Z, dtype=np.float64)
        if Z.ndim != 2 or Z.shape[1] != self.center_.shape[0]:
            raise ValueError(f"rows have shape {Z.shape}; expected (N, {self.center_.shape[0]})")
        if self.kind == "robust":
            excess = np.clip(np.abs(Z) - TAIL, 0.0, MAX_LOG_EXCESS)
            Z = np.where(np.abs(Z) > TAIL, np.sign(Z) * (TAIL + np.expm1(excess)), Z)
        return Z * self.scale_ + self.center_

    def to_meta(self) -> dict[str, Any]:
        """The fitted scaling as JSON: ``{"kind", "center", "scale", "tail"}``."""
        tail = TAIL if self.kind == "robust" else None
        return {"kind": self.kind, "center": self.center_.tolist(), "scale": self.scale_.tolist(), "tail": tail}

    @classmethod
    def of_run(cls, dataset: dict[str, Any]) -> TableScaler | None:
        """The scaler a run's dataset record (``{"kind", "meta", ...}``, :attr:`Pipeline.dataset`)
        stores: None unless it is a tabular dataset whose meta holds a scaling (or old mean/std)."""
        meta = dataset.get("meta") or {}
        if dataset.get("kind") != "tabular" or not ("scaling" in meta or "mean" in meta):
            return None
        return cls.from_meta(meta)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> TableScaler:
        """The scaler a tabular dataset's ``meta`` stores: ``meta["scaling"]`` (:meth:`to_meta`; or
        that dict itself), or the ``mean`` / ``std`` of runs written before it (a standard scaling)."""
        stored = meta.get("scaling", meta if "center" in meta else None)
        if isinstance(stored, dict):
            scaler = cls(str(stored.get("kind")))
            center, scale = stored.get("center"), stored.get("scale")
            tail = stored.get("tail")
            if scaler.kind == "robust" and tail != TAIL:
                raise ValueError(f"the stored scaling has tail {tail!r}; this diffcore compresses tails beyond {TAIL}")
        elif "mean" in meta and "std" in meta:
            scaler, center, scale = cls("standard"), meta["mean"], meta["std"]
        else:
            raise ValueError("the dataset meta holds no scaling (neither 'scaling' nor 'mean'/'std')")
        scaler.center_ = np.asarray(center, dtype=np.float64).reshape(-1)
        scaler.scale_ = np.asarray(scale, dtype=np.float64).reshape(-1)
        if scaler.center_.shape != scaler.scale_.shape:
            raise ValueError(f"the stored scaling has {scaler.center_.shape} centres and {scaler.scale_.shape} scales")
        if not (np.isfinite(scaler.center_).all() and np.isfinite(scaler.scale_).all() and (scaler.scale_ > 0).all()):
            raise ValueError("the stored scaling holds a non-finite centre or a scale that is not a positive number")
        return scaler


def check_rows(X: Any) -> np.ndarray:
    """``X`` as a non-empty finite float64 array (rows, columns); ValueError otherwise."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"rows have shape {X.shape}; expected a non-empty (rows, columns) array")
    if not np.isfinite(X).all():
        raise ValueError(f"rows hold {int((~np.isfinite(X)).sum())} NaN or infinite value(s)")
    return X
