"""Reading and writing the files the tasks take and make.

- :mod:`diffcore.io.images`: PNG/JPEG/NPY/NPZ images and masks <-> model space, PNG grids.
- :mod:`diffcore.io.tables`: CSV/NPY/NPZ tables in raw units.
- :mod:`diffcore.io.results`: the tasks' outputs (sample arrays, comparisons, scores and plots).
- :mod:`diffcore.io.files`: files written whole or not at all; output paths checked early.
- :mod:`diffcore.io.progress`: the command line's progress bars.
"""

from __future__ import annotations

from diffcore.io.files import check_writable
from diffcore.io.images import (
    ARRAY_SUFFIXES,
    IMAGE_SUFFIXES,
    MAX_ARRAY_BYTES,
    MAX_PIXELS,
    check_file,
    grid,
    load_images,
    load_mask,
    read_array,
    read_png_info,
    save_grid,
    save_image,
    to_uint8,
)
from diffcore.io.results import (
    check_finite,
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
    "MAX_ARRAY_BYTES",
    "MAX_PIXELS",
    "TABLE_SUFFIXES",
    "check_file",
    "check_finite",
    "check_writable",
    "grid",
    "load_images",
    "load_mask",
    "plot_histogram",
    "plot_maps",
    "read_array",
    "read_png_info",
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
