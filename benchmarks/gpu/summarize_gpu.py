"""Turn pytest-benchmark JSON(s) of ``test_gpu_step.py`` into markdown tables.

    python benchmarks/gpu/summarize_gpu.py gpu_bench.json [more.json ...] [--stat min|median|mean]
        [--out gpu_summary.md] [--merged-json merged.json]

Several JSONs (one per stage of ``run_device_checks.sh``) are merged; ``--merged-json`` writes
the merge. Prints the tables and writes them to ``--out`` (default: ``gpu_summary.md`` beside the
first JSON): per-step time per dtype, the CUDA-graph loop, bandwidth against the device copy,
and which of the issue's GPU targets are missed (reported, never asserted).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

STATS = ("min", "median", "mean")
STEP_TARGET_S, STEP_TARGET_NUMEL = 10e-6, 2**20  # <= 10 us per step at <= 1M elements
BANDWIDTH_TARGET = 0.90  # native step >= 90% of the device copy bandwidth at the largest size
GRAPH_TARGET_S = 5e-6  # <= 5 us per step in a CUDA graph


def _us(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    us = seconds * 1e6
    return f"{us:,.0f}" if us >= 100 else f"{us:.1f}" if us >= 10 else f"{us:.2f}"


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or den is None or den == 0 else num / den


def _x(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.1f}x"


def _gbs(bytes_per_s: float) -> str:
    gbs = bytes_per_s / 1e9
    return f"{gbs:,.0f}" if gbs >= 100 else f"{gbs:.1f}"


def _listed(items: list[str], most: int = 12) -> str:
    return ", ".join(items[:most]) + (f" and {len(items) - most} more" if len(items) > most else "")


def _elements(n: int) -> str:
    return f"{n // 2**20}M" if n % 2**20 == 0 else f"{n // 2**10}K" if n % 2**10 == 0 else str(n)


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report: the first one's machine info, every report's benchmarks."""
    merged = dict(reports[0])
    merged["benchmarks"] = [b for r in reports for b in r.get("benchmarks", [])]
    return merged


def per_iteration(bench: dict[str, Any], stat: str) -> float:
    return bench["stats"][stat] / bench["extra_info"]["iterations"]


def _variant_key(v: str) -> tuple[int, str]:
    order = ("native", "native-nocheck", "reference", "reference-compile", "diffusers")
    short = v.removeprefix("diffcore-").replace("-cuda", "").replace("-cpu", "")
    return (order.index(short) if short in order else len(order), v)


def _short(v: str) -> str:
    return v.removeprefix("diffcore-")


def step_rows(report: dict[str, Any], stat: str) -> dict[tuple[str, str, int], dict[str, dict[str, Any]]]:
    """(dtype, sampler, numel) -> variant -> {"step", "peak", "x_bytes", "bound", "tensors"}."""
    rows: dict[tuple[str, str, int], dict[str, dict[str, Any]]] = {}
    for b in report.get("benchmarks", []):
        info = b.get("extra_info", {})
        if "sampler" not in info or "iterations" not in info:
            continue
        rows.setdefault((info.get("dtype", "float32"), info["sampler"], int(info["numel"])), {})[info["variant"]] = {
            "step": per_iteration(b, stat),
            "peak": info.get("peak_alloc_bytes"),
            "x_bytes": info.get("x_bytes"),
            "bound": info.get("memory_bound_x"),
            "tensors": info.get("tensors_streamed"),
        }
    return rows


def _native_default(variants: list[str]) -> str | None:
    return next(
        (v for v in variants if v.startswith("diffcore-native") and not v.endswith(("-nocheck", "-graph"))), None
    )


def step_tables(rows: dict, copy_bw: dict[str, float]) -> list[str]:
    out: list[str] = []
    for dtype in dict.fromkeys(k[0] for k in rows):
        keys = sorted((k for k in rows if k[0] == dtype), key=lambda k: (k[1], k[2]))
        variants = sorted({v for k in keys for v in rows[k]}, key=_variant_key)
        native = _native_default(variants)
        nocheck = next((v for v in variants if v.endswith("-nocheck")), None)
        head = (
            "| sampler | elements | "
            + "".join(f"{_short(v)} us/step | " for v in variants)
            + "diffusers / native | compile / nocheck | nocheck GB/s (% of copy) "
            + "| peak / x: native, diffusers (bound) |"
        )
        out += [f"### {dtype}", "", head, "|" + "---|" * (head.count(" | ") + 1)]
        for k in keys:
            r = rows[k]
            step = {v: r.get(v, {}).get("step") for v in variants}
            cells = [k[1], _elements(k[2]), *(_us(step[v]) for v in variants)]
            cells.append(_x(_ratio(step.get("diffusers"), step.get(native))))
            cells.append(_x(_ratio(step.get("diffcore-reference-compile"), step.get(nocheck))))
            nc = r.get(nocheck or "", {})
            gbs = _ratio((nc.get("tensors") or 0) * (nc.get("x_bytes") or 0), nc.get("step"))
            share = _ratio(gbs, copy_bw.get(dtype))
            cells.append("n/a" if not gbs else _gbs(gbs) + ("" if share is None else f" ({share:.0%})"))
            peaks = [_ratio(r.get(v, {}).get("peak"), r.get(v, {}).get("x_bytes")) for v in (native, "diffusers")]
            bound = next((x.get("bound") for x in r.values() if x.get("bound") is not None), None)
            cells.append(", ".join("n/a" if p is None else f"{p:.2f}" for p in peaks) + f" ({bound})")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return out


def bandwidth(report: dict[str, Any], stat: str) -> dict[str, dict[str, dict[str, Any]]]:
    """dtype -> op (copy/add/ddim-step) -> {"gbs": bytes per second, "numel"}."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for b in report.get("benchmarks", []):
        info = b.get("extra_info", {})
        if "bandwidth" in info:
            out.setdefault(info["dtype"], {})[info["bandwidth"]] = {
                "gbs": info["bytes_per_iteration"] / per_iteration(b, stat),
                "numel": int(info["numel"]),
                "step": per_iteration(b, stat),
            }
    return out


def bandwidth_table(bw: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    lines = [
        "| dtype | elements | copy GB/s (2 tensors) | add GB/s (3) | native ddim step GB/s (3) | step / copy |",
        "|---|---|---|---|---|---|",
    ]
    for dtype, ops in bw.items():
        numel = next(iter(ops.values()))["numel"]
        g = {op: ops.get(op, {}).get("gbs") for op in ("copy", "add", "ddim-step")}
        share = _ratio(g["ddim-step"], g["copy"])
        lines.append(
            f"| {dtype} | {_elements(numel)} | "
            + " | ".join("n/a" if g[o] is None else _gbs(g[o]) for o in ("copy", "add", "ddim-step"))
            + f" | {'n/a' if share is None else f'{share:.0%}'} |"
        )
    return lines


def graph_rows(report: dict[str, Any], stat: str) -> dict[str, dict[tuple[int, str], float]]:
    rows: dict[str, dict[tuple[int, str], float]] = {}
    for b in report.get("benchmarks", []):
        info = b.get("extra_info", {})
        if "graph_loop" in info:
            rows.setdefault(info["graph_loop"], {})[(int(info["numel"]), info["dtype"])] = per_iteration(b, stat)
    return rows


def graph_table(rows: dict[str, dict[tuple[int, str], float]], steps: str) -> list[str]:
    cols = sorted({c for r in rows.values() for c in r})
    head = "| sampler | " + "".join(f"{_elements(n)} {d} us/step | " for n, d in cols)
    lines = [head.rstrip(" "), "|" + "---|" * (1 + len(cols))]
    for sampler in sorted(rows):
        lines.append(f"| {sampler} | " + " | ".join(_us(rows[sampler].get(c)) for c in cols) + " |")
    return [
        f"A {steps}-step loop of the native step kernel (no model) captured once in a CUDA graph; "
        "time per step = one replay / its steps (heun: 2N-1).",
        "",
        *lines,
    ]


def targets(rows: dict, bw: dict, graphs: dict) -> list[str]:
    out = []
    for label, pick in (
        ("native (default check)", lambda v: _native_default([v]) is not None),
        ("native-nocheck", lambda v: v.startswith("diffcore-native") and v.endswith("-nocheck")),
    ):
        miss = [
            f"{s} {_elements(n)} {d} ({_us(x['step'])})"
            for (d, s, n), r in sorted(rows.items())
            for v, x in r.items()
            if pick(v) and n <= STEP_TARGET_NUMEL and x["step"] > STEP_TARGET_S
        ]
        out.append(
            f"* <= {STEP_TARGET_S * 1e6:.0f} us per step at <= 1M elements, {label}: "
            + ("met everywhere measured" if not miss else f"missed by {len(miss)}: " + _listed(miss))
        )
    for dtype, ops in bw.items():
        share = _ratio(ops.get("ddim-step", {}).get("gbs"), ops.get("copy", {}).get("gbs"))
        if share is not None:
            out.append(
                f"* native ddim step >= {BANDWIDTH_TARGET:.0%} of copy bandwidth, {dtype}: "
                + ("met" if share >= BANDWIDTH_TARGET else "missed")
                + f" ({share:.0%})"
            )
    miss = [
        f"{s} {_elements(n)} {d} ({_us(t)})"
        for s, r in sorted(graphs.items())
        for (n, d), t in sorted(r.items())
        if t > GRAPH_TARGET_S
    ]
    if graphs:
        out.append(
            f"* <= {GRAPH_TARGET_S * 1e6:.0f} us per step in a CUDA graph: "
            + ("met everywhere measured" if not miss else f"missed by {len(miss)}: " + _listed(miss))
        )
    over = [
        f"{s} {_elements(n)} {d} {_short(v)}"
        for (d, s, n), r in sorted(rows.items())
        for v, x in r.items()
        if v.startswith("diffcore-native")
        and x.get("peak") is not None
        and x.get("x_bytes")
        and x.get("bound") is not None
        and x["peak"] / x["x_bytes"] > x["bound"]
    ]
    out.append(
        "* native peak extra memory <= (slots + 2) x size of x: "
        + ("met by every native case" if not over else f"exceeded by {len(over)}: " + _listed(over))
    )
    return out


def machine_line(report: dict[str, Any]) -> str:
    d = report.get("machine_info", {}).get("diffcore", {})
    c = d.get("cuda") or {}
    return (
        f"GPU: {c.get('device', '?')} (sm {c.get('capability', '?')}, {c.get('sm_count', '?')} SMs, "
        f"{c.get('memory_gib', '?')} GiB); torch {d.get('torch', '?')} CUDA {c.get('torch_cuda', '?')}, "
        f"diffusers {d.get('diffusers') or 'not installed'}, diffcore {d.get('version', '?')} CUDA backend "
        f"`{c.get('kernel_backend', '?')}`."
    )


def summary(report: dict[str, Any], stat: str = "min") -> str:
    rows, bw, graphs = step_rows(report, stat), bandwidth(report, stat), graph_rows(report, stat)
    if not (rows or bw or graphs):
        raise ValueError("no GPU benchmarks (extra_info with 'sampler', 'bandwidth' or 'graph_loop') in this report")
    copy_bw = {d: ops["copy"]["gbs"] for d, ops in bw.items() if "copy" in ops}
    steps = sorted(
        {
            str(b["extra_info"]["steps"])
            for b in report["benchmarks"]
            if "sampler" in b.get("extra_info", {}) and "steps" in b["extra_info"]
        }
    )
    gsteps = sorted(
        {str(b["extra_info"]["steps"]) for b in report["benchmarks"] if "graph_loop" in b.get("extra_info", {})}
    )
    out = [machine_line(report), ""]
    if rows:
        out += [
            f"Per-step time = {stat} over rounds of a whole {'/'.join(steps)}-step `run_program` loop / its "
            "iterations (one model call + one update), model excluded. native: CUDA kernels, in-kernel Philox "
            "noise, default NaN/inf check; -nocheck: without it; reference: pure Torch, torch.randn noise; "
            "reference-compile: torch.compile of the reference step, check off. nocheck GB/s = tensors the "
            "fused step streams x their size / step time. Peak: max_memory_allocated above the run's start.",
            "",
            *step_tables(rows, copy_bw),
        ]
    if bw:
        out += [
            "Bandwidth at the largest size (bytes read + written per call / time per call):",
            "",
            *bandwidth_table(bw),
            "",
        ]
    if graphs:
        out += [*graph_table(graphs, "/".join(gsteps)), ""]
    out += ["Targets of the native-kernels issue (reported, never asserted):", "", *targets(rows, bw, graphs)]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, nargs="+", help="pytest-benchmark JSON(s) (--benchmark-json=...)")
    parser.add_argument("--stat", choices=STATS, default="min", help="statistic over rounds (default: min)")
    parser.add_argument("--out", type=Path, help="markdown output (default: gpu_summary.md beside the first JSON)")
    parser.add_argument("--merged-json", type=Path, help="also write the merged JSON here")
    args = parser.parse_args(argv)
    reports = []
    for path in args.json:
        try:
            reports.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            print(f"summarize_gpu: {path}: {exc} (skipped)", file=sys.stderr)
    if not reports:
        return 2
    report = merge(reports)
    if args.merged_json:
        args.merged_json.write_text(json.dumps(report, indent=1))
    try:
        text = summary(report, args.stat)
    except (ValueError, KeyError) as exc:
        print(f"summarize_gpu: {exc}", file=sys.stderr)
        return 2
    out = args.out or args.json[0].with_name("gpu_summary.md")
    out.write_text(text)
    print(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
