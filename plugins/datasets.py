"""Built-in plugin: the datasets of diffcore.data (digits, mnist-idx, image-folder, tabular)."""

from __future__ import annotations

from collections.abc import Callable

from diffcore.data import DATASETS
from diffcore.plugins import hookimpl


@hookimpl
def register_datasets(register: Callable[..., None]) -> None:
    for name, factory in DATASETS.items():
        register(name, factory)
