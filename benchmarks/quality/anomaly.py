"""Anomaly detection quality, semi-supervised (models see normal data only): diffcore's
reconstruction and diffusion-time scores against scikit-learn's classical detectors.

    .venv/bin/python -m benchmarks.quality.anomaly            # full run (~10 min on 2 busy cores)
    .venv/bin/python -m benchmarks.quality.anomaly --quick    # smoke run: tiny models, meaningless numbers

Tabular, seeds 0, 1, 2 (the seed sets the split, the model's initialisation and the noise):

- ``breast_cancer``: benign = normal, malignant = anomaly. ``wine``: classes 1 and 2 = normal,
  class 0 = anomaly. 60% of the normals (shuffled by the seed) are the training set; the test set
  is the other 40% plus every anomaly. The MLP diffusion model is trained by ``diffcore.train``
  on the training normals (``tabular`` dataset, 10% of them held out as calibration normals).
  Every method sees the features standardized with the training statistics; classical
  detectors use scikit-learn defaults except: IsolationForest 200 trees, LOF ``novelty=True``
  (20 neighbours), OneClassSVM RBF ``gamma="scale"``, ``nu=0.1``, kNN = mean distance to the 5
  nearest training samples.

Images, defect seeds 3, 4, 5 (0 and 1 were used to develop the recipe): the evaluator's split of
digits (seed 0, 20% held out). Half of the 359 held-out digits (chosen by the seed) get a 3x3 defect
at a random place: the patch set to the maximum (+1) or inverted (-x), half each; the pixel labels
are the patch (including pixels a bright patch left unchanged on a stroke: the ``oracle`` row, the
true change |x - x_clean|, shows the ceiling this sets). The diffusion model is
benchmarks/quality/digits.py's class-conditional UNet used unconditionally (null label); it was
trained on the train split, all normal. Classical image-level detectors run on flattened pixels;
pixel-level baselines are kNN reconstruction (mean of the 5 nearest training images, per-pixel
|error|) and PCA reconstruction (components keeping 90% of the variance). Pixel AUROC is reported on
the raw maps and on maps blurred by a Gaussian of 0.7 px (the same blur for every method). Image
AUROC of a map is its mean.

Writes ``benchmarks/results/quality/anomaly.json``, ``anomaly_roc.png``, ``anomaly_maps.png`` and
``anomaly_hist.png`` (``--quick``: ``outputs/quality/anomaly-quick/``).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import diffcore
from benchmarks.quality.evaluator import CACHE_DIR, RESULTS_DIR, load_data, machine, task_parser, write_report
from diffcore.baselines import add_defects
from diffcore.evaluation import DETECTORS, auroc, classical_maps, classical_scores, normal_split
from diffcore.evaluation.recipes import TABLE_MLP, TABLE_PREDICTION, TABLE_SCHEDULE, TABLE_TRAIN
from diffcore.tasks import anomaly

QUICK_DIR = CACHE_DIR / "anomaly-quick"
DIGITS_RUN = CACHE_DIR / "digits-run"  # benchmarks/quality/digits.py's model
SEEDS = (0, 1, 2)
TARGET = {
    "tabular": "diffcore within one s.d. of the best classical method (AUROC)",
    "pixel": "diffcore pixel AUROC >= best classical + 0.03",
}

# Tabular recipe, fixed before the final run. Chosen on development seeds 10 and 11 of breast
# cancer (not reported): absolute error averaged over depths 0.1-0.5 scored 0.936-0.960 there,
# +0.004-0.008 over squared error at depth 0.2; 3000 steps, v-prediction or width 256 were no better.
MLP = TABLE_MLP
TAB_TRAIN = {**TABLE_TRAIN, "log_every": 10**6, "checkpoint_every": 10**6}
TAB_SCHEDULE, TAB_PREDICTION = TABLE_SCHEDULE, TABLE_PREDICTION
TAB_RECON = anomaly.TABLE_RECIPE  # depths 0.1-0.5, 16 draws, abs error of the one-shot x0 prediction
# Added after the first full run (where recon, abs error, scored 0.952 +- 0.005 on breast cancer vs
# OneClassSVM 0.963 +- 0.002) and chosen on development seeds 10, 11, 12 before rerunning seeds 0-2:
# the mean *signed* residual whitened by its statistics on the training normals (error="mahalanobis",
# reference = the training rows) scored 0.969 / 0.958 / 0.970 there, against abs error 0.963 / 0.938 /
# 0.958, per-feature-standardized abs error 0.969 / 0.944 / 0.962 and OneClassSVM 0.967 / 0.958 / 0.970.
# A log or quantile-normal transform of the features lowered every method (classical ones too).
TAB_RECON_MAHALANOBIS = {**TAB_RECON, "error": "mahalanobis"}
# Image recipe, chosen on development defect seeds 0 and 1 (the reported seeds are 3, 4, 5): the
# one-shot x0 prediction (ddim, 1 step) localised defects better than a 10-step denoise, absolute
# error slightly better than squared, and averaging more noise draws and depths 0.3-0.7 (the
# multi-scale idea of AnoDDPM) raised raw pixel AUROC from 0.908 (depth 0.5, 8 draws) to 0.922.
IMAGE_SEEDS = (3, 4, 5)
IMG_RECON = {"sampler": "ddim", "steps": 1, "repeats": 8, "error": "abs"}
DEPTHS = anomaly.IMAGE_RECIPE["depth"]  # the main variant below is anomaly.IMAGE_RECIPE
IMG_VARIANTS: dict[str, dict[str, Any]] = {
    "recon_gaussian_d0.3-0.7": {"depth": DEPTHS, "noise": "gaussian", "repeats": 16},
    "recon_simplex_d0.3-0.7": {"depth": DEPTHS, "noise": "simplex", "repeats": 16},
    "recon_gaussian_d0.3": {"depth": 0.3, "noise": "gaussian"},
    "recon_gaussian_d0.5": {"depth": 0.5, "noise": "gaussian"},
    "recon_simplex_d0.5": {"depth": 0.5, "noise": "simplex"},
    "recon_gaussian_d0.5_denoise10": {"depth": 0.5, "noise": "gaussian", "steps": 10, "repeats": 4},
}
PIXEL_BLUR = 0.7
TREES = 200  # IsolationForest's (the other detectors: diffcore.evaluation.anomaly's settings)
QUICK_TAB_TRAIN = {**TAB_TRAIN, "steps": 60}


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "per_seed": values,
    }


# --------------------------------------------------------------------------- tabular


def tabular_data(name: str) -> tuple[np.ndarray, np.ndarray, str]:
    from sklearn.datasets import load_breast_cancer, load_wine

    if name == "breast_cancer":
        x, y = load_breast_cancer(return_X_y=True)
        return x, y == 0, "malignant (target 0) = anomaly, benign = normal"
    x, y = load_wine(return_X_y=True)
    return x, y == 0, "class 0 = anomaly, classes 1 and 2 = normal"


def tabular_seed(name: str, seed: int, recipe: dict[str, Any], workdir: Path) -> dict[str, Any]:
    x, anomalous, _ = tabular_data(name)
    train_raw, test_raw, labels = normal_split(x, anomalous, 0.6, seed)
    path = workdir / f"{name}-{seed}.npz"
    np.savez(path, x=train_raw)
    options = {"path": str(path), "holdout": 0.1, "seed": seed}
    t0 = time.perf_counter()
    steps = recipe["steps"]
    pipe = diffcore.train(
        "tabular",
        "mlp",
        steps,
        workdir / f"run-{name}-{seed}",
        dataset_options=options,
        model_config=MLP,
        schedule=TAB_SCHEDULE,
        prediction=TAB_PREDICTION,
        seed=seed,
        **{k: v for k, v in recipe.items() if k != "steps"},
    )
    train_seconds = time.perf_counter() - t0
    data = diffcore.get("datasets", "tabular")(**options)
    test = anomaly.standardize(pipe, test_raw)
    classical = classical_scores(data.train.numpy(), test.numpy(), seed, trees=TREES)
    scores = {k: auroc(labels, v) for k, v in classical.items()}
    scores["diffcore_recon"] = auroc(
        labels, anomaly.reconstruction_scores(pipe, test, seed=seed, progress=False, **TAB_RECON).scores
    )
    maha = {**TAB_RECON_MAHALANOBIS, "reference": data.train}
    recon = anomaly.reconstruction_scores(pipe, test, seed=seed, progress=False, **maha)
    dte = anomaly.dte_scores(pipe, test, seed=seed, progress=False)
    scores["diffcore_recon_mahalanobis"] = auroc(labels, recon.scores)
    scores["diffcore_dte"] = auroc(labels, dte.scores)
    # the threshold fitted on the held-out 10% of training normals, applied to the test normals
    calib = anomaly.reconstruction_scores(pipe, data.test, seed=seed, progress=False, **maha).scores
    cal = anomaly.Calibration.fit(calib, fpr=0.05)
    flagged = cal.labels(recon.scores).numpy()
    return {
        "auroc": scores,
        "train_seconds": round(train_seconds, 1),
        "n_train": len(data.train),
        "n_test_normal": int((labels == 0).sum()),
        "n_test_anomaly": int(labels.sum()),
        "recon_fpr_at_target_0.05": float(flagged[labels == 0].mean()),
        "recon_tpr_at_target_0.05": float(flagged[labels == 1].mean()),
        "n_calibration": len(data.test),
        "_hist": (recon.scores.numpy(), labels),
    }


# --------------------------------------------------------------------------- images


def image_seed(
    pipe: diffcore.Pipeline, data: Any, seed: int, variants: dict[str, dict[str, Any]], recon: dict[str, Any]
) -> dict[str, Any]:
    x, image_labels, pixel_labels = add_defects(data.test, seed)
    classical = classical_scores(data.train.flatten(1).numpy(), x.flatten(1).numpy(), seed, trees=TREES)
    image_auroc = {k: auroc(image_labels, v) for k, v in classical.items()}
    maps = classical_maps(data.train, x)
    maps["oracle"] = (x - data.test).abs().mean(dim=1)
    seconds = {}
    for name, options in variants.items():
        t0 = time.perf_counter()
        det = anomaly.reconstruction_scores(pipe, x, seed=seed, progress=False, **{**recon, **options})
        seconds[name] = round(time.perf_counter() - t0, 1)
        maps[f"diffcore_{name}"] = det.maps
    t0 = time.perf_counter()
    dte = anomaly.dte_scores(pipe, x, seed=seed, progress=False)
    seconds["dte"] = round(time.perf_counter() - t0, 1)
    maps["diffcore_dte"] = dte.maps
    image_auroc["diffcore_dte"] = auroc(image_labels, dte.scores)
    pixel, pixel_blur = {}, {}
    for name, m in maps.items():
        if name != "diffcore_dte":
            image_auroc[name] = auroc(image_labels, m.flatten(1).mean(1))
        pixel[name] = auroc(pixel_labels, m)
        pixel_blur[name] = auroc(pixel_labels, anomaly.gaussian_blur(m.double(), PIXEL_BLUR))
    return {
        "image_auroc": image_auroc,
        "pixel_auroc": pixel,
        "pixel_auroc_blur": pixel_blur,
        "seconds": seconds,
        "_maps": maps,
        "_x": x,
        "_labels": (image_labels, pixel_labels),
        "_dte": dte.scores,
    }


# --------------------------------------------------------------------------- figures


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(img: dict[str, Any], methods: list[str], path: Path) -> None:
    from sklearn.metrics import roc_curve

    plt = _pyplot()
    pixel_labels = img["_labels"][1]
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name in methods:
        fpr, tpr, _ = roc_curve(pixel_labels.numpy().reshape(-1), img["_maps"][name].numpy().reshape(-1))
        ax.plot(fpr, tpr, label=f"{name.replace('diffcore_', '')} ({img['pixel_auroc'][name]:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false-positive rate (normal pixels)")
    ax.set_ylabel("true-positive rate (defect pixels)")
    ax.set_title("pixel-level ROC, digits with 3x3 defects (first seed, raw maps)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_maps(img: dict[str, Any], methods: list[str], path: Path, n: int = 10) -> None:
    plt = _pyplot()
    image_labels, pixel_labels = img["_labels"]
    idx = image_labels.nonzero().flatten()[:n].tolist()
    rows = ["input", "defect", *methods]
    fig, axes = plt.subplots(len(rows), len(idx), figsize=(1.1 * len(idx) + 1.6, 1.1 * len(rows)), squeeze=False)
    for j, i in enumerate(idx):
        panels = [img["_x"][i, 0], pixel_labels[i].float(), *(img["_maps"][m][i] for m in methods)]
        for r, panel in enumerate(panels):
            ax = axes[r, j]
            ax.imshow(panel.numpy(), cmap="gray" if r < 2 else "inferno")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(rows[r].replace("diffcore_", ""), fontsize=6, rotation=0, ha="right", va="center")
    fig.suptitle("defective held-out digits: input, true patch, anomaly maps (first seed)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_hist(panels: list[tuple[str, np.ndarray, np.ndarray]], path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (title, scores, labels) in zip(axes[0], panels, strict=True):
        bins = np.histogram_bin_edges(scores, bins=30)
        ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label="normal")
        ax.hist(scores[labels == 1], bins=bins, alpha=0.6, label="anomaly")
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("score")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _aggregate(per_seed: list[dict[str, Any]], key: str) -> dict[str, Any]:
    return {m: summary([r[key][m] for r in per_seed]) for m in per_seed[0][key]}


def _verdict(
    table: dict[str, Any], ours: list[str], classical: list[str], margin: float = 0.0, within_sd: bool = False
) -> dict[str, Any]:
    best_c = max(classical, key=lambda m: table[m]["mean"])
    best_o = max(ours, key=lambda m: table[m]["mean"])
    need = table[best_c]["mean"] - table[best_c]["sd"] if within_sd else table[best_c]["mean"] + margin
    return {
        "best_classical": best_c,
        "best_classical_auroc": table[best_c]["mean"],
        "best_diffcore": best_o,
        "best_diffcore_auroc": table[best_o]["mean"],
        "needed": need,
        "met": table[best_o]["mean"] >= need,
    }


def _print_table(title: str, table: dict[str, Any]) -> None:
    print(title)
    for name, s in sorted(table.items(), key=lambda kv: -kv[1]["mean"]):
        print(f"  {name:34s} {s['mean']:.3f} +- {s['sd']:.3f}")


def tabular(report: dict[str, Any], seeds: tuple[int, ...], quick: bool) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Both tables, every seed: fills ``report[name]``; returns the histogram panels of the first seed."""
    hist_panels = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("breast_cancer", "wine"):
            runs = []
            for seed in seeds:
                print(f"[anomaly] {name} seed {seed}: training ...", flush=True)
                runs.append(tabular_seed(name, seed, QUICK_TAB_TRAIN if quick else TAB_TRAIN, Path(tmp)))
            table = _aggregate(runs, "auroc")
            report[name] = {
                "anomalies": tabular_data(name)[2],
                "auroc": table,
                "per_seed": _strip(runs),
                "verdict": _verdict(
                    table,
                    ["diffcore_recon_mahalanobis", "diffcore_recon", "diffcore_dte"],
                    list(DETECTORS),
                    within_sd=True,
                ),
            }
            _print_table(f"{name} AUROC (mean +- s.d. over {len(seeds)} seeds)", table)
            print(f"  target met: {report[name]['verdict']['met']}")
            hist_panels.append((f"{name}, diffcore recon mahalanobis (seed {seeds[0]})", *runs[0]["_hist"]))
    return hist_panels


def digits_model(checkpoint: Path, quick: bool, data: Any) -> tuple[diffcore.Pipeline, dict[str, dict[str, Any]]]:
    """digits.py's model and every image variant (quick: a 30-step model, 64 test images, 2 variants)."""
    if quick:
        QUICK_DIR.mkdir(parents=True, exist_ok=True)
        pipe = diffcore.train(
            "digits",
            "unet",
            30,
            QUICK_DIR / "run",
            dataset_options={"seed": 0, "holdout": 0.2},
            model_config={
                "base_channels": 16,
                "channel_mult": [1, 2],
                "num_res_blocks": 1,
                "attention_resolutions": [],
                "groups": 8,
            },
            batch_size=32,
            warmup_steps=5,
            log_every=10,
            checkpoint_every=100,
        )
        data.test = data.test[:64]
        return pipe, dict(list(IMG_VARIANTS.items())[:2])
    if not (checkpoint / "checkpoint.safetensors").exists() and not checkpoint.is_file():
        raise SystemExit(f"no checkpoint at {checkpoint}: run benchmarks/quality/digits.py first")
    return diffcore.Pipeline.load(checkpoint), IMG_VARIANTS


def images(
    report: dict[str, Any],
    pipe: diffcore.Pipeline,
    data: Any,
    variants: dict[str, dict[str, Any]],
    image_seeds: tuple[int, ...],
    checkpoint: str,
) -> dict[str, Any]:
    """Every image seed: fills ``report["digits"]``; returns the first seed's run (maps, labels)."""
    runs = []
    for seed in image_seeds:
        print(f"[anomaly] digits seed {seed} ...", flush=True)
        runs.append(image_seed(pipe, data, seed, variants, IMG_RECON))
    img_table = {key: _aggregate(runs, key) for key in ("image_auroc", "pixel_auroc", "pixel_auroc_blur")}
    ours = [*(f"diffcore_{v}" for v in variants), "diffcore_dte"]
    pixel_classical = ["knn_reconstruction", "pca_reconstruction"]
    report["digits"] = {
        "checkpoint": checkpoint,
        "n_test": len(data.test),
        **img_table,
        "seconds": [r["seconds"] for r in runs],
        "verdict_pixel": _verdict(img_table["pixel_auroc"], ours, pixel_classical, margin=0.03),
        "verdict_pixel_blur": _verdict(img_table["pixel_auroc_blur"], ours, pixel_classical, margin=0.03),
        "verdict_image": _verdict(img_table["image_auroc"], ours, [*DETECTORS, *pixel_classical]),
    }
    for key in ("image_auroc", "pixel_auroc", "pixel_auroc_blur"):
        _print_table(f"digits {key} (mean +- s.d. over {len(image_seeds)} seeds)", img_table[key])
    print(
        f"  pixel target (+0.03 over best classical) met: raw {report['digits']['verdict_pixel']['met']}, "
        f"blurred {report['digits']['verdict_pixel_blur']['met']}"
    )
    return runs[0]


SHOWN = (
    "diffcore_recon_gaussian_d0.3-0.7",
    "diffcore_recon_simplex_d0.3-0.7",
    "diffcore_dte",
    "knn_reconstruction",
    "pca_reconstruction",
    "oracle",
)  # the maps in the figures, when present


def digits_figures(
    img: dict[str, Any], seed: int, ours: list[str], folder: Path
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """anomaly_roc.png and anomaly_maps.png of one seed's run; returns its histogram panels."""
    shown = [m for m in SHOWN if m in img["_maps"]] or [*ours[:1], "knn_reconstruction"]
    plot_roc(img, shown, folder / "anomaly_roc.png")
    plot_maps(img, shown, folder / "anomaly_maps.png")
    labels, main_scores = img["_labels"][0].numpy(), img["_maps"][shown[0]].flatten(1).mean(1).numpy()
    return [
        (f"digits, {shown[0].replace('diffcore_', '')} (seed {seed})", main_scores, labels),
        (f"digits, dte (seed {seed})", img["_dte"].numpy(), labels),
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = task_parser(__doc__, "smoke run: tiny models, few seeds and steps")
    checkpoint = "digits model (default: benchmarks/quality/digits.py's outputs/quality/digits-run)"
    ap.add_argument("--checkpoint", type=Path, default=DIGITS_RUN, help=checkpoint)
    ap.add_argument(
        "--only",
        choices=("tabular", "images"),
        default=None,
        help="run one part and update its entries in an existing anomaly.json",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    folder = args.out or (QUICK_DIR if args.quick else RESULTS_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    seeds = SEEDS[:2] if args.quick else SEEDS
    image_seeds = IMAGE_SEEDS[:2] if args.quick else IMAGE_SEEDS
    started = time.perf_counter()
    report: dict[str, Any] = {
        "machine": machine(),
        "quick": args.quick,
        "seeds": list(seeds),
        "image_seeds": list(image_seeds),
        "target": TARGET,
        "tabular_recipe": {
            "model": MLP,
            "train": QUICK_TAB_TRAIN if args.quick else TAB_TRAIN,
            "schedule": TAB_SCHEDULE,
            "prediction": TAB_PREDICTION,
            "recon": TAB_RECON,
            "recon_mahalanobis": TAB_RECON_MAHALANOBIS,
            "dte": "defaults (25 levels, explained 0.5)",
        },
        "image_recipe": {"recon": IMG_RECON, "variants": IMG_VARIANTS, "pixel_blur": PIXEL_BLUR},
    }
    hist_panels = [] if args.only == "images" else tabular(report, seeds, args.quick)
    if args.only == "tabular":
        return _finish(report, folder, started, ["breast_cancer", "wine"])
    data = load_data("digits")
    pipe, variants = digits_model(args.checkpoint, args.quick, data)
    first = images(report, pipe, data, variants, image_seeds, str(args.checkpoint) if not args.quick else "quick")
    hist_panels += digits_figures(first, image_seeds[0], [f"diffcore_{v}" for v in variants], folder)
    if args.only is None:  # the histogram figure shows both parts
        plot_hist(hist_panels, folder / "anomaly_hist.png")
    return _finish(report, folder, started, ["digits"] if args.only else None)


def _finish(report: dict[str, Any], folder: Path, started: float, only: list[str] | None) -> dict[str, Any]:
    """Write anomaly.json; with ``only``, update those entries of the existing file."""
    report["seconds"] = round(time.perf_counter() - started, 1)
    return write_report(folder / "anomaly.json", report, only, keep=("tabular_recipe", "image_recipe"))


if __name__ == "__main__":
    main()
