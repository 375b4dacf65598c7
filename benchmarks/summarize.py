"""Turn a pytest-benchmark JSON of ``test_sampler_step.py`` into a markdown table.

    python benchmarks/summarize.py bench.json [--stat min|median|mean]

Prints the table and writes it beside the JSON as ``summary.md``. Times are per loop iteration
(one model call + one update): the chosen statistic of a whole run divided by its iterations.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

STATS = ("min", "median", "mean")


def _fmt_us(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e6:,.0f}"


def _fmt_ratio(num: float | None, den: float | None) -> str:
    return "n/a" if num is None or den is None or den == 0 else f"{num / den:.2f}x"


def _fmt_mib(nbytes: int | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**20:.1f}"


def _elements(n: int) -> str:
    return f"{n // 2**20}M" if n % 2**20 == 0 else f"{n // 2**10}K" if n % 2**10 == 0 else str(n)


def collect(report: dict[str, Any], stat: str) -> dict[tuple[str, int], dict[str, dict[str, Any]]]:
    """(sampler, numel) -> variant -> {"step": seconds per iteration, "peak": bytes or None}."""
    rows: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for bench in report.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if "sampler" not in info or "iterations" not in info:
            continue  # not a sampler-step case
        rows.setdefault((info["sampler"], int(info["numel"])), {})[info.get("variant", info["impl"])] = {
            "step": bench["stats"][stat] / info["iterations"],
            "peak": info.get("peak_alloc_bytes"),
        }
    return rows


def _order(variants: set[str], primary: str) -> list[str]:
    """The primary diffcore variant first, then the other diffcore ones; diffusers is not listed."""
    rest = sorted(v for v in variants if v not in (primary, "diffusers"))
    return ([primary] if primary in variants else []) + rest


def machine_line(report: dict[str, Any]) -> str:
    m = report.get("machine_info", {})
    d = m.get("diffcore", {})
    cpu = m.get("cpu", {}).get("brand_raw") or d.get("processor") or m.get("processor") or "?"
    return (
        f"Machine: {cpu}, {d.get('cpu_count', '?')} CPUs ({d.get('torch_threads', '?')} torch threads), "
        f"{m.get('system', '?')} {m.get('python_implementation', '')} {m.get('python_version', '')}; "
        f"torch {d.get('torch', '?')}, diffusers {d.get('diffusers') or 'not installed'}, "
        f"diffcore {d.get('version', '?')} kernel backend `{d.get('kernel_backend', '?')}`."
    )


def table(report: dict[str, Any], stat: str = "min") -> str:
    rows = collect(report, stat)
    if not rows:
        raise ValueError("no sampler-step benchmarks (extra_info with 'sampler') in this report")
    backend = report.get("machine_info", {}).get("diffcore", {}).get("kernel_backend", "reference")
    primary = f"diffcore-{backend}"
    variants = _order({v for r in rows.values() for v in r}, primary)
    if primary not in variants:
        primary = variants[0]
    others = [v for v in variants if v != primary]
    head = (
        f"| sampler | elements | diffcore us/step ({primary.removeprefix('diffcore-')}) | diffusers us/step "
        "| speed-up (diffusers/diffcore) | "
        + "".join(f"{v.removeprefix('diffcore-')} us/step (speed-up) | " for v in others)
        + "peak alloc MiB diffcore / diffusers |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for sampler in dict.fromkeys(k[0] for k in rows):
        for numel in sorted(n for s, n in rows if s == sampler):
            r = rows[(sampler, numel)]
            main_, df = r.get(primary, {}), r.get("diffusers", {})
            cells = [sampler, _elements(numel), _fmt_us(main_.get("step")), _fmt_us(df.get("step")),
                     _fmt_ratio(df.get("step"), main_.get("step"))]
            for v in others:
                step = r.get(v, {}).get("step")
                cells.append(f"{_fmt_us(step)} ({_fmt_ratio(df.get('step'), step)})")
            cells.append(f"{_fmt_mib(main_.get('peak'))} / {_fmt_mib(df.get('peak'))}")
            lines.append("| " + " | ".join(cells) + " |")
    steps = {b["extra_info"].get("steps") for b in report["benchmarks"] if "steps" in b.get("extra_info", {})}
    notes = (
        f"Per-step time = {stat} over rounds of a whole {'/'.join(map(str, sorted(steps)))}-step run divided by "
        "its loop iterations (one model call + one update; heun: 2N-1 iterations), model excluded (it returns "
        "a precomputed tensor). Speed-up = diffusers time / diffcore time. `-nocheck`: without diffcore's "
        "default per-step NaN/inf check of the model output. Peak alloc: bytes allocated by one run above "
        "its start (torch profiler, untimed run)."
    )
    return "\n".join([machine_line(report), "", *lines, "", notes]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="pytest-benchmark JSON (--benchmark-json=...)")
    parser.add_argument("--stat", choices=STATS, default="min", help="statistic over rounds (default: min)")
    args = parser.parse_args(argv)
    try:
        report = json.loads(args.json.read_text())
        text = table(report, args.stat)
    except (OSError, ValueError, KeyError) as exc:
        print(f"summarize: {args.json}: {exc}", file=sys.stderr)
        return 2
    out = args.json.with_name("summary.md")
    out.write_text(text)
    print(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
