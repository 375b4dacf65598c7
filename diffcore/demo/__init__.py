"""The main job behind ``make demo`` / ``diffcore demo --out DIR``.

On the embedded digits data (scikit-learn's 8x8 handwritten digits, 20% held out, seed 0) the
demo trains, with fixed iteration budgets, a class-conditional UNet (label dropout: also the
unconditional model), a text-conditioned UNet (the built-in tokenizer + embedding encoder, trained
with it) and, for tabular anomaly detection, an MLP on the benign rows of scikit-learn's breast
cancer table. It then runs every task through its plugin API: generation (class grid and
guidance sweep), text-to-image on held-out paraphrases, image-to-image (SDEdit strength strip,
RePaint inpainting), denoising at sigma 25/50/75 and anomaly detection (synthetic defects on
held-out digits; malignant tumours), scores each against a classical baseline run side by side,
and writes ``report.html`` and ``report.md`` with the figures beside them.

Runs are cached in ``DIR/runs/<name>`` with the recipe that made them: a rerun with the same
recipe reuses the checkpoint (``retrain=True`` trains again). ``quick=True`` shrinks every budget
(a smoke run for tests; its numbers mean nothing). The closed-form sampler study
(:mod:`diffcore.demo.study`) is included as the report's last section.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffcore import ops
from diffcore.baselines import add_defects, knn_fill, wiener, wiener_fit
from diffcore.cli import UsageError
from diffcore.demo.report import Report
from diffcore.pipeline import Pipeline

__all__ = ["FULL", "QUICK", "main"]

DIGITS_UNET = {"base_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 2, "attention_resolutions": [],
               "num_heads": 4, "dropout": 0.0, "groups": 8}
COMMON = {"schedule": "squaredcos_cap_v2", "schedule_options": {"num_train_timesteps": 1000},
          "prediction": "v_prediction", "sampler": "dpmpp_2m", "sample_steps": 20, "lr": 1e-3,
          "lr_schedule": "cosine", "grad_clip": 1.0, "loss_weighting": "min_snr", "min_snr_gamma": 5.0, "seed": 0}

# The fixed budgets of the full demo (~15 min on 2 cores, most of it training).
FULL: dict[str, Any] = {
    "digits": {**COMMON, "dataset": "digits", "dataset_options": {"seed": 0, "holdout": 0.2}, "model": "unet",
               "model_config": DIGITS_UNET, "steps": 600, "batch_size": 128, "warmup_steps": 50,
               "ema_decay": 0.995, "label_dropout": 0.2},
    "text": {**COMMON, "dataset": "digits", "dataset_options": {"seed": 0, "holdout": 0.2}, "model": "text_unet",
             "model_config": {"unet": {"in_channels": 1, "image_size": 8, "base_channels": 32, "channel_mult": [1, 2],
                                       "num_res_blocks": 1, "attention_resolutions": [4], "groups": 8, "num_heads": 4},
                              "encoder": {"name": "builtin", "config": {"dim": 64, "layers": 1, "heads": 4,
                                                                       "max_length": 16}}},
             "captions": "digits", "text_dropout": 0.1, "steps": 700, "batch_size": 64, "warmup_steps": 50,
             "ema_decay": 0.995},
    # the recipes of benchmarks/quality/anomaly.py (chosen there on development seeds)
    "tabular": {"schedule": "squaredcos_cap_v2", "prediction": "epsilon", "sampler": "ddim", "sample_steps": 20,
                "model": "mlp", "model_config": {"hidden": 128, "depth": 3}, "steps": 1500, "batch_size": 64,
                "lr": 1e-3, "warmup_steps": 50, "lr_schedule": "cosine", "ema_decay": 0.99, "seed": 0},
    "samples": {"grid_per_class": 10, "eval_per_class": 30, "prompts_n": 8, "images": 40, "repaint_steps": 25,
                "repaint_jump": 5, "repaint_resample": 3, "repaint_draws": 4},
}
QUICK: dict[str, Any] = {
    "digits": {**FULL["digits"], "model_config": {**DIGITS_UNET, "base_channels": 8, "num_res_blocks": 1},
               "steps": 12, "batch_size": 32, "warmup_steps": 2, "sample_steps": 4},
    "text": {**FULL["text"], "model_config": {"unet": {**FULL["text"]["model_config"]["unet"], "base_channels": 8},
                                              "encoder": {"name": "builtin", "config": {"dim": 16, "layers": 1,
                                                                                        "heads": 2, "max_length": 16}}},
             "steps": 12, "batch_size": 16, "warmup_steps": 2, "sample_steps": 4},
    "tabular": {**FULL["tabular"], "steps": 30, "batch_size": 32, "warmup_steps": 2, "sample_steps": 4},
    "samples": {"grid_per_class": 2, "eval_per_class": 2, "prompts_n": 2, "images": 8, "repaint_steps": 4,
                "repaint_jump": 2, "repaint_resample": 2, "repaint_draws": 2},
}
SIGMAS = (25, 50, 75)  # denoising, on the 0..255 scale
STRENGTHS = (0.2, 0.4, 0.6, 0.8)
GUIDANCE = (0.0, 1.0, 3.0, 5.0)


# --------------------------------------------------------------------------- helpers


def _log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def prepare_out(out: str | Path) -> Path:
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UsageError(f"demo: --out {str(path)!r} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"demo: cannot create output directory {str(path)!r}: {exc.strerror or exc}") from None
    return path


def train_or_reuse(name: str, recipe: dict[str, Any], runs: Path, retrain: bool) -> tuple[Pipeline, dict[str, Any]]:
    """Train ``recipe`` into ``runs/name`` unless that folder holds a checkpoint of the same recipe."""
    import diffcore

    folder = runs / name
    stamp = folder / "demo_recipe.json"
    if not retrain and stamp.is_file() and (folder / "checkpoint.safetensors").is_file():
        try:
            same = json.loads(stamp.read_text()) == json.loads(json.dumps(recipe))
        except json.JSONDecodeError:
            same = False
        if same:
            _log(f"{name}: reusing the trained checkpoint in {folder}")
            return Pipeline.load(folder), {"reused": True, "seconds": None}
    if folder.exists():
        shutil.rmtree(folder)  # a different recipe or a partial run: start clean
    args = dict(recipe)
    steps = args.pop("steps")
    _log(f"{name}: training {args['model']} for {steps} iterations -> {folder}")
    start = time.perf_counter()
    pipe = diffcore.train(args.pop("dataset"), args.pop("model"), steps, folder,
                          checkpoint_every=steps, log_every=max(1, min(50, steps // 4)), **args)
    seconds = time.perf_counter() - start
    stamp.write_text(json.dumps(recipe, indent=2) + "\n")
    return pipe, {"reused": False, "seconds": round(seconds)}


def strip_figure(rows: list[tuple[str, Tensor]], path: Path, title: str, *, cell: float = 0.55,
                 cmap: str = "gray") -> Path:
    """One labelled row of images per entry (images (N, C, H, W) in [-1, 1]) in one PNG."""
    import matplotlib.pyplot as plt

    ncol = max(int(x.shape[0]) for _, x in rows)
    label_w = 0.3 + 0.068 * max(len(label) for label, _ in rows)  # inches, for 8-point labels
    title_h, gap = 0.35, 0.04
    width, height = label_w + 0.05 + ncol * (cell + gap), title_h + len(rows) * (cell + gap)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(left=label_w / width, right=1 - 0.05 / width, top=1 - title_h / height, bottom=0.02 / height,
                        wspace=gap / cell, hspace=gap / cell)
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


def _classifier(train: Tensor, labels: Tensor) -> Any:
    """A logistic-regression digit classifier on pixels (the demo's label judge)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=3000, C=0.5)
    clf.fit(train.reshape(len(train), -1).numpy(), labels.numpy())
    return clf


def _accuracy(clf: Any, x: Tensor, labels: Tensor | list[int]) -> float:
    pred = clf.predict(x.clamp(-1, 1).reshape(len(x), -1).numpy())
    return float((pred == np.asarray(labels)).mean())


def _psnr(x: Tensor, y: Tensor) -> float:
    from diffcore.metrics import psnr

    return float(psnr(x.clamp(-1, 1), y, data_range=2.0))


# --------------------------------------------------------------------------- the stages


def stage_generation(pipe: Pipeline, data: Any, clf: Any, cfg: dict[str, Any], out: Path, rep: Report) -> dict[str, Any]:
    from diffcore_plugins.generation import GenerateParams, generate_samples

    from diffcore.metrics import nearest_neighbour_ratio

    per = cfg["grid_per_class"]
    _log("generation: class grid and guidance sweep")
    labels = ",".join(str(k) for k in range(10) for _ in range(per))
    grid, _ = generate_samples(pipe, GenerateParams(checkpoint="-", n=10 * per, class_label=labels, guidance_scale=3.0,
                                                    seed=0))
    rows = [(f"class {k}", grid[k * per:(k + 1) * per]) for k in range(10)]
    strip_figure(rows, out / "generation_grid.png", "class-conditional samples (dpmpp_2m, 20 steps, guidance 3)")
    sweep, results = [], {}
    n_eval = 10 * cfg["eval_per_class"]
    eval_labels = [k for k in range(10) for _ in range(cfg["eval_per_class"])]
    for w in GUIDANCE:
        x, _ = generate_samples(pipe, GenerateParams(checkpoint="-", n=n_eval, class_label=",".join(map(str, eval_labels)),
                                                     guidance_scale=w, seed=1))
        acc = _accuracy(clf, x, eval_labels)
        nn = nearest_neighbour_ratio(x.reshape(n_eval, -1), data.train.reshape(len(data.train), -1),
                                     data.test.reshape(len(data.test), -1))
        results[w] = {"accuracy": acc, "nn_ratio": nn}
        sweep.append((f"w = {w:g}", x[:: cfg["eval_per_class"]][:10]))
    strip_figure(sweep, out / "generation_guidance.png", "guidance sweep: classes 0..9 (w = 0 is unconditional)")
    # classical baseline: a Gaussian per class with the train split's mean and covariance
    g = torch.Generator().manual_seed(0)
    flat, ys = data.train.reshape(len(data.train), -1).double(), data.train_labels
    gm = []
    for k in eval_labels:
        xs = flat[ys == k]
        mu, cov = xs.mean(0), torch.cov(xs.T) + 1e-4 * torch.eye(xs.shape[1], dtype=torch.float64)
        gm.append(mu + torch.linalg.cholesky(cov) @ torch.randn(xs.shape[1], generator=g, dtype=torch.float64))
    gmx = torch.stack(gm).float().clamp(-1, 1)
    gm_acc = _accuracy(clf, gmx, eval_labels)
    gm_nn = nearest_neighbour_ratio(gmx, data.train.reshape(len(data.train), -1), data.test.reshape(len(data.test), -1))
    s = rep.section("Generation", "generation")
    s.figure("generation_grid.png", "Class-conditional samples, one row per class (dpmpp_2m, 20 steps, guidance 3).")
    s.figure("generation_guidance.png", "Guidance sweep: the same seeds at w = 0 (unconditional), 1, 3, 5.")
    s.table(["samples", "prompted-class accuracy", "nearest-neighbour ratio"],
            [[f"diffcore, guidance {w:g}", r["accuracy"], r["nn_ratio"]] for w, r in results.items()]
            + [["per-class Gaussian (baseline)", gm_acc, gm_nn]],
            f"{n_eval} samples per row; accuracy by a logistic-regression classifier trained on the train split; "
            "NN ratio = distance to the nearest train image / the same for held-out images (1 = as novel as real data)")
    return {"guidance": {str(k): v for k, v in results.items()}, "gaussian_baseline": {"accuracy": gm_acc, "nn_ratio": gm_nn}}


def stage_text(pipe: Pipeline, clf: Any, cfg: dict[str, Any], out: Path, rep: Report) -> dict[str, Any]:
    from diffcore.text import generate_from_prompts
    from diffcore.text.captions import caption_set

    _log("text-to-image: held-out paraphrases at guidance 1, 3, 5")
    cs = caption_set("digits")
    n = cfg["prompts_n"]
    prompts = [cs.heldout_prompts(k)[k % len(cs.heldout_templates)] for k in range(10)]
    acc = {}
    for w in (1.0, 3.0, 5.0):
        x = generate_from_prompts(pipe, prompts, n=n, guidance_scale=w, seed=0)
        acc[w] = _accuracy(clf, x, [k for k in range(10) for _ in range(n)])
        if w == 3.0:
            shown = x
    show = [0, 3, 7, 9]
    strip_figure([(f'"{prompts[k]}"', shown[k * n:(k + 1) * n]) for k in show], out / "text2image.png",
                 "text-to-image, held-out paraphrases (never seen in training), guidance 3", cell=0.6)
    s = rep.section("Text-to-image", "text2image")
    s.text("A text-conditioned UNet (cross-attention over the built-in encoder, trained with it; 10% null-text "
           "dropout) draws the digit a prompt asks for. The prompts below are paraphrase templates held out of "
           "training. CLI: `diffcore text2image \"a handwritten seven\" --checkpoint outputs/demo/runs/text`.")
    s.figure("text2image.png", "One row per held-out prompt, guidance 3.")
    s.table(["guidance scale", "accuracy on the prompted digit"], [[f"{w:g}", a] for w, a in acc.items()],
            f"10 held-out prompts x {n} samples; same classifier as above")
    return {"accuracy": {str(k): v for k, v in acc.items()}, "prompts": prompts}


def stage_img2img(pipe: Pipeline, data: Any, clf: Any, cfg: dict[str, Any], out: Path, rep: Report) -> dict[str, Any]:
    import torch.nn.functional as F

    from diffcore import img2img

    m = cfg["images"]
    x, y = data.test[:m], data.test_labels[:m]
    _log("image-to-image: SDEdit strength strip")
    blocky = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
    k = min(8, m)
    inputs = blocky[:k].repeat(len(STRENGTHS), 1, 1, 1)
    strengths = [s for s in STRENGTHS for _ in range(k)]
    edited = img2img.sdedit(pipe, inputs, strengths, seed=0)  # one batch, per-sample strengths
    rows = [("input", blocky[:k])] + [(f"strength {s:g}", edited[i * k:(i + 1) * k]) for i, s in enumerate(STRENGTHS)]
    strip_figure(rows, out / "sdedit.png", "SDEdit: blocky 4x4 inputs edited at increasing strength (one batch)")
    l2 = [float((edited[i * k:(i + 1) * k] - blocky[:k]).pow(2).mean()) for i in range(len(STRENGTHS))]

    _log("image-to-image: RePaint inpainting of the bottom half")
    draws = [img2img.repaint(pipe, x, "bottom-half", steps=cfg["repaint_steps"], jump_length=cfg["repaint_jump"],
                             resample=cfg["repaint_resample"], seed=seed) for seed in range(cfg["repaint_draws"])]
    filled, mean = draws[0], torch.stack(draws).mean(0)
    mask = img2img.region_mask("bottom-half", x.shape[-2], x.shape[-1]).to(x.dtype)  # 1 = missing
    known = x * (1 - mask)
    keep = (1 - mask).expand_as(x)
    train_keys = data.train * keep[:1]  # the training images seen through the same mask
    knn1 = knn_fill(data.train, train_keys, known, k=1) * mask + known
    knn = knn_fill(data.train, train_keys, known) * mask + known
    shown = slice(0, min(10, m))
    strip_figure([("original", x[shown]), ("input", (known - mask)[shown]), ("RePaint", filled[shown]),
                  ("nearest train image", knn1[shown])],
                 out / "inpainting.png", "inpainting: the bottom half is missing (shown black)")
    exact = all(bool(torch.equal(d * (1 - mask), known)) for d in draws)
    score = lambda z: {"psnr": _psnr(z, x), "accuracy": _accuracy(clf, z, y)}
    res = {"sdedit_l2": dict(zip(map(str, STRENGTHS), l2)), "repaint": score(filled),
           f"repaint_mean_of_{len(draws)}": score(mean), "knn1": score(knn1), "knn5": score(knn),
           "known_pixels_exact": exact}
    s = rep.section("Image-to-image", "img2img")
    s.text("SDEdit noises the input to `strength` and denoises it; a batch can mix strengths (per-sample timesteps "
           "in the same fused ops). Higher strength: more realistic, less faithful.")
    s.figure("sdedit.png", "SDEdit strength strip.")
    s.table(["strength", "mean squared distance to the input"], [[f"{a:g}", b] for a, b in zip(STRENGTHS, l2)])
    s.text(f"RePaint fills the missing half with the unconditional model ({cfg['repaint_steps']} steps, jump length "
           f"{cfg['repaint_jump']}, {cfg['repaint_resample']} resamplings); the known pixels of the output equal the "
           f"input's exactly ({'checked' if exact else 'NOT equal: a bug'}).")
    s.figure("inpainting.png", "Inpainting before / after, with the classical kNN fill.")
    s.table(["method", "PSNR (dB)", "label accuracy"],
            [["RePaint (diffcore), one sample", res["repaint"]["psnr"], res["repaint"]["accuracy"]],
             ["nearest train image (baseline for one sample)", res["knn1"]["psnr"], res["knn1"]["accuracy"]],
             [f"RePaint, mean of {len(draws)} samples", res[f"repaint_mean_of_{len(draws)}"]["psnr"],
              res[f"repaint_mean_of_{len(draws)}"]["accuracy"]],
             ["mean of 5 nearest train images (baseline for a mean)", res["knn5"]["psnr"], res["knn5"]["accuracy"]]],
            f"{m} held-out digits. RePaint uses the class-conditional model without a label (its unconditional "
            "branch: 20% of the training labels were dropped to the null label); a paired (Palette-style) model is "
            "the stronger inpainter: see benchmarks/quality/img2img.py")
    return res


def stage_denoise(pipe: Pipeline, data: Any, cfg: dict[str, Any], out: Path, rep: Report) -> dict[str, Any]:
    from diffcore.denoise import denoise

    _log("denoising at sigma 25, 50, 75")
    m = max(cfg["images"], 8)
    x = data.test[:m]
    mu, cov = wiener_fit(data.train)
    g = torch.Generator().manual_seed(0)
    rows, table, res = [], [], {}
    for sigma in SIGMAS:
        s_model = 2.0 * sigma / 255.0
        noisy = x + s_model * torch.randn(x.shape, generator=g)
        ours = denoise(pipe, noisy, sigma, sigma_scale=255.0, seed=0)
        linear = wiener(noisy, mu, cov, s_model).clamp(-1, 1)  # Gaussian-prior (Wiener) fitted on train
        res[sigma] = {"noisy": _psnr(noisy, x), "diffcore_mmse": _psnr(ours, x), "wiener": _psnr(linear, x)}
        table.append([sigma, res[sigma]["noisy"], res[sigma]["diffcore_mmse"], res[sigma]["wiener"]])
        rows += [(f"noisy, sigma {sigma}", noisy[:8]), ("diffcore", ours[:8]), ("Wiener", linear[:8])]
    rows.append(("clean", x[:8]))
    strip_figure(rows, out / "denoising.png", "denoising: noisy / diffcore (posterior mean) / Wiener, per sigma")
    s = rep.section("Denoising", "denoising")
    s.text("The reverse process starts at the level whose noise equals sigma (x_t = sqrt(abar_t) y); the posterior-mean "
           "(`mmse`) estimate is one model evaluation. CLI: `diffcore denoise --checkpoint outputs/demo/runs/digits "
           "--input noisy.png --sigma 50`.")
    s.figure("denoising.png", "Noisy / denoised / Wiener at sigma 25, 50, 75 (0..255 scale), then the clean images.")
    s.table(["sigma (0..255)", "noisy PSNR", "diffcore mmse PSNR", "Wiener PSNR (baseline)"], table,
            f"PSNR in dB over {m} held-out digits")
    return {str(k): v for k, v in res.items()}


def stage_anomaly(pipe: Pipeline, tab_pipe: Pipeline, data: Any, tab: dict[str, Any], out: Path,
                  rep: Report) -> dict[str, Any]:
    import matplotlib.pyplot as plt
    from sklearn.ensemble import IsolationForest
    from sklearn.metrics import roc_auc_score, roc_curve
    from sklearn.neighbors import LocalOutlierFactor, NearestNeighbors
    from sklearn.svm import OneClassSVM

    from diffcore.anomaly import IMAGE_RECIPE as IMAGE_RECON
    from diffcore.anomaly import TABLE_RECIPE as TABLE_RECON
    from diffcore.anomaly import Calibration, detect, dte_scores

    _log("anomaly detection: digits with 3x3 defects")
    x, bad, pix = add_defects(data.test, seed=0)
    det = detect(pipe, x, method="recon", seed=0, progress=True, **IMAGE_RECON)
    maps = det.maps.reshape(pix.shape)
    train_flat = data.train.reshape(len(data.train), -1).numpy()
    knn = NearestNeighbors(n_neighbors=5).fit(train_flat)
    dist, idx = knn.kneighbors(x.reshape(len(x), -1).numpy())
    knn_rec = data.train[torch.from_numpy(idx)].mean(dim=1)
    knn_map = (x - knn_rec).abs().mean(dim=1)
    img = {"diffcore recon": det.scores.numpy(), "kNN distance": dist.mean(1),
           "IsolationForest": -IsolationForest(random_state=0).fit(train_flat).score_samples(x.reshape(len(x), -1).numpy())}
    img_auc = {k: float(roc_auc_score(bad.numpy(), v)) for k, v in img.items()}
    px_auc = {"diffcore recon": float(roc_auc_score(pix.flatten().numpy(), maps.flatten().numpy())),
              "kNN-5 reconstruction": float(roc_auc_score(pix.flatten().numpy(), knn_map.flatten().numpy()))}
    # calibration on normal held-out images of another defect draw: threshold at 5% false positives
    normal = data.test[~bad]
    cal = Calibration.fit(detect(pipe, normal, method="recon", seed=1, progress=False, **IMAGE_RECON).scores, fpr=0.05,
                          method="recon")
    flagged = cal.labels(det.scores)
    tpr, fpr = float(flagged[bad].float().mean()), float(flagged[~bad].float().mean())

    _log("anomaly detection: breast cancer (trained on benign rows only)")
    xt, yt = tab["test"], tab["test_labels"]
    rec = detect(tab_pipe, xt, method="recon", seed=0, progress=False, **TABLE_RECON).scores.numpy()
    white = detect(tab_pipe, xt, method="recon", seed=0, progress=False,
                   **{**TABLE_RECON, "error": "mahalanobis"}, reference=tab["train"]).scores.numpy()
    dte = dte_scores(tab_pipe, xt, seed=0, progress=False).scores.numpy()
    tr = tab["train"].numpy()
    tab_scores = {"diffcore whitened residual": white, "diffcore recon": rec, "diffcore DTE": dte,
                  "IsolationForest": -IsolationForest(random_state=0).fit(tr).score_samples(xt.numpy()),
                  "LOF (novelty)": -LocalOutlierFactor(novelty=True).fit(tr).score_samples(xt.numpy()),
                  "one-class SVM": -OneClassSVM(gamma="scale", nu=0.1).fit(tr).score_samples(xt.numpy()),
                  "kNN distance": NearestNeighbors(n_neighbors=5).fit(tr).kneighbors(xt.numpy())[0].mean(1)}
    tab_auc = {k: float(roc_auc_score(yt, v)) for k, v in tab_scores.items()}

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, (scores, labels, title) in zip(axes, [(det.scores.numpy(), bad.numpy(), "digits: reconstruction score"),
                                                  (white, yt, "breast cancer: whitened residual")]):
        ax.hist(scores[~labels.astype(bool)], bins=30, alpha=0.6, label="normal", density=True)
        ax.hist(scores[labels.astype(bool)], bins=30, alpha=0.6, label="anomalous", density=True)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
    axes[0].axvline(cal.threshold, color="k", ls="--", lw=1)
    fig.tight_layout()
    fig.savefig(out / "anomaly_hist.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    curves = [(pix.flatten().numpy(), {"diffcore recon": maps.flatten().numpy(),
                                       "kNN-5 reconstruction": knn_map.flatten().numpy()}, "digits, pixel level"),
              (bad.numpy(), img, "digits, image level"), (yt, tab_scores, "breast cancer")]
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
    fig.savefig(out / "anomaly_roc.png", dpi=110)
    plt.close(fig)

    show = bad.nonzero().flatten()[:8]
    norm_maps = maps[show] / maps[show].amax(dim=(1, 2), keepdim=True).clamp_min(1e-8)
    truth = pix[show].float()[:, None] * 2 - 1
    strip_figure([("input", x[show]), ("defect", truth), ("diffcore map", norm_maps[:, None] * 2 - 1)],
                 out / "anomaly_maps.png", "anomaly maps: defective held-out digits, true defect, diffcore's map",
                 cmap="magma")

    s = rep.section("Anomaly detection", "anomaly")
    s.text("Semi-supervised: the models saw normal data only. Images: held-out digits, half of them with a 3x3 patch "
           "set bright or inverted; score = partial-diffusion reconstruction error (AnoDDPM style: noise to depths "
           "0.3-0.7 of the schedule, 16 draws each, absolute error of the model's one-shot reconstruction), with a "
           "per-pixel map. Table: scikit-learn's breast cancer data, malignant rows as anomalies, an MLP diffusion model "
           "trained on benign rows; reconstruction (absolute error, and the whitened residual: the mean signed "
           "residual's Mahalanobis distance under its statistics on the training rows) and diffusion-time "
           "estimation (DTE) scores. CLI: `diffcore detect --checkpoint outputs/demo/runs/digits --input images.npz`; "
           "for the table `diffcore detect --checkpoint outputs/demo/runs/tabular --input rows.csv --error mahalanobis "
           "--reference outputs/demo/data/breast_cancer_benign_train.csv --depth 0.1 0.2 0.3 0.5 --repeats 16`.")
    s.figure("anomaly_maps.png", "Anomaly maps on defective digits.")
    s.figure("anomaly_hist.png", "Score histograms (dashed: the threshold calibrated at 5% false positives).")
    s.figure("anomaly_roc.png", "ROC curves (AUROC in the legend).")
    s.table(["digits (3x3 defects)", "pixel AUROC", "image AUROC"],
            [["diffcore reconstruction", px_auc["diffcore recon"], img_auc["diffcore recon"]],
             ["kNN-5 reconstruction / kNN distance (baseline)", px_auc["kNN-5 reconstruction"], img_auc["kNN distance"]],
             ["IsolationForest (baseline)", "-", img_auc["IsolationForest"]]],
            f"{len(x)} held-out digits; calibrated threshold flags {tpr:.0%} of defective and {fpr:.0%} of normal images")
    s.table(["breast cancer", "AUROC"], [[k, v] for k, v in tab_auc.items()],
            f"{int(yt.sum())} malignant + {int((1 - yt).sum())} held-out benign rows, one seed")
    return {"digits_pixel_auroc": px_auc, "digits_image_auroc": img_auc, "breast_cancer_auroc": tab_auc,
            "calibrated": {"threshold": cal.threshold, "tpr": tpr, "fpr": fpr}}


def breast_cancer_split(out: Path, seed: int = 0) -> dict[str, Any]:
    """Benign rows for training (written as CSV for ``diffcore.train``), and a test set of held-out
    benign + all malignant rows, standardized with the training rows' statistics."""
    from sklearn.datasets import load_breast_cancer

    bc = load_breast_cancer()
    values, target = bc.data.astype(np.float64), bc.target  # target 1 = benign
    rng = np.random.default_rng(seed)
    benign = rng.permutation(np.flatnonzero(target == 1))
    cut = int(0.8 * len(benign))
    train_rows, test_benign = benign[:cut], benign[cut:]
    malignant = np.flatnonzero(target == 0)
    cols = [c.replace(" ", "_") for c in bc.feature_names]
    path = out / "data" / "breast_cancer_benign_train.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, values[train_rows], delimiter=",", header=",".join(cols), comments="", fmt="%.10g")
    test_idx = np.concatenate([test_benign, malignant])
    return {"path": path, "columns": cols, "raw_train": values[train_rows], "raw_test": values[test_idx],
            "test_labels": (target[test_idx] == 0).astype(int)}


# --------------------------------------------------------------------------- main


def main(out: str | Path = "outputs/demo", *, quick: bool = False, retrain: bool = False) -> dict[str, Any]:
    """Train (or reuse) the demo models, run every task, write ``report.html`` / ``report.md`` to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import diffcore
    from diffcore.anomaly import standardize
    from diffcore.demo import study

    path = prepare_out(out)
    cfg = QUICK if quick else FULL
    start = time.perf_counter()
    # These models are small: a second intra-op thread buys little on 2 cores, and when another job
    # holds a core a 2-thread step waits for it (benchmarks/quality/README.md). DIFFCORE_THREADS overrides.
    torch.set_num_threads(int(os.environ.get("DIFFCORE_THREADS", "1")))
    backend = ops.backend()
    _log(f"kernel backend: {backend}; torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    runs = path / "runs"
    bc = breast_cancer_split(path)
    recipes = {"digits": cfg["digits"], "text": cfg["text"],
               "tabular": {**cfg["tabular"], "dataset": "tabular",
                           "dataset_options": {"path": str(bc["path"]), "holdout": 0.1, "seed": 0}}}
    pipes, training = {}, {}
    for name, recipe in recipes.items():
        pipes[name], training[name] = train_or_reuse(name, recipe, runs, retrain)
    plot_losses(runs, list(recipes), path / "training_loss.png")
    data = diffcore.get("datasets", "digits")(seed=0, holdout=0.2)
    clf = _classifier(data.train, data.train_labels)
    tab = {"train": standardize(pipes["tabular"], bc["raw_train"]), "test": standardize(pipes["tabular"], bc["raw_test"]),
           "test_labels": bc["test_labels"]}

    machine_line = (f"Kernel backend: {backend}. torch {torch.__version__}, {platform.processor() or platform.machine()}, "
                    f"{torch.get_num_threads()} torch thread(s).")
    rep = Report("diffcore demo", [
        machine_line,
        f"Data: scikit-learn's 8x8 handwritten digits ({len(data.train)} train / {len(data.test)} held-out) and "
        "breast cancer table; every score below is on held-out data." + (" QUICK MODE: tiny models and budgets, the numbers mean nothing." if quick
                                              else ""),
    ])
    s = rep.section("Training", "training")
    s.table(["model", "what", "iterations", "train seconds"],
            [["digits", "class-conditional UNet (unconditional via the null label)", recipes["digits"]["steps"],
              training["digits"]["seconds"] or "reused"],
             ["text", "text_unet + built-in encoder", recipes["text"]["steps"], training["text"]["seconds"] or "reused"],
             ["tabular", "MLP on benign breast-cancer rows", recipes["tabular"]["steps"],
              training["tabular"]["seconds"] or "reused"]])
    s.figure("training_loss.png", "Training loss (metrics.jsonl of each run).", width=900)
    results: dict[str, Any] = {"kernel_backend": backend, "quick": quick, "training": training, "stage_seconds": {}}
    stages = {
        "generation": lambda: stage_generation(pipes["digits"], data, clf, cfg["samples"], path, rep),
        "text2image": lambda: stage_text(pipes["text"], clf, cfg["samples"], path, rep),
        "img2img": lambda: stage_img2img(pipes["digits"], data, clf, cfg["samples"], path, rep),
        "denoising": lambda: stage_denoise(pipes["digits"], data, cfg["samples"], path, rep),
        "anomaly": lambda: stage_anomaly(pipes["digits"], pipes["tabular"], data, tab, path, rep),
    }
    for name, run in stages.items():
        t0 = time.perf_counter()
        results[name] = run()
        results["stage_seconds"][name] = round(time.perf_counter() - t0, 1)
        _log(f"{name}: {results['stage_seconds'][name]:.0f} s")

    _log("sampler study on closed-form data")
    st = study.main(path / "study", quick=quick)
    for name in ("samplers.png", "samples.png"):
        shutil.copyfile(path / "study" / name, path / f"study_{name}")
    s = rep.section("Samplers", "samplers")
    s.text("Every deterministic sampler on a Gaussian mixture whose exact denoiser is known, against an RK4 solution "
           "of the probability-flow ODE: error vs steps and the estimated order of convergence.")
    s.table(["sampler", "estimated order"], [[k, v] for k, v in st.get("orders", {}).items()])
    s.figure("study_samplers.png", "Error vs steps per sampler.", width=560)
    s.figure("study_samples.png", "Samples of the stochastic samplers vs data.", width=700)
    results["samplers"] = {"orders": st.get("orders")}

    results["seconds"] = round(time.perf_counter() - start, 1)
    rep.intro.append(f"Total demo time {results['seconds']:.0f} s (training included unless reused).")
    md, page = rep.write(path)
    (path / "results.json").write_text(json.dumps(results, indent=2, default=_jsonable) + "\n")
    _log(f"wrote {page}, {md} and results.json in {results['seconds']:.0f} s")
    return results


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return str(v)
