"""Anomaly detection, semi-supervised: synthetic 3x3 defects on held-out digits (image and pixel
level, with a threshold calibrated on normal images) and malignant rows of the breast cancer table,
each against classical detectors (:mod:`diffcore.evaluation.anomaly`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from diffcore.baselines import add_defects
from diffcore.detector import DiffusionDetector
from diffcore.evaluation import auroc, classical_scores, nearest_train
from diffcore.pipeline import Pipeline
from diffcore.tasks.anomaly import IMAGE_RECIPE, TABLE_RECIPE, Calibration, detect, dte_scores
from diffcore_plugins.demo.figures import plot_histograms, plot_roc, strip_figure
from diffcore_plugins.demo.report import Report
from diffcore_plugins.demo.runs import log

__all__ = ["run"]

# the names of the classical detectors in the report and results.json
DETECTOR_NAMES = {
    "isolation_forest": "IsolationForest",
    "lof": "LOF (novelty)",
    "ocsvm": "one-class SVM",
    "knn": "kNN distance",
}
TEXT = (
    "Semi-supervised: the models saw normal data only. Images: held-out digits, half of them with a 3x3 patch "
    "set bright or inverted; score = partial-diffusion reconstruction error (AnoDDPM style: noise to depths "
    "0.3-0.7 of the schedule, 16 draws each, absolute error of the model's one-shot reconstruction), with a "
    "per-pixel map. Table: scikit-learn's breast cancer data, malignant rows as anomalies, trained on benign "
    "rows: `diffcore.DiffusionDetector()` with its defaults (robust scaling, size and budget from the table, early "
    "stopping, the recon + DTE-NP ensemble; chosen on benchmarks/quality/tabular_suite.py's development set), "
    "then the demo's MLP diffusion model's reconstruction (absolute error, and the whitened residual: the mean "
    "signed residual's Mahalanobis distance under its statistics on the training rows) and diffusion-time "
    "estimation (DTE) scores. CLI: `diffcore detect --checkpoint outputs/demo/runs/digits --input images.npz`; "
    "for the table `diffcore detect --checkpoint outputs/demo/runs/tabular --input rows.csv` (the recon + DTE-NP "
    "default, against the run's stored training rows; add `--error mahalanobis --depth 0.1 0.2 0.3 0.5 --repeats "
    "16` for the whitened residual)."
)


def digits(pipe: Pipeline, data: Any) -> dict[str, Any]:
    """Defects on the held-out digits: diffcore's reconstruction maps and scores, the kNN and
    IsolationForest baselines, and the threshold calibrated at 5% false positives on normal images."""
    log("anomaly detection: digits with 3x3 defects")
    x, bad, pix = add_defects(data.test, seed=0)
    det = detect(pipe, x, method="recon", seed=0, progress=True, **IMAGE_RECIPE)
    maps = det.maps.reshape(pix.shape)
    train_flat, x_flat = data.train.reshape(len(data.train), -1).numpy(), x.reshape(len(x), -1).numpy()
    dist, idx = nearest_train(train_flat, x_flat)
    knn_map = (x - data.train[torch.from_numpy(idx)].mean(dim=1)).abs().mean(dim=1)
    forest = classical_scores(train_flat, x_flat, seed=0, methods=("isolation_forest",))["isolation_forest"]
    img = {"diffcore recon": det.scores.numpy(), "kNN distance": dist.mean(1), "IsolationForest": forest}
    pixel = {"diffcore recon": maps.flatten().numpy(), "kNN-5 reconstruction": knn_map.flatten().numpy()}
    # calibration on normal held-out images of another defect draw: threshold at 5% false positives
    normal = data.test[~bad]
    cal = Calibration.fit(
        detect(pipe, normal, method="recon", seed=1, progress=False, **IMAGE_RECIPE).scores, fpr=0.05, method="recon"
    )
    flagged = cal.labels(det.scores)
    return {
        "x": x,
        "bad": bad,
        "pix": pix,
        "maps": maps,
        "image_scores": img,
        "pixel_scores": pixel,
        "image_auroc": {k: auroc(bad, v) for k, v in img.items()},
        "pixel_auroc": {k: auroc(pix.flatten(), v) for k, v in pixel.items()},
        "calibrated": {
            "threshold": cal.threshold,
            "tpr": float(flagged[bad].float().mean()),
            "fpr": float(flagged[~bad].float().mean()),
        },
    }


def table(tab_pipe: Pipeline, tab: dict[str, Any]) -> dict[str, Any]:
    """Breast cancer rows: :class:`DiffusionDetector` with its defaults, the demo model's whitened
    residual, reconstruction and DTE scores and the classical detectors, fitted on the benign
    training rows."""
    log("anomaly detection: breast cancer (trained on benign rows only)")
    xt, yt = tab["test"], tab["test_labels"]
    rec = detect(tab_pipe, xt, method="recon", seed=0, progress=False, **TABLE_RECIPE).scores.numpy()
    white = detect(
        tab_pipe,
        xt,
        method="recon",
        seed=0,
        progress=False,
        **{**TABLE_RECIPE, "error": "mahalanobis"},
        reference=tab["train"],
    ).scores.numpy()
    dte = dte_scores(tab_pipe, xt, seed=0, progress=False).scores.numpy()
    classical = classical_scores(tab["train"].numpy(), xt.numpy(), seed=0)
    detector = DiffusionDetector(n_steps=tab.get("detector_steps"), random_state=0).fit(tab["raw_train"])
    scores = {
        "diffcore detector (defaults)": -detector.score_samples(tab["raw_test"]),
        "diffcore whitened residual": white,
        "diffcore recon": rec,
        "diffcore DTE": dte,
        **{DETECTOR_NAMES[k]: v for k, v in classical.items()},
    }
    return {"labels": yt, "scores": scores, "auroc": {k: auroc(yt, v) for k, v in scores.items()}}


def figures(img: dict[str, Any], tab: dict[str, Any], out: Path) -> None:
    """anomaly_hist.png, anomaly_roc.png and anomaly_maps.png."""
    bad = img["bad"].numpy()
    plot_histograms(
        [
            (img["image_scores"]["diffcore recon"], bad, "digits: reconstruction score"),
            (tab["scores"]["diffcore whitened residual"], tab["labels"], "breast cancer: whitened residual"),
        ],
        out / "anomaly_hist.png",
        threshold=img["calibrated"]["threshold"],
    )
    plot_roc(
        [
            (img["pix"].flatten().numpy(), img["pixel_scores"], "digits, pixel level"),
            (bad, img["image_scores"], "digits, image level"),
            (tab["labels"], tab["scores"], "breast cancer"),
        ],
        out / "anomaly_roc.png",
    )
    maps, show = img["maps"], img["bad"].nonzero().flatten()[:8]
    norm_maps = maps[show] / maps[show].amax(dim=(1, 2), keepdim=True).clamp_min(1e-8)
    truth = img["pix"][show].float()[:, None] * 2 - 1
    strip_figure(
        [("input", img["x"][show]), ("defect", truth), ("diffcore map", norm_maps[:, None] * 2 - 1)],
        out / "anomaly_maps.png",
        "anomaly maps: defective held-out digits, true defect, diffcore's map",
        cmap="magma",
    )


def run(pipe: Pipeline, tab_pipe: Pipeline, data: Any, tab: dict[str, Any], out: Path, rep: Report) -> dict[str, Any]:
    img, rows = digits(pipe, data), table(tab_pipe, tab)
    figures(img, rows, out)
    px_auc, img_auc, cal, yt = img["pixel_auroc"], img["image_auroc"], img["calibrated"], rows["labels"]
    s = rep.section("Anomaly detection", "anomaly")
    s.text(TEXT)
    s.figure("anomaly_maps.png", "Anomaly maps on defective digits.")
    s.figure("anomaly_hist.png", "Score histograms (dashed: the threshold calibrated at 5% false positives).")
    s.figure("anomaly_roc.png", "ROC curves (AUROC in the legend).")
    s.table(
        ["digits (3x3 defects)", "pixel AUROC", "image AUROC"],
        [
            ["diffcore reconstruction", px_auc["diffcore recon"], img_auc["diffcore recon"]],
            ["kNN-5 reconstruction / kNN distance (baseline)", px_auc["kNN-5 reconstruction"], img_auc["kNN distance"]],
            ["IsolationForest (baseline)", "-", img_auc["IsolationForest"]],
        ],
        f"{len(img['x'])} held-out digits; calibrated threshold flags {cal['tpr']:.0%} of defective and "
        f"{cal['fpr']:.0%} of normal images",
    )
    s.table(
        ["breast cancer", "AUROC"],
        [[k, v] for k, v in rows["auroc"].items()],
        f"{int(yt.sum())} malignant + {int((1 - yt).sum())} held-out benign rows, one seed",
    )
    return {
        "digits_pixel_auroc": px_auc,
        "digits_image_auroc": img_auc,
        "breast_cancer_auroc": rows["auroc"],
        "calibrated": cal,
    }
