"""Datasets for diffusion training: the :class:`DiffusionDataset` contract and the built-ins.

``load_dataset("digits", seed=1)`` builds a registered dataset by name; third-party plugins
add theirs with the ``register_datasets`` hook. Built-ins: ``digits``, ``mnist-idx``,
``image-folder`` (diffcore.data.images) and ``tabular`` (diffcore.data.tabular).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffcore.data.base import DiffusionDataset
from diffcore.data.images import digits, image_folder, mnist_idx
from diffcore.data.tabular import tabular

DATASETS: dict[str, Callable[..., DiffusionDataset]] = {
    "digits": digits,
    "mnist-idx": mnist_idx,
    "image-folder": image_folder,
    "tabular": tabular,
}

__all__ = ["DATASETS", "DiffusionDataset", "load_dataset"]


def load_dataset(name: str, **options: Any) -> DiffusionDataset:
    """Build the dataset registered as ``name`` with ``options`` (e.g. ``seed``, ``holdout``, ``limit``).

    Raises :class:`diffcore.plugins.UnknownNameError` (a KeyError) listing the registered names.
    """
    from diffcore.plugins import get

    dataset = get("datasets", name)(**options)
    if not isinstance(dataset, DiffusionDataset):
        raise TypeError(f"dataset {name!r} returned {type(dataset).__name__}, expected a DiffusionDataset")
    return dataset
