"""Thresholds for anomaly scores: a :class:`Calibration` fitted on held-out normal scores (a
quantile, or a target false-positive rate), JSON round trips, and the check that scores are
labelled only under the settings the threshold was fitted with."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["SCORE_SETTINGS", "Calibration", "check_settings"]


@dataclass(frozen=True)
class Calibration:
    """A score threshold fitted on held-out normal data: ``label = score > threshold``.

    ``fpr`` is the target false-positive rate (``1 - quantile``); the threshold is the order
    statistic with exactly ``floor(fpr * n)`` calibration scores above it, so the false-positive
    rate on the calibration data is at most ``fpr`` (and within 1/n of it without ties)."""

    threshold: float
    fpr: float
    n: int
    method: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        scores: Tensor | Sequence[float],
        *,
        fpr: float | None = None,
        quantile: float | None = None,
        method: str = "",
        settings: dict[str, Any] | None = None,
    ) -> Calibration:
        """Fit on normal ``scores``; give exactly one of ``fpr`` in [0, 1) or ``quantile`` in (0, 1]."""
        if (fpr is None) == (quantile is None):
            raise ValueError(f"give exactly one of fpr= or quantile=, got fpr={fpr!r}, quantile={quantile!r}")
        target = fpr if fpr is not None else 1.0 - float(quantile)  # type: ignore[arg-type]
        name, value = ("fpr", fpr) if fpr is not None else ("quantile", quantile)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= target < 1.0:
            want = "[0, 1)" if name == "fpr" else "(0, 1]"
            raise ValueError(f"{name}={value!r} must be a number in {want}")
        s = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
        if s.numel() == 0:
            raise ValueError("calibration needs at least one normal score, got none")
        if not bool(torch.isfinite(s).all()):
            raise ValueError(f"calibration scores contain {int((~torch.isfinite(s)).sum())} NaN or inf value(s)")
        above = math.floor(target * s.numel() + 1e-9)
        threshold = float(s.sort().values[s.numel() - 1 - above])
        return cls(threshold, float(target), int(s.numel()), method, dict(settings or {}))

    def labels(self, scores: Tensor) -> Tensor:
        """``scores > threshold`` as a bool tensor (True = anomaly)."""
        return torch.as_tensor(scores, dtype=torch.float64) > self.threshold

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(asdict(self), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, source: str | Path) -> Calibration:
        """From a JSON string or a file written by :meth:`to_json`."""
        text = (
            Path(source).read_text()
            if isinstance(source, Path) or not str(source).lstrip().startswith("{")
            else str(source)
        )
        try:
            data = json.loads(text)
            return cls(
                float(data["threshold"]),
                float(data["fpr"]),
                int(data["n"]),
                str(data.get("method", "")),
                dict(data.get("settings") or {}),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"calibration {str(source)[:80]!r} is not a calibration JSON: {exc}") from None


# Settings that change the scale of a score: a threshold fitted under one value is meaningless under another.
SCORE_SETTINGS = (
    "depth",
    "noise",
    "repeats",
    "error",
    "reduce",
    "smooth",
    "sampler",
    "steps",
    "levels",
    "explained",
    "t_max",
)


def check_settings(saved: dict[str, Any], options: dict[str, Any]) -> None:
    """Refuse scoring with settings that differ from those the calibration was fitted under
    (only settings both sides name are compared; the seed and batch size may differ)."""

    def norm(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [norm(v) for v in value] if len(value) != 1 else norm(value[0])
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    for key in SCORE_SETTINGS:
        if key in saved and key in options and norm(saved[key]) != norm(options[key]):
            raise ValueError(
                f"the calibration was fitted with {key}={saved[key]!r}, but these scores use "
                f"{key}={options[key]!r}; refit it (--calibrate with normal data) or use the same {key}"
            )
