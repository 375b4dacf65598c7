"""Tabular datasets from CSV (header row), NPY (2-D array) or NPZ ("x", else "rows", else the first array; "y").

Features are scaled by a :class:`~diffcore.data.scaling.TableScaler` fitted on the train split
(robust by default, ``scaling="standard"`` for mean and std; see
:func:`diffcore.data.base.tabular_dataset`); labels become class indices in sorted order.
"""

from __future__ import annotations

import csv
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffcore.data.base import DiffusionDataset, check_common, shuffled, tabular_dataset
from diffcore.data.scaling import SCALINGS

__all__ = ["read_csv", "tabular"]


def tabular(
    *,
    path: str | Path,
    label_column: str | None = None,
    columns: Sequence[str | int] | None = None,
    seed: int = 0,
    holdout: float = 0.2,
    limit: int | None = None,
    scaling: str = "robust",
) -> DiffusionDataset:
    """Numeric table at ``path`` (``.csv``, ``.npy`` or ``.npz``), rows as samples.

    ``label_column``: CSV, the name of an integer or categorical column used as labels and
    excluded from the features; NPZ, the name of the label array (default ``"y"`` when present);
    NPY files hold no labels. ``columns``: the features to keep, by name (CSV header; ``x0``,
    ``x1``, ... for arrays) or by index among the features. ``scaling``: ``"robust"`` or
    ``"standard"`` (:mod:`diffcore.data.scaling`). Errors name the file, column and row.
    """
    check_common(seed=seed, holdout=holdout, limit=limit)
    if scaling not in SCALINGS:
        raise ValueError(f"tabular: scaling={scaling!r}: expected one of {SCALINGS}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tabular: file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        names, values, raw_labels = read_csv(path, label_column)
    elif suffix == ".npy":
        if label_column is not None:
            raise ValueError(
                f"tabular: {str(path)!r} is an NPY file, which holds no labels; got label_column={label_column!r}"
            )
        names, values, raw_labels = _read_npy(path)
    elif suffix == ".npz":
        names, values, raw_labels, label_column = _read_npz(path, label_column)
    else:
        raise ValueError(f"tabular: {str(path)!r} has suffix {suffix!r}; expected .csv, .npy or .npz")
    if len(values) == 0 or values.shape[1] == 0:
        raise ValueError(f"tabular: {str(path)!r} is empty: {values.shape[0]} rows, {values.shape[1]} feature columns")
    if columns is not None:
        names, values = _select(path, names, values, columns, label_column)
    _check_finite(path, names, values)
    labels, class_names = _encode_labels(path, label_column, raw_labels)
    order = shuffled(len(values), seed, limit)
    options = {
        "path": path, "label_column": label_column, "columns": list(columns) if columns is not None else None,
        "seed": seed, "holdout": holdout, "limit": limit, "scaling": scaling,
    }  # fmt: skip
    return tabular_dataset(
        "tabular", values[order.numpy()], labels[order] if labels is not None else None, class_names,
        columns=names, label_column=label_column, holdout=holdout, options=options, scaling=scaling,
    )  # fmt: skip


def read_csv(path: Path, label_column: str | None = None) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """Feature names, float64 values (rows, features) and the label column's strings (or None).

    Blank lines are skipped; rows are numbered from 1 after the header.
    """
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    if not rows:
        raise ValueError(f"tabular: CSV file {str(path)!r} is empty")
    header = [cell.strip() for cell in rows[0]]
    if all(_is_number(cell) for cell in header):
        raise ValueError(f"tabular: CSV file {str(path)!r} has no header row (its first row {rows[0]!r} is numbers)")
    if "" in header or len(set(header)) != len(header):
        raise ValueError(f"tabular: CSV file {str(path)!r} has an empty or repeated column name in its header {header}")
    body = rows[1:]
    if not body:
        raise ValueError(f"tabular: CSV file {str(path)!r} is empty: a header but no data rows")
    for number, row in enumerate(body, start=1):
        if len(row) != len(header):
            raise ValueError(
                f"tabular: CSV file {str(path)!r}, row {number}: {len(row)} fields, the header has {len(header)}"
            )
    if label_column is not None and label_column not in header:
        raise ValueError(f"tabular: CSV file {str(path)!r} has no label column {label_column!r}; columns: {header}")
    features = [j for j, name in enumerate(header) if name != label_column]
    cells = np.array(body, dtype=object)
    try:
        values = np.array(cells[:, features], dtype=np.float64)
    except ValueError:
        for number, row in enumerate(body, start=1):
            for j in features:
                if not _is_number(row[j]):
                    raise ValueError(
                        f"tabular: CSV file {str(path)!r}, column {header[j]!r}, row {number}: "
                        f"{row[j]!r} is not a number"
                    ) from None
        raise
    labels = None
    if label_column is not None:
        labels = np.array([cell.strip() for cell in cells[:, header.index(label_column)]], dtype=object)
    return [header[j] for j in features], values, labels


def _read_npy(path: Path) -> tuple[list[str], np.ndarray, None]:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"tabular: cannot read NPY file {str(path)!r}: {exc}") from None
    return _names(array.shape), _features(path, array, "the array"), None


def _read_npz(path: Path, label_column: str | None) -> tuple[list[str], np.ndarray, np.ndarray | None, str | None]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"tabular: cannot read NPZ file {str(path)!r}: {exc}") from None
    if label_column is None and "y" in arrays:
        label_column = "y"
    if label_column is not None and label_column not in arrays:
        raise ValueError(f"tabular: NPZ file {str(path)!r} has no label array {label_column!r}; arrays: {list(arrays)}")
    candidates = [key for key in arrays if key != label_column]
    if not candidates:
        raise ValueError(f"tabular: NPZ file {str(path)!r} holds no feature array (arrays: {list(arrays)})")
    # "rows": what diffcore generate writes for a table model (the table's units; "samples" is model space)
    key = next((k for k in ("x", "rows") if k in candidates), candidates[0])
    values = _features(path, arrays[key], f"array {key!r}")
    labels = None
    if label_column is not None:
        labels = arrays[label_column]
        if labels.shape != (len(values),):
            raise ValueError(
                f"tabular: NPZ file {str(path)!r}: label array {label_column!r} has shape {labels.shape}, "
                f"expected ({len(values)},) to match array {key!r}"
            )
    return _names(values.shape), values, labels, label_column


def _features(path: Path, array: np.ndarray, what: str) -> np.ndarray:
    if array.ndim != 2 or array.dtype.kind not in "biuf":
        raise ValueError(
            f"tabular: {str(path)!r}: {what} has dtype {array.dtype} and shape {array.shape}; "
            "expected a 2-D numeric array (rows, columns)"
        )
    return array.astype(np.float64)


def _names(shape: tuple[int, ...]) -> list[str]:
    return [f"x{j}" for j in range(shape[1] if len(shape) == 2 else 0)]


def _select(
    path: Path, names: list[str], values: np.ndarray, columns: Sequence[str | int], label_column: str | None
) -> tuple[list[str], np.ndarray]:
    if isinstance(columns, (str, int)):
        columns = [columns]
    if len(columns) == 0:
        raise ValueError(f"tabular: columns is empty for {str(path)!r}; pass None to keep all of {names}")
    picked = []
    for column in columns:
        if isinstance(column, str) and column == label_column:
            raise ValueError(f"tabular: column {column!r} is the label column of {str(path)!r}; it cannot be a feature")
        if isinstance(column, int) and not isinstance(column, bool) and -len(names) <= column < len(names):
            picked.append(column % len(names))
        elif isinstance(column, str) and column in names:
            picked.append(names.index(column))
        else:
            raise ValueError(f"tabular: {str(path)!r} has no feature column {column!r}; columns: {names}")
    if len(set(picked)) != len(picked):
        raise ValueError(f"tabular: columns {list(columns)} names a column of {str(path)!r} twice")
    return [names[j] for j in picked], values[:, picked]


def _check_finite(path: Path, names: list[str], values: np.ndarray) -> None:
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        row, col = (int(v) for v in bad[0])
        raise ValueError(
            f"tabular: {str(path)!r}, column {names[col]!r}, row {row + 1}: {values[row, col]} "
            f"(NaN and infinity are not allowed; {len(bad)} such value(s) in all)"
        )


def _encode_labels(
    path: Path, label_column: str | None, raw: np.ndarray | None
) -> tuple[torch.Tensor | None, list[str]]:
    """Class indices 0..K-1 in sorted order of the label values, and the values as class names."""
    if raw is None:
        return None, []
    where = f"{str(path)!r}, label column {label_column!r}"
    if raw.dtype == object:  # CSV strings: integers if they all parse as such, else categories
        for row, cell in enumerate(raw, start=1):
            if cell == "":
                raise ValueError(f"tabular: {where}, row {row}: the label is empty")
        if all(_is_int(cell) for cell in raw):
            raw = np.array([int(float(cell)) for cell in raw], dtype=np.int64)
        else:
            raw = raw.astype(str)
    elif raw.dtype.kind == "f":
        whole = np.isfinite(raw) & (raw == np.round(raw))
        if not whole.all():
            row = int(np.argmin(whole))
            raise ValueError(f"tabular: {where}, row {row + 1}: {raw[row]} is not an integer class label")
        raw = raw.astype(np.int64)
    elif raw.dtype.kind not in "biuUS":
        raise ValueError(f"tabular: {where} has dtype {raw.dtype}; expected integer or string labels")
    values, indices = np.unique(raw, return_inverse=True)
    return torch.from_numpy(indices.reshape(-1).astype(np.int64)), [str(v) for v in values.tolist()]


def _is_number(cell: Any) -> bool:
    try:
        float(str(cell).strip())
    except ValueError:
        return False
    return True


def _is_int(cell: str) -> bool:
    try:
        value = float(cell)
    except ValueError:
        return False
    return value == int(value) if np.isfinite(value) else False
