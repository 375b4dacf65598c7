"""Generation quality sweep: FD, prompted-class accuracy and nearest-neighbour ratio of a
class-conditional digits model over every built-in sampler x {5, 10, 20, 50} steps (guidance 3)
and over guidance scales {0, 1, 3, 5} (dpmpp_2m, 20 steps).

    .venv/bin/python -m benchmarks.quality.generation                  # digits.py's model (trains it if absent)
    .venv/bin/python -m benchmarks.quality.generation --checkpoint runs/digits
    .venv/bin/python -m benchmarks.quality.generation --quick          # smoke run: 30-step model, 20 samples

The number of samples per configuration is the largest multiple of 10 in 100..1000 whose
measured cost fits ``--budget-s`` (540 s for the whole evaluation, training excluded); pass
``--n`` to fix it.

Samples come from the ``generate`` task (``diffcore.tasks.generation``: the sampler registry and
the fused ops); every configuration starts from the same seed, so the initial noise is shared and
differences between samplers are not sampling noise of x_T. Labels are balanced over the 10
classes. Scores use the evaluator of ``benchmarks/quality/evaluator.py``: FD of its classifier
features against the held-out split, accuracy of its predictions against the prompted labels,
and the nearest-neighbour ratio (distance to the train split / the same for held-out images).
Writes ``benchmarks/results/quality/generation.json`` and ``generation_fd_vs_steps.png``
(``--quick``: under ``outputs/quality/generation-quick/``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

import diffcore
from benchmarks.quality.digits import EVAL as DIGITS_EVAL
from benchmarks.quality.digits import RECIPE as DIGITS_RECIPE
from benchmarks.quality.evaluator import (
    CACHE_DIR,
    RESULTS_DIR,
    load_data,
    load_evaluator,
    machine,
    split_check,
    train_timed,
)
from diffcore.evaluation import Evaluator, real_fd
from diffcore.samplers import SAMPLERS
from diffcore.tasks import load_pipeline
from diffcore.tasks.generation import GenerateParams, generate_samples

ROOT = Path(__file__).resolve().parents[2]
QUICK_DIR = CACHE_DIR / "generation-quick"
DIGITS_RUN = CACHE_DIR / "digits-run"  # where benchmarks/quality/digits.py trains its model
TRAIN_DIR = CACHE_DIR / "generation-model"  # where this script trains one when there is none
STEPS = (5, 10, 20, 50)
GUIDANCE = (0.0, 1.0, 3.0, 5.0)
SWEEP_GUIDANCE = 3.0
GUIDANCE_SAMPLER, GUIDANCE_STEPS = "dpmpp_2m", 20
SPACING = DIGITS_EVAL["timestep_spacing"]  # as in digits.py: trailing reaches pure noise at 5 steps


def configurations(
    samplers: list[str], steps: tuple[int, ...], guidance: tuple[float, ...], guidance_steps: int
) -> list[dict[str, Any]]:
    """The sweep: each sampler at each step count (guidance 3), then the guidance scales."""
    runs = [
        {"sweep": "steps", "sampler": s, "steps": k, "guidance_scale": SWEEP_GUIDANCE} for s in samplers for k in steps
    ]
    runs += [
        {"sweep": "guidance", "sampler": GUIDANCE_SAMPLER, "steps": guidance_steps, "guidance_scale": w}
        for w in guidance
    ]
    return runs


def planned_evals(run: dict[str, Any], n: int) -> int:
    """Image evaluations of the model a configuration needs (for the time estimate only)."""
    calls = 2 * run["steps"] - 1 if run["sampler"] == "heun" else run["steps"]
    passes = 1 if run["guidance_scale"] in (0.0, 1.0) else 2  # the task's one-pass shortcuts
    return n * calls * passes


def train_model(out: Path, steps: int | None, quick: bool) -> dict[str, Any]:
    """Train benchmarks/quality/digits.py's recipe (``steps`` iterations; quick: 30 at batch 32) into ``out``."""
    recipe = dict(DIGITS_RECIPE)
    if quick:
        recipe.update(steps=30, batch_size=32, warmup_steps=5, log_every=10)
    if steps:
        recipe["steps"] = steps
    recipe["checkpoint_every"] = recipe["steps"]
    print(f"[generation] training the digits recipe for {recipe['steps']} steps -> {out}", flush=True)
    return train_timed(recipe, out)[1]


def seconds_per_eval(pipe: Any, batch_size: int, seed: int) -> float:
    """Measured wall seconds per image evaluation of the model here (a short guided run)."""
    params = GenerateParams(
        checkpoint="calibration",
        n=min(100, batch_size),
        sampler=GUIDANCE_SAMPLER,
        steps=3,
        class_label="all",
        guidance_scale=SWEEP_GUIDANCE,
        seed=seed,
        batch_size=batch_size,
        timestep_spacing=SPACING,
    )
    generate_samples(pipe, params)  # warm-up
    start = time.perf_counter()
    generate_samples(pipe, params)
    return (time.perf_counter() - start) / (params.n * 3 * 2)


def choose_n(
    runs: list[dict[str, Any]], per_eval: float, budget_s: float, classes: int, low: int = 100, high: int = 1000
) -> int:
    """The largest multiple of ``classes`` in [low, high] whose sweep fits ``budget_s``."""
    per_sample = sum(planned_evals(r, 1) for r in runs) * per_eval
    n = int(budget_s / per_sample) // classes * classes
    return max(low, min(high, n))


def sweep(
    pipe: Any,
    checkpoint: Path,
    runs: list[dict[str, Any]],
    n: int,
    seed: int,
    batch_size: int,
    ev: Evaluator,
    data: Any,
) -> list[dict[str, Any]]:
    """Generate and score every configuration with one loaded pipeline; one result row each."""
    if pipe.num_classes != data.num_classes:
        raise SystemExit(
            f"--checkpoint {checkpoint}: needs a class-conditional digits model "
            f"({data.num_classes} classes), this one has {pipe.num_classes}"
        )
    evals = [0]
    pipe.model.register_forward_pre_hook(lambda module, args: evals.__setitem__(0, evals[0] + args[0].shape[0]))
    total = sum(planned_evals(r, n) for r in runs)
    done_planned, spent, results = 0, 0.0, []
    for i, run in enumerate(runs):
        params = GenerateParams(
            checkpoint=str(checkpoint),
            n=n,
            sampler=run["sampler"],
            steps=run["steps"],
            class_label="all",
            guidance_scale=run["guidance_scale"],
            seed=seed,
            batch_size=batch_size,
            timestep_spacing=SPACING,
        )
        before = evals[0]
        start = time.perf_counter()
        x, labels = generate_samples(pipe, params)
        seconds = time.perf_counter() - start
        scores = ev.score(x, labels, data)
        row = {
            **run,
            **scores,
            "stochastic": bool(getattr(SAMPLERS.get(run["sampler"]), "stochastic", False)),
            "image_evals": evals[0] - before,
            "seconds": round(seconds, 3),
            "images_per_s": round(n / max(seconds, 1e-9), 1),
        }
        results.append(row)
        spent += seconds
        done_planned += planned_evals(run, n)
        eta = spent / done_planned * (total - done_planned)
        print(
            f"[{i + 1:2d}/{len(runs)}] {run['sweep']:8s} {run['sampler']:16s} steps={run['steps']:<3d} "
            f"w={run['guidance_scale']:<4g} FD={row['fd']:8.3f} acc={row.get('class_accuracy', math.nan):.3f} "
            f"nn={row['nn_ratio']:.3f} {seconds:6.1f}s  (eta {eta:5.0f}s)",
            flush=True,
        )
    return results


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| sweep | sampler | kind | steps | guidance | FD | class acc | NN ratio | model evals/img | s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        kind = "stochastic" if r["stochastic"] else "deterministic"
        lines.append(
            f"| {r['sweep']} | {r['sampler']} | {kind} | {r['steps']} | {r['guidance_scale']:g} | "
            f"{r['fd']:.3f} | {r['class_accuracy']:.3f} | {r['nn_ratio']:.3f} | "
            f"{r['image_evals'] / r['n']:.0f} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], baseline: dict[str, float], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, (ax, gx) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [2, 1]})
    steps_rows = [r for r in results if r["sweep"] == "steps"]
    for i, name in enumerate(sorted({r["sampler"] for r in steps_rows})):
        rows = sorted((r for r in steps_rows if r["sampler"] == name), key=lambda r: r["steps"])
        stochastic = rows[0]["stochastic"]
        ax.plot(
            [r["steps"] for r in rows],
            [r["fd"] for r in rows],
            marker="o" if not stochastic else "s",
            linestyle="--" if stochastic else "-",
            color=f"C{i % 10}",
            label=f"{name}{' (stochastic)' if stochastic else ''}",
        )
    ax.axhline(
        baseline["fd_train_subset_vs_heldout"],
        color="k",
        linewidth=1,
        linestyle=":",
        label=f"real train images (n={baseline['n_subset']})",
    )
    ax.set_xscale("log")
    ax.set_xticks(sorted({r["steps"] for r in steps_rows}))
    ax.get_xaxis().set_major_formatter(ScalarFormatter())
    ax.get_xaxis().set_minor_formatter(NullFormatter())
    ax.set_xlabel("sampler steps (log)")
    ax.set_ylabel("FD vs held-out (evaluator features)")
    ax.set_title(f"FD vs steps, guidance {SWEEP_GUIDANCE:g}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    rows = sorted((r for r in results if r["sweep"] == "guidance"), key=lambda r: r["guidance_scale"])
    if rows:
        gx.plot([r["guidance_scale"] for r in rows], [r["fd"] for r in rows], marker="o", color="C0", label="FD")
        gx.set_xlabel(f"guidance scale ({rows[0]['sampler']}, {rows[0]['steps']} steps)")
        gx.set_ylabel("FD", color="C0")
        acc = gx.twinx()
        acc.plot([r["guidance_scale"] for r in rows], [r["class_accuracy"] for r in rows], marker="s", color="C3")
        acc.set_ylabel("prompted-class accuracy", color="C3")
        acc.set_ylim(0, 1.02)
        gx.set_title("guidance sweep")
        gx.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="run folder of a class-conditional digits model trained on the evaluator's split "
        "(default: benchmarks/quality/digits.py's outputs/quality/digits-run)",
    )
    ap.add_argument(
        "--train-steps",
        type=int,
        default=None,
        help="when there is no checkpoint, train digits.py's recipe for this many steps into "
        "--checkpoint (default: outputs/quality/generation-model)",
    )
    ap.add_argument(
        "--n",
        type=int,
        default=None,
        help="samples per configuration (default: the most in 100..1000 that fit --budget-s; --quick 20)",
    )
    ap.add_argument(
        "--budget-s",
        type=float,
        default=540.0,
        help="wall seconds for the whole run (evaluator, sweep, scoring) when --n is not given; n is "
        "chosen so the measured cost fits (default %(default)s)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--samplers", default=None, help="comma-separated subset (default: every built-in sampler)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 20 samples, steps 2 and 4, tiny model")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results/quality)")
    return ap


def _checkpoint(args: argparse.Namespace) -> tuple[Path, dict[str, Any] | None]:
    """The model to evaluate (trained first when it is missing and training is allowed) and its
    training facts (None when it was not trained here)."""
    if args.checkpoint is not None:
        checkpoint = args.checkpoint
    elif args.quick:
        checkpoint = QUICK_DIR / "model"
    else:
        checkpoint = DIGITS_RUN if (DIGITS_RUN / "checkpoint.safetensors").exists() else TRAIN_DIR
    if (checkpoint / "checkpoint.safetensors").exists() or checkpoint.is_file():
        return checkpoint, None
    if args.train_steps is None and not args.quick and args.checkpoint is not None:
        raise SystemExit(
            f"no checkpoint at {checkpoint}: pass --checkpoint RUN_DIR of a class-conditional "
            "digits model, or add --train-steps N to train digits.py's recipe there"
        )
    return checkpoint, train_model(checkpoint, args.train_steps, args.quick)


def _sample_count(
    args: argparse.Namespace, runs: list[dict[str, Any]], per_eval: float, left: float, classes: int
) -> tuple[int, float]:
    """Samples per configuration (``--n``, 20 when quick, else what fits ``left`` seconds) and the
    estimated sampling seconds; says both."""
    n = args.n or (20 if args.quick else choose_n(runs, per_eval, left, classes))
    estimate = sum(planned_evals(r, n) for r in runs) * per_eval
    print(
        f"[generation] {per_eval * 1e3:.2f} ms per image evaluation here: n={n} -> about {estimate:.0f}s of "
        f"sampling ({left:.0f}s of the {args.budget_s:.0f}s budget left)",
        flush=True,
    )
    if args.n is None and not args.quick and estimate > left:
        print(f"[generation] WARNING: even n={n} exceeds the budget on this machine", flush=True)
    print(
        f"[generation] {len(runs)} configurations x {n} samples, {sum(planned_evals(r, n) for r in runs)} "
        f"image evaluations of the model; kernels {diffcore.ops.backend()}, {torch.get_num_threads()} threads",
        flush=True,
    )
    return n, estimate


def _write(report: dict[str, Any], out_dir: Path, name: str) -> None:
    """generation.json and generation_fd_vs_steps.png in ``out_dir``; prints the table."""
    results, baseline, settings = report["results"], report["baseline"], report["settings"]
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "generation.json"
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    title = (
        f"{name}: {settings['n']} samples per point, FD vs {baseline['n_heldout']} held-out digits"
        f"{' (quick smoke run)' if settings['quick'] else ''}"
    )
    png = plot(results, baseline, out_dir / "generation_fd_vs_steps.png", title)
    print(table(results))
    print(f"real train subset (n={baseline['n_subset']}) FD vs held-out: {baseline['fd_train_subset_vs_heldout']:.3f}")
    print(f"sweep {report['sweep_seconds']:.0f}s; wrote {json_path} and {png}")


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    t0 = time.perf_counter()

    quick = args.quick
    steps = (2, 4) if quick else STEPS
    guidance_steps = 4 if quick else GUIDANCE_STEPS
    out_dir = args.out or (QUICK_DIR if quick else RESULTS_DIR)
    samplers = args.samplers.split(",") if args.samplers else sorted(SAMPLERS)
    unknown = [s for s in samplers if s not in diffcore.available("samplers")]
    if unknown:
        raise SystemExit(f"--samplers: unknown {unknown}; known: {diffcore.available('samplers')}")

    checkpoint, training = _checkpoint(args)
    if training is not None:
        t0 = time.perf_counter()  # the budget is for the evaluation, not the training

    data = load_data("digits")
    ev = load_evaluator("digits", data)
    pipe = load_pipeline(str(checkpoint))
    split = split_check(pipe)
    if not split["matches"]:
        print(
            f"[generation] WARNING: the model's split {split['model_split']} is not the evaluator's "
            f"{split['evaluator_split']}: FD and NN ratio against held-out images may be optimistic",
            flush=True,
        )
    runs = configurations(samplers, steps, GUIDANCE, guidance_steps)
    per_eval = seconds_per_eval(pipe, args.batch_size, args.seed)
    # What is left of the budget, less a margin for scoring (~0.3 s per configuration) and the plot.
    left = args.budget_s - (time.perf_counter() - t0) - 0.3 * len(runs) - 10
    n, estimate = _sample_count(args, runs, per_eval, left, data.num_classes)
    start = time.perf_counter()
    results = sweep(pipe, checkpoint, runs, n, args.seed, args.batch_size, ev, data)
    wall = time.perf_counter() - start
    # FD of n real train images vs the held-out split: the floor a perfect generator reaches at this n
    baseline = {**real_fd(ev, data, n, args.seed), "evaluator_heldout_accuracy": ev.accuracy}

    report = {
        "machine": machine(),
        "checkpoint": {
            "path": str(checkpoint),
            "trained_here": training,
            "train_steps": pipe.run.get("train", {}).get("steps"),
            "model": pipe.run.get("model"),
            "schedule": pipe.run.get("schedule"),
            "prediction": pipe.run.get("prediction"),
            "split": split,
        },
        "settings": {
            "n": n,
            "ms_per_image_eval": round(per_eval * 1e3, 3),
            "estimated_seconds": round(estimate, 1),
            "seed": args.seed,
            "batch_size": args.batch_size,
            "quick": quick,
            "steps": list(steps),
            "sweep_guidance": SWEEP_GUIDANCE,
            "guidance": list(GUIDANCE),
            "guidance_sampler": GUIDANCE_SAMPLER,
            "guidance_steps": guidance_steps,
            "labels": "balanced over classes",
            "timestep_spacing": SPACING,
        },
        "baseline": baseline,
        "results": results,
        "sweep_seconds": round(wall, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    _write(report, out_dir, checkpoint.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
