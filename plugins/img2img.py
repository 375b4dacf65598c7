"""Built-in plugin: the ``translate`` task and the ``diffcore translate`` command.

    diffcore translate --checkpoint runs/digits --input digit.png --mode sdedit --strength 0.4
    diffcore translate --checkpoint runs/digits --input digits.npz --mode inpaint --mask bottom-half
    diffcore translate --checkpoint runs/sr --input low.png --mode paired

Inputs are PNG/JPEG files (one image), NPY arrays or NPZ archives (key ``images``, ``samples``
or their only array); uint8 arrays are pixels 0..255, float arrays are model space [-1, 1].
Masks are a region name (``bottom-half``, ``top-half``, ``left-half``, ``right-half``,
``center``) or a file: white / nonzero = missing pixel. The math is in :mod:`diffcore.img2img`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from diffcore.cli import UsageError
from diffcore.plugins import hookimpl

__all__ = ["Translate", "TranslateError", "TranslateParams", "load_images", "load_mask"]

MODES = ("sdedit", "inpaint", "paired")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARRAY_SUFFIXES = (".npy", ".npz")


# --------------------------------------------------------------------------- reading inputs


def _read_array(path: Path, keys: tuple[str, ...], what: str) -> np.ndarray:
    """The array in an NPY file, or in an NPZ archive under one of ``keys`` (or its only array)."""
    try:
        loaded = np.load(path, allow_pickle=False)  # never unpickle a user's file
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{what} {str(path)!r} is not a readable {path.suffix} file: {exc}") from None
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        names = list(loaded.files)
        key = next((k for k in keys if k in names), names[0] if len(names) == 1 else None)
        if key is None:
            raise ValueError(f"{what} {str(path)!r} holds arrays {names}; expected one of {list(keys)} "
                             "or a single array")
        return loaded[key]


def _check_file(path: Path, what: str, suffixes: tuple[str, ...]) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{what} {str(path)!r}: expected a file ending in {', '.join(suffixes)}")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} {str(path)!r} is empty (0 bytes)")


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
    raise ValueError(f"{what} has shape {arr.shape}; expected (H, W), (C, H, W), (H, W, C), (N, H, W), "
                     "(N, C, H, W) or (N, H, W, C) with C = 1 or 3")


def load_images(path: str | Path) -> torch.Tensor:
    """A PNG/JPEG (one image) or NPY/NPZ (one or a batch) as float32 (N, C, H, W) in model space.

    uint8 data is scaled from 0..255 to [-1, 1]; float data must already be in [-1, 1] (checked
    later by :func:`diffcore.img2img.check_images`, with NaN/inf)."""
    path = Path(path)
    _check_file(path, "input", IMAGE_SUFFIXES + ARRAY_SUFFIXES)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                im.load()
                gray = im.mode in ("1", "L", "LA", "I", "I;16", "F") or (im.mode == "P" and not _palette_has_color(im))
                arr = np.asarray(im.convert("L" if gray else "RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"input {str(path)!r} is not a readable image: {exc}") from None
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        return torch.from_numpy(arr.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None].contiguous()
    arr = _read_array(path, ("images", "samples"), "input")
    if arr.size == 0:
        raise ValueError(f"input {str(path)!r} holds an empty array of shape {arr.shape}")
    arr = _to_nchw(arr, f"input {str(path)!r}")
    if arr.dtype == np.uint8:
        return torch.from_numpy(arr.astype(np.float32) / 127.5 - 1).contiguous()
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"input {str(path)!r} has dtype {arr.dtype}; expected uint8 pixels or floats in [-1, 1]")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def _palette_has_color(im: Any) -> bool:
    return im.convert("RGB").getextrema() != im.convert("L").convert("RGB").getextrema()


def load_mask(spec: str) -> torch.Tensor | str:
    """A region name passed through, or a mask file as a float tensor of 0/1 (1 = missing).

    PNG/JPEG: pixels brighter than mid-gray are missing. NPY/NPZ (key ``mask`` or the only array):
    0/1 (bool, integer or float) or uint8 0/255."""
    from diffcore.img2img import MASK_REGIONS

    if spec in MASK_REGIONS:
        return spec
    path = Path(spec)
    if not path.suffix:
        raise ValueError(f"mask {spec!r}: expected a region name {MASK_REGIONS} or a PNG/NPY/NPZ file")
    _check_file(path, "mask", IMAGE_SUFFIXES + ARRAY_SUFFIXES)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("L"))
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"mask {str(path)!r} is not a readable image: {exc}") from None
        return torch.from_numpy((arr > 127).astype(np.float32))
    arr = _read_array(path, ("mask", "masks"), "mask")
    if arr.size == 0:
        raise ValueError(f"mask {str(path)!r} holds an empty array of shape {arr.shape}")
    if arr.dtype == np.uint8 and set(np.unique(arr).tolist()) <= {0, 255}:
        arr = arr // 255
    if not (arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.number)):
        raise ValueError(f"mask {str(path)!r} has dtype {arr.dtype}; expected 0/1 numbers or booleans")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


# --------------------------------------------------------------------------- the task


@dataclass
class TranslateParams:
    checkpoint: Path = field(metadata={"help": "run folder or checkpoint.safetensors"})
    input: Path = field(metadata={"help": "PNG/JPEG image, or NPY/NPZ array(s): uint8 pixels or floats in [-1, 1]"})
    mode: Literal["sdedit", "inpaint", "paired"] = field(
        default="sdedit", metadata={"help": "sdedit | inpaint (RePaint) | paired (a --task-condition model)"})
    strength: float = field(default=0.5, metadata={"help": "SDEdit: fraction of the diffusion to noise to, (0, 1]"})
    mask: str | None = field(default=None, metadata={
        "help": "missing region: bottom-half, top-half, left-half, right-half, center, or a PNG/NPY/NPZ "
                "file (white / 1 = missing)"})
    jump_length: int = field(default=10, metadata={"help": "RePaint: levels per resampling jump"})
    resample: int = field(default=5, metadata={"help": "RePaint: times each stretch is denoised"})
    sampler: str | None = field(default=None, metadata={
        "help": "sampler name (default: the model's for sdedit/paired, ddpm for inpaint)"})
    steps: int | None = field(default=None, metadata={"help": "sampler steps (default: the model's; 50 for inpaint)"})
    seed: int = field(default=0, metadata={"help": "noise seed"})
    resize: bool = field(default=False, metadata={
        "help": "resize inputs (and masks) of another size, and convert RGB <-> grayscale, instead of refusing"})
    class_label: int | None = field(default=None, metadata={"help": "class label for a class-conditional model"})
    guidance_scale: float | None = field(default=None, metadata={"help": "classifier-free guidance scale"})
    source_guidance: float | None = field(default=None, metadata={
        "help": "paired: classifier-free guidance scale on the source (a model trained with source dropout)"})
    out: Path = field(default=Path("outputs/translate"), metadata={"help": "output folder"})

    def __post_init__(self) -> None:
        self.checkpoint, self.input, self.out = Path(self.checkpoint), Path(self.input), Path(self.out)
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}: expected one of {MODES}")
        if isinstance(self.strength, bool) or not isinstance(self.strength, (int, float)) or not 0 < self.strength <= 1:
            raise ValueError(f"strength={self.strength!r} must be in (0, 1] (0: keep the input, 1: pure noise)")
        for name in ("jump_length", "resample", "steps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r} must be an integer >= 1")
        if self.mode == "inpaint" and self.mask is None:
            raise ValueError("mode 'inpaint' needs --mask (a region name or a mask file)")
        if self.mode == "sdedit" and self.mask is not None:
            raise ValueError("--mask is used by modes 'inpaint' and 'paired', not 'sdedit'")
        if self.guidance_scale is not None and not math.isfinite(self.guidance_scale):
            raise ValueError(f"guidance_scale={self.guidance_scale!r} must be a finite number")
        if self.source_guidance is not None and self.mode != "paired":
            raise ValueError(f"source_guidance is for mode 'paired' (a --task-condition model), not {self.mode!r}")


class TranslateError(UsageError, ValueError):
    """Bad translation input: a ValueError for Python callers, one ``diffcore: error:`` line on the CLI."""


def _usage(exc: Exception) -> TranslateError:
    return TranslateError(f"translate: {exc}")


class Translate:
    """Image-to-image translation with a trained model: SDEdit, RePaint inpainting, or a paired
    (Palette-style) model trained with --task-condition."""

    name = "translate"
    Params = TranslateParams

    def run(self, params: TranslateParams) -> dict[str, Any]:
        from diffcore import img2img
        from diffcore.pipeline import Pipeline

        started = time.perf_counter()
        try:
            pipe = Pipeline.load(params.checkpoint)
            images = load_images(params.input)
            mask = load_mask(params.mask) if params.mask is not None else None
            common = {"seed": params.seed, "class_labels": params.class_label,
                      "guidance_scale": params.guidance_scale, "resize": params.resize}
            if params.mode == "sdedit":
                out = img2img.sdedit(pipe, images, params.strength, sampler=params.sampler, steps=params.steps,
                                     **common)
            elif params.mode == "inpaint":
                out = img2img.repaint(pipe, images, mask, jump_length=params.jump_length, resample=params.resample,
                                      sampler=params.sampler or "ddpm", steps=params.steps or 50, **common)
            else:
                out = img2img.translate(pipe, images, mask=mask, sampler=params.sampler, steps=params.steps,
                                        source_guidance=params.source_guidance, **common)
        except (ValueError, TypeError, KeyError, FileNotFoundError) as exc:
            raise _usage(exc) from exc
        files = _write(params, pipe, images, mask, out)
        return {"mode": params.mode, "n": int(out.shape[0]), "shape": list(out.shape[1:]),
                "seconds": round(time.perf_counter() - started, 2), **files,
                "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(params).items()}}


def _write(params: TranslateParams, pipe: Any, images: torch.Tensor, mask: Any, out: torch.Tensor) -> dict[str, str]:
    """output.npz (exact arrays), output.png (the result at native size; a grid for a batch) and
    comparison.png (input row, masked input row for inpainting, output row; upscaled)."""
    from diffcore import img2img
    from diffcore.images import save_grid

    folder = params.out
    folder.mkdir(parents=True, exist_ok=True)
    n, c, h, w = out.shape
    shown = images
    if shown.shape[1] != c:  # resize=True converted grayscale <-> RGB
        shown = shown.mean(dim=1, keepdim=True) if c == 1 else shown.expand(-1, 3, -1, -1)
    shown = F.interpolate(shown.clamp(-1, 1), size=(h, w), mode="nearest")
    rows = [shown]
    if mask is not None:
        missing = img2img.check_mask(mask, shown, resize=True)
        rows.append(torch.where(missing > 0, torch.zeros_like(shown), shown))
    rows.append(out)
    np.savez(folder / "output.npz", images=out.numpy(), input=images.numpy())
    save_grid(out, folder / "output.png", nrow=math.ceil(math.sqrt(n)), scale=1 if n == 1 else None)
    save_grid(torch.cat(rows), folder / "comparison.png", nrow=n)
    return {"out": str(folder), "images": str(folder / "output.png"), "npz": str(folder / "output.npz"),
            "comparison": str(folder / "comparison.png")}


# --------------------------------------------------------------------------- the command


def _cmd_translate(args: argparse.Namespace) -> int:
    values = {f.name: getattr(args, f.name) for f in fields(TranslateParams)}
    try:
        params = TranslateParams(**values)
    except (TypeError, ValueError) as exc:
        raise _usage(exc) from exc
    print(json.dumps(Translate().run(params), indent=2))
    return 0


@hookimpl
def register_tasks(register: Any) -> None:
    register("translate", Translate())


@hookimpl
def register_commands(cli: Any) -> None:
    p = cli.add_command("translate", "image-to-image translation: SDEdit, RePaint inpainting, paired models")
    helps = {f.name: f.metadata.get("help", "") for f in fields(TranslateParams)}
    p.add_argument("--checkpoint", required=True, type=Path, help=helps["checkpoint"])
    p.add_argument("--input", required=True, type=Path, help=helps["input"])
    p.add_argument("--mode", choices=MODES, default="sdedit", help=helps["mode"])
    p.add_argument("--strength", type=float, default=0.5, help=helps["strength"])
    p.add_argument("--mask", default=None, help=helps["mask"])
    p.add_argument("--jump-length", dest="jump_length", type=int, default=10, help=helps["jump_length"])
    p.add_argument("--resample", type=int, default=5, help=helps["resample"])
    p.add_argument("--sampler", default=None, help=helps["sampler"])
    p.add_argument("--steps", type=int, default=None, help=helps["steps"])
    p.add_argument("--seed", type=int, default=0, help=helps["seed"])
    p.add_argument("--resize", action=argparse.BooleanOptionalAction, default=False, help=helps["resize"])
    p.add_argument("--class-label", dest="class_label", type=int, default=None, help=helps["class_label"])
    p.add_argument("--guidance-scale", dest="guidance_scale", type=float, default=None, help=helps["guidance_scale"])
    p.add_argument("--source-guidance", dest="source_guidance", type=float, default=None,
                   help=helps["source_guidance"])
    p.add_argument("--out", type=Path, default=Path("outputs/translate"), help=helps["out"])
    p.set_defaults(func=_cmd_translate)
