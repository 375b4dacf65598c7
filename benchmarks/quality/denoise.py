"""Denoising quality on held-out digits: diffcore's posterior mean and posterior samples against
classical denoisers, at sigma = 25, 50 and 75 on the 0..255 scale.

    .venv/bin/python -m benchmarks.quality.denoise            # full run (~5 min on 2 busy cores)
    .venv/bin/python -m benchmarks.quality.denoise --quick    # smoke run: 48 images, small grids

Data: the evaluator's held-out split (``benchmarks/quality/evaluator.py``: digits, seed 0, 20 %
held out, 359 images), noised once per sigma with a fixed seed: ``y = x + (2 sigma / 255) n``
in model space [-1, 1] (0..16 pixels mapped linearly; 0..255 is the same range, so sigma 50 is
50/255 of the range). No clipping of y. Every output is clipped to [-1, 1] before scoring.

Model: the class-conditional digits checkpoint of ``benchmarks/quality/digits.py``
(``outputs/quality/digits-run``; trained on the train split only), used unconditionally through
its null label; absent, digits.py's recipe is trained there first (``--quick``: a tiny model).

Methods:
- ``diffcore_mmse``: :func:`diffcore.tasks.denoise.denoise`, ``mode="mmse"``: one network evaluation at
  the matched level (the posterior mean estimate); ``diffcore_mmse_auto``: the same with sigma
  estimated per image (``sigma="auto"``); ``diffcore_mean_k8``: the mean of 8 posterior samples.
- ``diffcore_sample``: one posterior sample (ddpm, 10 steps), reported separately: a sample is
  not an MMSE estimate (about 3 dB below the mean for a perfect model).
- ``wiener``: the linear MMSE denoiser of a Gaussian prior fitted on the train split,
  ``mu + C (C + s^2 I)^-1 (y - mu)`` over the 64-pixel vectors.
- ``tv`` (``denoise_tv_chambolle``), ``nl_means`` (``denoise_nl_means``; h, patch size and
  distance), ``wavelet_bayes`` / ``wavelet_visu`` (``denoise_wavelet`` BayesShrink / VisuShrink,
  given the true sigma): scikit-image; TV and NLM parameters tuned per sigma for PSNR on 300
  TRAIN images noised with another seed. Wavelets need PyWavelets.
- ``bm3d`` (only when ``import bm3d`` works): BM3D crashes on single 8x8 images, so the images
  are tiled into one mosaic, denoised with the true sigma and cut apart.

Scores: PSNR in dB with data range 2 on [-1, 1] (identical to data range 255 on 0..255 pixels)
and SSIM (:func:`diffcore.metrics.ssim`, 7x7 Gaussian window on 8x8 images), averaged over
images. Targets (issue #6): ``diffcore_mmse`` >= 20 dB at sigma 50 and above every classical
method at sigma 50 and 75. Writes ``benchmarks/results/quality/denoise.json`` and
``denoise.png`` (``--quick``: under ``outputs/quality/denoise-quick/``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.quality.evaluator import (
    CACHE_DIR,
    DATASETS,
    RESULTS_DIR,
    load_data,
    machine,
    split_check,
    task_parser,
)
from diffcore.baselines import wiener, wiener_fit
from diffcore.evaluation import psnr_db
from diffcore.io import save_grid
from diffcore.metrics import ssim
from diffcore.tasks import denoise as dn

QUICK_DIR = CACHE_DIR / "denoise-quick"
DIGITS_RUN = CACHE_DIR / "digits-run"  # benchmarks/quality/digits.py's model
SIGMAS = (25, 50, 75)  # on the 0..255 scale
TARGET = {"sigma": 50, "psnr_db": 20.0, "beat_classical_at": [50, 75]}
SAMPLING = {"sampler": "ddpm", "steps": 10, "samples": 8, "seed": 0}
QUICK_SAMPLING = {"sampler": "ddpm", "steps": 4, "samples": 2, "seed": 0}
NOISE_SEED, TUNE_SEED, TUNE_IMAGES = 1234, 4321, 300
QUICK_IMAGES, QUICK_TUNE_IMAGES = 48, 60
CLASSICAL = ("wiener", "tv", "nl_means", "wavelet_bayes", "wavelet_visu", "bm3d")
TV_WEIGHTS = (0.02, 0.04, 0.06, 0.08, 0.1, 0.13, 0.16, 0.2, 0.25, 0.3, 0.4)
NLM_H = (0.4, 0.6, 0.8, 1.0, 1.2, 1.5, 2.0)  # multiples of sigma
NLM_PATCHES = ((3, 2), (3, 4), (5, 3))  # (patch_size, patch_distance)


# --------------------------------------------------------------------------- classical denoisers
# All work on [0, 1] numpy images (N, 8, 8) with sigma on that scale; diffcore works in model space.


def _per_image(fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> np.ndarray:
    return np.stack([fn(img) for img in images])


def tv(images: np.ndarray, sigma: float, weight: float) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    return _per_image(lambda im: denoise_tv_chambolle(im, weight=weight), images)


def nl_means(images: np.ndarray, sigma: float, h: float, patch_size: int, patch_distance: int) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    return _per_image(
        lambda im: denoise_nl_means(
            im, h=h * sigma, sigma=sigma, patch_size=patch_size, patch_distance=patch_distance, fast_mode=True
        ),
        images,
    )


def wavelet(images: np.ndarray, sigma: float, method: str) -> np.ndarray:
    from skimage.restoration import denoise_wavelet

    return _per_image(
        lambda im: denoise_wavelet(im, sigma=sigma, method=method, mode="soft", rescale_sigma=True), images
    )


def bm3d_mosaic(images: np.ndarray, sigma: float) -> np.ndarray:
    """BM3D on one near-square mosaic of the (N, h, w) images (it fails on single 8x8 images)."""
    import bm3d

    n, h, w = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    mosaic = np.full((rows * h, cols * w), float(images.mean()))
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        mosaic[r * h : (r + 1) * h, c * w : (c + 1) * w] = im
    out = np.asarray(bm3d.bm3d(mosaic, sigma_psd=sigma), dtype=np.float64)
    return np.stack([out[(i // cols) * h : (i // cols + 1) * h, (i % cols) * w : (i % cols + 1) * w] for i in range(n)])


def _unit(x: torch.Tensor) -> np.ndarray:
    """(N, 1, H, W) model space -> (N, H, W) float64 on [0, 1]."""
    return ((x[:, 0].double() + 1) / 2).numpy()


def _model(u: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(u * 2 - 1).float()[:, None].clamp(-1, 1)


def tune(method: str, clean: torch.Tensor, noisy: torch.Tensor, sigma_u: float) -> dict[str, Any]:
    """The parameters of ``method`` with the best mean PSNR on (clean, noisy) TRAIN images."""
    grid: list[dict[str, Any]]
    if method == "tv":
        grid = [{"weight": w} for w in TV_WEIGHTS]
    else:
        grid = [{"h": h, "patch_size": p, "patch_distance": d} for h in NLM_H for p, d in NLM_PATCHES]
    fn = tv if method == "tv" else nl_means
    y = _unit(noisy)
    scores = [psnr_db(_model(fn(y, sigma_u, **params)), clean) for params in grid]
    best = int(np.argmax(scores))
    return {**grid[best], "train_psnr_db": round(float(scores[best]), 3)}


# --------------------------------------------------------------------------- the run


def load_pipeline(checkpoint: Path | None, quick: bool) -> tuple[Any, dict[str, Any]]:
    """digits.py's checkpoint (trained first when absent; quick: a tiny model) and its facts."""
    import diffcore

    path = checkpoint or DIGITS_RUN
    training = None
    if not (path / "checkpoint.safetensors").exists() and not path.is_file():
        from benchmarks.quality.generation import train_model

        path = checkpoint or (QUICK_DIR / "model" if quick else CACHE_DIR / "generation-model")
        if not (path / "checkpoint.safetensors").exists():
            training = train_model(path, None, quick)
    pipe = diffcore.Pipeline.load(path)
    split_ok = split_check(pipe)["matches"]
    return pipe, {
        "checkpoint": str(path),
        "trained_here": training,
        "split_matches_evaluator": split_ok,
        "schedule": pipe.schedule.config(),
        "prediction": pipe.param.config(),
        "num_classes": pipe.num_classes,
        "parameters": sum(p.numel() for p in pipe.model.parameters()),
    }


def _score(out: torch.Tensor, clean: torch.Tensor, seconds: float, **extra: Any) -> dict[str, Any]:
    out = out.float().clamp(-1, 1)
    return {
        "psnr_db": round(psnr_db(out, clean), 3),
        "ssim": round(ssim(out, clean, 2.0), 4),
        "seconds": round(seconds, 2),
        **extra,
    }


def evaluate_sigma(
    sigma: int,
    pipe: Any,
    data: Any,
    clean: torch.Tensor,
    tune_clean: torch.Tensor,
    sampling: dict[str, Any],
    has: dict[str, bool],
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Every method at one sigma (0..255 scale): scores and the denoised images."""
    s_model, s_unit = dn.sigma_to_model(float(sigma)), sigma / 255
    noisy = clean + s_model * torch.randn(clean.shape, generator=torch.Generator().manual_seed(NOISE_SEED + sigma))
    tune_noisy = tune_clean + s_model * torch.randn(
        tune_clean.shape, generator=torch.Generator().manual_seed(TUNE_SEED + sigma)
    )
    outs: dict[str, torch.Tensor] = {}
    res: dict[str, Any] = {"noisy": _score(noisy, clean, 0.0)}

    def timed(name: str, fn: Callable[[], torch.Tensor], **extra: Any) -> None:
        t0 = time.perf_counter()
        outs[name] = fn().float().clamp(-1, 1)
        res[name] = _score(outs[name], clean, time.perf_counter() - t0, **extra)
        print(
            f"  sigma {sigma:3d} {name:18s} PSNR {res[name]['psnr_db']:6.2f} dB  SSIM {res[name]['ssim']:.3f}  "
            f"({res[name]['seconds']:.1f} s)",
            flush=True,
        )

    k, steps, sampler, seed = sampling["samples"], sampling["steps"], sampling["sampler"], sampling["seed"]
    timed("diffcore_mmse", lambda: dn.denoise(pipe, noisy, sigma, sigma_scale=255))
    est = dn.estimate_sigma(noisy) * 255 / 2
    timed(
        "diffcore_mmse_auto",
        lambda: dn.denoise(pipe, noisy, "auto"),
        estimated_sigma={"median": round(float(est.median()), 2), "mean": round(float(est.mean()), 2)},
    )
    timed(
        f"diffcore_mean_k{k}",
        lambda: dn.denoise(pipe, noisy, sigma, sigma_scale=255, samples=k, sampler=sampler, steps=steps, seed=seed),
    )
    timed(
        "diffcore_sample",
        lambda: dn.denoise(pipe, noisy, sigma, sigma_scale=255, mode="sample", sampler=sampler, steps=steps, seed=seed),
    )
    mean, cov = wiener_fit(data.train)
    timed("wiener", lambda: wiener(noisy, mean, cov, s_model))
    y = _unit(noisy)
    for method in ("tv", "nl_means"):
        t0 = time.perf_counter()
        params = tune(method, tune_clean, tune_noisy, s_unit)
        tuning = time.perf_counter() - t0
        fn = tv if method == "tv" else nl_means
        kw = {k_: v for k_, v in params.items() if k_ != "train_psnr_db"}
        timed(
            method,
            lambda fn=fn, kw=kw: _model(fn(y, s_unit, **kw)),
            tuned_on_train=params,
            tuning_seconds=round(tuning, 1),
        )
    if has["pywt"]:
        timed("wavelet_bayes", lambda: _model(wavelet(y, s_unit, "BayesShrink")))
        timed("wavelet_visu", lambda: _model(wavelet(y, s_unit, "VisuShrink")))
    if has["bm3d"]:
        timed("bm3d", lambda: _model(bm3d_mosaic(y, s_unit)))
    outs["noisy"] = noisy
    return res, outs


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except Exception:  # noqa: BLE001 - any failure to import means "not available"
        return False
    return True


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = task_parser(__doc__, "smoke run: 48 images, 2 samples of 4 steps, small grids")
    checkpoint = "run folder of a digits model (default: digits.py's outputs/quality/digits-run)"
    ap.add_argument("--checkpoint", type=Path, default=None, help=checkpoint)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    folder = args.out or (QUICK_DIR if args.quick else RESULTS_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    sampling = QUICK_SAMPLING if args.quick else SAMPLING
    pipe, model_info = load_pipeline(args.checkpoint, args.quick)
    data = load_data("digits")
    n = QUICK_IMAGES if args.quick else len(data.test)
    clean = data.test[:n]
    tune_clean = data.train[
        torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[
            : QUICK_TUNE_IMAGES if args.quick else TUNE_IMAGES
        ]
    ]
    has = {"pywt": _importable("pywt"), "bm3d": _importable("bm3d")}
    report: dict[str, Any] = {
        "machine": machine(),
        "quick": args.quick,
        "model": model_info,
        "dataset": DATASETS["digits"],
        "n": n,
        "sigmas_0_255": list(SIGMAS),
        "sampling": sampling,
        "target": TARGET,
        "available": has,
        "psnr": "dB, data range 2 on [-1, 1] = data range 255 on 0..255; outputs clipped to the range",
        "ssim": "diffcore.metrics.ssim, data range 2, Gaussian window 7x7 (sigma 1.5) on 8x8 images",
        "noise": f"y = x + (2 sigma / 255) n, torch seed {NOISE_SEED} + sigma; tuning on {len(tune_clean)} train "
        f"images with seed {TUNE_SEED} + sigma; y not clipped",
    }
    if not has["bm3d"]:
        print("[denoise] bm3d is not installed: BM3D is left out", flush=True)
    rows, k = [clean[:12]], min(12, n)
    for sigma in SIGMAS:
        res, outs = evaluate_sigma(sigma, pipe, data, clean, tune_clean, sampling, has)
        report[f"sigma_{sigma}"] = res
        rows += [
            outs[name][:k]
            for name in ("noisy", "wiener", "diffcore_mmse", f"diffcore_mean_k{sampling['samples']}", "diffcore_sample")
        ]
    save_grid(torch.cat(rows), folder / "denoise.png", nrow=k)
    report["png_rows"] = ["clean"] + [
        f"sigma {s}: {r}"
        for s in SIGMAS
        for r in ("noisy", "wiener", "diffcore_mmse", f"diffcore_mean_k{sampling['samples']}", "diffcore_sample")
    ]
    report["verdict"] = verdict(report)
    report["seconds"] = round(time.perf_counter() - started, 1)
    out = folder / "denoise.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(json.dumps(report["verdict"], indent=2))
    print(f"wrote {out} and {folder / 'denoise.png'} ({report['seconds']} s)")
    return report


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    """Whether diffcore_mmse meets issue #6's targets."""
    out: dict[str, Any] = {}
    at = report[f"sigma_{TARGET['sigma']}"]["diffcore_mmse"]["psnr_db"]
    out[f"mmse_psnr_at_{TARGET['sigma']}"] = at
    out["mmse_at_least_20_db"] = at >= TARGET["psnr_db"]
    for sigma in TARGET["beat_classical_at"]:
        res = report[f"sigma_{sigma}"]
        best = max((m for m in CLASSICAL if m in res), key=lambda m: res[m]["psnr_db"])
        out[f"best_classical_at_{sigma}"] = {"method": best, "psnr_db": res[best]["psnr_db"]}
        out[f"mmse_beats_classical_at_{sigma}"] = res["diffcore_mmse"]["psnr_db"] > res[best]["psnr_db"]
    out["met"] = out["mmse_at_least_20_db"] and all(
        out[f"mmse_beats_classical_at_{s}"] for s in TARGET["beat_classical_at"]
    )
    return out


def table(report: dict[str, Any]) -> str:
    """A markdown table: PSNR / SSIM per method and sigma."""
    methods = [m for m in report[f"sigma_{SIGMAS[0]}"] if not m.startswith("noisy")]
    lines = [
        "| method | " + " | ".join(f"sigma {s}: PSNR dB / SSIM" for s in SIGMAS) + " |",
        "|---|" + "---|" * len(SIGMAS),
    ]
    for m in ["noisy", *methods]:
        cells = [f"{report[f'sigma_{s}'][m]['psnr_db']:.2f} / {report[f'sigma_{s}'][m]['ssim']:.3f}" for s in SIGMAS]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
