"""Image-to-image quality on held-out digits: Palette-style paired models against a kNN baseline,
and the SDEdit faithfulness/realism trade-off.

    .venv/bin/python -m benchmarks.quality.img2img              # full run: trains 3 models (cached)
    .venv/bin/python -m benchmarks.quality.img2img --quick      # smoke run: tiny models, 48 images
    .venv/bin/python -m benchmarks.quality.img2img --only bottom_half   # one task; updates its entry

Tasks, on the evaluator's held-out split (``benchmarks/quality/evaluator.py``: digits, seed 0,
20% held out; every model trains on the train split only, with the fixed recipe below):

- ``bottom_half``: the bottom half of each image is missing. Palette = a model trained with
  ``task_condition="inpainting"`` (random halves and rectangles) and source dropout 0.1, run by
  :func:`diffcore.tasks.img2img.translate`, unguided and with classifier-free guidance on the source
  (``source_guidance`` 2 and 3: ``palette_source_guidance``).
- ``super_resolution``: 4x4 (2x2 average pooling) -> 8x8, a ``task_condition="super_resolution"`` model.
- baseline ``knn5``: the mean of the 5 training images nearest to the known part (top half /
  4x4 image); for bottom_half the known half is kept.

Scores: PSNR over the whole image (data range 2), SSIM, the evaluator's label accuracy against
the true labels and FD of evaluator features against the held-out split, for one Palette sample
per image (``palette``, averaged over ``samples`` seeds) and for the mean of those samples
(``palette_mean``: a Monte-Carlo posterior mean, higher PSNR, blurrier). ``known_part_svm_accuracy``
is the held-out accuracy of an SVM that sees only the known part: since a completion is a function
of that part, no completion can be classified much better. The SDEdit sweep edits blocky inputs
(4x4 images upsampled: the "stroke painting" of SDEdit) with an unconditional model at strengths
0.2..0.8, all in ONE batch with per-sample strengths, and plots L2 to the input (faithfulness)
against FD to the held-out split (realism). Writes ``benchmarks/results/quality/img2img.json`` and
PNGs (``--quick``: under ``outputs/quality/img2img-quick/``).
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import diffcore
from benchmarks.quality.evaluator import (
    DATASETS,
    RESULTS_DIR,
    load_data,
    load_evaluator,
    machine,
    task_parser,
    write_report,
)
from diffcore.baselines import knn_fill
from diffcore.evaluation import Evaluator, psnr_db
from diffcore.io import save_grid
from diffcore.metrics import frechet_distance, ssim
from diffcore.tasks import img2img
from diffcore.tasks.inputs import region_mask

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "outputs" / "quality" / "img2img"
QUICK_DIR = ROOT / "outputs" / "quality" / "img2img-quick"
TARGET = {"label_accuracy": 0.92, "psnr_db": 17.0}
STRENGTHS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)

# The fixed training recipe (sized for ~10 minutes per model on 2 CPU cores) and sampling settings.
MODEL = {
    "base_channels": 32,
    "channel_mult": [1, 2],
    "num_res_blocks": 1,
    "attention_resolutions": [4],
    "groups": 8,
    "num_classes": 0,
}
# v-prediction + min-SNR at lr 1e-3 reached 0.73 bottom-half label accuracy after 500 steps, epsilon at
# lr 5e-4 0.60 after 600; the recipe is ~0.2 s/step on one busy core.
PREDICTION = "v_prediction"
TRAIN = {
    "steps": 3000,
    "batch_size": 64,
    "lr": 1e-3,
    "warmup_steps": 100,
    "lr_schedule": "cosine",
    "loss_weighting": "min_snr",
    "ema_decay": 0.999,
    "checkpoint_every": 500,
    "log_every": 100,
    "seed": 0,
}
SAMPLING = {"sampler": "dpmpp_2m", "steps": 20, "samples": 8, "seed": 0}
# Inpainting learns random halves and rectangles with a dropped source: 3x the steps (full runs only).
STEPS_FACTOR = {"bottom_half": 3}
QUICK_MODEL = {**MODEL, "base_channels": 16}
QUICK_TRAIN = {**TRAIN, "steps": 40, "batch_size": 32, "warmup_steps": 5, "checkpoint_every": 40, "log_every": 10}
QUICK_SAMPLING = {"sampler": "dpmpp_2m", "steps": 8, "samples": 2, "seed": 0}
QUICK_IMAGES = 48

# Source dropout 0.1 (the null source = every pixel missing) lets translate() guide on the source.
TASK_CONDITIONS = {
    "bottom_half": ("inpainting", {"dropout": 0.1}),
    "super_resolution": ("super_resolution", {"factor": 2}),
    "sdedit": (None, {}),
}
# SDEdit's strength is a fraction of the timesteps; the linear schedule leaves almost no signal in an
# 8x8 image past t ~ 0.6 T (alpha_bar(0.6 T) ~ 0.03), which flattens the sweep above 0.5. The cosine
# schedule (Nichol & Dhariwal 2021) spreads the loss of information over the whole range.
SCHEDULES = {"bottom_half": "linear", "super_resolution": "linear", "sdedit": "squaredcos_cap_v2"}
SOURCE_GUIDANCE = (2.0, 3.0)  # scales evaluated for models trained with source dropout (1 = unguided)
SWEEP_REPEATS = 4  # each input edited 4 times per strength (different noise): a steadier FD


# --------------------------------------------------------------------------- models


def train_model(
    name: str, model: dict[str, Any], recipe: dict[str, Any], folder: Path, retrain: bool = False
) -> tuple[diffcore.Pipeline, dict[str, Any]]:
    """The model of ``name`` trained with ``recipe``; reused from ``folder`` when its recipe matches."""
    condition, options = TASK_CONDITIONS[name]
    spec = {
        "model": model,
        "train": recipe,
        "prediction": PREDICTION,
        "schedule": SCHEDULES[name],
        "task_condition": condition,
        "task_condition_options": options,
        "dataset": DATASETS["digits"],
    }
    out = folder / name
    stamp = out / "recipe.json"
    if not retrain and stamp.exists() and (out / "checkpoint.safetensors").exists():
        saved = json.loads(stamp.read_text())
        if saved.get("spec") == json.loads(json.dumps(spec)):
            print(f"[img2img] {name}: reusing {out}", flush=True)
            return diffcore.Pipeline.load(out), saved["info"]
    print(f"[img2img] {name}: training {recipe['steps']} steps ...", flush=True)
    t0 = time.perf_counter()
    steps = recipe["steps"]
    config = {k: v for k, v in recipe.items() if k != "steps"}
    pipe = diffcore.train(
        DATASETS["digits"]["dataset"],
        "unet",
        steps,
        out,
        dataset_options=DATASETS["digits"]["options"],
        model_config=model,
        schedule=SCHEDULES[name],
        prediction=PREDICTION,
        task_condition=condition,
        task_condition_options=options if condition else None,
        **config,
    )
    seconds = time.perf_counter() - t0
    info = {
        "train_seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / steps, 4),
        "parameters": sum(p.numel() for p in pipe.model.parameters()),
    }
    stamp.write_text(json.dumps({"spec": spec, "info": info}, indent=2) + "\n")
    return diffcore.Pipeline.load(out), info


# --------------------------------------------------------------------------- baselines and scores


def known_part_classifiers(data: Any, name: str) -> dict[str, float]:
    """Held-out accuracy of classifiers that see only the known part (top half / 4x4 image): about
    the best label accuracy any completion can reach, since a completion is a function of that part."""
    from sklearn.ensemble import ExtraTreesClassifier
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.svm import SVC

    def part(x: torch.Tensor) -> Any:
        return (x[..., :4, :] if name == "bottom_half" else F.avg_pool2d(x, 2)).flatten(1).numpy()

    models = {
        "svm_rbf_c3": SVC(C=3.0),
        "svm_rbf_c10": SVC(C=10.0),
        "knn3": KNeighborsClassifier(3),
        "extra_trees_500": ExtraTreesClassifier(500, random_state=0),
        "mlp_256": MLPClassifier((256,), max_iter=2000, random_state=0),
    }
    xtr, ytr, xte, yte = part(data.train), data.train_labels.numpy(), part(data.test), data.test_labels.numpy()
    return {k: float(m.fit(xtr, ytr).score(xte, yte)) for k, m in models.items()}


def score(
    ev: Evaluator, images: torch.Tensor, truth: torch.Tensor, labels: torch.Tensor, heldout_features: torch.Tensor
) -> dict[str, float]:
    images = images.float().clamp(-1, 1)
    return {
        "psnr_db": psnr_db(images, truth),
        "ssim": ssim(images, truth, 2.0),
        "label_accuracy": float((ev.predict(images) == labels).float().mean()),
        "fd": frechet_distance(ev.features(images), heldout_features),
    }


def _palette(pipe: diffcore.Pipeline, source: torch.Tensor, sampling: dict[str, Any], **kw: Any) -> list[torch.Tensor]:
    """``samples`` samples per image, one seed each."""
    return [
        img2img.translate(
            pipe, source, sampler=sampling["sampler"], steps=sampling["steps"], seed=sampling["seed"] + k, **kw
        )
        for k in range(sampling["samples"])
    ]


def paired_task(
    name: str,
    pipe: diffcore.Pipeline,
    ev: Evaluator,
    data: Any,
    truth: torch.Tensor,
    labels: torch.Tensor,
    sampling: dict[str, Any],
    folder: Path,
) -> dict[str, Any]:
    """Palette (one sample, and the mean of several) and the kNN baseline on one task."""
    feats = ev.features(data.test)
    t0 = time.perf_counter()
    if name == "bottom_half":
        mask = region_mask("bottom-half", 8, 8)
        keep = mask.expand_as(truth) == 0
        source, kw = truth, {"mask": "bottom-half"}
        samples = _palette(pipe, source, sampling, **kw)
        knn = torch.where(keep, truth, knn_fill(data.train, data.train[..., :4, :], truth[..., :4, :]))
        shown = torch.where(keep, truth, torch.zeros_like(truth))
        assert all(torch.equal(s[keep], truth[keep]) for s in samples)  # the known pixels are the input's
    else:
        low = F.avg_pool2d(truth, 2)
        source, kw = low, {}
        samples = _palette(pipe, source, sampling)
        knn = knn_fill(data.train, F.avg_pool2d(data.train, 2), low)
        shown = F.interpolate(low, scale_factor=2, mode="nearest")
    seconds = time.perf_counter() - t0

    def judged(r: dict[str, float]) -> dict[str, Any]:
        met = r["label_accuracy"] >= TARGET["label_accuracy"] and r["psnr_db"] >= TARGET["psnr_db"]
        return {**r, "meets_target": met}

    def palette_scores(draws: list[torch.Tensor]) -> dict[str, Any]:
        """One sample per image (averaged over the draws' seeds) and the mean of the draws."""
        per = [score(ev, s, truth, labels, feats) for s in draws]
        return {
            "palette": judged({k: float(sum(r[k] for r in per) / len(per)) for k in per[0]}),
            "palette_per_seed": per,
            "palette_mean": judged(score(ev, torch.stack(draws).mean(0), truth, labels, feats)),
        }

    classifiers = known_part_classifiers(data, name)
    result = {
        "knn5": judged(score(ev, knn, truth, labels, feats)),
        **palette_scores(samples),
        "known_part_svm_accuracy": classifiers["svm_rbf_c3"],
        "known_part_classifiers": classifiers,
        "samples": len(samples),
        "n": len(truth),
        "sampling_seconds": round(seconds, 1),
    }
    if TASK_CONDITIONS[name][1].get("dropout"):
        result["palette_source_guidance"] = {
            str(w): palette_scores(_palette(pipe, source, sampling, source_guidance=w, **kw)) for w in SOURCE_GUIDANCE
        }
        result["sampling_seconds"] = round(time.perf_counter() - t0, 1)
    k = min(12, len(truth))
    save_grid(
        torch.cat([truth[:k], shown[:k], knn[:k], samples[0][:k], torch.stack(samples).mean(0)[:k]]),
        folder / f"img2img_{name}.png",
        nrow=k,
    )
    return result


def sdedit_sweep(
    pipe: diffcore.Pipeline,
    ev: Evaluator,
    data: Any,
    truth: torch.Tensor,
    sampling: dict[str, Any],
    strengths: tuple[float, ...],
    folder: Path,
) -> dict[str, Any]:
    """SDEdit of blocky inputs at every strength, in one batch with per-sample strengths.

    The inputs are made from the even-indexed held-out images and FD is measured against the
    odd-indexed ones, so the realism reference is independent of both the inputs and the model."""
    feats = ev.features(data.test[1::2])
    blocky = F.interpolate(F.avg_pool2d(truth[0::2], 2), scale_factor=2, mode="nearest")
    blocky = blocky.repeat(SWEEP_REPEATS, 1, 1, 1)
    n = len(blocky)
    t0 = time.perf_counter()
    edited = img2img.sdedit(
        pipe,
        blocky.repeat(len(strengths), 1, 1, 1),
        torch.tensor(strengths).repeat_interleave(n),
        sampler=sampling["sampler"],
        steps=sampling["steps"],
        seed=sampling["seed"],
    )
    seconds = time.perf_counter() - t0
    points = [{"strength": 0.0, "l2_to_input": 0.0, "fd": frechet_distance(ev.features(blocky), feats)}]
    for i, s in enumerate(strengths):
        out = edited[i * n : (i + 1) * n]
        points.append(
            {
                "strength": s,
                "l2_to_input": float((out - blocky).flatten(1).norm(dim=1).mean()),
                "fd": frechet_distance(ev.features(out), feats),
            }
        )
    l2 = [p["l2_to_input"] for p in points]
    fd = [p["fd"] for p in points[1:]]
    l2_up, fd_down = all(a < b for a, b in itertools.pairwise(l2)), all(a > b for a, b in itertools.pairwise(fd))
    _plot_sweep(points, folder / "img2img_sdedit_tradeoff.png")
    k = min(12, n)
    save_grid(
        torch.cat([blocky[:k], *(edited[i * n : i * n + k] for i in range(len(strengths))), truth[0::2][:k]]),
        folder / "img2img_sdedit.png",
        nrow=k,
    )
    return {
        "points": points,
        "monotone": l2_up and fd_down,
        "l2_increasing": l2_up,
        "fd_decreasing": fd_down,
        "n": n,
        "input": f"even-indexed held-out digits, 4x4 average-pooled and nearest-upsampled, {SWEEP_REPEATS} noise "
        "draws each; FD against the odd-indexed held-out digits",
        "sampling_seconds": round(seconds, 1),
    }


def _plot_sweep(points: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([p["l2_to_input"] for p in points], [p["fd"] for p in points], "o-")
    for p in points:
        ax.annotate(f"{p['strength']:g}", (p["l2_to_input"], p["fd"]), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("L2 distance to the input (faithfulness: lower is more faithful)")
    ax.set_ylabel("FD to held-out digits (realism: lower is more realistic)")
    ax.set_title("SDEdit strength sweep (labels: strength)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = task_parser(__doc__, "smoke run: tiny models, few images and steps")
    ap.add_argument("--retrain", action="store_true", help="train the models even when cached")
    ap.add_argument(
        "--only",
        nargs="+",
        choices=list(TASK_CONDITIONS),
        default=None,
        help="run these tasks only and update their entries in an existing img2img.json",
    )
    args = ap.parse_args(argv)
    tasks = args.only or list(TASK_CONDITIONS)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, recipe, sampling = (QUICK_MODEL, QUICK_TRAIN, QUICK_SAMPLING) if args.quick else (MODEL, TRAIN, SAMPLING)
    folder = args.out or (QUICK_DIR if args.quick else RESULTS_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    models = QUICK_DIR / "models" if args.quick else MODEL_DIR
    started = time.perf_counter()
    data = load_data("digits")
    ev = load_evaluator("digits", data)
    n = QUICK_IMAGES if args.quick else len(data.test)
    truth, labels = data.test[:n], data.test_labels[:n]
    report: dict[str, Any] = {
        "machine": machine(),
        "quick": args.quick,
        "target": TARGET,
        "model": model,
        "train": recipe,
        "sampling": sampling,
        "dataset": DATASETS["digits"],
        "n": n,
    }
    for name in [t for t in ("bottom_half", "super_resolution") if t in tasks]:
        task_recipe = recipe if args.quick else {**recipe, "steps": recipe["steps"] * STEPS_FACTOR.get(name, 1)}
        pipe, info = train_model(name, model, task_recipe, models, args.retrain)
        report[name] = {
            "training": {**info, "steps": task_recipe["steps"]},
            **paired_task(name, pipe, ev, data, truth, labels, sampling, folder),
        }
        _print_task(name, report[name])
    if "sdedit" in tasks:
        pipe, info = train_model("sdedit", model, recipe, models, args.retrain)
        strengths = (0.2, 0.5, 0.8) if args.quick else STRENGTHS
        report["sdedit"] = {"training": info, **sdedit_sweep(pipe, ev, data, truth, sampling, strengths, folder)}
        for p in report["sdedit"]["points"]:
            print(f"  sdedit strength {p['strength']:.1f}: L2 to input {p['l2_to_input']:.3f}  FD {p['fd']:.2f}")
        print(f"  sdedit monotone: {report['sdedit']['monotone']}")
    report["seconds"] = round(time.perf_counter() - started, 1)
    return write_report(folder / "img2img.json", report, tasks if args.only else None, label="tasks")


def _print_task(name: str, r: dict[str, Any]) -> None:
    print(
        f"{name} (n={r['n']}, {r['samples']} samples, {r['sampling_seconds']} s; an SVM on the known part "
        f"reaches {r['known_part_svm_accuracy']:.3f} label accuracy)"
    )
    for key in ("knn5", "palette", "palette_mean"):
        s = r[key]
        verdict = f"  target {'met' if s['meets_target'] else 'missed'}"
        print(
            f"  {key:13s} PSNR {s['psnr_db']:6.2f} dB  SSIM {s['ssim']:.3f}  label acc {s['label_accuracy']:.3f}  "
            f"FD {s['fd']:7.2f}{verdict}"
        )
    for w, entry in r.get("palette_source_guidance", {}).items():
        for key in ("palette", "palette_mean"):
            s = entry[key]
            verdict = f"  target {'met' if s['meets_target'] else 'missed'}"
            print(
                f"  {key + ' w=' + w:13s} PSNR {s['psnr_db']:6.2f} dB  SSIM {s['ssim']:.3f}  label acc "
                f"{s['label_accuracy']:.3f}  FD {s['fd']:7.2f}{verdict}"
            )


if __name__ == "__main__":
    main()
