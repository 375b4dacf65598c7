"""Built-in plugin: the ``denoise`` task and the ``diffcore denoise`` command.

    diffcore denoise --checkpoint runs/digits --input noisy.png --sigma 50 --output clean.png
    diffcore denoise --checkpoint runs/digits --input noisy.npz --sigma auto --mode sample --output out.npz
    diffcore denoise --checkpoint runs/digits --input noisy.npy --sigma 0.2 --sigma-scale 1 --samples 8 \\
        --output out.npz

Inputs are read as by ``diffcore translate`` (:func:`diffcore_plugins.img2img.load_images`): a
PNG/JPEG (one image), NPY or NPZ (key ``images``, ``samples`` or the only array); uint8 is 0..255
pixels, floats are model space ([-1, 1] plus the noise, so they may leave [-1, 1]). ``--sigma``
is the noise std on a range of width ``--sigma-scale`` (255: 0..255 pixels, the default; 1: [0, 1];
2: model space), or ``auto`` to estimate it per image. Images larger than the model are tiled.
The output is ``.png`` (one image at its own size; a batch as a grid), ``.npz`` (``images``: float
model space, ``noisy``, ``sigma``: the model-space sigma of each image) or ``.npy`` (the images).
The math is in :mod:`diffcore.denoise`.
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
from diffcore_plugins.img2img import load_images

from diffcore.cli import UsageError
from diffcore.plugins import hookimpl

__all__ = ["Denoise", "DenoiseError", "DenoiseParams", "parse_sigma"]

MODES = ("mmse", "sample")
OUTPUT_SUFFIXES = (".png", ".npz", ".npy")


def parse_sigma(text: str | float) -> float | str:
    """``"auto"`` or a positive finite number (the CLI's ``--sigma``)."""
    if isinstance(text, str) and text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"sigma={text!r}: expected a number > 0 or 'auto'") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"sigma={value!r} must be > 0 and finite (the noise std), or 'auto'")
    return value


@dataclass
class DenoiseParams:
    checkpoint: Path = field(metadata={"help": "run folder or checkpoint.safetensors"})
    input: Path = field(metadata={"help": "noisy PNG/JPEG image, or NPY/NPZ array(s): uint8 pixels or floats in "
                                          "model space"})
    sigma: str = field(metadata={
        "help": "noise std on the --sigma-scale range (e.g. 50 on 0..255), or 'auto' to estimate it per image"})
    sigma_scale: float = field(default=255.0, metadata={
        "help": "width of the range --sigma is measured on: 255 (0..255 pixels), 1 ([0, 1]), 2 (model space)"})
    mode: Literal["mmse", "sample"] = field(default="mmse", metadata={
        "help": "mmse: the posterior mean (one evaluation, or the mean of --samples samples) | sample: one "
                "posterior sample"})
    samples: int = field(default=1, metadata={"help": "mmse: posterior samples to average (1: one-step estimate)"})
    sampler: str | None = field(default=None, metadata={"help": "sampler for posterior samples (default ddpm)"})
    steps: int | None = field(default=None, metadata={"help": "sampler steps from the matched level (default 20)"})
    seed: int = field(default=0, metadata={"help": "noise seed"})
    tile_overlap: int | None = field(default=None, metadata={
        "help": "pixels shared by neighbouring tiles of images larger than the model (default: a quarter tile)"})
    batch_size: int = field(default=256, metadata={"help": "tiles per model call"})
    output: Path = field(default=Path("outputs/denoise/denoised.png"), metadata={
        "help": "output file: .png (one image; a batch as a grid), .npz or .npy"})

    def __post_init__(self) -> None:
        self.checkpoint, self.input, self.output = Path(self.checkpoint), Path(self.input), Path(self.output)
        self.sigma = str(parse_sigma(self.sigma))
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}: expected one of {MODES}")
        scale = self.sigma_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"sigma_scale={scale!r} must be a number > 0 (255, 1 or 2)")
        for name in ("samples", "steps", "batch_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r} must be an integer >= 1")
        overlap = self.tile_overlap
        if overlap is not None and (isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0):
            raise ValueError(f"tile_overlap={overlap!r} must be an integer >= 0")
        if self.mode == "sample" and self.samples != 1:
            raise ValueError(f"samples={self.samples}: mode 'sample' returns one posterior sample; use --mode mmse "
                             "to average several")
        if self.output.suffix.lower() not in OUTPUT_SUFFIXES:
            raise ValueError(f"output {str(self.output)!r}: expected a file ending in {', '.join(OUTPUT_SUFFIXES)}")


class DenoiseError(UsageError, ValueError):
    """Bad denoising input: a ValueError for Python callers, one ``diffcore: error:`` line on the CLI."""


def _usage(exc: Exception) -> DenoiseError:
    return DenoiseError(f"denoise: {exc}")


class Denoise:
    """Denoise images with a trained model: the posterior mean (mmse) or a posterior sample,
    starting the reverse process at the level that matches the noise; large images are tiled."""

    name = "denoise"
    Params = DenoiseParams

    def run(self, params: DenoiseParams) -> dict[str, Any]:
        from diffcore import denoise as dn
        from diffcore.pipeline import Pipeline

        started = time.perf_counter()
        try:
            pipe = Pipeline.load(params.checkpoint)
            noisy = load_images(params.input)
            sigma_arg: Any = "auto" if params.sigma == "auto" else float(params.sigma)
            out = dn.denoise(pipe, noisy, sigma_arg, sigma_scale=params.sigma_scale, mode=params.mode,
                             samples=params.samples, sampler=params.sampler, steps=params.steps, seed=params.seed,
                             tile_overlap=params.tile_overlap, batch_size=params.batch_size, progress=True)
            sigma = dn.resolve_sigma(noisy, sigma_arg, pipe.schedule, sigma_scale=params.sigma_scale)
        except (ValueError, TypeError, KeyError, FileNotFoundError) as exc:
            raise _usage(exc) from exc
        _write(params.output, out, noisy, sigma)
        in_units = [round(s, 4) for s in (sigma * params.sigma_scale / 2).tolist()]
        shown: Any = in_units if len(in_units) <= 16 else {
            "mean": round(sum(in_units) / len(in_units), 4), "min": min(in_units), "max": max(in_units)}
        return {"mode": params.mode, "n": int(out.shape[0]), "shape": list(out.shape[1:]),
                "sigma": shown, "sigma_scale": params.sigma_scale,
                "sigma_estimated": params.sigma == "auto", "output": str(params.output),
                "seconds": round(time.perf_counter() - started, 2),
                "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(params).items()}}


def _write(path: Path, out: torch.Tensor, noisy: torch.Tensor, sigma: torch.Tensor) -> None:
    from PIL import Image

    from diffcore.images import save_grid, to_uint8

    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        np.savez(path, images=out.numpy(), noisy=noisy.numpy(), sigma=sigma.numpy())
    elif suffix == ".npy":
        np.save(path, out.numpy())
    elif out.shape[0] == 1:
        arr = to_uint8(out)[0]
        Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path)
    else:
        save_grid(out, path, nrow=math.ceil(math.sqrt(out.shape[0])), scale=1)


# --------------------------------------------------------------------------- the command


def _cmd_denoise(args: argparse.Namespace) -> int:
    values = {f.name: getattr(args, f.name) for f in fields(DenoiseParams)}
    try:
        params = DenoiseParams(**values)
    except (TypeError, ValueError) as exc:
        raise _usage(exc) from exc
    print(json.dumps(Denoise().run(params), indent=2))
    return 0


@hookimpl
def register_tasks(register: Any) -> None:
    register("denoise", Denoise())


@hookimpl
def register_commands(cli: Any) -> None:
    p = cli.add_command("denoise", "denoise images: posterior mean (mmse) or a posterior sample; large images tiled")
    helps = {f.name: f.metadata.get("help", "") for f in fields(DenoiseParams)}
    p.add_argument("--checkpoint", required=True, type=Path, help=helps["checkpoint"])
    p.add_argument("--input", required=True, type=Path, help=helps["input"])
    p.add_argument("--sigma", required=True, help=helps["sigma"])
    p.add_argument("--sigma-scale", dest="sigma_scale", type=float, default=255.0, help=helps["sigma_scale"])
    p.add_argument("--mode", choices=MODES, default="mmse", help=helps["mode"])
    p.add_argument("--samples", type=int, default=1, help=helps["samples"])
    p.add_argument("--sampler", default=None, help=helps["sampler"])
    p.add_argument("--steps", type=int, default=None, help=helps["steps"])
    p.add_argument("--seed", type=int, default=0, help=helps["seed"])
    p.add_argument("--tile-overlap", dest="tile_overlap", type=int, default=None, help=helps["tile_overlap"])
    p.add_argument("--batch-size", dest="batch_size", type=int, default=256, help=helps["batch_size"])
    p.add_argument("--output", type=Path, default=Path("outputs/denoise/denoised.png"), help=helps["output"])
    p.set_defaults(func=_cmd_denoise)
