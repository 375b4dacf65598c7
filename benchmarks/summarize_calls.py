"""The tables of ``test_sample_call.py``: whole 20-step calls vs the diffusers loop, and issue #20's targets.

    python benchmarks/summarize_calls.py outputs/bench/bench.json [--stat min|median] [--out calls.md]

Reads pytest-benchmark JSON (other suites' cases are ignored). Ratios are of the same statistic
of cases in the same JSON (one run). The floor of a deterministic call streaming n tensors per
loop iteration is n tensor passes per iteration at the cost of one pass of an add: "3-tensor
floor" with the adds on one x, y, z (n/3 adds per iteration), "same-set floor" with adds round
robin over as many distinct tensors as the call's steps keep live (x, the model output, the
history slots; at least 3): unipc keeps 5, 20 MB at 1M elements, where the add's 3 take 12 MB
of the 32 MB L3.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

SIZE_ORDER = {"16K": 0, "256K": 1, "1M": 2, "8M": 3}
TARGETS = {"host_us": 10.0, "setup_us": 100.0, "det_speedup_16k": 10.0, "det_floor": 1.3, "sto_speedup": 4.0}


def collect(reports: list[dict[str, Any]], stat: str) -> dict[str, Any]:
    """{"calls": {(size, sampler): {impl: case}}, "add": {size: s per add}, "clocked": info, "machine": ...}."""
    calls: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    add: dict[str, dict[int, float]] = {}  # size -> working-set tensors -> seconds per tensor pass
    clocked: dict[str, Any] | None = None
    machine: dict[str, Any] = {}
    for report in reports:
        for bench in report.get("benchmarks", []):
            info = bench.get("extra_info", {})
            if info.get("suite") != "calls":
                continue
            machine = report.get("machine_info", {})
            seconds = bench["stats"][stat]
            if info["case"] == "add":
                add.setdefault(info["size"], {})[int(info["tensors"])] = seconds / (3 * info["adds"])
            elif info["case"] == "clocked":
                clocked = info
            else:
                calls.setdefault((info["size"], info["sampler"]), {})[info["impl"]] = {"s": seconds, **info}
    return {"calls": calls, "add": add, "clocked": clocked, "machine": machine}


def _us(s: float) -> str:
    return f"{s * 1e6:,.0f}" if s >= 1e-4 else f"{s * 1e6:.1f}"


def table(data: dict[str, Any], stat: str) -> tuple[str, list[str]]:
    """The markdown tables and the target lines."""
    calls, add = data["calls"], data["add"]
    lines = [
        "| size | sampler | diffusers us | diffcore us | speed-up | tensors | diffcore / 3-tensor floor |"
        " diffcore / same-set floor | diffcore-gen us | speed-up (gen) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    misses: dict[str, list[str]] = {"det16": [], "floor": [], "set": [], "sto": []}
    det16: list[str] = []
    for (size, sampler), impls in sorted(calls.items(), key=lambda kv: (SIZE_ORDER.get(kv[0][0], 9), kv[0][1])):
        d, c, g = impls.get("diffusers"), impls.get("diffcore"), impls.get("diffcore-gen")
        if d is None or c is None:
            continue
        speedup = d["s"] / c["s"]
        n, passes = c["tensors_streamed"], add.get(size, {})
        vs_floor = c["s"] / (c["iterations"] * n * passes[3]) if 3 in passes else None
        live = c.get("working_set")
        vs_set = c["s"] / (c["iterations"] * n * passes[live]) if live in passes else None
        gen = f"{_us(g['s'])} | {d['s'] / g['s']:.2f}x" if g else "n/a | n/a"
        floors = " | ".join(f"{v:.2f}x" if v is not None else "n/a" for v in (vs_floor, vs_set))
        times = f"{_us(d['s'])} | {_us(c['s'])} | {speedup:.2f}x"
        lines.append(f"| {size} | {sampler} | {times} | {n} | {floors} | {gen} |")
        label = f"{sampler} {size}"
        if c["stochastic"]:
            if speedup < TARGETS["sto_speedup"]:
                misses["sto"].append(f"{label} {speedup:.2f}x")
        else:
            if size == "16K":
                det16.append(f"{sampler} {speedup:.1f}x")
                if speedup < TARGETS["det_speedup_16k"]:
                    misses["det16"].append(f"{sampler} {speedup:.2f}x")
            else:
                if vs_floor is not None and vs_floor > TARGETS["det_floor"]:
                    misses["floor"].append(f"{label} {vs_floor:.2f}x")
                if vs_set is not None and vs_set > TARGETS["det_floor"]:
                    misses["set"].append(f"{label} {vs_set:.2f}x")
    targets = []
    clocked = data["clocked"]
    if clocked is not None and 3 in add.get("16K", {}):
        add16 = 3 * add["16K"][3]  # one add at 16K
        host = (clocked["step_min_s"] - add16) * 1e6
        targets.append(
            f"* host work <= {TARGETS['host_us']:.0f} us per step at 16K: {host:.1f} us (one step "
            f"{clocked['step_min_s'] * 1e6:.1f} us, one torch.add {add16 * 1e6:.1f} us)"
            f" — {'met' if host <= TARGETS['host_us'] else 'NOT met'}"
        )
        setup = clocked["setup_min_s"] * 1e6
        targets.append(
            f"* setup <= {TARGETS['setup_us']:.0f} us per 20-step call: {setup:.1f} us"
            f" — {'met' if setup <= TARGETS['setup_us'] else 'NOT met'}"
        )
    targets.append(
        f"* deterministic >= {TARGETS['det_speedup_16k']:.0f}x diffusers at 16K: {', '.join(det16)}"
        f" — {'NOT met by ' + ', '.join(misses['det16']) if misses['det16'] else 'met'}"
    )
    for key, floor in (("floor", "3-tensor"), ("set", "same-set")):
        targets.append(
            f"* deterministic within {TARGETS['det_floor']}x of the {floor} add floor at >= 256K:"
            f" {'NOT met by ' + ', '.join(misses[key]) if misses[key] else 'met'}"
        )
    targets.append(
        f"* stochastic >= {TARGETS['sto_speedup']:.0f}x diffusers at every size run (in-kernel noise; 8M is not run):"
        f" {'NOT met by ' + ', '.join(misses['sto']) if misses['sto'] else 'met'}"
    )
    return "\n".join(lines), targets


def render(data: dict[str, Any], stat: str) -> str:
    m = data["machine"].get("diffcore", {})
    head = (
        "## Whole 20-step calls with a free model vs the diffusers loop (`make bench`, test_sample_call.py)\n\n"
        f"torch {m.get('torch')}, {m.get('torch_threads')} torch thread(s), kernels `{m.get('kernel_backend')}`, "
        f"{m.get('cpu_count')} CPUs ({m.get('processor')}); the {stat} round of each case, rounds back to back.\n"
    )
    body, targets = table(data, stat)
    return f"{head}\n{body}\n\nTargets of issue #20 (reported, never asserted):\n\n" + "\n".join(targets) + "\n"


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="+", type=Path)
    ap.add_argument("--stat", choices=("min", "median"), default="min")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    try:
        reports = [json.loads(path.read_text()) for path in args.json]
    except (OSError, ValueError) as e:
        raise SystemExit(f"cannot read a pytest-benchmark JSON: {e}") from None
    data = collect(reports, args.stat)
    if not data["calls"]:
        raise SystemExit(f"{', '.join(map(str, args.json))}: no test_sample_call.py cases in it")
    text = render(data, args.stat)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return text


if __name__ == "__main__":
    main()
