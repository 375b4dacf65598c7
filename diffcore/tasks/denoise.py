"""Denoising with a trained diffusion model: the posterior mean, or posterior samples, of x0 given y.

A noisy image ``y = x0 + sigma * n`` (model space [-1, 1], n standard normal) is, scaled by
``alpha_t``, exactly the diffusion state at the level whose VE noise ``std_t / alpha_t`` equals
sigma: ``x_t = alpha_t * y = alpha_t * x0 + std_t * n`` (denoising as the H = I case of Kawar et
al. 2022, "DDRM"). From there

- ``mode="mmse"``: the model's denoised estimate at that level, one network evaluation. A trained
  denoiser approximates E[x0 | x_t] (Miyasawa 1961; Tweedie's formula, Efron 2011), the
  minimum-MSE estimate (Kadkhodaie & Simoncelli 2021 use the same fact). With
  ``samples=K > 1`` it is instead the mean of K posterior samples (a Monte-Carlo posterior mean).
- ``mode="sample"``: one posterior sample: the reverse process run from ``x_t`` to 0 by a
  stochastic sampler (default ``ddpm``) with :func:`diffcore.sample_from`. Sharper than the
  mean, with about 3 dB lower PSNR for a perfect model (its error has twice the variance).

Level matching is exact: on a discrete schedule the start time is the fractional timestep at which
the schedule's piecewise-linear sigma(t) (the interpolation :func:`diffcore.timesteps.partial_plan`
and the samplers use) equals sigma, and the model sees that fractional t; on an EDM schedule it is
sigma itself; on a flow schedule the flow time ``t = sigma / (1 + sigma)``, where ``x_t = (1 - t) y``
(the model sees ``t * T``). A sigma above the model's largest level raises; an explicit sigma below its smallest
level raises too (the image is as good as clean for this model), an estimated one is raised to it.

``sigma="auto"`` estimates sigma per image (Donoho & Johnstone 1994); sigma's units, its estimate
and the level matching live in :mod:`diffcore.tasks.noise_level`.

Images larger than the model's training size are split into overlapping tiles of the training size
that are denoised in batches and blended with a raised-cosine window (weights normalised to sum to
1 at every pixel); images smaller than the training size raise (pad them yourself: a model has
no information about a padded border). Inputs are checked where they enter: shape, channels,
NaN/inf, a range that looks like 0..255 pixels, sigma <= 0, empty batches.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from diffcore import io
from diffcore.io.progress import progress_bar
from diffcore.io.progress import shown as progress_shown
from diffcore.parameterization import Parameterization
from diffcore.pipeline import Pipeline
from diffcore.schedules import Schedule
from diffcore.tasks import as_json, load_pipeline
from diffcore.tasks.generation import png_info
from diffcore.tasks.inputs import (
    MAX_BATCH,
    MAX_SEED,
    MAX_STEPS,
    check_int,
    check_sampler,
    clip_field,
    device_field,
    image_batch,
    quiet_field,
)
from diffcore.tasks.noise_level import (
    check_sigma,
    estimate_sigma,
    match_level,
    parse_sigma,
    resolve_sigma,
    sigma_to_model,
)
from diffcore.timesteps import Level

# the noise-level helpers are re-exported: denoising is where callers look for them
__all__ = [
    "MODES",
    "Denoise",
    "DenoiseParams",
    "blend_window",
    "check_noisy",
    "check_sigma",
    "denoise",
    "estimate_sigma",
    "match_level",
    "parse_sigma",
    "resolve_sigma",
    "sigma_to_model",
    "tile_starts",
]

MODES = ("mmse", "sample")
DEFAULT_SAMPLE_SAMPLER = "ddpm"  # ancestral: its output is a posterior sample; ODE samplers are deterministic
DEFAULT_SAMPLE_STEPS = 20


# --------------------------------------------------------------------------- input checks


def check_noisy(images: Any, shape: tuple[int, ...] | None, name: str = "images") -> Tensor:
    """Noisy ``images`` as a float (B, C, H, W) batch: finite, the model's channels, at least
    its size. Values may leave [-1, 1] (that is the noise); the range is checked with sigma."""
    images = image_batch(images, name, space="(model space [-1, 1] plus noise)")
    if shape is not None:
        want_c, want_h, want_w = (int(v) for v in shape[-3:])
        c, h, w = images.shape[1:]
        if c != want_c:
            raise ValueError(f"{name} have {c} channel(s) but the model expects {want_c}")
        if h < want_h or w < want_w:
            raise ValueError(
                f"{name} are {h}x{w}, smaller than the model's {want_h}x{want_w}: pad them to at least "
                f"{want_h}x{want_w} (larger images are tiled)"
            )
    return images.contiguous()


# --------------------------------------------------------------------------- tiling


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``size``, neighbours sharing at least
    ``overlap`` pixels; the last tile ends at the border. ``size >= tile > overlap >= 0``."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    count = math.ceil((size - tile) / stride) + 1
    # spread the tiles evenly: overlaps are >= the requested one and differ by at most one pixel
    return [round(i * (size - tile) / (count - 1)) for i in range(count)]


def blend_window(height: int, width: int, overlap: int) -> Tensor:
    """(height, width) positive weights: 1 inside, a raised-cosine ramp over ``overlap`` pixels at
    each edge, so overlapping tiles cross-fade; pixels are normalised by the summed weights."""

    def ramp(n: int) -> Tensor:
        w = torch.ones(n, dtype=torch.float64)
        k = min(overlap, n // 2)
        if k > 0:
            edge = torch.sin(0.5 * math.pi * (torch.arange(k, dtype=torch.float64) + 0.5) / k) ** 2
            w[:k], w[n - k :] = edge, edge.flip(0)
        return w

    return ramp(height)[:, None] * ramp(width)[None, :]


# --------------------------------------------------------------------------- denoising


@torch.no_grad()
def denoise(
    pipe_or_model: Pipeline | Callable[..., Tensor],
    images: Tensor,
    sigma: float | Sequence[float] | Tensor | str,
    *,
    sigma_scale: float = 2.0,
    mode: Literal["mmse", "sample"] = "mmse",
    samples: int = 1,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    tile_overlap: int | None = None,
    batch_size: int = 256,
    clamp: bool = True,
    progress: bool | None = False,
    schedule: str | Schedule | None = None,
    prediction: str | Parameterization | None = None,
    sample_index: int = 0,
) -> Tensor:
    """Denoise ``images`` (B, C, H, W), model space [-1, 1] plus Gaussian noise of std ``sigma``.

    Args:
        sigma: the noise std: a number, one per image, or ``"auto"`` (:func:`estimate_sigma`).
        sigma_scale: width of the value range ``sigma`` is measured on: 2 (default, model
            space), 255 (0..255 pixels, so sigma 50 is 2 * 50 / 255 in model space) or 1 ([0, 1]).
        mode: ``"mmse"`` (posterior mean) or ``"sample"`` (one posterior sample); see the module doc.
        samples: mmse only: 1 = the one-evaluation denoised estimate, K > 1 = the mean of K
            posterior samples.
        sampler, steps: the sampler for posterior samples (default ``ddpm``, 20 steps from the
            matched level; a deterministic sampler such as ``dpmpp_2m`` gives one fixed image).
        seed: the samplers' noise, keyed by (seed, image index, tile): results do not depend on
            ``batch_size``; ``sample_index`` is the index of the first image in a larger input.
        tile_overlap: pixels shared by neighbouring tiles of an image larger than the model's
            size (default a quarter of the tile side).
        batch_size: tiles (or images) per model call; a tqdm bar shows them when ``progress`` (None: on a terminal).
        clamp: clamp the result to [-1, 1].
        schedule, prediction: for a bare ``model(x, t, cond)``, as in :func:`diffcore.sample`.

    A class-conditional model is used unconditionally (its null label). Returns (B, C, H, W).
    """
    pipe = Pipeline.wrap(pipe_or_model, schedule, prediction)
    y = check_noisy(images, pipe.shape).to(pipe.device)
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {MODES}")
    samples = check_int("samples", samples)
    if mode == "sample" and samples != 1:
        raise ValueError(
            f"samples={samples}: mode 'sample' returns one posterior sample; use mode 'mmse' for the mean of several"
        )
    batch_size = check_int("batch_size", batch_size)
    if steps is not None:
        check_int("steps", steps)
    sig = resolve_sigma(y, sigma, pipe.schedule, sigma_scale=sigma_scale)
    th, tw = (pipe.shape[-2], pipe.shape[-1]) if pipe.shape is not None else y.shape[-2:]
    overlap = max(th, tw) // 4 if tile_overlap is None else check_int("tile_overlap", tile_overlap, 0)
    if overlap >= min(th, tw):
        raise ValueError(f"tile_overlap={overlap} must be smaller than the model's tile size {th}x{tw}")
    run = _Run(pipe, mode, samples, sampler, steps, seed, match_level(pipe.schedule, sig))
    run.sample_index = sample_index
    result = _tiled(y, run, (th, tw), overlap, batch_size, progress).to(y.dtype)
    return result.clamp(-1, 1) if clamp else result


def _tiled(y: Tensor, run: _Run, tile: tuple[int, int], overlap: int, batch_size: int, progress: bool | None) -> Tensor:
    """``run`` on every tile of size ``tile`` of every image of ``y``, ``batch_size`` tiles at a
    time, blended by :func:`blend_window` (float64, shaped like ``y``)."""
    (th, tw), n = tile, y.shape[0]
    rows, cols = tile_starts(y.shape[-2], th, overlap), tile_starts(y.shape[-1], tw, overlap)
    spots = [(i, r, c) for i in range(n) for r in rows for c in cols]
    out = torch.zeros_like(y, dtype=torch.float64)
    weight = torch.zeros_like(y[:, :1], dtype=torch.float64)
    window = blend_window(th, tw, overlap).to(y.device) if len(spots) > n else torch.ones(th, tw, device=y.device)
    unit = "tile" if len(spots) > n else "image"
    with progress_bar(len(spots), "denoise", progress, unit=unit) as bar:
        for start in range(0, len(spots), batch_size):
            chunk = spots[start : start + batch_size]
            tiles = torch.stack([y[i, :, r : r + th, c : c + tw] for i, r, c in chunk])
            x0 = run(tiles, [i for i, _, _ in chunk], run.sample_index * (len(spots) // n) + start)  # tile keys
            for (i, r, c), tile_x0 in zip(chunk, x0, strict=True):
                out[i, :, r : r + th, c : c + tw] += tile_x0.double() * window
                weight[i, :, r : r + th, c : c + tw] += window
            bar.update(len(chunk))
    return out / weight


class _Run:
    """Denoise one batch of model-sized tiles, each at its own matched level."""

    def __init__(
        self,
        pipe: Pipeline,
        mode: str,
        samples: int,
        sampler: str | None,
        steps: int | None,
        seed: int,
        levels: tuple[Tensor, Tensor, Tensor],
    ) -> None:
        self.pipe, self.mode, self.samples = pipe, mode, samples
        self.levels = levels  # (t, alpha, std) per image
        self.sampler = sampler or DEFAULT_SAMPLE_SAMPLER
        self.steps = DEFAULT_SAMPLE_STEPS if steps is None else steps
        # one Philox seed per posterior sample; tile k of the whole input draws with sample_index k
        self.streams = torch.randint(0, 2**62, (samples,), generator=torch.Generator().manual_seed(int(seed))).tolist()
        self.sample_index = 0

    def __call__(self, y: Tensor, images: list[int], key: int = 0) -> Tensor:
        idx = torch.tensor(images)
        t, alpha, std = (v[idx] for v in self.levels)
        shape = (-1, *([1] * (y.dim() - 1)))
        x_t = y * alpha.to(y.device, y.dtype).reshape(shape)
        if self.mode == "mmse" and self.samples == 1:
            levels = [Level(*v) for v in zip(t.tolist(), alpha.tolist(), std.tolist(), strict=True)]
            return self.pipe.predict_x0(x_t, levels if len(levels) > 1 else levels[0])
        total = torch.zeros_like(y, dtype=torch.float64)
        for stream in self.streams:
            # t_start > 0, as partial plans need (t = 0 only at the smallest level, sigma ~ 0.01)
            total += self.pipe.sample_from(
                x_t,
                t.clamp_min(1e-6),
                sampler=self.sampler,
                steps=self.steps,
                add_noise=False,
                seed=stream,
                sample_index=key,
            ).double()
        return (total / self.samples).to(y.dtype)


# --------------------------------------------------------------------------- the denoise task


OUTPUT_SUFFIXES = (".png", ".npz", ".npy")


@dataclass
class DenoiseParams:
    """Parameters of the ``denoise`` task: a noisy image file in, a denoised file out."""

    checkpoint: Path = field(metadata={"help": "run folder or checkpoint.safetensors"})
    input: Path = field(
        metadata={"help": "noisy PNG/JPEG image, or NPY/NPZ array(s): uint8 pixels or floats in model space"}
    )
    sigma: str = field(
        metadata={
            "help": "noise std on the --sigma-scale range (e.g. 50 on 0..255), or 'auto' to estimate it per image"
        }
    )
    sigma_scale: float = field(
        default=255.0,
        metadata={
            "help": "width of the range --sigma is measured on: 255 (0..255 pixels), 1 ([0, 1]), 2 (model space)"
        },
    )
    mode: Literal["mmse", "sample"] = field(
        default="mmse",
        metadata={
            "help": "mmse: the posterior mean (one evaluation, or the mean of --samples samples) | sample: one "
            "posterior sample"
        },
    )
    samples: int = field(default=1, metadata={"help": "mmse: posterior samples to average (1: one-step estimate)"})
    sampler: str | None = field(default=None, metadata={"help": "sampler for posterior samples (default ddpm)"})
    steps: int | None = field(default=None, metadata={"help": "sampler steps from the matched level (default 20)"})
    seed: int = field(default=0, metadata={"help": "noise seed"})
    tile_overlap: int | None = field(
        default=None,
        metadata={
            "help": "pixels shared by neighbouring tiles of images larger than the model (default: a quarter tile)"
        },
    )
    batch_size: int = field(default=256, metadata={"help": "tiles per model call"})
    output: Path = field(
        default=Path("outputs/denoise/denoised.png"),
        metadata={"help": "output file: .png (one image; a batch as a grid), .npz or .npy"},
    )
    clip: bool = clip_field()
    device: str = device_field()
    quiet: bool = quiet_field()

    def __post_init__(self) -> None:
        self.checkpoint, self.input, self.output = Path(self.checkpoint), Path(self.input), Path(self.output)
        self.sigma = str(parse_sigma(self.sigma))
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}: expected one of {MODES}")
        scale = self.sigma_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"sigma_scale={scale!r} must be a number > 0 (255, 1 or 2)")
        for name, high in (("samples", MAX_STEPS), ("steps", MAX_STEPS), ("batch_size", MAX_BATCH)):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), 1, high)
        check_int("seed", self.seed, 0, MAX_SEED)
        check_sampler(self.sampler)
        if self.tile_overlap is not None:
            check_int("tile_overlap", self.tile_overlap, 0)
        if self.mode == "sample" and self.samples != 1:
            raise ValueError(
                f"samples={self.samples}: mode 'sample' returns one posterior sample; use --mode mmse "
                "to average several"
            )
        self.check_output()

    def check_output(self) -> None:
        """Check ``output`` as the file of a run in this process (.png, .npz or .npy); a wrapper
        that writes elsewhere (:mod:`diffcore.scale`: a folder of images or shards) overrides this."""
        if self.output.suffix.lower() not in OUTPUT_SUFFIXES:
            raise ValueError(f"output {str(self.output)!r}: expected a file ending in {', '.join(OUTPUT_SUFFIXES)}")

    def options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`denoise` these parameters set (``sigma``: a float or ``"auto"``)."""
        return {
            "sigma": "auto" if self.sigma == "auto" else float(self.sigma),
            "sigma_scale": self.sigma_scale,
            "mode": self.mode,
            "samples": self.samples,
            "sampler": self.sampler,
            "steps": self.steps,
            "seed": self.seed,
            "tile_overlap": self.tile_overlap,
            "batch_size": self.batch_size,
        }


class Denoise:
    """Denoise images with a trained model: the posterior mean (mmse) or a posterior sample,
    starting the reverse process at the level that matches the noise; large images are tiled."""

    name = "denoise"
    Params = DenoiseParams

    def run(self, params: DenoiseParams) -> dict[str, Any]:
        started = time.perf_counter()
        pipe = load_pipeline(params.checkpoint, params.device)
        io.check_writable(params.output)
        noisy = io.load_images(params.input)
        options = params.options()
        out = denoise(pipe, noisy, progress=progress_shown(params.quiet), **options)
        out = io.check_finite(out, "the denoised images").cpu()
        if params.clip:
            out = out.clamp(-1, 1)
        sigma = resolve_sigma(noisy, options["sigma"], pipe.schedule, sigma_scale=params.sigma_scale)
        sampled = params.mode == "sample" or params.samples > 1  # else one model evaluation, no sampler
        run = {"sampler": params.sampler or "ddpm", "steps": params.steps or 20} if sampled else {}
        info = png_info(pipe, params.checkpoint, params, mode=params.mode, sigma=params.sigma, **run)
        for key in () if sampled else ("sampler", "steps"):  # one model evaluation: no sampler ran
            info.pop(key, None)
        io.write_denoised(params.output, out, noisy, sigma, info)
        in_units = [round(s, 4) for s in (sigma * params.sigma_scale / 2).tolist()]
        shown: Any = (
            in_units
            if len(in_units) <= 16
            else {"mean": round(sum(in_units) / len(in_units), 4), "min": min(in_units), "max": max(in_units)}
        )
        return {
            "mode": params.mode,
            "n": int(out.shape[0]),
            "shape": list(out.shape[1:]),
            "sigma": shown,
            "sigma_scale": params.sigma_scale,
            "sigma_estimated": params.sigma == "auto",
            "output": str(params.output),
            "seconds": round(time.perf_counter() - started, 2),
            "params": as_json(params),
        }
