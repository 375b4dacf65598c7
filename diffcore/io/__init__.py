"""Reading and writing the files the tasks take and make.

- :mod:`diffcore.io.images`: PNG/JPEG/NPY/NPZ images and masks <-> model space, PNG grids.
- :mod:`diffcore.io.tables`: CSV/NPY/NPZ tables in raw units.
- :mod:`diffcore.io.results`: the tasks' outputs (sample arrays, comparisons, scores and plots).
"""

from __future__ import annotations

from diffcore.io.images import (
    ARRAY_SUFFIXES,
    IMAGE_SUFFIXES,
    check_file,
    grid,
    load_images,
    load_mask,
    read_array,
    save_grid,
    save_image,
    to_uint8,
)
from diffcore.io.results import (
    plot_histogram,
    plot_maps,
    write_denoised,
    write_npz,
    write_samples,
    write_scores,
    write_translation,
)
from diffcore.io.tables import TABLE_SUFFIXES, read_table

__all__ = [
    "ARRAY_SUFFIXES",
    "IMAGE_SUFFIXES",
    "TABLE_SUFFIXES",
    "check_file",
    "grid",
    "load_images",
    "load_mask",
    "plot_histogram",
    "plot_maps",
    "read_array",
    "read_table",
    "save_grid",
    "save_image",
    "to_uint8",
    "write_denoised",
    "write_npz",
    "write_samples",
    "write_scores",
    "write_translation",
]
