"""Flow matching vs diffusion at few steps (issue #14): the demo's class-conditional digits model
and a flow-matching model of the same network, data and training budget, both sampled with Euler
at 1, 2, 4 and 10 steps from the same noise, scored by FD, class accuracy and NN ratio. The flow
model runs on two plans: n equal steps in t (``timestep_spacing="trailing"``) and diffusers'
FlowMatchEuler levels (``"leading"``: t from 1 to 1/T, then a last step to 0)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffcore.evaluation import Evaluator, balanced_labels, generate_run, real_fd
from diffcore.pipeline import Pipeline
from diffcore_plugins.demo.figures import plot_curves, strip_figure
from diffcore_plugins.demo.recipes import FLOW_STEPS
from diffcore_plugins.demo.report import Report
from diffcore_plugins.demo.runs import log

__all__ = ["run"]

SPACING = "trailing"  # diffusion: the first step starts at pure noise; flow: equal steps in t ending at 0
DIFFUSERS = "flow, FlowMatchEuler levels"  # timestep_spacing "leading": diffusers' flow grid
TEXT = (
    "The flow-matching model is the digits model's UNet, data, optimizer and iteration budget trained on the "
    'velocity of the straight path x_t = (1 - t) x0 + t eps (`schedule="flow"`, `prediction="flow"`, '
    "logit-normal training times as in SD3, uniform loss weights). Both models are sampled with Euler, "
    "class-conditional at guidance 1 (one model evaluation per step), trailing timesteps, from the same noise; "
    "FD is measured in the features of a small CNN trained on the train split, against the held-out digits. "
    "With trailing timesteps the flow model takes n equal steps in t from 1 to 0; diffusers' FlowMatchEuler "
    "levels (t = linspace(1, 1/T, n), then 0; diffcore's leading spacing) spend the n-th step on t in [1/T, 0], "
    "so at 2 steps they are one step: they are shown too. "
    "The full benchmark, with a reflowed model and up to 50 steps, is `benchmarks/quality/flow.py`. CLI: "
    "`diffcore generate --checkpoint outputs/demo/runs/flow --sampler euler --steps 2 --class-label all`."
)


def run(
    models: dict[str, Pipeline], data: Any, ev: Evaluator, cfg: dict[str, Any], out: Path, rep: Report
) -> dict[str, Any]:
    """``models``: {"diffusion": ..., "flow": ...}; ``cfg``: the demo's sample counts."""
    n = 10 * cfg["flow_per_class"]
    log(f"flow vs diffusion: Euler at {', '.join(map(str, FLOW_STEPS))} steps, {n} samples each")
    labels = balanced_labels(data.num_classes, n)
    variants = {"diffusion": models["diffusion"], "flow": models["flow"], DIFFUSERS: models["flow"]}
    rows: dict[str, dict[str, Any]] = {}
    strips = []
    for name, pipe in variants.items():
        rows[name] = {}
        for steps in FLOW_STEPS:
            run_ = {"sampler": "euler", "steps": steps, "guidance_scale": 1.0}
            spacing = "leading" if name == DIFFUSERS else SPACING
            x, facts = generate_run(pipe, run_, labels, seed=0, timestep_spacing=spacing)
            rows[name][str(steps)] = {
                **ev.score(x, labels, data),
                "evals_per_image": facts["evals_per_image"],
                "ms_per_image": round(1000 * facts["seconds"] / n, 3),
            }
            strips.append((f"{name}, {steps} step{'s' if steps > 1 else ''}", x[: data.num_classes]))
    floor = real_fd(ev, data, n, seed=0)
    _report(rows, strips, floor, n, ev.accuracy, out, rep)
    return {
        "sampler": "euler",
        "timestep_spacing": {"diffusion": SPACING, "flow": SPACING, DIFFUSERS: "leading"},
        "n": n,
        "rows": rows,
        "real_fd": floor,
    }


def _report(
    rows: dict[str, dict[str, Any]],
    strips: list[tuple[str, Any]],
    floor: dict[str, Any],
    n: int,
    accuracy: float,
    out: Path,
    rep: Report,
) -> None:
    strip_figure(strips, out / "flow_grid.png", "Euler samples, classes 0..9 (same noise in every row)")
    plot_curves(
        {name: [(int(k), r["fd"]) for k, r in by.items()] for name, by in rows.items()},
        out / "flow_fd.png",
        xlabel="Euler steps (= model evaluations per image)",
        ylabel="FD vs held-out digits",
        title=f"Flow matching vs diffusion, class-conditional, {n} samples per point",
        floor=(floor["fd_train_subset_vs_heldout"], f"{n} real train digits"),
        xticks=list(FLOW_STEPS),
    )
    s = rep.section("Flow vs diffusion, few steps", "flow").text(TEXT)
    s.figure("flow_fd.png", "FD vs Euler steps (dotted: the FD of as many real train digits).", width=760)
    s.figure("flow_grid.png", "One row per model, plan and step count: the first sample of each class.")
    s.table(
        ["model", "Euler steps", "FD", "class accuracy", "NN ratio", "ms / image"],
        [
            [name, int(k), r["fd"], r["class_accuracy"], r["nn_ratio"], r["ms_per_image"]]
            for name, by in rows.items()
            for k, r in by.items()
        ],
        f"{n} samples per row (labels 0..9 cycling), seed 0; FD of {n} real train digits vs held-out: "
        f"{floor['fd_train_subset_vs_heldout']:.3f}; evaluator held-out accuracy {accuracy:.3f}",
    )
