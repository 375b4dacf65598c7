"""Quality and speed on 8x8 digits: train a class-conditional UNet with ONE fixed recipe in a
fixed iteration budget, time it, then score its samples with the evaluator classifier.

    .venv/bin/python -m benchmarks.quality.digits             # the full run (~10 min training)
    .venv/bin/python -m benchmarks.quality.digits --quick     # smoke mode: seconds, not a result

Writes ``digits.json`` and ``digits_samples.png`` (rows = prompted class) to ``--out``
(default ``benchmarks/results/quality/``); the run folder (checkpoint, loss curve) goes to
``outputs/quality/digits-run``. Everything that defines the result (recipe, sampling plan,
sample counts, seeds, the machine and its load) is written into the JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.quality.evaluator import (
    CACHE_DIR,
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

# The fixed recipe: all of it goes to diffcore.train and into the results JSON.
RECIPE: dict[str, Any] = {
    "dataset": "digits",
    "dataset_options": {"seed": 0, "holdout": 0.2},
    "model": "unet",
    "model_config": {"base_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 2,
                     "attention_resolutions": [], "num_heads": 4, "dropout": 0.0, "groups": 8},
    "schedule": "squaredcos_cap_v2",  # cosine alpha_bar (Nichol & Dhariwal 2021)
    "schedule_options": {"num_train_timesteps": 1000},
    "prediction": "v_prediction",
    "sampler": "dpmpp_2m",
    "sample_steps": 20,
    "steps": 1200,
    "batch_size": 128,
    "lr": 1e-3,
    "warmup_steps": 100,
    "lr_schedule": "cosine",
    "ema_decay": 0.999,
    "grad_clip": 1.0,
    "loss_weighting": "min_snr",
    "min_snr_gamma": 5.0,
    "label_dropout": 0.1,
    "bf16": False,
    "seed": 0,
    "log_every": 25,
}
# How samples are drawn and scored (fixed before looking at any score of the final run).
EVAL: dict[str, Any] = {
    "n_samples": 1000,          # per configuration, labels 0..9 cycling (100 per class)
    "seed": 0,                  # generation seed (initial noise and in-kernel sampler noise)
    "timestep_spacing": "trailing",
    "guidance": 1.0,            # the headline guidance scale (1 = the conditional model, no CFG)
    "guidance_scales": [0.0, 1.0, 2.0, 3.0],  # 0 = the unconditional model (null label)
    "dpmpp_2m_steps": [10, 20, 50],
    "other_samplers_at_20": ["euler", "heun", "ddim", "unipc", "lms", "euler_ancestral", "dpmpp_2m_sde"],
    "grid_per_class": 10,
}
THREADS = 1
TARGETS = {"train_wall_s": 600.0, "fd": 1.0, "class_accuracy": 0.97, "nn_ratio": 0.9, "fd10_over_fd50": 1.5}


def _set(recipe: dict[str, Any], assignment: str) -> None:
    """Apply ``key=value`` (value parsed as JSON when it parses) to the recipe (experiments only)."""
    key, _, raw = assignment.partition("=")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    node, *path = key.split(".")
    if path:
        recipe.setdefault(node, {})
        recipe[node][path[0]] = value
    else:
        recipe[node] = value


def generate_and_score(pipe: Any, ev: Any, data: Any, *, n: int, sampler: str, steps: int,
                       guidance: float | None, seed: int, spacing: str) -> tuple[dict[str, Any], torch.Tensor]:
    """Generate ``n`` samples for balanced labels and score them. Guidance 1 is the conditional
    model itself (uncond + 1 * (cond - uncond) = cond), so it runs without the extra branch."""
    labels = balanced_labels(data.num_classes, n)
    t0 = time.perf_counter()
    scale = None if guidance == 1.0 else guidance
    x = pipe.generate(n, sampler=sampler, steps=steps, class_labels=labels, guidance_scale=scale,
                      seed=seed, batch_size=500, timestep_spacing=spacing)
    seconds = time.perf_counter() - t0
    row = {"sampler": sampler, "steps": steps, "guidance": guidance, **ev.score(x, labels, data),
           "sample_seconds": round(seconds, 2), "out_of_range_fraction": float((x.abs() > 1).float().mean())}
    print(json.dumps(row), flush=True)
    return row, x


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, help=f"training iterations (default {RECIPE['steps']})")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    ap.add_argument("--run-dir", type=Path, default=CACHE_DIR / "digits-run")
    ap.add_argument("--quick", action="store_true", help="smoke mode: a few steps, few samples")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="override a recipe entry (experiments; the JSON records it), e.g. lr=5e-4 "
                         "or model_config.base_channels=64")
    ap.add_argument("--eval-only", action="store_true", help="score the checkpoint in --run-dir")
    ap.add_argument("--light", action="store_true", help="score only guidance 1 with dpmpp_2m (experiments)")
    ap.add_argument("--threads", type=int, default=THREADS,
                    help=f"torch intra-op threads (default {THREADS}: as fast as 2 for this model, and "
                         "robust when another job shares the cores)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    recipe, ev_cfg = copy.deepcopy(RECIPE), copy.deepcopy(EVAL)
    for assignment in args.set:
        _set(recipe, assignment)
    if args.steps:
        recipe["steps"] = args.steps
    if args.light:
        ev_cfg.update(guidance_scales=[ev_cfg["guidance"]], other_samplers_at_20=[])
    if args.quick:
        recipe.update(steps=args.steps or 20, batch_size=32, warmup_steps=5)
        ev_cfg.update(n_samples=100, guidance_scales=[1.0], dpmpp_2m_steps=[10, 20], other_samplers_at_20=[],
                      grid_per_class=4)
    recipe.update(checkpoint_every=recipe["steps"], log_every=min(recipe["log_every"], recipe["steps"]))  # one checkpoint at the end: no I/O in the timing
    name = "digits_quick" if args.quick else "digits"
    report: dict[str, Any] = {"benchmark": "digits 8x8, class-conditional", "machine": machine(),
                              "recipe": recipe, "eval": ev_cfg, "targets": TARGETS, "argv": argv or sys.argv[1:]}

    if args.eval_only:
        from diffcore.pipeline import Pipeline

        pipe = Pipeline.load(args.run_dir)
        report["recipe"] = pipe.run
    else:
        pipe, report["training"] = train_timed(recipe, args.run_dir)
        print(json.dumps({"training": report["training"]}), flush=True)

    data = load_data("digits")
    ev = load_evaluator("digits", data)
    report["evaluator"] = {k: ev.meta[k] for k in ("recipe", "heldout_accuracy", "feature_scale", "n_train", "n_heldout")}
    report["baselines"] = baselines(ev, data, ev_cfg["n_samples"])
    n, seed, spacing, g_main = ev_cfg["n_samples"], ev_cfg["seed"], ev_cfg["timestep_spacing"], ev_cfg["guidance"]
    gen = {"n": n, "seed": seed, "spacing": spacing}

    rows: list[dict[str, Any]] = []
    main_x = None
    for g in ev_cfg["guidance_scales"]:
        row, x = generate_and_score(pipe, ev, data, sampler="dpmpp_2m", steps=20, guidance=g, **gen)
        rows.append(row)
        if g == g_main:
            main_x = x
    for steps in ev_cfg["dpmpp_2m_steps"]:
        if steps != 20:
            rows.append(generate_and_score(pipe, ev, data, sampler="dpmpp_2m", steps=steps, guidance=g_main, **gen)[0])
    for sampler in ev_cfg["other_samplers_at_20"]:
        rows.append(generate_and_score(pipe, ev, data, sampler=sampler, steps=20, guidance=g_main, **gen)[0])
    report["samples"] = rows
    report["loadavg_at_end"] = loadavg()

    def pick(steps: int, guidance: float = g_main, sampler: str = "dpmpp_2m") -> dict[str, Any]:
        return next(r for r in rows if r["sampler"] == sampler and r["steps"] == steps and r["guidance"] == guidance)

    head = pick(20)
    fd10, fd50 = pick(10)["fd"], pick(ev_cfg["dpmpp_2m_steps"][-1])["fd"]
    checks = {
        "train_wall_s": (report.get("training", {}).get("wall_s"), "<="),
        "fd": (head["fd"], "<="),
        "class_accuracy": (head["class_accuracy"], ">="),
        "nn_ratio": (head["nn_ratio"], ">="),
        "fd10_over_fd50": (fd10 / fd50, "<="),
    }
    report["summary"] = {
        "headline": f"dpmpp_2m, 20 steps, guidance {g_main:g}, {n} samples vs {len(data.test)} held-out",
        **{k: {"value": v, "target": f"{op} {TARGETS[k]}",
               "met": None if v is None else (v <= TARGETS[k] if op == "<=" else v >= TARGETS[k])}
           for k, (v, op) in checks.items()},
        "fd_real_vs_real": report["baselines"]["real_vs_real"]["fd_train_subset_vs_heldout"],
        "fd_gaussian_mixture": report["baselines"]["gaussian_mixture"]["fd"],
    }
    print(json.dumps(report["summary"], indent=1))

    args.out.mkdir(parents=True, exist_ok=True)
    per = ev_cfg["grid_per_class"]
    order = torch.cat([torch.nonzero(balanced_labels(10, n) == c).squeeze(1)[:per] for c in range(10)])
    assert main_x is not None
    labeled_grid(main_x[order], [str(c) for c in range(10)], args.out / f"{name}_samples.png", scale=6)
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {args.out / (name + '.json')} and {args.out / (name + '_samples.png')}")
    return report


if __name__ == "__main__":
    main()
