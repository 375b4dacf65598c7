"""Generation quality sweep: FD, prompted-class accuracy and nearest-neighbour ratio of a
class-conditional digits model over every registered sampler x {5, 10, 20, 50} steps (guidance 3;
the CFG++ samplers at lambda 1), every registered sigma schedule (karras, exponential, ...) for a
few samplers, dpm_adaptive by tolerance, and guidance scales {0, 1, 3, 5} (dpmpp_2m, 20 steps).

    .venv/bin/python -m benchmarks.quality.generation                  # digits.py's model (trains it if absent)
    .venv/bin/python -m benchmarks.quality.generation --checkpoint runs/digits
    .venv/bin/python -m benchmarks.quality.generation --quick          # smoke run: 30-step model, 20 samples

The number of samples per configuration is the largest multiple of 10 in 100..1000 whose
measured cost fits ``--budget-s`` (540 s for the whole evaluation, training excluded); pass ``--n``
to fix it. Cost is counted in model evaluations (heun, dpm_2, dpmpp_sde: ~2 per step; guided: x2),
not steps. ``--quick`` runs every sampler at 2 and 4 steps, every schedule at 4 and one rtol.

Samples come from :func:`diffcore.evaluation.generate_run` (the pipeline's generate); every
configuration starts from the same seed, so differences between samplers are not noise of x_T.
Labels are balanced over the 10 classes. Scores use the evaluator of ``evaluator.py``: FD of its
features against the held-out split, accuracy of its predictions against the prompted labels,
and the nearest-neighbour ratio. ``fewest_evaluations`` lists, per sampler and schedule, the
cheapest configuration whose FD is within 1.1 x that of dpmpp_2m at the most steps (50).
Writes ``benchmarks/results/quality/generation.json`` and ``generation_fd_vs_steps.png`` (FD vs
steps, FD vs model evaluations, guidance; ``--quick``: in ``outputs/quality/generation-quick/``).
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
from diffcore.evaluation import (
    ADAPTIVE,
    Evaluator,
    balanced_labels,
    fd_target,
    fewest_evaluations,
    generate_run,
    is_cfg_pp,
    real_fd,
    run_cost,
    run_sweep,
    sigma_schedules,
    stepped_samplers,
)
from diffcore.tasks import load_pipeline

ROOT = Path(__file__).resolve().parents[2]
QUICK_DIR = CACHE_DIR / "generation-quick"
DIGITS_RUN = CACHE_DIR / "digits-run"  # where benchmarks/quality/digits.py trains its model
TRAIN_DIR = CACHE_DIR / "generation-model"  # where this script trains one when there is none
STEPS = (5, 10, 20, 50)
GUIDANCE = (0.0, 1.0, 3.0, 5.0)
SWEEP_GUIDANCE = 3.0
# CFG++'s scale is lambda (x0 = x0u + lambda (x0c - x0u), then renoised along the unconditional
# direction). At 20 steps on digits lambda 1 lands near plain CFG at w = 3 (FD 4.0 vs 3.1, both at
# accuracy 1.0; lambda 0.6: 2.6, 0.3: 1.2), so the guided sweep runs them at 1.
CFG_PP_LAMBDA = 1.0
GUIDANCE_SAMPLER, GUIDANCE_STEPS = "dpmpp_2m", 20
SCHEDULE_SAMPLERS = ("euler", "dpmpp_2m", "unipc")  # the samplers run on every sigma schedule
SCHEDULE_STEPS = (5, 10, 20)
RTOLS = (0.2, 0.1, 0.05, 0.02)  # dpm_adaptive's tolerances (atol: its default, 0.0078)
TARGET_FACTOR = 1.1  # the fewest-evaluations table: FD <= 1.1 x dpmpp_2m's at the most steps
SPACING = DIGITS_EVAL["timestep_spacing"]  # as in digits.py: trailing reaches pure noise at 5 steps


def configurations(
    samplers: list[str],
    steps: tuple[int, ...],
    guidance: tuple[float, ...],
    guidance_steps: int,
    *,
    schedules: list[str],
    schedule_samplers: list[str],
    schedule_steps: tuple[int, ...],
    rtols: tuple[float, ...],
) -> list[dict[str, Any]]:
    """The sweep: each (fixed-step) sampler at each step count (guidance 3; CFG++ at lambda 1), the
    schedule samplers on each sigma schedule, dpm_adaptive at each rtol (on the plan of the most
    steps: its first and last level), then the guidance scales."""
    w = SWEEP_GUIDANCE

    def scale(sampler: str) -> float:
        return CFG_PP_LAMBDA if is_cfg_pp(sampler) else w

    runs = [{"sweep": "steps", "sampler": s, "steps": k, "guidance_scale": scale(s)} for s in samplers for k in steps]
    runs += [
        {"sweep": "schedules", "sampler": s, "steps": k, "guidance_scale": scale(s), "schedule": name}
        for name in schedules
        for s in schedule_samplers
        for k in schedule_steps
    ]
    adaptive = {"sweep": "adaptive", "sampler": ADAPTIVE, "steps": max(steps), "guidance_scale": w}
    runs += [{**adaptive, "sampler_options": {"rtol": r}} for r in rtols]
    runs += [
        {"sweep": "guidance", "sampler": GUIDANCE_SAMPLER, "steps": guidance_steps, "guidance_scale": g}
        for g in guidance
    ]
    return runs


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
    run = {"sampler": GUIDANCE_SAMPLER, "steps": 3, "guidance_scale": SWEEP_GUIDANCE}
    labels = balanced_labels(pipe.num_classes, min(100, batch_size))
    generate_run(pipe, run, labels, seed=seed, batch_size=batch_size, timestep_spacing=SPACING)  # warm-up
    _, facts = generate_run(pipe, run, labels, seed=seed, batch_size=batch_size, timestep_spacing=SPACING)
    return facts["seconds"] / facts["image_evals"]


def choose_n(costs: list[int], per_eval: float, budget_s: float, classes: int, low: int = 100, high: int = 1000) -> int:
    """The largest multiple of ``classes`` in [low, high] whose sweep (``costs``: image evaluations
    per sample of each configuration) fits ``budget_s``."""
    n = int(budget_s / (sum(costs) * per_eval)) // classes * classes
    return max(low, min(high, n))


def sweep(
    pipe: Any,
    checkpoint: Path,
    runs: list[dict[str, Any]],
    costs: list[int],
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
    total, done, spent = sum(costs) * n, [0], [0.0]

    def progress(i: int, row: dict[str, Any]) -> None:
        row["stochastic"] = bool(getattr(diffcore.get("samplers", row["sampler"]), "stochastic", False))
        seconds = row.get("seconds", 0.0)
        row["images_per_s"] = round(n / max(seconds, 1e-9), 1)
        spent[0] += seconds
        done[0] += costs[i] * n
        eta = spent[0] / max(done[0], 1) * (total - done[0])
        head = (
            f"[{i + 1:3d}/{len(runs)}] {row['sweep']:9s} {row['sampler']:22s} {row['schedule']:16s} {_steps(row):>9} "
        )
        if "error" in row:
            print(f"{head} refused: {row['error']}", flush=True)
            return
        print(
            f"{head} w={row['guidance_scale']:<4g} FD={row['fd']:8.3f} acc={row.get('class_accuracy', math.nan):.3f} "
            f"nn={row['nn_ratio']:.3f} evals/img={row['evals_per_image']:5.1f} {seconds:6.1f}s  (eta {eta:5.0f}s)",
            flush=True,
        )

    labels = balanced_labels(data.num_classes, n)
    return run_sweep(
        pipe,
        runs,
        labels,
        lambda x, y: ev.score(x, y, data),
        seed=seed,
        batch_size=batch_size,
        timestep_spacing=SPACING,
        on_row=progress,
    )


def _steps(row: dict[str, Any]) -> str:
    return f"rtol {row['sampler_options']['rtol']:g}" if row["sampler"] == ADAPTIVE else f"steps={row['steps']}"


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| sweep | sampler | kind | schedule | steps | guidance | FD | class acc | NN ratio | model evals/img | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        kind = "stochastic" if r["stochastic"] else "deterministic"
        head = f"| {r['sweep']} | {r['sampler']} | {kind} | {r['schedule']} | {_steps(r)} | {r['guidance_scale']:g} |"
        if "error" in r:
            lines.append(f"{head} refused: {r['error']} | | | | |")
            continue
        lines.append(
            f"{head} {r['fd']:.3f} | {r['class_accuracy']:.3f} | {r['nn_ratio']:.3f} | "
            f"{r['evals_per_image']:.1f} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines)


def fewest_table(fewest: dict[str, Any]) -> str:
    """Markdown: per sampler and schedule, the cheapest configuration within the FD target."""
    t = fewest["target"]
    lines = [
        f"FD target {t['target']:.3f} = {t['factor']:g} x {t['sampler']} at {t['steps']} steps ({t['reference']:.3f})",
        "| sampler | schedule | steps | guidance | model evals/img | FD | reached |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['sampler']} | {r['schedule']} | {_steps(r)} | {r['guidance_scale']:g} | {r['evals_per_image']:.1f} | "
        f"{r['fd']:.3f} | {'yes' if r['reached'] else 'no'} |"
        for r in fewest["rows"]
    ]
    return "\n".join(lines)


def _curves(ax: Any, curves: dict[str, list[tuple[float, float]]], dashed: set[str], floor: dict[str, Any]) -> None:
    """One log-x line of (x, FD) per named curve (``dashed``: stochastic or reference), the real-data floor."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    for i, (name, pts) in enumerate(sorted(curves.items())):
        xs, ys = zip(*sorted(pts))
        color = plt.get_cmap("tab20")((2 * i) % 20 + (i // 10) % 2)
        ax.plot(xs, ys, marker="osD^v<>ph*"[i % 10], color=color, ls="--" if name in dashed else "-", label=name)
    n = floor["n_subset"]
    ax.axhline(floor["fd_train_subset_vs_heldout"], color="k", lw=1, ls=":", label=f"real train images (n={n})")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel("FD vs held-out (evaluator features)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, ncol=2)


def plot(results: list[dict[str, Any]], baseline: dict[str, Any], path: Path, title: str) -> Path:
    """FD vs steps of every sampler; FD vs model evaluations per image of the schedule samplers on
    every sigma schedule and of dpm_adaptive; FD and accuracy vs the guidance scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, cx, gx) = plt.subplots(1, 3, figsize=(22, 7), gridspec_kw={"width_ratios": [2, 2, 1]})
    scored = [r for r in results if "fd" in r]
    by_steps: dict[str, list[tuple[float, float]]] = {}
    for r in (r for r in scored if r["sweep"] == "steps"):
        name = r["sampler"] + (f" (lambda {r['guidance_scale']:g})" if is_cfg_pp(r["sampler"]) else "")
        by_steps.setdefault(name + (" (stochastic)" if r["stochastic"] else ""), []).append((r["steps"], r["fd"]))
    _curves(ax, by_steps, {k for k in by_steps if k.endswith("(stochastic)")}, baseline)
    ax.set_xticks(sorted({r["steps"] for r in scored if r["sweep"] == "steps"}))
    ax.set(xlabel="sampler steps (log)", title=f"FD vs steps, guidance {SWEEP_GUIDANCE:g}")
    on_schedules = {r["sampler"] for r in results if r["sweep"] == "schedules"}
    by_cost: dict[str, list[tuple[float, float]]] = {}
    for r in scored:
        if r["sweep"] in ("schedules", "adaptive") or (r["sweep"] == "steps" and r["sampler"] in on_schedules):
            by_cost.setdefault(f"{r['sampler']}, {r['schedule']}", []).append((r["evals_per_image"], r["fd"]))
    _curves(cx, by_cost, {k for k in by_cost if k.endswith("timesteps") and ADAPTIVE not in k}, baseline)
    cx.set(xlabel="model evaluations per image (log)", title="sigma schedules and dpm_adaptive, by cost")
    rows = sorted((r for r in scored if r["sweep"] == "guidance"), key=lambda r: r["guidance_scale"])
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
    fig.savefig(path, dpi=110)
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
    ap.add_argument("--n", type=int, default=None, help="samples per configuration (default: what fits; quick: 20)")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=540.0,
        help="wall seconds for the whole run (evaluator, sweep, scoring) when --n is not given; n is "
        "chosen so the measured cost fits (default %(default)s)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--samplers", default=None, help="comma-separated subset (default: every registered sampler)")
    by_schedule = ",".join(SCHEDULE_SAMPLERS)
    ap.add_argument(
        "--schedule-samplers", default=by_schedule, help="run on every sigma schedule (default %(default)s)"
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny model, 20 samples, 2 and 4 steps")
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
    args: argparse.Namespace, costs: list[int], per_eval: float, left: float, classes: int
) -> tuple[int, float]:
    """Samples per configuration (``--n``, 20 when quick, else what fits ``left`` seconds) and the
    estimated sampling seconds; says both."""
    n = args.n or (20 if args.quick else choose_n(costs, per_eval, left, classes))
    estimate = sum(costs) * n * per_eval
    print(
        f"[generation] {per_eval * 1e3:.2f} ms per image evaluation here: n={n} -> about {estimate:.0f}s of "
        f"sampling ({left:.0f}s of the {args.budget_s:.0f}s budget left)",
        flush=True,
    )
    if args.n is None and not args.quick and estimate > left:
        print(f"[generation] WARNING: even n={n} exceeds the budget on this machine", flush=True)
    print(
        f"[generation] {len(costs)} configurations x {n} samples, {sum(costs) * n} image evaluations of the "
        f"model; kernels {diffcore.ops.backend()}, {torch.get_num_threads()} threads",
        flush=True,
    )
    return n, estimate


def _write(report: dict[str, Any], out_dir: Path, name: str) -> None:
    """generation.json and generation_fd_vs_steps.png in ``out_dir``; prints the tables."""
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
    if report["fewest_evaluations"] is not None:
        print(fewest_table(report["fewest_evaluations"]))
    print(f"real train subset (n={baseline['n_subset']}) FD vs held-out: {baseline['fd_train_subset_vs_heldout']:.3f}")
    print(f"sweep {report['sweep_seconds']:.0f}s; wrote {json_path} and {png}")


def _runs(args: argparse.Namespace, pipe: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The configurations of this run and the settings that chose them."""
    quick = args.quick
    steps = (2, 4) if quick else STEPS
    known = diffcore.available("samplers")
    samplers = args.samplers.split(",") if args.samplers else known
    by_schedule = [s for s in args.schedule_samplers.split(",") if s]
    unknown = [s for s in samplers + by_schedule if s not in known]
    if unknown:
        raise SystemExit(f"--samplers / --schedule-samplers: unknown {unknown}; known: {known}")
    schedules = list(sigma_schedules(pipe.schedule))
    settings = {
        "steps": list(steps),
        "sweep_guidance": SWEEP_GUIDANCE,
        "cfg_pp_lambda": CFG_PP_LAMBDA,
        "schedules": schedules,
        "schedule_samplers": by_schedule,
        "schedule_steps": [4] if quick else list(SCHEDULE_STEPS),
        "rtols": ([0.1] if quick else list(RTOLS)) if ADAPTIVE in samplers else [],
        "guidance": list(GUIDANCE),
        "guidance_sampler": GUIDANCE_SAMPLER,
        "guidance_steps": 4 if quick else GUIDANCE_STEPS,
    }
    runs = configurations(
        [s for s in samplers if s in stepped_samplers()],
        steps,
        GUIDANCE,
        settings["guidance_steps"],
        schedules=schedules,
        schedule_samplers=by_schedule,
        schedule_steps=tuple(settings["schedule_steps"]),
        rtols=tuple(settings["rtols"]),
    )
    return runs, settings


def _fewest(results: list[dict[str, Any]], steps: list[int]) -> dict[str, Any] | None:
    """The fewest-evaluations table over the guided sweeps (None without dpmpp_2m at the most steps)."""
    guided = [r for r in results if r["sweep"] != "guidance"]
    try:
        target = fd_target(guided, GUIDANCE_SAMPLER, max(steps), TARGET_FACTOR)
    except ValueError:
        return None
    return {"target": target, "rows": fewest_evaluations(guided, target["target"])}


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
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
    runs, settings = _runs(args, pipe)
    costs = [run_cost(pipe, r, timestep_spacing=SPACING) for r in runs]
    per_eval = seconds_per_eval(pipe, args.batch_size, args.seed)
    # What is left of the budget, less a margin for scoring (~0.3 s per configuration) and the plot.
    left = args.budget_s - (time.perf_counter() - t0) - 0.3 * len(runs) - 10
    n, estimate = _sample_count(args, costs, per_eval, left, data.num_classes)
    start = time.perf_counter()
    results = sweep(pipe, checkpoint, runs, costs, n, args.seed, args.batch_size, ev, data)
    wall = time.perf_counter() - start
    # FD of n real train images vs the held-out split: the floor a perfect generator reaches at this n
    baseline = {**real_fd(ev, data, n, args.seed), "evaluator_heldout_accuracy": ev.accuracy}
    run = pipe.run
    report = {
        "machine": machine(),
        "checkpoint": {
            "path": str(checkpoint),
            "trained_here": training,
            "train_steps": run.get("train", {}).get("steps"),
            **{k: run.get(k) for k in ("model", "schedule", "prediction")},
            "split": split,
        },
        "settings": {
            "n": n,
            "ms_per_image_eval": round(per_eval * 1e3, 3),
            "estimated_seconds": round(estimate, 1),
            "seed": args.seed,
            "batch_size": args.batch_size,
            "quick": args.quick,
            **settings,
            "labels": "balanced over classes",
            "timestep_spacing": SPACING,
        },
        "baseline": baseline,
        "results": results,
        "fewest_evaluations": _fewest(results, settings["steps"]),
        "sweep_seconds": round(wall, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    _write(report, out_dir=args.out or (QUICK_DIR if args.quick else RESULTS_DIR), name=checkpoint.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
