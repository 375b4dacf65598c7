"""MNIST 28x28 (the t10k set's train split): train a class-conditional UNet for a short fixed
budget, report FD against the held-out split in the MNIST evaluator's features, and a grid.

    .venv/bin/python -m benchmarks.quality.mnist            # the full run (~10 min training)
    .venv/bin/python -m benchmarks.quality.mnist --quick    # smoke mode

No target yet: the numbers record where a 2-core CPU gets in about ten minutes. Writes
``mnist.json`` and ``mnist_samples.png`` to ``--out`` (default ``benchmarks/results/quality/``).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks.quality.digits import generate_and_score
from benchmarks.quality.evaluator import (
    CACHE_DIR,
    DATASETS,
    RESULTS_DIR,
    balanced_labels,
    baselines,
    labeled_grid,
    load_data,
    load_evaluator,
    loadavg,
    machine,
    train_timed,
)

RECIPE: dict[str, Any] = {
    "dataset": "mnist-idx",
    "dataset_options": DATASETS["mnist"]["options"],
    "model": "unet",
    "model_config": {"base_channels": 16, "channel_mult": [1, 2, 2], "num_res_blocks": 2,
                     "attention_resolutions": [], "num_heads": 4, "dropout": 0.0, "groups": 8},
    "schedule": "squaredcos_cap_v2",  # the digits recipe's schedule, prediction and weighting
    "schedule_options": {"num_train_timesteps": 1000},
    "prediction": "v_prediction",
    "sampler": "dpmpp_2m",
    "sample_steps": 20,
    "steps": 500,
    "batch_size": 64,
    "lr": 1e-3,
    "warmup_steps": 50,
    "lr_schedule": "cosine",
    "ema_decay": 0.995,
    "grad_clip": 1.0,
    "loss_weighting": "min_snr",
    "min_snr_gamma": 5.0,
    "label_dropout": 0.1,
    "bf16": False,
    "seed": 0,
    "log_every": 25,
}
EVAL: dict[str, Any] = {"n_samples": 1000, "seed": 0, "timestep_spacing": "trailing", "guidance_scales": [1.0, 3.0],
                        "steps": 20, "grid_per_class": 10}
THREADS = 1  # see digits.py


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, help=f"training iterations (default {RECIPE['steps']})")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    ap.add_argument("--run-dir", type=Path, default=CACHE_DIR / "mnist-run")
    ap.add_argument("--quick", action="store_true", help="smoke mode: a few steps, few samples")
    ap.add_argument("--threads", type=int, default=THREADS, help=f"torch intra-op threads (default {THREADS})")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    recipe, ev_cfg = copy.deepcopy(RECIPE), copy.deepcopy(EVAL)
    if args.steps:
        recipe["steps"] = args.steps
    if args.quick:
        recipe.update(steps=args.steps or 5, batch_size=16, warmup_steps=2)
        ev_cfg.update(n_samples=50, guidance_scales=[1.0], steps=5, grid_per_class=2)
    recipe.update(checkpoint_every=recipe["steps"], log_every=min(recipe["log_every"], recipe["steps"]))
    name = "mnist_quick" if args.quick else "mnist"
    report: dict[str, Any] = {"benchmark": "MNIST t10k 28x28, class-conditional (no target yet)",
                              "machine": machine(), "recipe": recipe, "eval": ev_cfg, "argv": argv or sys.argv[1:]}
    pipe, report["training"] = train_timed(recipe, args.run_dir)
    print(json.dumps({"training": report["training"]}), flush=True)

    data = load_data("mnist")
    ev = load_evaluator("mnist", data)
    report["evaluator"] = {k: ev.meta[k] for k in ("recipe", "heldout_accuracy", "feature_scale", "n_train", "n_heldout")}
    report["baselines"] = baselines(ev, data, ev_cfg["n_samples"])
    gen = {"n": ev_cfg["n_samples"], "seed": ev_cfg["seed"], "spacing": ev_cfg["timestep_spacing"]}
    rows, grids = [], {}
    for g in ev_cfg["guidance_scales"]:
        row, x = generate_and_score(pipe, ev, data, sampler="dpmpp_2m", steps=ev_cfg["steps"], guidance=g, **gen)
        rows.append(row)
        grids[g] = x
    report["samples"] = rows
    report["loadavg_at_end"] = loadavg()

    args.out.mkdir(parents=True, exist_ok=True)
    per, n = ev_cfg["grid_per_class"], ev_cfg["n_samples"]
    order = torch.cat([torch.nonzero(balanced_labels(10, n) == c).squeeze(1)[:per] for c in range(10)])
    g0 = ev_cfg["guidance_scales"][0]
    labeled_grid(grids[g0][order], [str(c) for c in range(10)], args.out / f"{name}_samples.png", scale=2)
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {args.out / (name + '.json')} and {args.out / (name + '_samples.png')}")
    return report


if __name__ == "__main__":
    main()
