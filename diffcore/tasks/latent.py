"""Latent pipeline tasks: ``image2image`` and ``inpaint`` on a diffusers SD / SDXL / SD3 / Flux
folder (:class:`diffcore.interop.latent.LatentPipeline`), and the ``--pipeline`` path of the
``text2image`` task (:func:`run_text2image`).

    diffcore text2image --pipeline sd_folder "a photo of a cat" --out cat.png
    diffcore image2image --pipeline sd_folder --image in.png "a watercolor" --strength 0.6 --out out.png
    diffcore inpaint --pipeline sd_folder --image in.png --mask mask.png "a red door" --out out.png

Images are read with :func:`diffcore.io.load_images` (PNG/JPEG/NPY/NPZ), masks with
:func:`diffcore.io.load_mask` (white / 1 = repaint); outputs are PNG grids (one row per prompt)
or ``.npz`` arrays of images in [0, 1].
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from diffcore.tasks.inputs import (
    MAX_SEED,
    MAX_STEPS,
    check_guidance,
    check_int,
    check_number,
    check_sampler,
    check_suffix,
    device_field,
)

__all__ = ["Image2ImageParams", "Image2ImageTask", "InpaintParams", "InpaintTask", "load_latent", "run_text2image"]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_latent(folder: str, device: str = "auto", dtype: str = "float32") -> Any:
    """The :class:`~diffcore.interop.latent.LatentPipeline` of a diffusers folder on ``device``."""
    from diffcore.devices import resolve_device
    from diffcore.interop.diffusers import load_latent_pipeline

    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} must be one of {', '.join(DTYPES)}")
    if not Path(folder).is_dir() or not (Path(folder) / "model_index.json").is_file():
        raise ValueError(f"pipeline={folder!r} is not a diffusers pipeline folder (no model_index.json)")
    return load_latent_pipeline(folder, device=resolve_device(device), torch_dtype=DTYPES[dtype])


def _options(params: Any) -> dict[str, Any]:
    """The sampling keywords shared by the three latent commands."""
    out: dict[str, Any] = {"seed": params.seed, "num_images_per_prompt": params.n}
    for key in ("steps", "guidance_scale", "sampler"):
        if getattr(params, key) is not None:
            out[key] = getattr(params, key)
    return out


def _write(images: Tensor, out: str, n: int, info: dict[str, Any]) -> str:
    """A PNG grid (``n`` per row) of images in [0, 1], or an .npz with ``samples``."""
    from diffcore import io

    path = Path(out)
    if path.suffix.lower() == ".png":
        io.save_grid(images.cpu() * 2 - 1, path, nrow=n, scale=1, info={k: str(v) for k, v in info.items()})
    else:
        io.write_npz(path, samples=images.float().cpu().numpy())
    return str(path)


def _prompts(prompts: Any) -> list[str]:
    items = [prompts] if isinstance(prompts, str) else list(prompts or [])
    items = [p for item in items for p in str(item).split("|")] if items else []
    if not items or not all(p.strip() for p in items):
        raise ValueError(f"prompts={prompts!r}: give one or more non-empty prompts")
    return items


def _check_common(params: Any) -> None:
    check_int("n", params.n)
    check_int("seed", params.seed, 0, MAX_SEED)
    if params.steps is not None:
        check_int("steps", params.steps, 1, MAX_STEPS)
    check_guidance("guidance_scale", params.guidance_scale)
    check_suffix("out", params.out, (".png", ".npz"))
    check_sampler(params.sampler)


def run_text2image(params: Any) -> dict[str, Any]:
    """The ``text2image`` task with ``--pipeline DIR``: a latent pipeline's images of the prompts
    (``params`` is a :class:`diffcore.tasks.text2image.Text2ImageParams`)."""
    pipe = load_latent(str(params.pipeline), params.device)
    prompts = list(params.prompt_list)
    start = time.perf_counter()
    extra = {k: getattr(params, k) for k in ("negative_prompt", "height", "width") if getattr(params, k) is not None}
    if params.guidance_rescale:
        extra["guidance_rescale"] = params.guidance_rescale
    images = pipe.text2image(prompts, **_options(params), **extra)
    info = {"pipeline": params.pipeline, "prompt": " | ".join(prompts), "seed": params.seed}
    return {
        "out": _write(images, params.out, params.n, info),
        "prompts": prompts,
        "n": params.n,
        "shape": list(images.shape[1:]),
        "pipeline": str(params.pipeline),
        "seconds": round(time.perf_counter() - start, 4),
    }


@dataclass
class Image2ImageParams:
    """Parameters of ``diffcore image2image`` (prompts are positional)."""

    prompts: str = field(
        metadata={
            "help": "prompts separated by '|'",
            "positional": "one or more prompts",
            "nargs": "+",
            "metavar": "PROMPT",
        }
    )
    pipeline: str = field(default="", metadata={"metavar": "DIR", "help": "a diffusers SD / SDXL / SD3 / Flux folder"})
    image: str = field(default="", metadata={"help": "input image (PNG/JPEG, or NPY/NPZ in [-1, 1])"})
    strength: float = field(default=0.8, metadata={"help": "how far to noise the image, (0, 1] (1: from pure noise)"})
    negative_prompt: str | None = field(default=None, metadata={"help": "what to steer away from"})
    n: int = field(default=1, metadata={"help": "images per prompt"})
    steps: int | None = field(default=None, metadata={"help": "sampler steps (default: the pipeline's)"})
    guidance_scale: float | None = field(default=None, metadata={"help": "classifier-free guidance scale"})
    sampler: str | None = field(default=None, metadata={"help": "sampler name (default: the folder's scheduler)"})
    seed: int = field(default=0, metadata={"help": "seed of the noise"})
    dtype: Literal["float32", "float16", "bfloat16"] = field(default="float32", metadata={"help": "weights dtype"})
    out: str = field(default="image2image.png", metadata={"help": ".png grid or .npz path"})
    device: str = device_field()

    def __post_init__(self) -> None:
        self.prompts = "|".join(_prompts(self.prompts))
        if not self.pipeline:
            raise ValueError("pipeline='' : pass --pipeline DIR (a diffusers pipeline folder)")
        if not self.image:
            raise ValueError("image='' : pass --image FILE")
        check_number("strength", self.strength, 0.0, 1.0)
        if self.strength == 0:
            raise ValueError("strength=0 keeps the image as it is; use a value in (0, 1]")
        _check_common(self)


def _image01(path: str) -> Tensor:
    from diffcore import io

    images = io.load_images(path)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[1] != 3 or float(images.min()) < -1 or float(images.max()) > 1:
        raise ValueError(f"image={path!r} must be RGB (or gray) in [-1, 1], got shape {tuple(images.shape)}")
    return (images + 1) / 2


class Image2ImageTask:
    """Redraw an image towards prompts with a diffusers latent pipeline (SDEdit)."""

    name = "image2image"
    Params = Image2ImageParams

    def run(self, params: Image2ImageParams) -> dict[str, Any]:
        image = _image01(params.image)
        pipe = load_latent(params.pipeline, params.device, params.dtype)
        prompts = params.prompts.split("|")
        out = pipe.image2image(image, prompts, params.negative_prompt, strength=params.strength, **_options(params))
        info = {"pipeline": params.pipeline, "prompt": params.prompts, "strength": params.strength}
        return {"out": _write(out, params.out, params.n, info), "shape": list(out.shape), "prompts": prompts}


@dataclass
class InpaintParams(Image2ImageParams):
    """Parameters of ``diffcore inpaint``: those of image2image plus the mask."""

    mask: str = field(default="", metadata={"help": "mask image or array: white / 1 = repaint"})

    def __post_init__(self) -> None:
        if not self.mask:
            raise ValueError("mask='' : pass --mask FILE (white = the region to repaint)")
        super().__post_init__()


class InpaintTask:
    """Repaint the masked region of an image towards prompts with a diffusers latent pipeline."""

    name = "inpaint"
    Params = InpaintParams

    def run(self, params: InpaintParams) -> dict[str, Any]:
        from diffcore import io

        image = _image01(params.image)
        mask = io.load_mask(params.mask)
        assert isinstance(mask, Tensor)  # no region names are allowed here
        mask = mask.float().reshape(-1, 1, *mask.shape[-2:]) if mask.dim() != 4 else mask[:, :1].float()
        if mask.shape[-2:] != image.shape[-2:]:
            raise ValueError(f"mask={params.mask!r} is {tuple(mask.shape[-2:])}, the image {tuple(image.shape[-2:])}")
        pipe = load_latent(params.pipeline, params.device, params.dtype)
        prompts = params.prompts.split("|")
        out = pipe.inpaint(image, mask, prompts, params.negative_prompt, strength=params.strength, **_options(params))
        info = {"pipeline": params.pipeline, "prompt": params.prompts, "mask": params.mask}
        return {"out": _write(out, params.out, params.n, info), "shape": list(out.shape), "prompts": prompts}
