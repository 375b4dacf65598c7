"""Images on disk <-> model space: PNG/JPEG and NPY/NPZ readers, uint8 conversion and PNG grids.

Model space is float (N, C, H, W) in [-1, 1]; uint8 pixels map to it by ``x / 127.5 - 1``.
Arrays are read with ``allow_pickle=False``: a user's file is never unpickled. Sizes are checked
from the file's header before anything is decoded: an array over :data:`MAX_ARRAY_BYTES` (also
inside a compressed NPZ) or a picture over :data:`MAX_PIXELS` is refused. PNGs are written whole
or not at all (:mod:`diffcore.io.files`) and can carry text chunks (``info``: the generation
parameters).
"""

from __future__ import annotations

import math
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffcore.io.files import temporary_path

__all__ = [
    "ARRAY_SUFFIXES",
    "IMAGE_SUFFIXES",
    "MAX_ARRAY_BYTES",
    "MAX_PIXELS",
    "check_file",
    "grid",
    "load_images",
    "load_mask",
    "read_array",
    "read_png_info",
    "save_grid",
    "save_image",
    "to_uint8",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARRAY_SUFFIXES = (".npy", ".npz")
MAX_ARRAY_BYTES = 2**32  # 4 GiB: the largest array a reader expands (NPY, or one NPZ member)
MAX_PIXELS = 2**26  # 64 Mpixel (8192 x 8192): the largest PNG/JPEG a reader decodes


# --------------------------------------------------------------------------- writing


def to_uint8(x: Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8 (values outside [-1, 1] are clipped)."""
    if x.dim() != 4:
        raise ValueError(f"expected images (N, C, H, W), got shape {tuple(x.shape)}")
    arr = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return arr.permute(0, 2, 3, 1).cpu().numpy()


def grid(x: Tensor, nrow: int | None = None, pad: int = 1, scale: int = 1) -> np.ndarray:
    """Tile (N, C, H, W) images in [-1, 1] into one (rows*H, cols*W, C) uint8 array."""
    imgs = to_uint8(x)
    n, h, w, c = imgs.shape
    cols = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    out = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = imgs[i]
    if scale > 1:
        out = out.repeat(scale, axis=0).repeat(scale, axis=1)
    return out


def _save_png(arr: np.ndarray, path: str | Path, info: Mapping[str, Any] | None = None) -> Path:
    """``arr`` (H, W, C) uint8 as a PNG with ``info`` as tEXt/iTXt chunks, via a temporary file."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    path = Path(path)
    chunks = PngInfo()
    for key, value in (info or {}).items():
        if value is not None:
            chunks.add_itxt(str(key), str(value))
    with temporary_path(path) as tmp:
        Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(tmp, format="PNG", pnginfo=chunks)
    return path


def save_grid(
    x: Tensor,
    path: str | Path,
    nrow: int | None = None,
    scale: int | None = None,
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Write a PNG grid of (N, C, H, W) images in [-1, 1]; small images are upscaled for viewing.
    ``info``: text chunks (e.g. checkpoint, sampler, steps, seed)."""
    h = x.shape[-2]
    scale = scale or max(1, 64 // max(h, 1))
    return _save_png(grid(x, nrow=nrow, scale=scale), path, info)


def save_image(x: Tensor, path: str | Path, info: Mapping[str, Any] | None = None) -> Path:
    """Write one (C, H, W) or (1, C, H, W) image in [-1, 1] as a PNG at its own size."""
    return _save_png(to_uint8(x if x.dim() == 4 else x[None])[0], path, info)


def read_png_info(path: str | Path) -> dict[str, str]:
    """The text chunks of a PNG (what :func:`save_grid` / :func:`save_image` wrote as ``info``)."""
    from PIL import Image

    with Image.open(path) as im:
        return {str(k): str(v) for k, v in getattr(im, "text", {}).items()}


# --------------------------------------------------------------------------- reading


def check_file(path: Path, what: str, suffixes: tuple[str, ...]) -> None:
    """Raise unless ``path`` is an existing, non-empty file ending in one of ``suffixes``."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{what} {str(path)!r}: expected a file ending in {', '.join(suffixes)}")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} {str(path)!r} is empty (0 bytes)")


def read_array(path: Path, keys: tuple[str, ...], what: str) -> np.ndarray:
    """The array in an NPY file, or in an NPZ archive under one of ``keys`` (or its only array);
    its header's shape and dtype are checked against :data:`MAX_ARRAY_BYTES` before it is read."""
    try:
        if path.suffix.lower() == ".npy":
            with open(path, "rb") as f:
                _check_npy_header(f, f"{what} {str(path)!r}")
        loaded = np.load(path, allow_pickle=False)  # never unpickle a user's file
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{what} {str(path)!r} is not a readable {path.suffix} file: {exc}") from None
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        names = list(loaded.files)
        key = next((k for k in keys if k in names), names[0] if len(names) == 1 else None)
        if key is None:
            raise ValueError(
                f"{what} {str(path)!r} holds arrays {names}; expected one of {list(keys)} or a single array"
            )
        try:
            with loaded.zip.open(f"{key}.npy") as member:
                _check_npy_header(member, f"{what} {str(path)!r} array {key!r}")
            return loaded[key]
        except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
            raise ValueError(f"{what} {str(path)!r} array {key!r} is not readable: {exc}") from None


def _check_npy_header(f: Any, what: str) -> None:
    """Read an NPY header from ``f``; ValueError when the array it announces is over
    :data:`MAX_ARRAY_BYTES` or holds Python objects."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    if dtype.hasobject:
        raise ValueError(f"{what} holds Python objects (dtype {dtype}); expected numbers")
    size = math.prod(int(s) for s in shape) * dtype.itemsize
    if size > MAX_ARRAY_BYTES:
        raise ValueError(
            f"{what} has shape {tuple(shape)} of {dtype} ({size / 2**30:.3g} GiB); arrays up to "
            f"{MAX_ARRAY_BYTES / 2**30:g} GiB are read (diffcore.io.images.MAX_ARRAY_BYTES)"
        )


def _to_nchw(arr: np.ndarray, what: str) -> np.ndarray:
    """(H, W), (C, H, W), (H, W, C), (N, H, W), (N, C, H, W) or (N, H, W, C) -> (N, C, H, W).

    A 3-D array is (C, H, W) when its first axis is 1 or 3, else (H, W, C) when its last is,
    else a stack of grayscale images (N, H, W)."""
    if arr.ndim == 2:
        return arr[None, None]
    if arr.ndim == 3:
        if arr.shape[0] in (1, 3):
            return arr[None]
        if arr.shape[-1] in (1, 3):
            return arr.transpose(2, 0, 1)[None]
        return arr[:, None]
    if arr.ndim == 4:
        if arr.shape[1] in (1, 3):
            return arr
        if arr.shape[-1] in (1, 3):
            return arr.transpose(0, 3, 1, 2)
    raise ValueError(
        f"{what} has shape {arr.shape}; expected (H, W), (C, H, W), (H, W, C), (N, H, W), "
        "(N, C, H, W) or (N, H, W, C) with C = 1 or 3"
    )


def _read_picture(path: Path, what: str, mode: str | None) -> np.ndarray:
    """A PNG/JPEG as a uint8 array: grayscale ("L"), RGB, or (``mode`` None) whichever it is."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # PIL warns of, then refuses, pictures past its own bound
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)  # reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(
            f"{what} {str(path)!r} is too large to decode ({exc}); pictures up to {MAX_PIXELS} pixels are read "
            "(diffcore.io.images.MAX_PIXELS)"
        ) from None
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{what} {str(path)!r} is not a readable image: {exc}") from None
    try:
        with im:
            if im.size[0] * im.size[1] > MAX_PIXELS:
                raise _too_large(im.size, path, what)
            im.load()
            if mode is None:
                gray = im.mode in ("1", "L", "LA", "I", "I;16", "F") or (im.mode == "P" and not _palette_has_color(im))
                mode = "L" if gray else "RGB"
            return np.asarray(im.convert(mode))
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{what} {str(path)!r} is not a readable image: {exc}") from None


def _too_large(size: tuple[int, int], path: Path, what: str) -> ValueError:
    return ValueError(
        f"{what} {str(path)!r} is {size[0]}x{size[1]} pixels; pictures up to {MAX_PIXELS} pixels are read "
        "(diffcore.io.images.MAX_PIXELS)"
    )


def _palette_has_color(im: Any) -> bool:
    return im.convert("RGB").getextrema() != im.convert("L").convert("RGB").getextrema()


def load_images(path: str | Path) -> Tensor:
    """A PNG/JPEG (one image) or NPY/NPZ (one or a batch) as float32 (N, C, H, W) in model space.

    uint8 data is scaled from 0..255 to [-1, 1]; float data must already be in [-1, 1] (checked
    later by :func:`diffcore.tasks.inputs.check_images`, with NaN/inf). NPZ keys: ``images``,
    ``samples`` or the only array."""
    path = Path(path)
    check_file(path, "input", IMAGE_SUFFIXES + ARRAY_SUFFIXES)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        arr = _read_picture(path, "input", None)
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        return torch.from_numpy(arr.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None].contiguous()
    arr = read_array(path, ("images", "samples"), "input")
    if arr.size == 0:
        raise ValueError(f"input {str(path)!r} holds an empty array of shape {arr.shape}")
    arr = _to_nchw(arr, f"input {str(path)!r}")
    if arr.dtype == np.uint8:
        return torch.from_numpy(arr.astype(np.float32) / 127.5 - 1).contiguous()
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"input {str(path)!r} has dtype {arr.dtype}; expected uint8 pixels or floats in [-1, 1]")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def load_mask(spec: str, regions: tuple[str, ...] = ()) -> Tensor | str:
    """A mask file as a float tensor of 0/1 (1 = missing pixel), or one of ``regions`` (region
    names) passed through.

    PNG/JPEG: pixels brighter than mid-gray are missing. NPY/NPZ (key ``mask`` or the only array):
    0/1 (bool, integer or float) or uint8 0/255."""
    if spec in regions:
        return spec
    path = Path(spec)
    if not path.suffix:
        raise ValueError(f"mask {spec!r}: expected a region name {regions} or a PNG/NPY/NPZ file")
    check_file(path, "mask", IMAGE_SUFFIXES + ARRAY_SUFFIXES)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return torch.from_numpy((_read_picture(path, "mask", "L") > 127).astype(np.float32))
    arr = read_array(path, ("mask", "masks"), "mask")
    if arr.size == 0:
        raise ValueError(f"mask {str(path)!r} holds an empty array of shape {arr.shape}")
    if arr.dtype == np.uint8 and set(np.unique(arr).tolist()) <= {0, 255}:
        arr = arr // 255
    if not (arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.number)):
        raise ValueError(f"mask {str(path)!r} has dtype {arr.dtype}; expected 0/1 numbers or booleans")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
