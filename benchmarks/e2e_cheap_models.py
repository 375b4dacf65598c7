"""End to end where the model is cheap (issue #20, target 5): diffcore vs the same loop written
with diffusers' schedulers, CPU, 1 torch thread, interleaved rounds.

    .venv/bin/python -m benchmarks.e2e_cheap_models            # ~1 min on 2 shared cores

Cases (random weights: the timing does not depend on training; float32, ``torch.no_grad``):

* ``table-generate``: diffcore's tabular ``MLP`` (16 features, width 128, 2 blocks), 128 rows,
  20-step DDIM and DPM-Solver++(2M): ``diffcore.sample`` vs ``set_timesteps`` +
  ``scale_model_input -> model -> step``.
* ``table-detect``: partial-diffusion reconstruction scores of 256 rows (AnoDDPM): noise the
  rows to timestep 150, denoise in 4 DDIM steps, score the mean absolute error per row.
  diffcore: ``diffcore.sample_from(..., t_start=150, steps=4, noise=noise)``; diffusers:
  ``add_noise`` at the last 4 of 20 leading timesteps (150, 100, 50, 0), then the same loop.
* ``unet-2step``: the small diffusers ``UNet2DModel`` of ``test_e2e_speed`` (32x32, 32/64/64),
  batch 1 and 16, 2-step DDIM and DPM-Solver++(2M) (``DiffusersUNet`` on diffcore's side).

The model's forward is clocked inside every run, so each side's loop overhead (run time minus
model time: sampler work, setup, Python) is reported next to the whole-run ratio. Writes
``benchmarks/results/e2e_cheap_models.{json,md}`` (``--out``). No timing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import diffcore
from benchmarks.cpu_call_cost import load_words
from diffcore.models.mlp import MLP

ROOT = Path(__file__).resolve().parents[1]
Run = Callable[[], Any]


class Clocked(torch.nn.Module):
    """A module whose forward time adds up in ``seconds`` (both sides call the same one)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seconds = 0.0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0


def _scheduler(name: str) -> Any:
    import diffusers

    if name == "ddim":
        return diffusers.DDIMScheduler(clip_sample=False)
    return diffusers.DPMSolverMultistepScheduler()


def _diffusers_generate(model: Callable[..., Any], sampler: str, x_T: torch.Tensor, steps: int) -> Run:
    sched = _scheduler(sampler)

    def run() -> torch.Tensor:
        sched.set_timesteps(steps)
        x = x_T * sched.init_noise_sigma
        for t in sched.timesteps:
            out = model(sched.scale_model_input(x, t), t)
            x = sched.step(getattr(out, "sample", out), t, x).prev_sample
        return x

    return run


def _diffusers_detect(model: Callable[..., Any], rows: torch.Tensor, noise: torch.Tensor) -> Run:
    sched = _scheduler("ddim")

    def run() -> torch.Tensor:
        sched.set_timesteps(20)
        ts = sched.timesteps[-4:]
        x = sched.add_noise(rows, noise, ts[:1])
        for t in ts:
            x = sched.step(model(x, t), t, x).prev_sample
        return (x - rows).abs().mean(1)

    return run


def _cases() -> dict[str, tuple[Clocked, dict[str, Run]]]:
    import diffusers

    from diffcore.interop.diffusers import DiffusersUNet

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from test_e2e_speed import UNETS

    torch.manual_seed(0)
    mlp = Clocked(MLP(dim=16, hidden=128, depth=2).eval())
    torch.nn.init.normal_(mlp.inner.out.weight, std=0.02)  # the output layer starts at zero
    g = torch.Generator().manual_seed(0)
    cases: dict[str, tuple[Clocked, dict[str, Run]]] = {}
    x_T = torch.randn(128, 16, generator=g)
    for sampler in ("ddim", "dpmpp_2m"):
        cases[f"table-generate 128 rows {sampler} 20 steps"] = (
            mlp,
            {
                "diffusers": _diffusers_generate(mlp, sampler, x_T, 20),
                "diffcore": lambda s=sampler: diffcore.sample(mlp, x_T, sampler=s, steps=20, seed=0),
            },
        )
    rows, noise = torch.randn(256, 16, generator=g), torch.randn(256, 16, generator=g)

    def detect() -> torch.Tensor:
        x0 = diffcore.sample_from(mlp, rows, 150.0, sampler="ddim", steps=4, noise=noise, seed=0)
        return (x0 - rows).abs().mean(1)

    cases["table-detect 256 rows ddim 4 steps"] = (
        mlp,
        {"diffusers": _diffusers_detect(mlp, rows, noise), "diffcore": detect},
    )
    unet = Clocked(diffusers.UNet2DModel(**UNETS["small"]).eval())
    wrapped = DiffusersUNet.from_unet(unet.inner)
    wrapped.unet = unet  # diffcore calls the same clocked module
    for batch in (1, 16):
        x = torch.randn(batch, 3, 32, 32, generator=g)
        for sampler in ("ddim", "dpmpp_2m"):
            cases[f"unet-2step small b{batch} {sampler}"] = (
                unet,
                {
                    "diffusers": _diffusers_generate(unet, sampler, x, 2),
                    "diffcore": lambda s=sampler, x=x: diffcore.sample(wrapped, x, sampler=s, steps=2, seed=0),
                },
            )
    return cases


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "e2e_cheap_models")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    load = os.getloadavg()[0]
    rows = []
    for label, (clock, sides) in _cases().items():
        times: dict[str, list[float]] = {k: [] for k in sides}
        overhead: dict[str, list[float]] = {k: [] for k in sides}
        with torch.no_grad():
            for run in sides.values():
                run()  # untimed warm-up
            for r in range(args.rounds):
                for name in list(sides) if r % 2 == 0 else list(sides)[::-1]:
                    clock.seconds = 0.0
                    t0 = time.perf_counter()
                    sides[name]()
                    times[name].append(time.perf_counter() - t0)
                    overhead[name].append(times[name][-1] - clock.seconds)
        ratios = [a / b for a, b in zip(times["diffusers"], times["diffcore"])]
        row = {
            "case": label,
            "min_ms": {k: 1e3 * min(v) for k, v in times.items()},
            "overhead_ms_min": {k: 1e3 * min(v) for k, v in overhead.items()},
            "speedup_median": statistics.median(ratios),
            "speedup_range": [min(ratios), max(ratios)],
            "speedup_of_minima": min(times["diffusers"]) / min(times["diffcore"]),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": 1,
            "kernels": diffcore.ops.backend(),
            "loadavg_at_start": load,
            "loadavg_at_end": os.getloadavg()[0],
        },
        "rounds": args.rounds,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table(report))
    print(table(report))
    return report


def table(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "## End to end with cheap models: diffcore vs the same loop on diffusers' schedulers (CPU)",
        "",
        f"torch {m['torch']}, 1 torch thread, kernels `{m['kernels']}`, {m['cpu_count']} CPUs, load average "
        f"{m['loadavg_at_start']:.2f} at start, {m['loadavg_at_end']:.2f} at end ({load_words(m)}). "
        f"{report['rounds']} interleaved rounds; times are minima over rounds; loop overhead = run time "
        "minus the model's forward time clocked inside the run.",
        "",
        "| case | diffusers ms | diffcore ms | speed-up of minima | same-round speed-up median (range) | "
        "loop overhead ms: diffusers / diffcore |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        t, o = r["min_ms"], r["overhead_ms_min"]
        lo, hi = r["speedup_range"]
        lines.append(
            f"| {r['case']} | {t['diffusers']:.2f} | {t['diffcore']:.2f} | {r['speedup_of_minima']:.2f}x | "
            f"{r['speedup_median']:.2f}x ({lo:.2f}-{hi:.2f}) | {o['diffusers']:.3f} / {o['diffcore']:.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
