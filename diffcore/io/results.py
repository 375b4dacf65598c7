"""What the tasks write: sample grids and arrays, translated and denoised images, anomaly scores
with their histogram and map overlays. Every writer creates the parent folder and returns the
paths it wrote."""

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

from diffcore.io.images import save_grid, save_image, to_uint8

if TYPE_CHECKING:
    from diffcore.tasks.anomaly.calibration import Calibration
    from diffcore.tasks.anomaly.scores import Detection

__all__ = [
    "plot_histogram",
    "plot_maps",
    "write_denoised",
    "write_npz",
    "write_samples",
    "write_scores",
    "write_translation",
]


def write_npz(path: str | Path, **arrays: Any) -> Path:
    """``np.savez(path, **arrays)`` after creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def write_samples(
    x: Tensor, labels: Tensor | None, targets: Sequence[str | Path | None], *, images: bool, nrow: int | None = None
) -> dict[str, str]:
    """Samples (N, ...) to each target: ``.png`` a grid (``nrow`` columns), else an ``.npz`` of
    ``samples`` (float), ``labels`` (-1 for none) and, for ``images``, ``images`` (N, H, W, C)
    uint8. Returns ``{"png": path, "npz": path}`` for those written."""
    written: dict[str, str] = {}
    for target in targets:
        if target is None:
            continue
        path = Path(target)
        if path.suffix.lower() == ".png":
            save_grid(x.cpu(), path, nrow=nrow)
            written["png"] = str(path)
            continue
        arrays = {
            "samples": x.detach().float().cpu().numpy(),
            "labels": (labels if labels is not None else torch.full((x.shape[0],), -1)).numpy(),
        }
        if images:
            arrays["images"] = to_uint8(x)
        write_npz(path, **arrays)
        written["npz"] = str(path)
    return written


def write_translation(folder: Path, images: Tensor, missing: Tensor | None, out: Tensor) -> dict[str, str]:
    """output.npz (exact arrays), output.png (the result at native size; a grid for a batch) and
    comparison.png (input row, masked input row when ``missing`` is given, output row; upscaled).
    ``images`` are the inputs as read; ``missing`` (B, 1, H, W) is 1 on missing pixels."""
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
    np.savez(folder / "output.npz", images=out.numpy(), input=images.numpy())
    save_grid(out, folder / "output.png", nrow=math.ceil(math.sqrt(n)), scale=1 if n == 1 else None)
    save_grid(torch.cat(rows), folder / "comparison.png", nrow=n)
    return {
        "out": str(folder),
        "images": str(folder / "output.png"),
        "npz": str(folder / "output.npz"),
        "comparison": str(folder / "comparison.png"),
    }


def write_denoised(path: Path, out: Tensor, noisy: Tensor, sigma: Tensor) -> None:
    """By suffix: ``.npz`` (``images``, ``noisy``, model-space ``sigma``), ``.npy`` (the images) or
    ``.png`` (one image at its own size; a batch as a grid)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        np.savez(path, images=out.numpy(), noisy=noisy.numpy(), sigma=sigma.numpy())
    elif suffix == ".npy":
        np.save(path, out.numpy())
    elif out.shape[0] == 1:
        save_image(out, path)
    else:
        save_grid(out, path, nrow=math.ceil(math.sqrt(out.shape[0])), scale=1)


# --------------------------------------------------------------------------- anomaly scores


def write_scores(
    out: Path, x: Tensor, result: Detection, calibration: Calibration | None, normal_scores: Tensor | None
) -> dict[str, str]:
    """Scores to ``out`` (.csv: index, score, label; else JSON with the settings and calibration),
    ``<stem>_hist.png``, ``<stem>_calibration.json`` when calibrated and, for images,
    ``<stem>_maps.png`` (overlays) and ``<stem>_maps.npz``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.parent / out.stem
    scores = result.scores.tolist()
    labels = None if result.labels is None else [bool(v) for v in result.labels.tolist()]
    if out.suffix.lower() == ".csv":
        with open(out, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["index", "score", "label"])
            for i, s in enumerate(scores):
                writer.writerow([i, repr(s), "" if labels is None else int(labels[i])])
    else:
        out.write_text(
            json.dumps(
                {
                    "method": result.method,
                    "settings": result.settings,
                    "scores": scores,
                    "labels": labels,
                    "threshold": result.threshold,
                    "calibration": None if calibration is None else asdict(calibration),
                }
            )
            + "\n"
        )
    files = {"output": str(out), "histogram": str(stem) + "_hist.png"}
    if calibration is not None:
        files["calibration"] = str(stem) + "_calibration.json"
        calibration.to_json(files["calibration"])
    plot_histogram(result.scores, normal_scores, result.threshold, result.method, Path(files["histogram"]))
    if x.dim() == 4:
        files["maps"], files["maps_npz"] = str(stem) + "_maps.png", str(stem) + "_maps.npz"
        np.savez(files["maps_npz"], maps=result.maps.numpy(), scores=result.scores.numpy())
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
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    fig.savefig(path, dpi=110)
    plt.close(fig)
