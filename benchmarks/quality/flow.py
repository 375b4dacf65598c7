"""Few-step quality: a diffusion model, a flow-matching model and its reflowed version on 8x8 digits.

    .venv/bin/python -m benchmarks.quality.flow            # the full run (three trainings, ~40 min)
    .venv/bin/python -m benchmarks.quality.flow --quick    # smoke mode: seconds, not a result

The diffusion model is digits.py's fixed recipe (cosine schedule, v-prediction, min-SNR weights);
the flow model is the same network, data, optimizer and iteration budget trained on the velocity
of the straight path with SD3's logit-normal times; the reflowed model starts from the flow model
and trains the same budget again on 10k (noise, sample) pairs of its ODE (Heun, 32 steps), so it
has seen twice the budget (reported). Every model is sampled with Euler and DPM-Solver++(2M) at
1, 2, 4, 10, 20 and 50 steps, 1000 samples each (labels 0..9
cycling, no guidance, seed 0, ``timestep_spacing="trailing"``: the diffusion model's levels reach
pure noise, the flow models' are evenly spaced flow times ending at 0), and scored with the
evaluator of evaluator.py: FD against the held-out split, prompted-class accuracy,
nearest-neighbour ratio, and wall time per image. ``--reuse`` rescores the runs of an earlier
full run (same training facts) without training again.
Writes ``flow.json``, ``flow.md`` and ``flow_fd_vs_steps.png`` to ``benchmarks/results/quality``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch

import diffcore
from benchmarks.quality.digits import RECIPE as DIFFUSION
from benchmarks.quality.evaluator import CACHE_DIR, RESULTS_DIR, load_data, load_evaluator, machine, train_timed
from diffcore.evaluation import balanced_labels
from diffcore.evaluation.recipes import DIGITS_FLOW

FLOW: dict[str, Any] = {**copy.deepcopy(DIFFUSION), **DIGITS_FLOW}  # the same recipe on the flow objective
REFLOW: dict[str, Any] = {"pairs": 10_000, "pair_sampler": "heun", "pair_steps": 32}
STEPS = (1, 2, 4, 10, 20, 50)
SAMPLERS = {"diffusion": ("euler", "dpmpp_2m"), "flow": ("euler", "dpmpp_2m"), "reflow": ("euler", "dpmpp_2m")}
EVAL = {"n_samples": 1000, "seed": 0, "timestep_spacing": "trailing", "guidance": None}
TARGETS = {"flow_fd_within_at_ge_20": 0.10, "reflow2_fd_over_flow20": 2.0, "reflow2_accuracy": 0.95}


def _reuse(out: Path, report: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The three runs of an earlier full run, with its training facts (``--reuse``)."""
    pipes = {name: diffcore.Pipeline.load(out / name) for name in SAMPLERS}
    return pipes, json.loads(report.read_text())["training"]


def _train_all(out: Path, quick: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    shrink = {"steps": 30, "batch_size": 32, "checkpoint_every": 30} if quick else {}
    pipes, facts = {}, {}
    pipes["diffusion"], facts["diffusion"] = train_timed({**DIFFUSION, **shrink}, out / "diffusion")
    pipes["flow"], facts["flow"] = train_timed({**FLOW, **shrink}, out / "flow")
    reflow = {
        **{
            k: v
            for k, v in FLOW.items()
            if k
            not in ("dataset", "dataset_options", "model", "model_config", "schedule", "schedule_options", "prediction")
        },
        **REFLOW,
        **shrink,
        "reflow_from": str(out / "flow"),
    }
    if quick:
        reflow.update(pairs=64, pair_steps=4)
    pipes["reflow"], facts["reflow"] = train_timed(reflow, out / "reflow")
    return pipes, facts


def _score(pipes: dict[str, Any], n: int, quick: bool) -> list[dict[str, Any]]:
    data = load_data("digits")
    ev = load_evaluator("digits", data)
    labels = balanced_labels(data.num_classes, n)
    rows = []
    for name, pipe in pipes.items():
        for sampler in SAMPLERS[name]:
            for steps in STEPS[:3] if quick else STEPS:
                t0 = time.perf_counter()
                x = pipe.generate(
                    n,
                    sampler=sampler,
                    steps=steps,
                    class_labels=labels,
                    seed=EVAL["seed"],
                    timestep_spacing=EVAL["timestep_spacing"],
                    batch_size=500,
                )
                wall = time.perf_counter() - t0
                rows.append(
                    {
                        "model": name,
                        "sampler": sampler,
                        "steps": steps,
                        **ev.score(x, labels, data),
                        "ms_per_image": round(1000 * wall / n, 3),
                    }
                )
                print(
                    f"{name:9s} {sampler:9s} {steps:3d}  FD {rows[-1]['fd']:.3f}  "
                    f"acc {rows[-1]['class_accuracy']:.3f}  {rows[-1]['ms_per_image']} ms/img",
                    flush=True,
                )
    return rows


def _fd(rows: list[dict[str, Any]], model: str, sampler: str, steps: int) -> dict[str, Any]:
    return next(r for r in rows if (r["model"], r["sampler"], r["steps"]) == (model, sampler, steps))


def _targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def best(model: str, steps: int) -> float:
        return min(r["fd"] for r in rows if r["model"] == model and r["steps"] == steps)

    high = {k: best("flow", k) <= (1 + TARGETS["flow_fd_within_at_ge_20"]) * best("diffusion", k) for k in (20, 50)}
    low = {k: best("flow", k) < best("diffusion", k) for k in (1, 2, 4, 10)}
    reflow2 = _fd(rows, "reflow", "euler", 2)
    flow20 = _fd(rows, "flow", "euler", 20)["fd"]
    return {
        "flow_within_10pct_at_ge_20": high,
        "flow_beats_diffusion_at_le_10": low,
        "reflow2_fd_over_flow20": reflow2["fd"] / flow20,
        "reflow2_accuracy": reflow2["class_accuracy"],
        "met": all(high.values())
        and all(low.values())
        and reflow2["fd"] <= TARGETS["reflow2_fd_over_flow20"] * flow20
        and reflow2["class_accuracy"] >= TARGETS["reflow2_accuracy"],
    }


def _write(rows: list[dict[str, Any]], report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "flow.json").write_text(json.dumps(report, indent=1))
    lines = ["| model | sampler | steps | FD | accuracy | NN ratio | ms / image |", "|---|---|---|---|---|---|---|"]
    lines += [
        f"| {r['model']} | {r['sampler']} | {r['steps']} | {r['fd']:.3f} | {r['class_accuracy']:.3f} | "
        f"{r['nn_ratio']:.3f} | {r['ms_per_image']} |"
        for r in rows
    ]
    (out / "flow.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for key in sorted({(r["model"], r["sampler"]) for r in rows}):
        pts = [(r["steps"], r["fd"]) for r in rows if (r["model"], r["sampler"]) == key]
        ax.plot(*zip(*pts), marker="o", label=f"{key[0]} / {key[1]}")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="sampler steps",
        ylabel="FD (evaluator features)",
        title="digits: diffusion vs flow vs reflow",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "flow_fd_vs_steps.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode: tiny trainings and sample counts")
    parser.add_argument("--n", type=int, default=None, help="samples per configuration (default 1000; quick 50)")
    parser.add_argument("--reuse", action="store_true", help="score the runs of an earlier full run, no training")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    runs = CACHE_DIR / ("flow-quick" if args.quick else "flow")
    n = args.n or (50 if args.quick else EVAL["n_samples"])
    pipes, training = _reuse(runs, RESULTS_DIR / "flow.json") if args.reuse else _train_all(runs, args.quick)
    rows = _score(pipes, n, args.quick)
    report = {
        "recipes": {"diffusion": DIFFUSION, "flow": FLOW, "reflow": REFLOW},
        "eval": {**EVAL, "n_samples": n},
        "training": training,
        "rows": rows,
        "targets": None if args.quick else _targets(rows),
        "machine": machine(),
        "diffcore": diffcore.__version__,
    }
    _write(rows, report, runs / "results" if args.quick else RESULTS_DIR)
    print(json.dumps(report["targets"], indent=1))


if __name__ == "__main__":
    main()
