"""What the tasks write: sample grids and arrays, translated and denoised images, anomaly scores
with their histogram and map overlays. Every writer creates the parent folder, refuses NaN/inf
results (:func:`check_finite`) before writing anything, writes each file whole or not at all
(:mod:`diffcore.io.files`) and returns the paths it wrote."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from diffcore.io.files import atomic_write_bytes, temporary_path
from diffcore.io.images import save_grid, save_image, to_uint8

if TYPE_CHECKING:
    from diffcore.tasks.anomaly.calibration import Calibration
    from diffcore.tasks.anomaly.scores import Detection

__all__ = [
    "check_finite",
    "plot_histogram",
    "plot_maps",
    "write_denoised",
    "write_each",
    "write_npz",
    "write_samples",
    "write_scores",
    "write_translation",
]


def check_finite(x: Tensor, what: str) -> Tensor:
    """``x`` when every value is finite; else ValueError counting the NaN/inf values (a diverged
    model or sampler), so no command reports success with a NaN result."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        raise ValueError(
            f"{what} contain {int(bad.sum())} NaN or inf value(s) of {x.numel()}: the model or the sampler "
            "diverged (try another sampler, more steps or a lower guidance scale); nothing was written"
        )
    return x


def write_npz(path: str | Path, **arrays: Any) -> Path:
    """``np.savez(path, **arrays)`` via a temporary file (the folder is created)."""
    path = Path(path)
    with temporary_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def _write_npy(path: Path, array: np.ndarray) -> None:
    with temporary_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


def write_samples(
    x: Tensor,
    labels: Tensor | None,
    targets: Sequence[str | Path | None],
    *,
    images: bool,
    nrow: int | None = None,
    info: dict[str, Any] | None = None,
    out_dir: str | Path | None = None,
    rows: np.ndarray | None = None,
) -> dict[str, str]:
    """Samples (N, ...) to each target: ``.png`` a grid (``nrow`` columns), else an ``.npz`` of
    ``samples`` (float, model space), ``labels`` (-1 for none), for ``images`` also ``images``
    (N, H, W, C) uint8, and with ``rows`` (a table model's samples in the table's own units,
    float64) also ``rows``; with ``out_dir``, also one PNG per image sample (``00000.png``, ...).
    PNGs carry ``info`` as text chunks (plus each sample's ``index`` and ``class_label``). Returns
    ``{"png": path, "npz": path, "out_dir": folder}`` for those written."""
    check_finite(x, "the samples")
    written: dict[str, str] = {}
    if out_dir is not None:
        infos = [
            {**(info or {}), **({} if labels is None else {"class_label": int(labels[i])})} for i in range(x.shape[0])
        ]
        written["out_dir"] = str(write_each(x, Path(out_dir), infos))
    for target in targets:
        if target is None:
            continue
        path = Path(target)
        if path.suffix.lower() == ".png":
            save_grid(x.cpu(), path, nrow=nrow, info=info)
            written["png"] = str(path)
            continue
        arrays = {
            "samples": x.detach().float().cpu().numpy(),
            "labels": (labels if labels is not None else torch.full((x.shape[0],), -1)).numpy(),
        }
        if images:
            arrays["images"] = to_uint8(x)
        if rows is not None:
            arrays["rows"] = np.asarray(rows, dtype=np.float64)
        write_npz(path, **arrays)
        written["npz"] = str(path)
    return written


def write_each(x: Tensor, folder: Path, infos: Sequence[dict[str, Any]]) -> Path:
    """One PNG per image in (N, C, H, W) ``x``, at its own size: ``folder/00000.png``, ...; image
    i carries ``infos[i]`` as text chunks."""
    if x.dim() != 4:
        raise ValueError(f"out_dir={str(folder)!r}: one PNG per sample needs image samples, got shape {tuple(x.shape)}")
    folder.mkdir(parents=True, exist_ok=True)
    width = max(5, len(str(x.shape[0] - 1)))
    for i in range(x.shape[0]):
        save_image(x[i].cpu(), folder / f"{i:0{width}d}.png", info={**infos[i], "index": i})
    return folder


def write_translation(
    folder: Path, images: Tensor, missing: Tensor | None, out: Tensor, info: dict[str, Any] | None = None
) -> dict[str, str]:
    """output.npz (exact arrays), output.png (the result at native size; a grid for a batch) and
    comparison.png (input row, masked input row when ``missing`` is given, output row; upscaled);
    the PNGs carry ``info`` as text chunks.
    ``images`` are the inputs as read; ``missing`` (B, 1, H, W) is 1 on missing pixels."""
    check_finite(out, "the translated images")
    folder.mkdir(parents=True, exist_ok=True)
    n, c, h, w = out.shape
    shown = images
    if shown.shape[1] != c:  # resize=True converted grayscale <-> RGB
        shown = shown.mean(dim=1, keepdim=True) if c == 1 else shown.expand(-1, 3, -1, -1)
    shown = torch.nn.functional.interpolate(shown.clamp(-1, 1), size=(h, w), mode="nearest")
    rows = [shown]
    if missing is not None:
        rows.append(torch.where(missing.to(shown.device) > 0, torch.zeros_like(shown), shown))
    rows.append(out)
    write_npz(folder / "output.npz", images=out.numpy(), input=images.numpy())
    save_grid(out, folder / "output.png", nrow=math.ceil(math.sqrt(n)), scale=1 if n == 1 else None, info=info)
    save_grid(torch.cat(rows), folder / "comparison.png", nrow=n, info=info)
    return {
        "out": str(folder),
        "images": str(folder / "output.png"),
        "npz": str(folder / "output.npz"),
        "comparison": str(folder / "comparison.png"),
    }


def write_denoised(path: Path, out: Tensor, noisy: Tensor, sigma: Tensor, info: dict[str, Any] | None = None) -> None:
    """By suffix: ``.npz`` (``images``, ``noisy``, model-space ``sigma``), ``.npy`` (the images) or
    ``.png`` (one image at its own size; a batch as a grid; ``info`` as text chunks)."""
    check_finite(out, "the denoised images")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        write_npz(path, images=out.numpy(), noisy=noisy.numpy(), sigma=sigma.numpy())
    elif suffix == ".npy":
        _write_npy(path, out.numpy())
    elif out.shape[0] == 1:
        save_image(out, path, info=info)
    else:
        save_grid(out, path, nrow=math.ceil(math.sqrt(out.shape[0])), scale=1, info=info)


# --------------------------------------------------------------------------- anomaly scores


def write_scores(
    out: Path, x: Tensor, result: Detection, calibration: Calibration | None, normal_scores: Tensor | None
) -> dict[str, str]:
    """Scores to ``out`` (.csv: index, score, label; else JSON with the settings and calibration),
    ``<stem>_hist.png``, ``<stem>_calibration.json`` when calibrated and, for images,
    ``<stem>_maps.png`` (overlays) and ``<stem>_maps.npz``."""
    check_finite(result.scores, "the anomaly scores")
    stem = out.parent / out.stem
    scores = result.scores.tolist()
    labels = None if result.labels is None else [bool(v) for v in result.labels.tolist()]
    if out.suffix.lower() == ".csv":
        with temporary_path(out) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["index", "score", "label"])
            for i, s in enumerate(scores):
                writer.writerow([i, repr(s), "" if labels is None else int(labels[i])])
    else:
        atomic_write_bytes(
            out,
            json.dumps(
                {
                    "method": result.method,
                    "settings": result.settings,
                    "scores": scores,
                    "labels": labels,
                    "threshold": result.threshold,
                    "calibration": None if calibration is None else asdict(calibration),
                }
            ).encode()
            + b"\n",
        )
    files = {"output": str(out), "histogram": str(stem) + "_hist.png"}
    if calibration is not None:
        files["calibration"] = str(stem) + "_calibration.json"
        atomic_write_bytes(Path(files["calibration"]), (calibration.to_json() + "\n").encode())
    plot_histogram(result.scores, normal_scores, result.threshold, result.method, Path(files["histogram"]))
    if x.dim() == 4:
        files["maps"], files["maps_npz"] = str(stem) + "_maps.png", str(stem) + "_maps.npz"
        write_npz(files["maps_npz"], maps=result.maps.numpy(), scores=result.scores.numpy())
        plot_maps(x, result, Path(files["maps"]))
    return files


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_histogram(scores: Tensor, normal: Tensor | None, threshold: float | None, method: str, path: Path) -> None:
    """Histogram of ``scores`` (and of the calibration ``normal`` scores), the threshold dashed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    both = scores if normal is None else torch.cat([scores, normal])
    bins = np.histogram_bin_edges(both.numpy(), bins=min(40, max(5, both.numel() // 4)))
    ax.hist(scores.numpy(), bins=bins, alpha=0.7, label=f"input (n={scores.numel()})")
    if normal is not None:
        ax.hist(normal.numpy(), bins=bins, alpha=0.5, label=f"calibration normals (n={normal.numel()})")
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set_xlabel(f"anomaly score ({method})")
    ax.set_ylabel("count")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save_figure(fig, path)


def plot_maps(x: Tensor, result: Detection, path: Path, limit: int = 16) -> None:
    """The first ``limit`` inputs (top row) and their anomaly maps over them (bottom row)."""
    plt = _pyplot()
    n = min(limit, x.shape[0])
    fig, axes = plt.subplots(2, n, figsize=(1.3 * n + 0.4, 3.0), squeeze=False)
    vmax = float(result.maps[:n].max()) or 1.0
    for i in range(n):
        img = ((x[i].permute(1, 2, 0).clamp(-1, 1) + 1) / 2).numpy()
        gray = img.mean(axis=2)
        axes[0, i].imshow(img if img.shape[2] == 3 else gray, cmap="gray", vmin=0, vmax=1)
        axes[1, i].imshow(gray, cmap="gray", vmin=0, vmax=1)
        axes[1, i].imshow(result.maps[i].numpy(), cmap="inferno", alpha=0.6, vmin=0, vmax=vmax)
        mark = "" if result.labels is None else (" !" if bool(result.labels[i]) else "")
        axes[0, i].set_title(f"{float(result.scores[i]):.3g}{mark}", fontsize=7)
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("input", fontsize=8)
    axes[1, 0].set_ylabel("map", fontsize=8)
    fig.suptitle(f"anomaly maps ({result.method}); title: score, '!' = labelled anomalous", fontsize=8)
    fig.tight_layout()
    _save_figure(fig, path)


def _save_figure(fig: Any, path: Path) -> None:
    """A matplotlib figure as a PNG via a temporary file; the figure is closed."""
    try:
        with temporary_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        _pyplot().close(fig)
