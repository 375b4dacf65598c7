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
sigma itself. A sigma above the model's largest level raises; an explicit sigma below its smallest
level raises too (the image is as good as clean for this model), an estimated one is raised to it.

``sigma="auto"`` estimates sigma per image with the robust median estimator of Donoho & Johnstone
(1994): ``median(|HH|) / 0.6745`` over the finest diagonal Daubechies-2 wavelet coefficients
(what scikit-image's ``estimate_sigma`` computes, here in torch without PyWavelets).

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
from diffcore.parameterization import Parameterization
from diffcore.pipeline import Pipeline
from diffcore.schedules import DiscreteSchedule, EDMSchedule, Schedule
from diffcore.tasks import as_json, load_pipeline
from diffcore.tasks.inputs import check_int, image_batch
from diffcore.timesteps import Level

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
_MAD_TO_STD = 0.6744897501960817  # the 75% quantile of N(0, 1): median |N(0, s^2)| = 0.6745 s
_RANGE_SIGMAS = 10.0  # |y| beyond 1 + 10 sigma is not noise on [-1, 1] data: probably 0..255 pixels


# --------------------------------------------------------------------------- sigma


def sigma_to_model(sigma: Any, scale: float = 255.0) -> Any:
    """A noise std measured on a value range of width ``scale`` (255: 0..255 pixels, 1: [0, 1],
    2: model space) in model-space units ([-1, 1], width 2): ``2 * sigma / scale``."""
    return sigma * (2.0 / scale)


def estimate_sigma(images: Tensor) -> Tensor:
    """Per-image noise std (B,) of (B, C, H, W) images, in the images' units.

    Donoho & Johnstone (1994, sec. 4.2): the finest diagonal wavelet coefficients of an image are
    almost pure noise, so ``sigma = median(|HH|) / 0.6745``. As scikit-image's ``estimate_sigma``:
    Daubechies-2 (4-tap) filters, half-sample symmetric extension, coefficients that are exactly 0
    (flat or clipped regions) left out, channels estimated separately and averaged. Small images
    give rough estimates: an 8x8 image has 25 coefficients, several touching the border.
    """
    x = images if images.dim() == 4 else images[None]
    b, c, h, w = x.shape
    if h < 3 or w < 3:
        raise ValueError(f"images of {h}x{w} are too small to estimate sigma (need at least 3x3)")
    hh = _highpass(_highpass(x.to(torch.float64)).transpose(-1, -2))
    mags = hh.abs().flatten(2)  # (B, C, N)
    out = torch.empty(b, c, dtype=torch.float64)
    for i in range(b):
        for j in range(c):
            nonzero = mags[i, j][mags[i, j] > 0]
            out[i, j] = _median(nonzero) / _MAD_TO_STD if nonzero.numel() else 0.0
    return out.mean(dim=1).to(images.dtype if images.is_floating_point() else torch.float32)


_R3 = math.sqrt(3.0)
# Daubechies-2 decomposition high-pass filter, (-(1+r3), 3+r3, -(3-r3), 1-r3) / (4 sqrt 2)
_DB2_HIGH = tuple(v / (4 * math.sqrt(2.0)) for v in (-(1 + _R3), 3 + _R3, -(3 - _R3), 1 - _R3))


def _highpass(x: Tensor) -> Tensor:
    """The finest-level detail coefficients along the last axis: the signal extended by 3 samples
    mirrored at each end (edge sample repeated), convolved with the db2 high-pass and
    downsampled by 2, ``floor((N + 3) / 2)`` outputs (the convention of the DWT in PyWavelets)."""
    n = x.shape[-1]
    ext = torch.cat([x[..., :3].flip(-1), x, x[..., -3:].flip(-1)], dim=-1)
    taps = torch.tensor(_DB2_HIGH[::-1], dtype=x.dtype, device=x.device)  # convolution = correlation, flipped
    return (ext.unfold(-1, 4, 1) @ taps)[..., 1::2][..., : (n + 3) // 2]


def _median(v: Tensor) -> float:
    """The median as numpy defines it (the mean of the two middle values for an even count)."""
    s = v.sort().values
    n = s.numel()
    return float(s[n // 2]) if n % 2 else float((s[n // 2 - 1] + s[n // 2]) / 2)


def check_sigma(sigma: Any, n: int, scale: float = 2.0) -> Tensor | None:
    """``sigma`` (a number, one per image, or ``"auto"``) as a (n,) float64 model-space tensor,
    or None for ``"auto"``; ``scale`` is the width of the range sigma is measured on."""
    if isinstance(sigma, str):
        if sigma.strip().lower() != "auto":
            raise ValueError(f"sigma={sigma!r}: expected a number > 0 or 'auto'")
        return None
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
        raise ValueError(
            f"sigma_scale={scale!r} must be a number > 0 (255 for 0..255 pixels, 1 for [0, 1], 2 for model space)"
        )
    try:
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).cpu()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"sigma must be a number, one number per image or 'auto', got {sigma!r}") from exc
    bad = ~(torch.isfinite(s) & (s > 0))
    if bool(bad.any()):
        shown = float(s[0]) if s.numel() == 1 else s[bad].tolist()[:8]
        raise ValueError(f"sigma={shown} must be > 0 and finite (the noise std)")
    if s.numel() == 1:
        s = s.expand(n)
    if s.shape[0] != n:
        raise ValueError(f"sigma has {s.shape[0]} values for {n} images")
    return sigma_to_model(s, scale)


def resolve_sigma(images: Tensor, sigma: Any, schedule: Schedule, *, sigma_scale: float = 2.0) -> Tensor:
    """The model-space noise std (B,) float64 of checked noisy ``images`` (B, C, H, W): ``sigma``
    converted by :func:`check_sigma`, or for ``"auto"`` :func:`estimate_sigma` raised to the
    schedule's smallest level (and lowered to its largest). Raises when the images' range is
    not noise of that std around [-1, 1] (e.g. 0..255 pixels)."""
    sig = check_sigma(sigma, images.shape[0], sigma_scale)
    if sig is None:
        lo, hi = _levels(schedule)
        sig = estimate_sigma(images).double().cpu().clamp(lo, hi)
    _check_range(images, sig)
    return sig


def _levels(schedule: Schedule) -> tuple[float, float]:
    """The smallest and largest VE sigma the model was trained at."""
    if isinstance(schedule, EDMSchedule):
        return float(schedule.sigma_min), float(schedule.sigma_max)
    train = _discrete(schedule).train_sigmas()
    return float(train[0]), float(train[-1])


def _discrete(schedule: Schedule) -> DiscreteSchedule:
    if not isinstance(schedule, DiscreteSchedule):
        raise TypeError(f"denoising supports discrete and EDM schedules, not {type(schedule).__name__}")
    return schedule


def match_level(schedule: Schedule, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(t, alpha, std) per model-space sigma (n,), float64, with ``std / alpha == sigma`` exactly.

    Discrete schedules: ``t`` is the fractional timestep where the piecewise-linear interpolation
    of the training sigmas (as :func:`~diffcore.timesteps.partial_plan` and the samplers use it)
    equals sigma; EDM schedules: ``t = sigma``. Sigma must lie within the model's levels."""
    s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
    lo, hi = _levels(schedule)
    if bool((s > hi).any()) or bool((s < lo).any()):
        bad = s[(s > hi) | (s < lo)].tolist()[:8]
        raise ValueError(f"noise level(s) {bad} (model space) outside the model's range [{lo:.4g}, {hi:.4g}]")
    if isinstance(schedule, EDMSchedule):
        return s.clone(), torch.ones_like(s), s.clone()
    train = _discrete(schedule).train_sigmas()
    idx = (torch.searchsorted(train, s, right=True) - 1).clamp(0, train.shape[0] - 2)
    s_lo, s_hi = train[idx], train[idx + 1]
    t = idx + ((s - s_lo) / (s_hi - s_lo)).clamp(0, 1)
    alpha = 1 / (1 + s * s).sqrt()
    return t, alpha, s * alpha


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


def _check_range(images: Tensor, sigma: Tensor, name: str = "images") -> None:
    peak = images.abs().flatten(1).amax(dim=1).double().cpu()
    bad = (peak > 1 + _RANGE_SIGMAS * sigma).nonzero().flatten().tolist()
    if bad:
        i = bad[0]
        raise ValueError(
            f"{name}: image {i} reaches |value| {float(peak[i]):.4g}, more than noise of std "
            f"{float(sigma[i]):.4g} around model space [-1, 1] explains; scale 0..255 pixels with "
            "x / 127.5 - 1 (and sigma with sigma_scale=255)"
        )


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
    progress: bool = False,
    schedule: str | Schedule | None = None,
    prediction: str | Parameterization | None = None,
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
        seed: the samplers' noise: a fixed seed and batch size give identical outputs.
        tile_overlap: pixels shared by neighbouring tiles of an image larger than the model's
            size (default a quarter of the tile side).
        batch_size: tiles (or images) per model call; a tqdm bar shows them when ``progress``.
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
    n = y.shape[0]
    sig = resolve_sigma(y, sigma, pipe.schedule, sigma_scale=sigma_scale)
    th, tw = (pipe.shape[-2], pipe.shape[-1]) if pipe.shape is not None else y.shape[-2:]
    overlap = max(th, tw) // 4 if tile_overlap is None else check_int("tile_overlap", tile_overlap, 0)
    if overlap >= min(th, tw):
        raise ValueError(f"tile_overlap={overlap} must be smaller than the model's tile size {th}x{tw}")
    t, alpha, std = match_level(pipe.schedule, sig)
    rows, cols = tile_starts(y.shape[-2], th, overlap), tile_starts(y.shape[-1], tw, overlap)
    spots = [(i, r, c) for i in range(n) for r in rows for c in cols]
    run = _Run(pipe, mode, samples, sampler, steps, seed)
    out = torch.zeros_like(y, dtype=torch.float64)
    weight = torch.zeros_like(y[:, :1], dtype=torch.float64)
    window = blend_window(th, tw, overlap).to(y.device) if len(spots) > n else torch.ones(th, tw, device=y.device)
    from tqdm import tqdm

    with tqdm(
        total=len(spots),
        desc="denoise",
        unit="tile" if len(spots) > n else "image",
        disable=None if progress else True,
        leave=False,
    ) as bar:
        for start in range(0, len(spots), batch_size):
            chunk = spots[start : start + batch_size]
            tiles = torch.stack([y[i, :, r : r + th, c : c + tw] for i, r, c in chunk])
            idx = torch.tensor([i for i, _, _ in chunk])
            x0 = run(tiles, t[idx], alpha[idx], std[idx])
            for (i, r, c), tile in zip(chunk, x0, strict=True):
                out[i, :, r : r + th, c : c + tw] += tile.double() * window
                weight[i, :, r : r + th, c : c + tw] += window
            bar.update(len(chunk))
    result = (out / weight).to(y.dtype)
    return result.clamp(-1, 1) if clamp else result


class _Run:
    """Denoise one batch of model-sized tiles, each at its own matched level."""

    def __init__(self, pipe: Pipeline, mode: str, samples: int, sampler: str | None, steps: int | None, seed: int):
        self.pipe, self.mode, self.samples = pipe, mode, samples
        self.sampler = sampler or DEFAULT_SAMPLE_SAMPLER
        self.steps = DEFAULT_SAMPLE_STEPS if steps is None else steps
        self.streams = torch.Generator().manual_seed(int(seed))  # one Philox seed per (batch, sample), in order

    def __call__(self, y: Tensor, t: Tensor, alpha: Tensor, std: Tensor) -> Tensor:
        shape = (-1, *([1] * (y.dim() - 1)))
        x_t = y * alpha.to(y.device, y.dtype).reshape(shape)
        if self.mode == "mmse" and self.samples == 1:
            levels = [Level(*v) for v in zip(t.tolist(), alpha.tolist(), std.tolist(), strict=True)]
            return self.pipe.predict_x0(x_t, levels if len(levels) > 1 else levels[0])
        total = torch.zeros_like(y, dtype=torch.float64)
        for _ in range(self.samples):
            stream = int(torch.randint(0, 2**62, (1,), generator=self.streams))
            # t_start > 0, as partial plans need (t = 0 only at the smallest level, sigma ~ 0.01)
            total += self.pipe.sample_from(
                x_t, t.clamp_min(1e-6), sampler=self.sampler, steps=self.steps, add_noise=False, seed=stream
            ).double()
        return (total / self.samples).to(y.dtype)


# --------------------------------------------------------------------------- the denoise task


OUTPUT_SUFFIXES = (".png", ".npz", ".npy")


def parse_sigma(text: str | float) -> float | str:
    """``"auto"`` or a positive finite number (the command line's ``--sigma``)."""
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

    def __post_init__(self) -> None:
        self.checkpoint, self.input, self.output = Path(self.checkpoint), Path(self.input), Path(self.output)
        self.sigma = str(parse_sigma(self.sigma))
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}: expected one of {MODES}")
        scale = self.sigma_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"sigma_scale={scale!r} must be a number > 0 (255, 1 or 2)")
        for name in ("samples", "steps", "batch_size"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name))
        if self.tile_overlap is not None:
            check_int("tile_overlap", self.tile_overlap, 0)
        if self.mode == "sample" and self.samples != 1:
            raise ValueError(
                f"samples={self.samples}: mode 'sample' returns one posterior sample; use --mode mmse "
                "to average several"
            )
        if self.output.suffix.lower() not in OUTPUT_SUFFIXES:
            raise ValueError(f"output {str(self.output)!r}: expected a file ending in {', '.join(OUTPUT_SUFFIXES)}")


class Denoise:
    """Denoise images with a trained model: the posterior mean (mmse) or a posterior sample,
    starting the reverse process at the level that matches the noise; large images are tiled."""

    name = "denoise"
    Params = DenoiseParams

    def run(self, params: DenoiseParams) -> dict[str, Any]:
        started = time.perf_counter()
        pipe = load_pipeline(params.checkpoint)
        noisy = io.load_images(params.input)
        sigma_arg: Any = "auto" if params.sigma == "auto" else float(params.sigma)
        out = denoise(
            pipe,
            noisy,
            sigma_arg,
            sigma_scale=params.sigma_scale,
            mode=params.mode,
            samples=params.samples,
            sampler=params.sampler,
            steps=params.steps,
            seed=params.seed,
            tile_overlap=params.tile_overlap,
            batch_size=params.batch_size,
            progress=True,
        )
        sigma = resolve_sigma(noisy, sigma_arg, pipe.schedule, sigma_scale=params.sigma_scale)
        io.write_denoised(params.output, out, noisy, sigma)
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
