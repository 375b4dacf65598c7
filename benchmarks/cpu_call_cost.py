"""Whole ``diffcore.sample`` calls where the model is free (issue #20), CPU, interleaved rounds.

    .venv/bin/python -m benchmarks.cpu_call_cost               # ~1 min on 2 shared cores, 1 thread
    .venv/bin/python -m benchmarks.cpu_call_cost --rounds 3 --sizes 16K

The model returns one precomputed tensor, so a call is all sampler cost. Every round runs every
case back to back (the order of the sides alternates), and ratios are taken within a round, then
the median over rounds: on a shared machine the load drifts far more between blocks of rounds
than between two calls a millisecond apart.

* **Per-call cost** (ddim, 16K elements): whole calls of 1, 2, 4, 20 and 40 steps, and a 20-step
  call whose model stamps the clock: setup = from the call to the first model call; one step =
  the median interval between model calls; host work per step = that minus one
  ``torch.add(x, y, out=z)`` (a ddim step streams the same three tensors; it writes x in place
  where the add writes a third tensor, so the difference can come out below zero). ``cold``: with
  :func:`diffcore.plan_cache.clear_cache` before the call (the setup without the cache).
* **Warm caches**: the deterministic 20-step calls at 16K, each side back to back in blocks
  (:func:`warm_calls`), next to the interleaved figures, whose short calls pay for caches the
  previous case evicted.
* **Whole 20-step calls** vs the diffusers loop written as its pipelines do (``set_timesteps``,
  ``x_T * init_noise_sigma``, then ``scale_model_input -> model -> step``; all inside the timer)
  on the same linear schedule. diffcore runs with its defaults: no generator, so noise is drawn
  in the kernel (Philox, seed from torch's global RNG); ``diffcore-gen`` passes a seeded
  torch.Generator as diffusers does (torch.randn parity). The floor of a deterministic call is
  one ``torch.add`` per three tensors its fused steps stream, per loop iteration (an add streams
  three: two read, one written; the issue's "one torch.add per streamed tensor" read so that a
  ddim step, which streams x, the model output and x written, has the floor of one add), the adds
  timed as a loop of 20 back to back, as the steps run. The same-set floor prices the same
  passes at an add's cost per pass over the step's working set (:func:`working_set`: x, the model
  output and the history slots, at least 3 distinct tensors), the adds round robin over that many
  (:func:`add_set_case`): at 1M elements unipc keeps 5 tensors (20 MB) live, the add 3 (12 MB).

  For the make-bench form of these figures (each case's rounds back to back, as pytest-benchmark
  times them) see ``test_sample_call.py``. Interleaving costs the short calls more than cache
  misses: a 256K-element (1 MB) clone made right after a diffusers call page-faults its output (glibc hands
  the freed memory back to the OS; 224 faults, 370 us against 25 us back to back).

Writes ``benchmarks/results/cpu_call_cost.{json,md}`` (``--out``). No timing is asserted.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import diffcore
from diffcore import plan_cache

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"16K": (1, 4, 64, 64), "256K": (4, 4, 128, 128), "1M": (4, 4, 256, 256), "8M": (8, 4, 512, 512)}
DETERMINISTIC = ("ddim", "euler", "heun", "dpmpp_2m", "unipc")
STOCHASTIC = ("ddpm", "euler_ancestral", "dpmpp_2m_sde")
STEPS = 20
SETUP_STEPS = (1, 2, 4, 20, 40)


def _timer(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def diffusers_call(name: str, x_T: torch.Tensor, out: torch.Tensor, steps: int) -> Callable[[], Any]:
    from sampler_cases import diffusers_scheduler

    sched = diffusers_scheduler(name)
    takes_generator = "generator" in inspect.signature(sched.step).parameters

    def run() -> torch.Tensor:
        sched.set_timesteps(steps)
        g = torch.Generator().manual_seed(0)
        extra = {"generator": g} if takes_generator else {}
        x = x_T * sched.init_noise_sigma
        for t in sched.timesteps:
            x = sched.step((lambda x_in, t: out)(sched.scale_model_input(x, t), t), t, x, **extra).prev_sample
        return x

    return run


def diffcore_call(name: str, x_T: torch.Tensor, out: torch.Tensor, steps: int, gen: bool) -> Callable[[], Any]:
    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return out

    def run() -> torch.Tensor:
        g = torch.Generator().manual_seed(0) if gen else None
        return diffcore.sample(model, x_T, sampler=name, steps=steps, schedule="linear", generator=g)

    return run


def streamed(name: str, gen: bool) -> tuple[int, int]:
    """(tensors one fused step streams, loop iterations of a STEPS-step call)."""
    from sampler_cases import layout_of, program_for

    _, program = program_for(name, STEPS)
    return layout_of(program).tensors_streamed(noise_tensor=gen), len(program.steps)


def working_set(name: str) -> int:
    """Distinct full-size tensors a deterministic call's steps touch: x, the model output and the
    history slots; at least 3, the working set of one add."""
    from sampler_cases import layout_of, program_for

    _, program = program_for(name, STEPS)
    return max(3, layout_of(program).slots + 2)


def _rounds(cases: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of every case, one call each per round, the order reversed every round."""
    names = list(cases)
    for fn in cases.values():  # untimed warm-up (fills the caches, as any second call finds them)
        fn()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            with torch.no_grad():
                times[n].append(_timer(cases[n]))
    return times


def add_case(shape: tuple[int, ...], repeats: int) -> Callable[[], Any]:
    x, y, z = torch.randn(shape), torch.randn(shape), torch.empty(shape)

    def run() -> None:
        for _ in range(repeats):
            torch.add(x, y, out=z)

    return run


def add_set_case(shape: tuple[int, ...], tensors: int, repeats: int) -> tuple[Callable[[], Any], int]:
    """``(run, adds)``: ``repeats * tensors / 3`` (rounded up) ``torch.add`` calls round robin over
    a working set of ``tensors`` distinct tensors (each add reads two and writes a third), timing a
    tensor pass when that many tensors are live: a 1M-element add over 3 tensors (12 MB) runs from
    a 32 MB L3; unipc's steps keep 5 (20 MB) live. Per-pass cost = time / (3 * adds)."""
    if tensors < 3:
        raise ValueError(f"tensors={tensors}: an add streams 3")
    pool = [torch.randn(shape) for _ in range(tensors)]
    adds = -(-repeats * tensors // 3)
    triples = [(pool[3 * j % tensors], pool[(3 * j + 1) % tensors], pool[(3 * j + 2) % tensors]) for j in range(adds)]

    def run() -> None:
        for a, b, out in triples:
            torch.add(a, b, out=out)

    return run, adds


def setup_cost(rounds: int) -> dict[str, Any]:
    """Whole ddim calls of SETUP_STEPS steps at 16K (and a cold 20-step one), one torch.add, and a
    20-step call whose model stamps the clock: setup = first model call - call start; per step =
    the median interval between model calls (one step's host work plus its memory work)."""
    shape = SIZES["16K"]
    x_T, out = torch.randn(shape), torch.randn(shape)
    cases: dict[str, Callable[[], Any]] = {
        f"diffcore-{n}": diffcore_call("ddim", x_T, out, n, False) for n in SETUP_STEPS
    }
    cases.update({f"diffusers-{n}": diffusers_call("ddim", x_T, out, n) for n in SETUP_STEPS})
    warm = cases["diffcore-20"]
    cases["diffcore-20-cold"] = lambda: (plan_cache.clear_cache(), warm())
    cases["add x20"] = add_case(shape, 20)
    stamps: list[float] = []
    split: dict[str, list[float]] = {"setup": [], "step": [], "cold_setup": []}

    def stamped(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        stamps.append(time.perf_counter())
        return out

    def clocked(cold: bool) -> None:
        if cold:
            plan_cache.clear_cache()
        stamps.clear()
        t0 = time.perf_counter()
        diffcore.sample(stamped, x_T, sampler="ddim", steps=STEPS, schedule="linear")
        split["cold_setup" if cold else "setup"].append(stamps[0] - t0)
        if not cold:
            split["step"].append(statistics.median(b - a for a, b in zip(stamps, stamps[1:])))

    cases["clocked"] = lambda: clocked(False)
    cases["clocked-cold"] = lambda: clocked(True)
    times = _rounds(cases, rounds)
    best = {k: min(v) for k, v in times.items()}
    add = best["add x20"] / 20
    step = min(split["step"])
    return {
        "min_s": best,
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "per_step_s": step,
        "add_s": add,
        "host_per_step_s": step - add,
        "setup_s": min(split["setup"]),
        "cold_setup_s": min(split["cold_setup"]),
    }


def back_to_back(calls: int = 500) -> dict[str, float]:
    """The clocked 20-step ddim call at 16K repeated back to back (warm caches, as in a loop that
    samples batch after batch): setup, median step and the tail after the last model call, as the
    minimum and the 10th percentile over calls (the first 50 calls are warm-up)."""
    shape = SIZES["16K"]
    x_T, out = torch.randn(shape), torch.randn(shape)
    stamps: list[float] = []

    def stamped(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        stamps.append(time.perf_counter())
        return out

    parts: dict[str, list[float]] = {"setup": [], "step": [], "tail": [], "call": []}
    for i in range(calls + 50):
        stamps.clear()
        t0 = time.perf_counter()
        diffcore.sample(stamped, x_T, sampler="ddim", steps=STEPS, schedule="linear")
        t1 = time.perf_counter()
        if i >= 50:
            parts["setup"].append(stamps[0] - t0)
            parts["step"].append(statistics.median(b - a for a, b in zip(stamps, stamps[1:])))
            parts["tail"].append(t1 - stamps[-1])
            parts["call"].append(t1 - t0)
    out_ = {}
    for k, v in parts.items():
        v.sort()
        out_[f"{k}_min_s"], out_[f"{k}_p10_s"], out_[f"{k}_median_s"] = v[0], v[len(v) // 10], v[len(v) // 2]
    return out_


def warm_calls(blocks: int = 3) -> dict[str, dict[str, float]]:
    """Deterministic 20-step calls at 16K with warm caches: each side's calls back to back in
    blocks (diffusers 10 calls, diffcore 40), the sides alternating; min per call over all blocks.
    The interleaved rounds of :func:`whole_calls` run every case after a different one, so a short
    call there pays for caches the previous case evicted (~3x on diffcore's setup)."""
    shape = SIZES["16K"]
    x_T, out = torch.randn(shape), torch.randn(shape)
    result = {}
    for name in DETERMINISTIC:
        sides = {
            "diffusers": (diffusers_call(name, x_T, out, STEPS), 10),
            "diffcore": (diffcore_call(name, x_T, out, STEPS, False), 40),
        }
        best = {side: float("inf") for side in sides}
        for _ in range(blocks):
            for side, (fn, calls) in sides.items():
                fn()
                with torch.no_grad():
                    best[side] = min(best[side], *(_timer(fn) for _ in range(calls)))
        result[name] = {"diffusers_s": best["diffusers"], "diffcore_s": best["diffcore"]}
    return result


def whole_calls(sizes: list[str], rounds: int) -> list[dict[str, Any]]:
    rows = []
    for size in sizes:
        shape = SIZES[size]
        x_T, out = torch.randn(shape), torch.randn(shape)
        cases: dict[str, Callable[[], Any]] = {"add": add_case(shape, STEPS)}  # a loop's adds, back to back
        set_adds = {}
        for n in sorted({working_set(name) for name in DETERMINISTIC} - {3}):  # unipc: 5 (add_set_case)
            cases[f"add/{n}"], set_adds[n] = add_set_case(shape, n, STEPS)
        for name in DETERMINISTIC + STOCHASTIC:
            cases[f"{name}/diffusers"] = diffusers_call(name, x_T, out, STEPS)
            cases[f"{name}/diffcore"] = diffcore_call(name, x_T, out, STEPS, gen=False)
            if name in STOCHASTIC:
                cases[f"{name}/diffcore-gen"] = diffcore_call(name, x_T, out, STEPS, gen=True)
        times = _rounds(cases, rounds)
        add = min(times["add"]) / STEPS
        per_pass = {3: add / 3, **{n: min(times[f"add/{n}"]) / (3 * k) for n, k in set_adds.items()}}
        for name in DETERMINISTIC + STOCHASTIC:
            d = times[f"{name}/diffusers"]
            row: dict[str, Any] = {"size": size, "sampler": name, "stochastic": name in STOCHASTIC}
            for impl in ("diffcore", "diffcore-gen"):
                t = times.get(f"{name}/{impl}")
                if t is None:
                    continue
                tensors, iters = streamed(name, gen=impl == "diffcore-gen")
                row[impl] = {
                    "min_s": min(t),
                    "median_s": statistics.median(t),
                    "speedup_of_minima": min(d) / min(t),
                    "speedup_median": statistics.median(a / b for a, b in zip(d, t)),
                    "speedup_range": [min(a / b for a, b in zip(d, t)), max(a / b for a, b in zip(d, t))],
                    "vs_floor": min(t) / (iters * tensors / 3 * add),
                    "vs_set_floor": min(t) / (iters * tensors * per_pass[working_set(name)])
                    if impl == "diffcore" and name in DETERMINISTIC
                    else None,
                    "tensors": tensors,
                }
            row["diffusers_min_s"] = min(d)
            row["add_s"] = add
            rows.append(row)
            print(f"{size} {name}: {json.dumps({k: v for k, v in row.items() if k.startswith('diffcore')})}")
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--sizes", default="16K,256K,1M", help=f"comma-separated among {list(SIZES)}")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_call_cost")
    args = ap.parse_args(argv)
    sizes = args.sizes.split(",")
    if args.rounds < 1 or not set(sizes) <= set(SIZES):
        raise SystemExit(f"--rounds {args.rounds} --sizes {args.sizes}: need rounds >= 1, sizes among {list(SIZES)}")
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))  # sampler_cases, as pytest's rootdir conftest does
    load = os.getloadavg()[0]
    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "kernels": diffcore.ops.backend(),
            "loadavg_at_start": load,
        },
        "setup": setup_cost(args.rounds),
        "back_to_back": back_to_back(),
        "warm": warm_calls(),
        "calls": whole_calls(sizes, args.rounds),
    }
    report["machine"]["loadavg_at_end"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table(report))
    print(table(report))
    return report


def _us(s: float) -> str:
    return f"{s * 1e6:,.1f}" if s * 1e6 < 100 else f"{s * 1e6:,.0f}"


def table(report: dict[str, Any]) -> str:
    m, s = report["machine"], report["setup"]
    med, best = s["median_s"], s["min_s"]
    lines = [
        "## Whole diffcore.sample calls with a free model (CPU, interleaved rounds)",
        "",
        f"torch {m['torch']}, {m['torch_threads']} torch thread, kernels `{m['kernels']}`, {m['cpu_count']} CPUs "
        f"({m['processor']}), load average {m['loadavg_at_start']:.2f} at start and {m['loadavg_at_end']:.2f} at "
        f"end ({load_words(m)}). Times are minima over rounds and ratios are ratios of minima, with the median "
        "and range of the same-round ratios beside them.",
        "",
        "### Per-call cost, ddim at 16K elements",
        "",
        "| steps | diffcore.sample us/call (min / median) | diffusers loop us/call (min / median) "
        "| speed-up of minima |",
        "|---|---|---|---|",
    ]
    for n in SETUP_STEPS:
        a, b = best[f"diffcore-{n}"], best[f"diffusers-{n}"]
        ma, mb = med[f"diffcore-{n}"], med[f"diffusers-{n}"]
        lines.append(f"| {n} | {_us(a)} / {_us(ma)} | {_us(b)} / {_us(mb)} | {b / a:.2f}x |")
    lines += [
        "",
        f"Clocked inside a {STEPS}-step call (the model stamps the time; min over rounds): one step, from one "
        f"model call to the next, {_us(s['per_step_s'])} us, of which one torch.add (the step's memory work) "
        f"{_us(s['add_s'])} us: host work {_us(s['host_per_step_s'])} us per step (target <= 10). Per-call setup, "
        f"from the call to the first model call: {_us(s['setup_s'])} us (target <= 100); with the setup cache "
        f"cleared before each call: {_us(s['cold_setup_s'])} us.",
        "",
        _back_to_back_line(report["back_to_back"]),
        "",
        f"### Whole {STEPS}-step calls vs the diffusers loop",
        "",
        "| sampler | elements | diffusers us | diffcore us | speed-up (same-round median, range) | "
        "diffcore / 3-tensor floor (tensors) | diffcore / same-set floor | diffcore-gen us | "
        "speed-up (same-round median, range) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["calls"]:
        c, g = r["diffcore"], r.get("diffcore-gen")
        gen = "n/a | n/a" if g is None else f"{_us(g['min_s'])} | {_speedup(g)}"
        lines.append(
            f"| {r['sampler']} | {r['size']} | {_us(r['diffusers_min_s'])} | {_us(c['min_s'])} | {_speedup(c)} | "
            f"{c['vs_floor']:.2f}x ({c['tensors']}) | {_ratio(c.get('vs_set_floor'))} | {gen} |"
        )
    if "warm" in report:
        lines += [
            "",
            f"Warm caches ({STEPS}-step calls at 16K, each side back to back in blocks, min per call): "
            + ", ".join(
                f"{n} {_us(w['diffusers_s'])} / {_us(w['diffcore_s'])} us ({w['diffusers_s'] / w['diffcore_s']:.1f}x)"
                for n, w in report["warm"].items()
            )
            + " (diffusers / diffcore).",
        ]
    lines += ["", *targets(report)]
    return "\n".join(lines) + "\n"


def load_words(m: dict[str, Any]) -> str:
    """What the load average says about the run."""
    load, cores = max(m["loadavg_at_start"], m["loadavg_at_end"]), m["cpu_count"] or 1
    if load < 0.5 * cores:
        return "an idle machine besides this run"
    if load <= cores:
        return "other jobs ran beside this one: minima are reliable, medians carry their load"
    return "other jobs ran on it, more than its cores: every figure carries that load"


def _back_to_back_line(b: dict[str, float]) -> str:
    return (
        f"The same clocked call repeated 500 times back to back (warm caches; min / 10th percentile / median): "
        f"setup {_us(b['setup_min_s'])} / {_us(b['setup_p10_s'])} / {_us(b['setup_median_s'])} us, one step "
        f"{_us(b['step_min_s'])} / {_us(b['step_p10_s'])} / {_us(b['step_median_s'])} us, after the last model call "
        f"{_us(b['tail_min_s'])} / {_us(b['tail_p10_s'])} / {_us(b['tail_median_s'])} us, whole call "
        f"{_us(b['call_min_s'])} / {_us(b['call_p10_s'])} / {_us(b['call_median_s'])} us."
    )


def _ratio(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def _speedup(c: dict[str, Any]) -> str:
    lo, hi = c["speedup_range"]
    return f"{c['speedup_of_minima']:.2f}x ({c['speedup_median']:.2f}x, {lo:.2f}-{hi:.2f})"


def targets(report: dict[str, Any]) -> list[str]:
    """The issue's targets, met or missed (reported, never asserted)."""
    s, rows = report["setup"], report["calls"]
    out = ["Targets of issue #20 (reported, never asserted):", ""]
    out.append(f"* host work <= 10 us per step at 16K: {_us(s['host_per_step_s'])} us")
    b = report["back_to_back"]
    out.append(
        f"* setup <= 100 us per 20-step call: {_us(s['setup_s'])} us interleaved with other cases, "
        f"{_us(b['setup_min_s'])} us (10th percentile {_us(b['setup_p10_s'])}) back to back"
    )
    det16 = [r for r in rows if not r["stochastic"] and r["size"] == "16K"]
    miss = [
        f"{r['sampler']} {r['diffcore']['speedup_of_minima']:.1f}x"
        for r in det16
        if r["diffcore"]["speedup_of_minima"] < 10
    ]
    warm = report.get("warm", {})
    ratios = {n: w["diffusers_s"] / w["diffcore_s"] for n, w in warm.items()}
    warm_miss = [f"{n} {v:.1f}x" for n, v in ratios.items() if v < 10]
    out.append(
        f"* deterministic >= 10x diffusers at 16K: interleaved {'missed by ' + ', '.join(miss) if miss else 'met'}; "
        f"warm (back to back) {'missed by ' + ', '.join(warm_miss) if warm_miss else 'met'} "
        f"({', '.join(f'{n} {v:.1f}x' for n, v in ratios.items())})"
    )
    big = [r for r in rows if not r["stochastic"] and r["size"] != "16K"]
    miss = [
        f"{r['sampler']} {r['size']} {r['diffcore']['vs_floor']:.2f}x" for r in big if r["diffcore"]["vs_floor"] > 1.3
    ]
    out.append(
        f"* deterministic within 1.3x of the 3-tensor add floor at >= 256K: "
        f"{'missed by ' + ', '.join(miss) if miss else 'met'}"
    )
    miss = [
        f"{r['sampler']} {r['size']} {r['diffcore']['vs_set_floor']:.2f}x"
        for r in big
        if (r["diffcore"].get("vs_set_floor") or 0) > 1.3
    ]
    out.append(
        f"* deterministic within 1.3x of the same-set add floor at >= 256K: "
        f"{'missed by ' + ', '.join(miss) if miss else 'met'}"
    )
    sto = [r for r in rows if r["stochastic"]]
    miss = [
        f"{r['sampler']} {r['size']} {r['diffcore']['speedup_of_minima']:.1f}x"
        for r in sto
        if r["diffcore"]["speedup_of_minima"] < 4
    ]
    out.append(
        "* stochastic >= 4x diffusers at every size (default in-kernel noise): "
        + ("missed by " + ", ".join(miss) if miss else "met")
    )
    return out


if __name__ == "__main__":
    main()
