"""Image datasets: scikit-learn's bundled 8x8 digits, MNIST-style IDX files, a folder of PNG/JPEG.

Every factory returns a :class:`~diffcore.data.base.DiffusionDataset` with images
``(N, C, H, W)`` scaled to [-1, 1] and a seeded, label-stratified held-out split.
"""

from __future__ import annotations

import gzip
import math
import numbers
import struct
import warnings
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from diffcore.data.base import DiffusionDataset, check_common, image_dataset, shuffled

if TYPE_CHECKING:
    from PIL import Image as PILImage

__all__ = ["IMAGE_SUFFIXES", "digits", "image_folder", "mnist_idx", "read_idx"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
# IDX type byte -> numpy dtype (big-endian); see http://yann.lecun.com/exdb/mnist/
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"})


def digits(*, seed: int = 0, holdout: float = 0.2, limit: int | None = None) -> DiffusionDataset:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes, values 0..16)."""
    check_common(seed=seed, holdout=holdout, limit=limit)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32))[:, None]
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    order = shuffled(len(labels), seed, limit)
    options = {"seed": seed, "holdout": holdout, "limit": limit}
    return image_dataset(
        "digits", pixels[order], labels[order], [str(k) for k in range(10)],
        max_value=16.0, holdout=holdout, options=options,
    )  # fmt: skip


# --------------------------------------------------------------------------- IDX (MNIST)


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (gzip-compressed or not) into a numpy array of its declared dims.

    Layout: magic ``0x00 0x00 <type> <ndim>``, ``ndim`` big-endian uint32 sizes, then the data.
    Raises FileNotFoundError or ValueError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {str(path)!r} does not exist")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"IDX file {str(path)!r}: corrupt or truncated gzip data ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise ValueError(
            f"{str(path)!r} is not an IDX file: magic number 0x{raw[:4].hex()} "
            "(expected 0x0000TTNN: type TT in 08 09 0B 0C 0D 0E, NN >= 1 dimensions)"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"IDX file {str(path)!r} is truncated inside its header ({len(raw)} bytes)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    count = math.prod(dims)
    expected, have = count * dtype.itemsize, len(raw) - header
    if have != expected:
        problem = "is truncated" if have < expected else f"has {have - expected} bytes past the end of its data"
        raise ValueError(
            f"IDX file {str(path)!r} {problem}: its header declares dims {list(dims)} "
            f"({expected} data bytes), the file holds {have}"
        )
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def mnist_idx(
    *,
    images: str | Path,
    labels: str | Path | None = None,
    size: int | None = None,
    seed: int = 0,
    holdout: float = 0.2,
    limit: int | None = None,
) -> DiffusionDataset:
    """MNIST-style IDX files: ``images`` (N, H, W) uint8, optional ``labels`` (N,) uint8 in 0..K-1.

    ``size`` resizes to ``size x size`` (bilinear, antialiased); by default the native size is kept.
    """
    check_common(seed=seed, holdout=holdout, limit=limit)
    _check_size(size)
    pixels = read_idx(images)
    if pixels.ndim != 3 or pixels.dtype != np.uint8:
        raise ValueError(
            f"mnist-idx: {str(images)!r} holds {pixels.dtype} data of shape {pixels.shape}; "
            "expected unsigned bytes of shape (N, height, width)"
        )
    targets, class_names = None, []
    if labels is not None:
        array = read_idx(labels)
        if array.ndim != 1 or array.dtype != np.uint8 or len(array) != len(pixels):
            raise ValueError(
                f"mnist-idx: labels file {str(labels)!r} holds {array.dtype} data of shape {array.shape}; "
                f"expected unsigned bytes of shape ({len(pixels)},) to match {str(images)!r}"
            )
        targets = torch.from_numpy(array.astype(np.int64))
        class_names = [str(k) for k in range(int(targets.max()) + 1)] if len(targets) else []
    order = shuffled(len(pixels), seed, limit)
    x = torch.from_numpy(pixels)[order][:, None]
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x.to(torch.float32), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    options = {"images": images, "labels": labels, "size": size, "seed": seed, "holdout": holdout, "limit": limit}
    return image_dataset(
        "mnist-idx", x, targets[order] if targets is not None else None, class_names,
        max_value=255.0, holdout=holdout, options=options,
    )  # fmt: skip


# --------------------------------------------------------------------------- image folder


def image_folder(
    *,
    root: str | Path,
    size: int | None = None,
    channels: int | None = None,
    skip_bad: bool = False,
    seed: int = 0,
    holdout: float = 0.2,
    limit: int | None = None,
) -> DiffusionDataset:
    """PNG/JPEG files under ``root``; each subfolder (sorted by name) is a class, if there are any.

    ``size``: center-crop to a square, then resize to ``size x size`` (needed when sizes differ).
    ``channels``: 1 (grayscale) or 3 (RGB); by default 1 if every image is grayscale, else 3.
    Alpha is dropped. A file Pillow cannot read raises ValueError naming it, or with
    ``skip_bad=True`` is skipped with a warning and counted in ``meta["skipped"]``.
    """
    check_common(seed=seed, holdout=holdout, limit=limit)
    _check_size(size)
    if channels not in (None, 1, 3):
        raise ValueError(f"image-folder: channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    root = Path(root)
    files, labels, class_names = _list_images(root)
    decoded: list[PILImage.Image] = []
    kept: list[int] = []
    skipped: list[str] = []
    for index in shuffled(len(files), seed).tolist():
        if limit is not None and len(decoded) == limit:
            break
        try:
            decoded.append(_open_image(files[index]))
            kept.append(index)
        except ValueError:
            if not skip_bad:
                raise
            skipped.append(files[index].relative_to(root).as_posix())
    if skipped:
        shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        warnings.warn(f"image-folder: skipped {len(skipped)} unreadable file(s) under {root}: {shown}", stacklevel=2)
    if not decoded:
        raise ValueError(f"image-folder: no readable images under {str(root)!r}")
    if channels is None:
        channels = 1 if all(img.mode in _GRAY_MODES for img in decoded) else 3
    if size is None:
        sizes = {img.size: i for i, img in enumerate(decoded)}
        if len(sizes) > 1:
            (a, i), (b, j) = list(sizes.items())[:2]
            raise ValueError(
                f"image-folder: images differ in size ({files[kept[i]]} is {a[0]}x{a[1]}, "
                f"{files[kept[j]]} is {b[0]}x{b[1]}); pass size=N to crop and resize them to N x N"
            )
    arrays = [_to_array(decoded[i], channels, size) for i in range(len(decoded))]
    decoded.clear()
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    targets = torch.tensor([labels[i] for i in kept], dtype=torch.int64) if labels is not None else None
    options = {
        "root": root, "size": size, "channels": channels, "skip_bad": skip_bad,
        "seed": seed, "holdout": holdout, "limit": limit,
    }  # fmt: skip
    meta = {"skipped": len(skipped), "skipped_files": skipped}
    return image_dataset(
        "image-folder", x, targets, class_names, max_value=255.0, holdout=holdout, options=options, meta=meta
    )


def _check_size(size: Any) -> None:
    if size is not None and (isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1):
        raise ValueError(f"size must be None or a positive int, got {size!r}")


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _list_images(root: Path) -> tuple[list[Path], list[int] | None, list[str]]:
    """The image files under ``root`` (sorted) and, with class subfolders, their class indices."""
    if not root.is_dir():
        raise FileNotFoundError(f"image-folder: root {str(root)!r} is not an existing folder")
    loose = sorted(p for p in root.iterdir() if _is_image(p))
    folders = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    classes = []
    for folder in folders:
        found = sorted(
            p
            for p in folder.rglob("*")
            if _is_image(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        )
        if found:
            classes.append((folder.name, found))
    if not classes:
        if not loose:
            raise ValueError(f"image-folder: no PNG or JPEG files in {str(root)!r}")
        return loose, None, []
    if loose:
        raise ValueError(
            f"image-folder: {str(root)!r} has class subfolders and also images at its top level "
            f"(e.g. {loose[0].name!r}); move them into a class folder"
        )
    files = [p for _, found in classes for p in found]
    labels = [k for k, (_, found) in enumerate(classes) for _ in found]
    return files, labels, [name for name, _ in classes]


def _open_image(path: Path) -> PILImage.Image:
    """Decode ``path`` fully (EXIF rotation applied); ValueError naming it if Pillow cannot."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img.load()
            return ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError) as exc:
        raise ValueError(f"image-folder: cannot read image {str(path)!r}: {type(exc).__name__}: {exc}") from None


def _to_array(img: PILImage.Image, channels: int, size: int | None) -> np.ndarray:
    """``img`` as uint8 (H, W, channels), center-cropped and resized when ``size`` is given."""
    from PIL import Image

    if img.mode.startswith("I"):  # 16/32-bit grayscale: rescale 0..65535 to 0..255
        img = Image.fromarray((np.asarray(img, dtype=np.float64) / 257.0).round().clip(0, 255).astype(np.uint8))
    img = img.convert("L" if channels == 1 else "RGB")
    if size is not None:
        width, height = img.size
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        img = img.crop((left, top, left + side, top + side))
        if side != size:
            img = img.resize((size, size), Image.Resampling.LANCZOS)
    array = np.asarray(img, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array
