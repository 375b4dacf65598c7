"""End-to-end sampling, diffcore vs diffusers, timed in INTERLEAVED rounds (CPU by default).

    .venv/bin/python -m benchmarks.e2e_interleaved                  # ~5 min on 2 cores, 1 thread
    .venv/bin/python -m benchmarks.e2e_interleaved --rounds 3 --quick

``test_e2e_speed.py`` (pytest-benchmark) times all rounds of one side, then all rounds of the
other. On a CPU the UNet is over 99% of a run, so the two sides differ by far less than the drift
of a shared machine's load between those blocks (its CPU table swung 0.6x-1.5x in no consistent
direction). Here each round runs both sides back to back, in alternating order (ABBA), on the same
UNet weights, scheduler config and x_T, under ``torch.no_grad``; the speedup of a round is
diffusers time / diffcore time, and the table gives its median over rounds with the range, next
to the minimum times. The UNet's own forward time is clocked inside every run (its ``forward`` is
wrapped), so each side's *loop overhead* (run time minus UNet time: scheduler or sampler work,
conditioning, Python) is reported separately: the part a sampler library controls, free of the
UNet's run-to-run noise. The first run of each side is untimed and checks that the samples agree.

Cases: the small UNet (32x32, 32/64/64) at batch 1 / 16 / 64 and the mid UNet (64x64, 4
channels, 128/256/256/512) at batch 1, DDIM and DPM-Solver++ 2M; steps per round as in
``test_e2e_speed.CPU_PLAN`` (50 at small batch 1, fewer where a run takes seconds per step).
Writes ``benchmarks/results/e2e_cpu_interleaved.{json,md}`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import diffcore

ROOT = Path(__file__).resolve().parents[1]
PLAN = {("small", 1): 50, ("small", 16): 5, ("small", 64): 2, ("mid", 1): 2}
QUICK_PLAN = {("small", 1): 5}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=6, help="timed rounds per case (each runs both sides)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--quick", action="store_true", help="one small case, few steps (a smoke run)")
    ap.add_argument(
        "--case",
        action="append",
        default=None,
        metavar="UNET:BATCH",
        help="run only these cases, e.g. small:64 (repeatable)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "e2e_cpu_interleaved")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        raise SystemExit(f"--rounds {args.rounds}: must be >= 1")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("DIFFCORE_BENCH_DEVICE", "cpu")
    from benchmarks import test_e2e_speed as e2e  # the same UNets, schedulers and diffusers loop

    if e2e.DEVICE.type != "cpu":
        raise SystemExit("this script times the CPU; set DIFFCORE_BENCH_DEVICE=cpu")
    plan = QUICK_PLAN if args.quick else PLAN
    if args.case:
        wanted = {
            (c.split(":")[0], int(c.split(":")[1]))
            for c in args.case
            if c.count(":") == 1 and c.split(":")[1].isdigit()
        }
        if len(wanted) != len(args.case) or not wanted <= set(PLAN):
            raise SystemExit(f"--case {args.case}: expected UNET:BATCH among {[f'{u}:{b}' for u, b in PLAN]}")
        plan = {k: v for k, v in PLAN.items() if k in wanted}
    rows = []
    clock = {"unet": 0.0}
    for (unet_name, batch), steps in plan.items():
        unet = e2e._unet(unet_name)
        forward = unet.forward

        def timed_forward(*a: Any, _forward: Any = forward, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _forward(*a, **k)
            finally:
                clock["unet"] += time.perf_counter() - t0

        unet.forward = timed_forward  # both sides call this module
        model = e2e.DiffusersUNet.from_unet(unet)
        c, size = e2e.UNETS[unet_name]["in_channels"], e2e.UNETS[unet_name]["sample_size"]
        x_T = torch.randn((batch, c, size, size), generator=torch.Generator().manual_seed(0))
        for sampler, (cls_name, cfg) in e2e.SCHEDULERS.items():
            scheduler = getattr(e2e.diffusers, cls_name)(**cfg)
            spec = e2e.scheduler_from_config({**scheduler.config, "_class_name": cls_name}, strict=True)
            kwargs = dict(steps=steps, seed=0, **spec.sample_kwargs())
            # the lambdas run within this iteration: bind the loop's values explicitly all the same
            sides = {
                "diffusers": lambda u=unet, s=scheduler, x=x_T, n=steps: e2e._diffusers_run(u, s, x, n),
                "diffcore": lambda m=model, x=x_T, kw=kwargs: diffcore.sample(m, x, **kw),
            }
            with torch.no_grad():
                first = {name: run() for name, run in sides.items()}
            rel_err = float((first["diffcore"] - first["diffusers"]).abs().max() / first["diffusers"].abs().max())
            times: dict[str, list[float]] = {name: [] for name in sides}
            overhead: dict[str, list[float]] = {name: [] for name in sides}
            for r in range(args.rounds):
                order = ["diffusers", "diffcore"] if r % 2 == 0 else ["diffcore", "diffusers"]
                for name in order:
                    clock["unet"] = 0.0
                    t0 = time.perf_counter()
                    with torch.no_grad():
                        sides[name]()
                    times[name].append(time.perf_counter() - t0)
                    overhead[name].append(times[name][-1] - clock["unet"])
            ratios = [a / b for a, b in zip(times["diffusers"], times["diffcore"])]
            row = {
                "unet": unet_name,
                "batch": batch,
                "sampler": sampler,
                "steps_per_round": steps,
                "rounds": args.rounds,
                "seconds": times,
                "rel_err_vs_diffusers": rel_err,
                "min_s_per_50_steps": {k: min(v) / steps * 50 for k, v in times.items()},
                "loop_overhead_ms_per_step": {k: 1e3 * statistics.median(v) / steps for k, v in overhead.items()},
                "speedup_median": statistics.median(ratios),
                "speedup_min": min(ratios),
                "speedup_max": max(ratios),
                "speedup_of_minima": min(times["diffusers"]) / min(times["diffcore"]),
            }
            rows.append(row)
            print(
                f"{unet_name} b{batch} {sampler}: speedup median {row['speedup_median']:.3f}x "
                f"(rounds {row['speedup_min']:.3f}-{row['speedup_max']:.3f}), of minima "
                f"{row['speedup_of_minima']:.3f}x, loop overhead ms/step diffusers "
                f"{row['loop_overhead_ms_per_step']['diffusers']:.3f} diffcore "
                f"{row['loop_overhead_ms_per_step']['diffcore']:.3f}, rel err {rel_err:.1e}",
                flush=True,
            )
        unet.forward = forward
    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": args.threads,
            "diffusers": e2e.diffusers.__version__,
            "kernels": diffcore.ops.backend(),
            "loadavg_at_start": list(os.getloadavg()),
        },
        "quick": args.quick,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table(report))
    print(f"wrote {args.out.with_suffix('.md')}")
    return report


def table(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "## End-to-end sampling on the CPU, interleaved rounds: diffcore.sample vs the diffusers loop",
        "",
        f"torch {m['torch']}, diffusers {m['diffusers']}, {m['torch_threads']} torch thread(s), kernels "
        f"`{m['kernels']}`, {m['cpu_count']} CPUs, load average at start {m['loadavg_at_start'][0]:.2f}. "
        "Speedup = diffusers time / diffcore time of the same round (both sides back to back, order "
        "alternating); times are per 50-step run (min over rounds, scaled from the steps per round). Loop "
        "overhead = run time minus the UNet's forward time clocked inside the run, per step (median over rounds).",
        "",
        "| UNet | batch | sampler | steps/round | rounds | diffusers | diffcore | speedup median (range) | "
        "loop overhead ms/step: diffusers / diffcore | max rel err |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        t, o = r["min_s_per_50_steps"], r["loop_overhead_ms_per_step"]
        lines.append(
            f"| {r['unet']} | {r['batch']} | {r['sampler']} | {r['steps_per_round']} | {r['rounds']} | "
            f"{t['diffusers']:.2f} s | {t['diffcore']:.2f} s | {r['speedup_median']:.3f}x "
            f"({r['speedup_min']:.3f}-{r['speedup_max']:.3f}) | {o['diffusers']:.3f} / {o['diffcore']:.3f} | "
            f"{r['rel_err_vs_diffusers']:.1e} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
