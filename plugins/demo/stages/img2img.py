"""Image-to-image: an SDEdit strength strip and RePaint inpainting of the bottom half, against the
nearest training images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from diffcore.baselines import knn_fill
from diffcore.evaluation import label_accuracy, psnr_db
from diffcore.pipeline import Pipeline
from diffcore.tasks import img2img
from diffcore.tasks.inputs import region_mask
from diffcore_plugins.demo.figures import strip_figure
from diffcore_plugins.demo.recipes import STRENGTHS
from diffcore_plugins.demo.report import Report
from diffcore_plugins.demo.runs import log

__all__ = ["run"]


def sdedit_strip(pipe: Pipeline, x: torch.Tensor, out: Path) -> list[float]:
    """SDEdit of blocky 4x4 versions of ``x`` at every strength in one batch; returns the mean
    squared distance to the input per strength."""
    log("image-to-image: SDEdit strength strip")
    blocky = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
    k = min(8, len(x))
    inputs = blocky[:k].repeat(len(STRENGTHS), 1, 1, 1)
    strengths = [s for s in STRENGTHS for _ in range(k)]
    edited = img2img.sdedit(pipe, inputs, strengths, seed=0)  # one batch, per-sample strengths
    rows = [("input", blocky[:k])] + [(f"strength {s:g}", edited[i * k : (i + 1) * k]) for i, s in enumerate(STRENGTHS)]
    strip_figure(rows, out / "sdedit.png", "SDEdit: blocky 4x4 inputs edited at increasing strength (one batch)")
    return [float((edited[i * k : (i + 1) * k] - blocky[:k]).pow(2).mean()) for i in range(len(STRENGTHS))]


def inpainting(pipe: Pipeline, data: Any, clf: Any, cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    """RePaint of the bottom half of the first ``cfg["images"]`` held-out digits (one sample, and
    the mean of ``repaint_draws``) against the nearest training images, by PSNR and label accuracy."""
    log("image-to-image: RePaint inpainting of the bottom half")
    m = cfg["images"]
    x, y = data.test[:m], data.test_labels[:m]
    draws = [
        img2img.repaint(
            pipe,
            x,
            "bottom-half",
            steps=cfg["repaint_steps"],
            jump_length=cfg["repaint_jump"],
            resample=cfg["repaint_resample"],
            seed=seed,
        )
        for seed in range(cfg["repaint_draws"])
    ]
    mask = region_mask("bottom-half", x.shape[-2], x.shape[-1]).to(x.dtype)  # 1 = missing
    known = x * (1 - mask)
    train_keys = data.train * (1 - mask).expand_as(x)[:1]  # the training images seen through the same mask
    knn1 = knn_fill(data.train, train_keys, known, k=1) * mask + known
    knn = knn_fill(data.train, train_keys, known) * mask + known
    shown = slice(0, min(10, m))
    strip_figure(
        [
            ("original", x[shown]),
            ("input", (known - mask)[shown]),
            ("RePaint", draws[0][shown]),
            ("nearest train image", knn1[shown]),
        ],
        out / "inpainting.png",
        "inpainting: the bottom half is missing (shown black)",
    )

    def score(z: torch.Tensor) -> dict[str, float]:
        return {"psnr": psnr_db(z, x), "accuracy": label_accuracy(clf, z, y)}

    return {
        "repaint": score(draws[0]),
        f"repaint_mean_of_{len(draws)}": score(torch.stack(draws).mean(0)),
        "knn1": score(knn1),
        "knn5": score(knn),
        "known_pixels_exact": all(bool(torch.equal(d * (1 - mask), known)) for d in draws),
    }


def run(pipe: Pipeline, data: Any, clf: Any, cfg: dict[str, Any], out: Path, rep: Report) -> dict[str, Any]:
    l2 = sdedit_strip(pipe, data.test[: cfg["images"]], out)
    res: dict[str, Any] = {"sdedit_l2": dict(zip(map(str, STRENGTHS), l2)), **inpainting(pipe, data, clf, cfg, out)}
    mean_key, exact = f"repaint_mean_of_{cfg['repaint_draws']}", res["known_pixels_exact"]
    s = rep.section("Image-to-image", "img2img")
    s.text(
        "SDEdit noises the input to `strength` and denoises it; a batch can mix strengths (per-sample timesteps "
        "in the same fused ops). Higher strength: more realistic, less faithful."
    )
    s.figure("sdedit.png", "SDEdit strength strip.")
    s.table(["strength", "mean squared distance to the input"], [[f"{a:g}", b] for a, b in zip(STRENGTHS, l2)])
    s.text(
        f"RePaint fills the missing half with the unconditional model ({cfg['repaint_steps']} steps, jump length "
        f"{cfg['repaint_jump']}, {cfg['repaint_resample']} resamplings); the known pixels of the output equal the "
        f"input's exactly ({'checked' if exact else 'NOT equal: a bug'})."
    )
    s.figure("inpainting.png", "Inpainting before / after, with the classical kNN fill.")
    s.table(
        ["method", "PSNR (dB)", "label accuracy"],
        [
            ["RePaint (diffcore), one sample", res["repaint"]["psnr"], res["repaint"]["accuracy"]],
            ["nearest train image (baseline for one sample)", res["knn1"]["psnr"], res["knn1"]["accuracy"]],
            [f"RePaint, mean of {cfg['repaint_draws']} samples", res[mean_key]["psnr"], res[mean_key]["accuracy"]],
            ["mean of 5 nearest train images (baseline for a mean)", res["knn5"]["psnr"], res["knn5"]["accuracy"]],
        ],
        f"{cfg['images']} held-out digits. RePaint uses the class-conditional model without a label (its "
        "unconditional branch: 20% of the training labels were dropped to the null label); a paired (Palette-style) "
        "model is the stronger inpainter: see benchmarks/quality/img2img.py",
    )
    return res
