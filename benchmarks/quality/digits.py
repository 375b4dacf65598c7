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

import copy
import json
import sys
import time
from typing import Any

import torch

from benchmarks.quality.evaluator import (
    CACHE_DIR,
    class_run_parser,
    loadavg,
    machine,
    score_setup,
    train_timed,
    write_class_run,
)
from diffcore.evaluation import balanced_labels
from diffcore.evaluation.recipes import DIGITS_TRAINING, DIGITS_UNET

# The fixed recipe: all of it goes to diffcore.train and into the results JSON.
RECIPE: dict[str, Any] = {
    "dataset": "digits",
    "dataset_options": {"seed": 0, "holdout": 0.2},
    "model": "unet",
    "model_config": DIGITS_UNET,
    **DIGITS_TRAINING,  # cosine schedule, v-prediction, min-SNR 5, dpmpp_2m at 20 steps, lr 1e-3 cosine
    "steps": 1200,
    "batch_size": 128,
    "warmup_steps": 100,
    "ema_decay": 0.999,
    "label_dropout": 0.1,
    "bf16": False,
    "log_every": 25,
}
# How samples are drawn and scored (fixed before looking at any score of the final run).
EVAL: dict[str, Any] = {
    "n_samples": 1000,  # per configuration, labels 0..9 cycling (100 per class)
    "seed": 0,  # generation seed (initial noise and in-kernel sampler noise)
    "timestep_spacing": "trailing",
    "guidance": 1.0,  # the headline guidance scale (1 = the conditional model, no CFG)
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


def generate_and_score(
    pipe: Any, ev: Any, data: Any, *, n: int, sampler: str, steps: int, guidance: float | None, seed: int, spacing: str
) -> tuple[dict[str, Any], torch.Tensor]:
    """Generate ``n`` samples for balanced labels and score them. Guidance 1 is the conditional
    model itself (uncond + 1 * (cond - uncond) = cond), so it runs without the extra branch."""
    labels = balanced_labels(data.num_classes, n)
    t0 = time.perf_counter()
    scale = None if guidance == 1.0 else guidance
    x = pipe.generate(
        n,
        sampler=sampler,
        steps=steps,
        class_labels=labels,
        guidance_scale=scale,
        seed=seed,
        batch_size=500,
        timestep_spacing=spacing,
    )
    seconds = time.perf_counter() - t0
    row = {
        "sampler": sampler,
        "steps": steps,
        "guidance": guidance,
        **ev.score(x, labels, data),
        "sample_seconds": round(seconds, 2),
        "out_of_range_fraction": float((x.abs() > 1).float().mean()),
    }
    print(json.dumps(row), flush=True)
    return row, x


def sweep(pipe: Any, ev: Any, data: Any, ev_cfg: dict[str, Any]) -> tuple[list[dict[str, Any]], torch.Tensor]:
    """Score the guidance scales (dpmpp_2m, 20 steps), the dpmpp_2m step counts and the other
    samplers at the headline guidance; returns the rows and the headline configuration's samples."""
    gen = {"n": ev_cfg["n_samples"], "seed": ev_cfg["seed"], "spacing": ev_cfg["timestep_spacing"]}
    g_main = ev_cfg["guidance"]
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
    assert main_x is not None
    return rows, main_x


def summary(
    report: dict[str, Any], rows: list[dict[str, Any]], ev_cfg: dict[str, Any], n_heldout: int
) -> dict[str, Any]:
    """The headline configuration's scores against :data:`TARGETS`."""
    g_main = ev_cfg["guidance"]

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
    return {
        "headline": f"dpmpp_2m, 20 steps, guidance {g_main:g}, {ev_cfg['n_samples']} samples vs {n_heldout} held-out",
        **{
            k: {
                "value": v,
                "target": f"{op} {TARGETS[k]}",
                "met": None if v is None else (v <= TARGETS[k] if op == "<=" else v >= TARGETS[k]),
            }
            for k, (v, op) in checks.items()
        },
        "fd_real_vs_real": report["baselines"]["real_vs_real"]["fd_train_subset_vs_heldout"],
        "fd_gaussian_mixture": report["baselines"]["gaussian_mixture"]["fd"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = class_run_parser(__doc__, RECIPE["steps"], CACHE_DIR / "digits-run", THREADS)
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override a recipe entry (experiments; the JSON records it), e.g. lr=5e-4 "
        "or model_config.base_channels=64",
    )
    ap.add_argument("--eval-only", action="store_true", help="score the checkpoint in --run-dir")
    ap.add_argument("--light", action="store_true", help="score only guidance 1 with dpmpp_2m (experiments)")
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
        ev_cfg.update(
            n_samples=100, guidance_scales=[1.0], dpmpp_2m_steps=[10, 20], other_samplers_at_20=[], grid_per_class=4
        )
    # one checkpoint at the end: no I/O in the timing
    recipe.update(checkpoint_every=recipe["steps"], log_every=min(recipe["log_every"], recipe["steps"]))
    name = "digits_quick" if args.quick else "digits"
    report: dict[str, Any] = {
        "benchmark": "digits 8x8, class-conditional",
        "machine": machine(),
        "recipe": recipe,
        "eval": ev_cfg,
        "targets": TARGETS,
        "argv": argv or sys.argv[1:],
    }

    if args.eval_only:
        from diffcore.pipeline import Pipeline

        pipe = Pipeline.load(args.run_dir)
        report["recipe"] = pipe.run
    else:
        pipe, report["training"] = train_timed(recipe, args.run_dir)
        print(json.dumps({"training": report["training"]}), flush=True)

    data, ev = score_setup("digits", report, ev_cfg["n_samples"])
    report["samples"], main_x = sweep(pipe, ev, data, ev_cfg)
    report["loadavg_at_end"] = loadavg()
    report["summary"] = summary(report, report["samples"], ev_cfg, len(data.test))
    print(json.dumps(report["summary"], indent=1))
    return write_class_run(args.out, name, report, main_x, ev_cfg["grid_per_class"], scale=6)


if __name__ == "__main__":
    main()
