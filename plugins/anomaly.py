"""Built-in plugin: the ``detect`` task and the ``diffcore detect`` command (anomaly detection).

    diffcore detect --checkpoint runs/digits --input images.npz --method recon --depth 0.3 \\
        --noise simplex --calibrate normals.npz --fpr 0.05 --output out/scores.json
    diffcore detect --checkpoint runs/table --input rows.csv --method dte --calibrate calib.json

Image inputs are read like ``diffcore translate``'s (PNG/JPEG, NPY/NPZ; uint8 pixels or floats in
[-1, 1]). Tabular inputs are CSV files with the training header (any column order; the label
column, if any, is ignored) or NPY/NPZ arrays with the training column count, in raw units:
they are standardized with the training statistics stored in the checkpoint. ``--calibrate``
takes held-out normal data (scored the same way) or a ``calibration.json`` written by an earlier
run. Writes the scores (JSON or CSV, by ``--output``'s suffix), ``<stem>_calibration.json``,
``<stem>_hist.png`` and, for images, ``<stem>_maps.png`` (anomaly-map overlays) and
``<stem>_maps.npz``. The math is in :mod:`diffcore.anomaly`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from diffcore_plugins.img2img import _check_file, _read_array, load_images

from diffcore.anomaly import ERRORS, METHODS, NOISES
from diffcore.cli import UsageError
from diffcore.plugins import hookimpl

__all__ = ["Detect", "DetectError", "DetectParams", "load_table"]

TABLE_SUFFIXES = (".csv", ".npy", ".npz")


# --------------------------------------------------------------------------- reading inputs


def load_table(path: str | Path, pipe: Any, what: str = "input") -> torch.Tensor:
    """A raw table (CSV with a header, or a 2-D NPY/NPZ array) standardized for ``pipe``'s model.

    CSV columns must be the training columns (any order; the training label column is dropped
    when present); arrays must have the training column count."""
    from diffcore.anomaly import standardize
    from diffcore.data.tabular import read_csv

    path = Path(path)
    _check_file(path, what, TABLE_SUFFIXES)
    meta = pipe.dataset.get("meta") or {}
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as handle:
            header = [c.strip() for c in next(csv.reader(handle), [])]
        label = meta.get("label_column")
        try:
            names, values, _ = read_csv(path, label if label in header else None)
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}".replace("tabular: ", "")) from None
        return standardize(pipe, values, names)
    arr = _read_array(path, ("x", "values"), what)
    if arr.size == 0:
        raise ValueError(f"{what} {str(path)!r} holds an empty array of shape {arr.shape}")
    if arr.ndim != 2 or arr.dtype.kind not in "biuf":
        raise ValueError(f"{what} {str(path)!r} has dtype {arr.dtype} and shape {arr.shape}; expected a 2-D "
                         "numeric array (rows, columns)")
    return standardize(pipe, arr.astype(np.float64))


def _load(path: Path, pipe: Any, what: str) -> torch.Tensor:
    if pipe.dataset.get("kind") == "tabular":
        return load_table(path, pipe, what)
    if path.suffix.lower() == ".csv":
        raise ValueError(f"{what} {str(path)!r} is a CSV table, but this model was trained on images")
    return load_images(path)


# --------------------------------------------------------------------------- the task


@dataclass
class DetectParams:
    checkpoint: Path = field(metadata={"help": "run folder or checkpoint.safetensors"})
    input: Path = field(metadata={"help": "images (PNG/JPEG/NPY/NPZ) or a table (CSV/NPY/NPZ, raw units) to score"})
    method: Literal["recon", "dte"] = field(default="recon", metadata={
        "help": "recon: partial-diffusion reconstruction error | dte: diffusion-time estimate"})
    depth: float | list[float] = field(default=0.3, metadata={
        "help": "recon: noise depth(s), fractions of the schedule in (0, 1] or training timesteps > 1; "
                "errors are averaged over several"})
    noise: Literal["gaussian", "simplex"] = field(default="gaussian", metadata={
        "help": "recon: noise kind (simplex: images only)"})
    repeats: int = field(default=1, metadata={"help": "recon: noise draws averaged per image"})
    error: Literal["squared", "abs", "mahalanobis"] = field(default="squared", metadata={
        "help": "recon: per-pixel (per-feature) error, or mahalanobis: the mean signed residual whitened by its "
                "statistics on --reference normal data (inputs of <= 4096 values)"})
    reduce: Literal["mean", "max"] = field(default="mean", metadata={
        "help": "recon: image score = mean or max of the (smoothed) map"})
    smooth: float = field(default=0.0, metadata={"help": "recon: Gaussian blur of image maps, sigma in pixels"})
    sampler: str = field(default="ddim", metadata={"help": "recon: sampler name"})
    steps: int = field(default=1, metadata={"help": "recon: sampler steps (ddim, 1: the one-shot x0 prediction)"})
    levels: int = field(default=25, metadata={"help": "dte: noise levels evaluated per input"})
    reference: Path | None = field(default=None, metadata={
        "help": "recon --error mahalanobis: NORMAL data (same formats as --input, e.g. the training rows) whose "
                "residual statistics whiten the scores"})
    calibrate: Path | None = field(default=None, metadata={
        "help": "held-out NORMAL data (same formats as --input) to fit the threshold on, or a calibration JSON"})
    fpr: float | None = field(default=None, metadata={
        "help": "target false-positive rate of the threshold (default 0.05 with --calibrate)"})
    quantile: float | None = field(default=None, metadata={
        "help": "threshold at this quantile of the normal scores (instead of --fpr)"})
    seed: int = field(default=0, metadata={"help": "noise seed"})
    batch_size: int = field(default=256, metadata={"help": "inputs per model call"})
    output: Path = field(default=Path("outputs/detect/scores.json"), metadata={
        "help": "scores file, .json or .csv; plots are written next to it"})

    def __post_init__(self) -> None:
        self.checkpoint, self.input, self.output = Path(self.checkpoint), Path(self.input), Path(self.output)
        self.calibrate = Path(self.calibrate) if self.calibrate is not None else None
        self.reference = Path(self.reference) if self.reference is not None else None
        if self.error not in ERRORS:
            raise ValueError(f"error={self.error!r}: expected one of {ERRORS}")
        if (self.error == "mahalanobis") != (self.reference is not None) and self.method == "recon" or \
                self.reference is not None and self.method != "recon":
            raise ValueError("--error mahalanobis needs --reference (normal data), and --reference is used by "
                             "--method recon --error mahalanobis only")
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r}: expected one of {METHODS}")
        if self.noise not in NOISES:
            raise ValueError(f"noise={self.noise!r}: expected one of {NOISES}")
        if self.output.suffix.lower() not in (".json", ".csv"):
            raise ValueError(f"output={str(self.output)!r}: expected a file ending in .json or .csv")
        for name in ("repeats", "batch_size", "levels", "steps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r} must be an integer >= 1")
        if isinstance(self.depth, (list, tuple)) and len(self.depth) == 1:
            self.depth = self.depth[0]
        for d in self.depth if isinstance(self.depth, (list, tuple)) else [self.depth]:
            if not (isinstance(d, (int, float)) and not isinstance(d, bool) and math.isfinite(d) and d > 0):
                raise ValueError(f"depth={d!r} must be a fraction in (0, 1] or a training timestep > 1")
        if self.fpr is not None and self.quantile is not None:
            raise ValueError("give either --fpr or --quantile, not both")
        if (self.fpr is not None or self.quantile is not None) and self.calibrate is None:
            raise ValueError("--fpr/--quantile set the threshold fitted on --calibrate data; pass --calibrate")
        if self.fpr is not None and not 0 <= self.fpr < 1:
            raise ValueError(f"fpr={self.fpr!r} must be in [0, 1)")
        if self.quantile is not None and not 0 < self.quantile <= 1:
            raise ValueError(f"quantile={self.quantile!r} must be in (0, 1]")


class DetectError(UsageError, ValueError):
    """Bad detection input: a ValueError for Python callers, one ``diffcore: error:`` line on the CLI."""


def _usage(exc: Exception) -> DetectError:
    return DetectError(f"detect: {exc}")


class Detect:
    """Anomaly detection with a model trained on normal data: partial-diffusion reconstruction
    error (with an anomaly map) or diffusion-time estimation, thresholded on held-out normals."""

    name = "detect"
    Params = DetectParams

    def run(self, params: DetectParams) -> dict[str, Any]:
        from diffcore import anomaly
        from diffcore.pipeline import Pipeline

        started = time.perf_counter()
        if params.method == "recon":
            options: dict[str, Any] = {"depth": params.depth, "noise": params.noise, "repeats": params.repeats,
                                       "error": params.error, "reduce": params.reduce, "smooth": params.smooth,
                                       "sampler": params.sampler, "steps": params.steps, "seed": params.seed}
        else:
            options = {"levels": params.levels, "seed": params.seed}
        try:
            pipe = Pipeline.load(params.checkpoint)
            x = _load(params.input, pipe, "input")
            if params.reference is not None and params.method == "recon":
                options["reference"] = _load(params.reference, pipe, "reference data")
            calibration, normal_scores = None, None
            if params.calibrate is not None and params.calibrate.suffix.lower() == ".json":
                _check_file(params.calibrate, "calibration", (".json",))
                calibration = anomaly.Calibration.from_json(params.calibrate)
            elif params.calibrate is not None:
                normals = _load(params.calibrate, pipe, "calibration data")
                normal_scores = anomaly.detect(pipe, normals, method=params.method, batch_size=params.batch_size,
                                               **options).scores
                target = {"quantile": params.quantile} if params.quantile is not None else \
                    {"fpr": 0.05 if params.fpr is None else params.fpr}
                settings = {**options, "reference": str(params.reference)} if "reference" in options else options
                calibration = anomaly.Calibration.fit(normal_scores, method=params.method, settings=settings, **target)
            result = anomaly.detect(pipe, x, method=params.method, calibration=calibration,
                                    batch_size=params.batch_size, **options)
        except (ValueError, TypeError, KeyError, FileNotFoundError) as exc:
            raise _usage(exc) from exc
        files = _write(params, pipe, x, result, calibration, normal_scores)
        labels = result.labels
        return {"method": params.method, "n": int(result.scores.numel()),
                "threshold": result.threshold, "anomalies": None if labels is None else int(labels.sum()),
                "score_mean": float(result.scores.mean()), "score_max": float(result.scores.max()),
                "seconds": round(time.perf_counter() - started, 2), **files,
                "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(params).items()}}


# --------------------------------------------------------------------------- outputs


def _write(params: DetectParams, pipe: Any, x: torch.Tensor, result: Any, calibration: Any,
           normal_scores: torch.Tensor | None) -> dict[str, str]:
    out = params.output
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
        out.write_text(json.dumps({"method": result.method, "settings": result.settings, "scores": scores,
                                   "labels": labels, "threshold": result.threshold,
                                   "calibration": None if calibration is None else asdict(calibration)}) + "\n")
    files = {"output": str(out), "histogram": str(stem) + "_hist.png"}
    if calibration is not None:
        files["calibration"] = str(stem) + "_calibration.json"
        calibration.to_json(files["calibration"])
    _plot_histogram(result.scores, normal_scores, result.threshold, result.method, Path(files["histogram"]))
    if x.dim() == 4:
        files["maps"], files["maps_npz"] = str(stem) + "_maps.png", str(stem) + "_maps.npz"
        np.savez(files["maps_npz"], maps=result.maps.numpy(), scores=result.scores.numpy())
        _plot_maps(x, result, Path(files["maps"]))
    return files


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_histogram(scores: torch.Tensor, normal: torch.Tensor | None, threshold: float | None, method: str,
                    path: Path) -> None:
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


def _plot_maps(x: torch.Tensor, result: Any, path: Path, limit: int = 16) -> None:
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


# --------------------------------------------------------------------------- the command


def _cmd_detect(args: argparse.Namespace) -> int:
    values = {f.name: getattr(args, f.name) for f in fields(DetectParams)}
    try:
        params = DetectParams(**values)
    except (TypeError, ValueError) as exc:
        raise _usage(exc) from exc
    print(json.dumps(Detect().run(params), indent=2))
    return 0


@hookimpl
def register_tasks(register: Any) -> None:
    register("detect", Detect())


@hookimpl
def register_commands(cli: Any) -> None:
    p = cli.add_command("detect", "anomaly detection: reconstruction error or diffusion-time scores, "
                                  "calibrated thresholds, anomaly maps")
    helps = {f.name: f.metadata.get("help", "") for f in fields(DetectParams)}
    p.add_argument("--checkpoint", required=True, type=Path, help=helps["checkpoint"])
    p.add_argument("--input", required=True, type=Path, help=helps["input"])
    p.add_argument("--method", choices=METHODS, default="recon", help=helps["method"])
    p.add_argument("--depth", type=float, nargs="+", default=0.3, help=helps["depth"])
    p.add_argument("--noise", choices=NOISES, default="gaussian", help=helps["noise"])
    p.add_argument("--repeats", type=int, default=1, help=helps["repeats"])
    p.add_argument("--error", choices=ERRORS, default="squared", help=helps["error"])
    p.add_argument("--reference", type=Path, default=None, help=helps["reference"])
    p.add_argument("--reduce", choices=("mean", "max"), default="mean", help=helps["reduce"])
    p.add_argument("--smooth", type=float, default=0.0, help=helps["smooth"])
    p.add_argument("--sampler", default="ddim", help=helps["sampler"])
    p.add_argument("--steps", type=int, default=1, help=helps["steps"])
    p.add_argument("--levels", type=int, default=25, help=helps["levels"])
    p.add_argument("--calibrate", type=Path, default=None, help=helps["calibrate"])
    target = p.add_mutually_exclusive_group()
    target.add_argument("--fpr", type=float, default=None, help=helps["fpr"])
    target.add_argument("--quantile", type=float, default=None, help=helps["quantile"])
    p.add_argument("--seed", type=int, default=0, help=helps["seed"])
    p.add_argument("--batch-size", dest="batch_size", type=int, default=256, help=helps["batch_size"])
    p.add_argument("--output", type=Path, default=Path("outputs/detect/scores.json"), help=helps["output"])
    p.set_defaults(func=_cmd_detect)
