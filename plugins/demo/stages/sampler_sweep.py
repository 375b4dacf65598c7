"""Samplers on digits (issue #16): FD of the demo's digits model under every registered sampler
by steps, the registered sigma schedules for a few samplers, dpm_adaptive by tolerance, and which
sampler and schedule reach the default's FD (x 1.1) in the fewest model evaluations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffcore.evaluation import (
    ADAPTIVE,
    TIMESTEPS,
    Evaluator,
    balanced_labels,
    fd_target,
    fewest_evaluations,
    real_fd,
    run_sweep,
    sigma_schedules,
    stepped_samplers,
)
from diffcore.pipeline import Pipeline
from diffcore_plugins.demo.figures import plot_curves
from diffcore_plugins.demo.report import Report
from diffcore_plugins.demo.runs import log

__all__ = ["configurations", "run"]

SPACING = "trailing"
TARGET_SAMPLER, FACTOR = "dpmpp_2m", 1.1
TEXT = (
    "The class-conditional digits model at guidance 1 (the conditional model, one evaluation per model call) "
    "under every registered sampler; the sigma schedules (every registered spacing of the model's cosine "
    "schedule: its noise levels respaced) for {schedule_samplers}; and dpm_adaptive, which picks its own steps, "
    "at rtol {rtols}. Cost is counted in model evaluations per image, not steps (heun, dpm_2 and the "
    "singlestep SDE/ancestral samplers take about two per step, pndm adds a warm-up). The CFG++ samplers are a "
    "guidance method (scale lambda, ~0.3-1.5, two evaluations per step) and have no unguided setting: they are "
    "compared with guided samplers in `benchmarks/quality/generation.py`. Same noise for every run, "
    "{n} samples per point; FD as in the flow section. At {n} samples FD is noisy: {n} real train digits score "
    "{floor:.2f} against the held-out split, so read differences of a few tenths as ties (the benchmark uses more "
    "samples)."
)


def configurations(pipe: Pipeline, sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """Every sampler at each step count, the reference (dpmpp_2m at ``reference_steps``), the schedule
    samplers on every sigma spacing, and dpm_adaptive at each rtol (between the first and last noise
    level of the reference's plan), all at guidance 1."""
    steps, ref = sweep["steps"], sweep["reference_steps"]
    runs = [{"sampler": s, "steps": k, "guidance_scale": 1.0} for s in stepped_samplers(cfg_pp=False) for k in steps]
    if ref not in steps:
        runs.append({"sampler": TARGET_SAMPLER, "steps": ref, "guidance_scale": 1.0})
    runs += [
        {"sampler": s, "steps": k, "guidance_scale": 1.0, "schedule": name}
        for name in sigma_schedules(pipe.schedule)
        for s in sweep["schedule_samplers"]
        for k in steps
    ]
    runs += [
        {"sampler": ADAPTIVE, "steps": ref, "guidance_scale": 1.0, "sampler_options": {"rtol": r}}
        for r in sweep["rtols"]
    ]
    return runs


def _figures(rows: list[dict[str, Any]], floor: float, n: int, out: Path) -> None:
    by_steps: dict[str, list[tuple[float, float]]] = {}
    by_cost: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if "fd" not in r:
            continue
        if r["schedule"] == TIMESTEPS and r["sampler"] != ADAPTIVE:
            by_steps.setdefault(r["sampler"], []).append((r["steps"], r["fd"]))
        if r["schedule"] != TIMESTEPS or r["sampler"] == ADAPTIVE or r["sampler"] == TARGET_SAMPLER:
            name = r["sampler"] if r["schedule"] == TIMESTEPS else f"{r['sampler']}, {r['schedule']}"
            by_cost.setdefault(name, []).append((r["evals_per_image"], r["fd"]))
    floor_line = (floor, f"{n} real train digits (FD's noise at this n)")
    steps = sorted({r["steps"] for r in rows if r["sampler"] != ADAPTIVE})
    plot_curves(
        by_steps,
        out / "sweep_fd_steps.png",
        xlabel="sampler steps",
        ylabel="FD vs held-out digits",
        title=f"Every sampler on digits, guidance 1, {n} samples per point",
        floor=floor_line,
        xticks=steps,
    )
    plot_curves(
        by_cost,
        out / "sweep_fd_evals.png",
        xlabel="model evaluations per image",
        ylabel="FD vs held-out digits",
        title="Sigma schedules and dpm_adaptive by cost",
        floor=floor_line,
    )


def run(pipe: Pipeline, data: Any, ev: Evaluator, cfg: dict[str, Any], out: Path, rep: Report) -> dict[str, Any]:
    """``cfg``: the demo config (its ``samples`` and ``sweep`` entries)."""
    sweep, n = cfg["sweep"], 10 * cfg["samples"]["sweep_per_class"]
    runs = configurations(pipe, sweep)
    log(f"samplers on digits: {len(runs)} configurations x {n} samples")
    labels = balanced_labels(data.num_classes, n)
    rows = run_sweep(pipe, runs, labels, lambda x, y: ev.score(x, y, data), seed=0, timestep_spacing=SPACING)
    target = fd_target(rows, TARGET_SAMPLER, sweep["reference_steps"], FACTOR)
    fewest = fewest_evaluations(rows, target["target"])
    floor = real_fd(ev, data, n, seed=0)["fd_train_subset_vs_heldout"]
    _figures(rows, floor, n, out)
    schedules = sorted({r["schedule"] for r in rows} - {TIMESTEPS})
    s = rep.section("Samplers on digits", "sampler-sweep")
    rtols = ", ".join(f"{r:g}" for r in sweep["rtols"])
    s.text(TEXT.format(schedule_samplers=", ".join(sweep["schedule_samplers"]), rtols=rtols, n=n, floor=floor))
    s.figure("sweep_fd_steps.png", "FD vs steps of every sampler on the model's own schedule (trailing).", width=900)
    s.figure(
        "sweep_fd_evals.png",
        f"FD vs model evaluations per image: sigma schedules ({', '.join(schedules)}) and dpm_adaptive.",
        width=900,
    )
    reached = [r for r in fewest if r["reached"]]
    s.table(
        ["sampler", "schedule", "steps", "model evaluations / image", "FD"],
        [[r["sampler"], r["schedule"], _steps(r), _count(r["evals_per_image"]), r["fd"]] for r in reached[:12]],
        f"Cheapest configurations reaching FD <= {target['target']:.3f} ({FACTOR:g} x {TARGET_SAMPLER} at "
        f"{target['steps']} steps): {len(reached)} of {len(fewest)} sampler/schedule pairs reach it; the 12 "
        "cheapest are shown",
    )
    s.table(
        ["rtol", "model evaluations / image", "accepted / rejected steps", "FD"],
        [
            [f"{r['sampler_options']['rtol']:g}", _count(r.get("evals_per_image", 0)), _accepted(r), r.get("fd", "-")]
            for r in rows
            if r["sampler"] == ADAPTIVE
        ],
        "dpm_adaptive (order 3, atol 0.0078): the cost its tolerance buys",
    )
    most = max(sweep["steps"])
    far = sorted(
        r["sampler"]
        for r in rows
        if r["schedule"] == TIMESTEPS and r["steps"] == most and r.get("fd", 0.0) > 3 * target["reference"]
    )
    if far:
        s.text(
            f"Still above 3 x the reference FD at {most} steps: {', '.join(far)} (for heun see "
            "benchmarks/quality/README.md: from the first trailing level, sigma ~2e4, its corrector amplifies the "
            "model's error)."
        )
    refused = [f"{r['sampler']} on {r['schedule']}: {r['error']}" for r in rows if "error" in r]
    if refused:
        s.text("Refused configurations: " + "; ".join(sorted(set(refused))) + ".")
    return {"n": n, "timestep_spacing": SPACING, "target": target, "fewest": fewest, "rows": rows}


def _steps(row: dict[str, Any]) -> str | int:
    return f"rtol {row['sampler_options']['rtol']:g}" if row["sampler"] == ADAPTIVE else row["steps"]


def _accepted(row: dict[str, Any]) -> str:
    info = row.get("info") or {}
    return f"{info['n_accept']} / {info['n_reject']}" if info else "-"


def _count(evals: float) -> int | float:
    """Model evaluations per image: an int when whole (the fixed-step samplers), else to 0.1."""
    return int(evals) if float(evals).is_integer() else round(evals, 1)
