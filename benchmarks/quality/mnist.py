"""MNIST 28x28 (the t10k set's train split): train a class-conditional UNet for a short fixed
budget, report FD against the held-out split in the MNIST evaluator's features, and a grid.

    .venv/bin/python -m benchmarks.quality.mnist            # the full run (~10 min training)
    .venv/bin/python -m benchmarks.quality.mnist --quick    # smoke mode

No target yet: the numbers record where a 2-core CPU gets in about ten minutes. Writes
``mnist.json`` and ``mnist_samples.png`` to ``--out`` (default ``benchmarks/results/quality/``).
"""

from __future__ import annotations

import copy
import json
import sys
from typing import Any

import torch

from benchmarks.quality import evaluator as harness
from benchmarks.quality.digits import RECIPE as DIGITS_RECIPE
from benchmarks.quality.digits import generate_and_score

# digits.py's recipe (schedule, prediction, weighting, label dropout, ...) with a 3-level UNet and a shorter budget.
RECIPE: dict[str, Any] = {
    **DIGITS_RECIPE,
    "dataset": "mnist-idx",
    "dataset_options": harness.DATASETS["mnist"]["options"],
    "model_config": {
        "base_channels": 16,
        "channel_mult": [1, 2, 2],
        "num_res_blocks": 2,
        "attention_resolutions": [],
        "num_heads": 4,
        "dropout": 0.0,
        "groups": 8,
    },
    "steps": 500,
    "batch_size": 64,
    "warmup_steps": 50,
    "ema_decay": 0.995,
}
EVAL: dict[str, Any] = {
    "n_samples": 1000,
    "seed": 0,
    "timestep_spacing": "trailing",
    "guidance_scales": [1.0, 3.0],
    "steps": 20,
    "grid_per_class": 10,
}
THREADS = 1  # see digits.py


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = harness.class_run_parser(__doc__, RECIPE["steps"], harness.CACHE_DIR / "mnist-run", THREADS)
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
    report: dict[str, Any] = {
        "benchmark": "MNIST t10k 28x28, class-conditional (no target yet)",
        "machine": harness.machine(),
        "recipe": recipe,
        "eval": ev_cfg,
        "argv": argv or sys.argv[1:],
    }
    pipe, report["training"] = harness.train_timed(recipe, args.run_dir)
    print(json.dumps({"training": report["training"]}), flush=True)

    data, ev = harness.score_setup("mnist", report, ev_cfg["n_samples"])
    gen = {"n": ev_cfg["n_samples"], "seed": ev_cfg["seed"], "spacing": ev_cfg["timestep_spacing"]}
    rows, grids = [], {}
    for g in ev_cfg["guidance_scales"]:
        row, x = generate_and_score(pipe, ev, data, sampler="dpmpp_2m", steps=ev_cfg["steps"], guidance=g, **gen)
        rows.append(row)
        grids[g] = x
    report["samples"] = rows
    report["loadavg_at_end"] = harness.loadavg()
    g0 = ev_cfg["guidance_scales"][0]
    return harness.write_class_run(args.out, name, report, grids[g0], ev_cfg["grid_per_class"], scale=2)


if __name__ == "__main__":
    main()
