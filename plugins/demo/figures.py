"""The demo's figures: labelled image strips, training-loss curves, score histograms, ROC curves and
metric-vs-cost curves.

Every function writes one PNG (matplotlib, imported when called; the caller selects the Agg backend).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

__all__ = ["plot_curves", "plot_histograms", "plot_losses", "plot_roc", "strip_figure"]


def strip_figure(
    rows: list[tuple[str, Tensor]], path: Path, title: str, *, cell: float = 0.55, cmap: str = "gray"
) -> Path:
    """One labelled row of images per entry (images (N, C, H, W) in [-1, 1]) in one PNG."""
    import matplotlib.pyplot as plt

    ncol = max(int(x.shape[0]) for _, x in rows)
    label_w = 0.3 + 0.068 * max(len(label) for label, _ in rows)  # inches, for 8-point labels
    title_h, gap = 0.35, 0.04
    width, height = label_w + 0.05 + ncol * (cell + gap), title_h + len(rows) * (cell + gap)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(
        left=label_w / width,
        right=1 - 0.05 / width,
        top=1 - title_h / height,
        bottom=0.02 / height,
        wspace=gap / cell,
        hspace=gap / cell,
    )
    for r, (label, x) in enumerate(rows):
        imgs = ((x.detach().float().clamp(-1, 1) + 1) / 2).cpu()
        for c in range(ncol):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if c < imgs.shape[0]:
                im = imgs[c].permute(1, 2, 0).numpy()
                ax.imshow(im[..., 0] if im.shape[-1] == 1 else im, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=9, y=1 - 0.08 / height, va="top")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_losses(runs: Path, names: list[str], path: Path) -> Path:
    """The training loss of each run (its metrics.jsonl), side by side."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(3.3 * len(names), 2.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        rows = [json.loads(line) for line in (runs / name / "metrics.jsonl").read_text().splitlines() if line.strip()]
        rows = [r for r in rows if "loss" in r and "step" in r]
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.4)
        ax.set_yscale("log")
        ax.set_title(f"{name}", fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("training loss", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_histograms(
    panels: list[tuple[np.ndarray, np.ndarray, str]], path: Path, threshold: float | None = None
) -> Path:
    """Per panel (scores, 0/1 labels, title): the score histograms of the normal and anomalous
    items; ``threshold`` is drawn as a dashed line on the first panel."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.2))
    for ax, (scores, labels, title) in zip(axes, panels):
        ax.hist(scores[~labels.astype(bool)], bins=30, alpha=0.6, label="normal", density=True)
        ax.hist(scores[labels.astype(bool)], bins=30, alpha=0.6, label="anomalous", density=True)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
    if threshold is not None:
        axes[0].axvline(threshold, color="k", ls="--", lw=1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_roc(curves: list[tuple[np.ndarray, dict[str, Any], str]], path: Path) -> Path:
    """Per panel (0/1 labels, {method: scores}, title): one ROC curve per method, AUROC in the legend."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.6))
    for ax, (labels, scores, title) in zip(axes, curves):
        for name, v in scores.items():
            f, t, _ = roc_curve(labels, v)
            ax.plot(f, t, label=f"{name} ({roc_auc_score(labels, v):.3f})", lw=1.3)
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("false-positive rate", fontsize=8)
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("true-positive rate", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(
    curves: dict[str, list[tuple[float, float]]],
    path: Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    floor: tuple[float, str] | None = None,
    xticks: list[float] | None = None,
) -> Path:
    """One line of (x, y) points per named curve on log-log axes (``xticks``: labelled x values); a
    curve whose name ends in ``" *"`` is dashed; ``floor`` = (y, label) is drawn as a dotted line."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, FuncFormatter, NullFormatter

    fig, ax = plt.subplots(figsize=(9.0, 4.8), dpi=110)
    markers = "osD^vP<>hX*p"
    for i, (name, pts) in enumerate(curves.items()):
        xs, ys = zip(*sorted(pts)) if pts else ((), ())
        dashed = name.endswith(" *")
        ax.plot(
            xs,
            ys,
            marker=markers[i % len(markers)],
            ms=4,
            lw=1.3,
            ls="--" if dashed else "-",
            color=plt.get_cmap("tab20")((2 * i) % 20 + (i // 10) % 2),
            label=name.removesuffix(" *"),
        )
    if floor is not None:
        ax.axhline(floor[0], color="k", lw=1, ls=":", label=floor[1])
    ax.set_xscale("log")
    ax.set_yscale("log")
    some = FuncFormatter(lambda v, _: f"{v:g}" if v > 0 and f"{v:.0e}"[0] in "25" else "")  # 2, 5, 20, 50, ...
    if xticks:
        ax.set_xticks(xticks)
    ax.xaxis.set_minor_formatter(NullFormatter() if xticks else some)
    ax.yaxis.set_minor_formatter(some)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(FormatStrFormatter("%g"))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, ncol=1 + len(curves) // 16)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
