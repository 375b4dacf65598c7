"""The in-memory dataset every dataset plugin returns, and the seeded split they all share.

A factory validates its options with :func:`check_common`, orders the raw samples with
:func:`shuffled` (one seeded permutation, cut to ``limit``), and hands them to
:func:`image_dataset` or :func:`tabular_dataset`, which hold out a stratified fraction
(:func:`pick_mask`) and scale the data into model space.
"""

from __future__ import annotations

import copy
import json
import numbers
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from diffcore.data.scaling import TableScaler

Kind = Literal["image", "tabular"]
KINDS: tuple[str, ...] = ("image", "tabular")

__all__ = [
    "DiffusionDataset",
    "Kind",
    "check_common",
    "image_dataset",
    "jsonable",
    "pick_mask",
    "shuffled",
    "tabular_dataset",
]


@dataclass(repr=False)
class DiffusionDataset:
    """A dataset held in memory, split into train and held-out test samples.

    ``train``/``test`` are float32: images ``(N, C, H, W)`` in [-1, 1]; tabular ``(N, D)``
    scaled by the :class:`~diffcore.data.scaling.TableScaler` fitted on the train split and
    stored in ``meta["scaling"]`` (older runs: ``meta["mean"]``/``meta["std"]``). Labels are int64
    ``(N,)`` in ``[0, num_classes)``, or None for unlabeled data (then ``num_classes == 0``).
    ``meta`` is JSON-serializable: what a trained model needs to map samples back to data.
    """

    name: str
    kind: Kind
    train: Tensor
    train_labels: Tensor | None
    test: Tensor
    test_labels: Tensor | None
    num_classes: int = 0
    class_names: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"dataset {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        ndim = 4 if self.kind == "image" else 2
        for split in ("train", "test"):
            data = getattr(self, split)
            if not isinstance(data, Tensor) or data.dtype != torch.float32 or data.dim() != ndim:
                got = f"{data.dtype} {tuple(data.shape)}" if isinstance(data, Tensor) else type(data).__name__
                raise ValueError(f"dataset {self.name!r}: {split} must be a float32 {ndim}-D Tensor, got {got}")
        if self.test.shape[1:] != self.train.shape[1:]:
            raise ValueError(
                f"dataset {self.name!r}: test samples have shape {tuple(self.test.shape[1:])}, "
                f"train samples {tuple(self.train.shape[1:])}"
            )
        if (self.train_labels is None) != (self.test_labels is None):
            raise ValueError(f"dataset {self.name!r}: train_labels and test_labels must both be set or both be None")
        if self.train_labels is None:
            if self.num_classes != 0:
                raise ValueError(f"dataset {self.name!r} has no labels but num_classes={self.num_classes}")
            return
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"dataset {self.name!r}: {len(self.class_names)} class_names for num_classes={self.num_classes}"
            )
        for split in ("train", "test"):
            labels, data = getattr(self, f"{split}_labels"), getattr(self, split)
            if labels.dtype != torch.int64 or labels.shape != (len(data),):
                raise ValueError(
                    f"dataset {self.name!r}: {split}_labels must be int64 of shape ({len(data)},), "
                    f"got {labels.dtype} {tuple(labels.shape)}"
                )
            if len(labels) and not (int(labels.min()) >= 0 and int(labels.max()) < self.num_classes):
                raise ValueError(f"dataset {self.name!r}: {split}_labels fall outside [0, {self.num_classes})")

    @property
    def shape(self) -> tuple[int, ...]:
        """One sample's shape: ``(C, H, W)`` or ``(D,)``."""
        return tuple(self.train.shape[1:])

    def to_model_space(self, raw: Any) -> Tensor:
        """Map raw data (a Tensor or array of one sample or a batch) into model space, float32.

        Images: integer tensors, and float tensors whose max exceeds 1, are read as 0..255;
        other floats as [0, 1]; both map to [-1, 1]. Tabular: the stored scaling's transform.
        """
        x = torch.as_tensor(raw)
        if self.kind == "image":
            self._check_trailing(x, "raw")
            if not x.is_floating_point() or (x.numel() and float(x.max()) > 1.0):
                x = x.to(torch.float32) / 255.0
            return (x.to(torch.float32) * 2.0 - 1.0).clamp_(-1.0, 1.0)
        self._check_trailing(x, "raw")
        rows = x.to(torch.float64).reshape(-1, self.shape[0]).numpy()
        z = torch.from_numpy(TableScaler.from_meta(self.meta).transform(rows)).to(torch.float32)
        return z.reshape(x.shape)

    def from_model_space(self, x: Tensor, *, uint8: bool = True) -> Tensor:
        """Map model-space samples back to data.

        Images: clamped to [-1, 1], then uint8 0..255 (``uint8=True``) or float32 [0, 1].
        Tabular: the stored scaling inverted (:meth:`~diffcore.data.scaling.TableScaler.inverse_transform`)
        in x's float dtype (float32 for other inputs).
        """
        x = torch.as_tensor(x)
        self._check_trailing(x, "x")
        if self.kind == "image":
            unit = (x.to(torch.float32).clamp(-1.0, 1.0) + 1.0) / 2.0
            return (unit * 255.0).round_().to(torch.uint8) if uint8 else unit
        dtype = x.dtype if x.is_floating_point() else torch.float32
        rows = x.detach().to(torch.float64).cpu().reshape(-1, self.shape[0]).numpy()
        raw = TableScaler.from_meta(self.meta).inverse_transform(rows)
        return torch.from_numpy(raw).to(dtype).reshape(x.shape)

    def subset(self, n: int, seed: int = 0) -> DiffusionDataset:
        """A smaller copy for quick runs: at most ``n`` train samples and the same share of test
        samples, drawn by a seeded shuffle, stratified by label. Model space is unchanged."""
        count: object = n  # checked at run time: a bool or a float is refused
        if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 1:
            raise ValueError(f"subset: n must be a positive int, got {n!r}")
        check_common(seed=seed, holdout=0.5, limit=None)
        generator = torch.Generator().manual_seed(int(seed))
        n_train = min(int(n), len(self.train))
        n_test = min(len(self.test), max(1, round(n_train * len(self.test) / max(len(self.train), 1))))
        train, train_labels = _take(self.train, self.train_labels, n_train, generator)
        test, test_labels = _take(self.test, self.test_labels, n_test, generator)
        meta = copy.deepcopy(self.meta)
        meta["subset"] = {"n": int(n), "seed": int(seed)}
        return DiffusionDataset(
            self.name, self.kind, train, train_labels, test, test_labels,
            self.num_classes, list(self.class_names), meta,
        )  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"DiffusionDataset(name={self.name!r}, kind={self.kind!r}, shape={self.shape}, "
            f"train={len(self.train)}, test={len(self.test)}, num_classes={self.num_classes})"
        )

    def _check_trailing(self, x: Tensor, what: str) -> None:
        ndim = len(self.shape)
        if x.dim() not in (ndim, ndim + 1) or tuple(x.shape[-ndim:]) != self.shape:
            raise ValueError(
                f"dataset {self.name!r}: {what} has shape {tuple(x.shape)}; expected {self.shape} "
                f"or a batch (N, {', '.join(map(str, self.shape))})"
            )


def _take(data: Tensor, labels: Tensor | None, count: int, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
    order = torch.randperm(len(data), generator=generator)
    ordered_labels = labels[order] if labels is not None else None
    keep = order[pick_mask(len(data), ordered_labels, count)]
    return data[keep].clone(), (labels[keep].clone() if labels is not None else None)


# --------------------------------------------------------------------------- helpers for factories


def check_common(*, seed: Any, holdout: Any, limit: Any) -> None:
    """Validate the options every factory takes; raise ValueError naming the bad one."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if isinstance(holdout, bool) or not isinstance(holdout, numbers.Real) or not 0.0 < float(holdout) < 1.0:
        raise ValueError(f"holdout must be a fraction strictly between 0 and 1, got {holdout!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 2):
        raise ValueError(f"limit must be None or an int >= 2, got {limit!r}")


def shuffled(n: int, seed: int, limit: int | None = None) -> Tensor:
    """The seeded order of ``n`` samples, cut to its first ``limit`` (int64 indices)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return order[:limit] if limit is not None else order


def pick_mask(n: int, labels: Tensor | None, count: int) -> Tensor:
    """Mark exactly ``count`` of ``n`` already-shuffled samples: the first ones, or with
    ``labels`` the first of each class, in proportion to the class sizes (largest remainder)."""
    mask = torch.zeros(n, dtype=torch.bool)
    if labels is None:
        mask[:count] = True
        return mask
    classes, counts = torch.unique(labels, return_counts=True)
    quota = counts.to(torch.float64) * count / max(n, 1)
    alloc = quota.floor().long()
    short = count - int(alloc.sum())
    if short > 0:
        frac = (quota - alloc).tolist()
        # Prefer classes that keep at least one sample on the other side of the split.
        full = (alloc + 1 >= counts).tolist()
        ranked = sorted(range(len(classes)), key=lambda k: (full[k], -frac[k], k))
        for k in ranked[:short]:
            alloc[k] += 1
    for cls, take in zip(classes.tolist(), alloc.tolist(), strict=True):
        if take:
            mask[(labels == cls).nonzero().flatten()[:take]] = True
    return mask


def _holdout_mask(name: str, n: int, labels: Tensor | None, holdout: float) -> Tensor:
    if n < 2:
        raise ValueError(f"dataset {name!r} has {n} sample(s); at least 2 are needed to hold some out")
    n_test = min(max(round(float(holdout) * n), 1), n - 1)
    return pick_mask(n, labels, n_test)


def jsonable(value: Any) -> Any:
    """``value`` made JSON-serializable (paths and other objects become strings)."""
    return json.loads(json.dumps(value, default=str))


def image_dataset(
    name: str,
    pixels: Tensor,
    labels: Tensor | None,
    class_names: list[str],
    *,
    max_value: float,
    holdout: float,
    options: dict[str, Any],
    meta: dict[str, Any] | None = None,
) -> DiffusionDataset:
    """Split shuffled ``pixels`` (N, C, H, W) in [0, max_value] and scale them to [-1, 1]."""
    mask = _holdout_mask(name, len(pixels), labels, holdout)
    x = (pixels.to(torch.float32) / float(max_value) * 2.0 - 1.0).clamp_(-1.0, 1.0)
    _, channels, height, width = x.shape
    info = {"channels": channels, "height": height, "width": width, "value_range": [-1, 1]}
    if labels is not None:
        info["class_names"] = list(class_names)
    info.update(meta or {})
    info["options"] = jsonable(options)
    return _split(name, "image", x, labels, mask, class_names, info)


def tabular_dataset(
    name: str,
    values: np.ndarray,
    labels: Tensor | None,
    class_names: list[str],
    *,
    columns: list[str],
    label_column: str | None,
    holdout: float,
    options: dict[str, Any],
    scaling: str = "robust",
) -> DiffusionDataset:
    """Split shuffled finite ``values`` (N, D) and scale them with a
    :class:`~diffcore.data.scaling.TableScaler` of kind ``scaling`` fitted on the train split,
    stored as ``meta["scaling"]`` (``"standard"`` also stores ``meta["mean"]``/``meta["std"]``);
    a column without spread (the scaler's rule) gets scale 1 and is listed in ``meta["constant_columns"]``."""
    raw = np.ascontiguousarray(values, dtype=np.float64)
    mask = _holdout_mask(name, len(raw), labels, holdout)
    train_raw = raw[~mask.numpy()]
    scaler = TableScaler(scaling).fit(train_raw)
    info: dict[str, Any] = {"columns": list(columns), "scaling": scaler.to_meta()}
    if scaling == "standard":
        info.update(mean=scaler.center_.tolist(), std=scaler.scale_.tolist())
    info["label_column"] = label_column
    info["constant_columns"] = [c for c, flat in zip(columns, scaler.flat_.tolist(), strict=True) if flat]
    if labels is not None:
        info["class_names"] = list(class_names)
    info["options"] = jsonable(options)
    x = torch.from_numpy(scaler.transform(raw)).to(torch.float32)
    return _split(name, "tabular", x, labels, mask, class_names, info)


def _split(
    name: str, kind: Kind, x: Tensor, labels: Tensor | None, mask: Tensor, class_names: list[str], meta: dict[str, Any]
) -> DiffusionDataset:
    num_classes = len(class_names) if labels is not None else 0
    return DiffusionDataset(
        name=name,
        kind=kind,
        train=x[~mask].contiguous(),
        train_labels=labels[~mask].contiguous() if labels is not None else None,
        test=x[mask].contiguous(),
        test_labels=labels[mask].contiguous() if labels is not None else None,
        num_classes=num_classes,
        class_names=list(class_names) if labels is not None else [],
        meta=meta,
    )
