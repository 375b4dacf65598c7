"""Tables on disk: a CSV with a header, or a 2-D numeric NPY/NPZ array, in raw units."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from diffcore.io.images import check_file, read_array

__all__ = ["TABLE_SUFFIXES", "read_table"]

TABLE_SUFFIXES = (".csv", ".npy", ".npz")


def read_table(
    path: str | Path, label_column: str | None = None, what: str = "input"
) -> tuple[list[str] | None, np.ndarray]:
    """(column names, float64 values (rows, columns)) of a table file; names are None for arrays.

    A CSV's ``label_column`` is dropped when the header has it. NPZ keys: ``x``, ``values`` or the
    only array."""
    from diffcore.data.tabular import read_csv

    path = Path(path)
    check_file(path, what, TABLE_SUFFIXES)
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as handle:
            header = [c.strip() for c in next(csv.reader(handle), [])]
        try:
            names, values, _ = read_csv(path, label_column if label_column in header else None)
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}".replace("tabular: ", "")) from None
        return names, values
    arr = read_array(path, ("x", "values"), what)
    if arr.size == 0:
        raise ValueError(f"{what} {str(path)!r} holds an empty array of shape {arr.shape}")
    if arr.ndim != 2 or arr.dtype.kind not in "biuf":
        raise ValueError(
            f"{what} {str(path)!r} has dtype {arr.dtype} and shape {arr.shape}; expected a 2-D "
            "numeric array (rows, columns)"
        )
    return None, arr.astype(np.float64)
