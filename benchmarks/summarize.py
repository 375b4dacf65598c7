"""Turn a pytest-benchmark JSON of ``test_sampler_step.py`` into markdown tables.

    python benchmarks/summarize.py bench.json [--stat min|median|mean]

Prints the tables and writes them beside the JSON as ``summary.md``: per-step time of every
sampler and variant against diffusers with the peak extra memory against the bound; the memory
floor (``torch.add``) per size; at the largest size, each native step against that floor; and
which of the issue's targets are missed. Times are per loop iteration (one model call + one
update): the chosen statistic of a whole run divided by its iterations.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

STATS = ("min", "median", "mean")
SPEEDUP_TARGET, SPEEDUP_SIZES = 10.0, (16 * 2**10, 256 * 2**10)  # native >= 10x diffusers at 16K, 256K
FLOOR_TARGET = 1.3  # native step within 1.3x of one torch.add pass at the largest size


def _fmt_us(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e6:,.0f}" if seconds >= 1e-4 else f"{seconds * 1e6:.1f}"


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or den is None or den == 0 else num / den


def _fmt_ratio(num: float | None, den: float | None) -> str:
    r = _ratio(num, den)
    return "n/a" if r is None else f"{r:.2f}x"


def _fmt_mib(nbytes: int | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**20:.1f}"


def _elements(n: int) -> str:
    return f"{n // 2**20}M" if n % 2**20 == 0 else f"{n // 2**10}K" if n % 2**10 == 0 else str(n)


def collect(report: dict[str, Any], stat: str) -> dict[tuple[str, int], dict[str, dict[str, Any]]]:
    """(sampler, numel) -> variant -> {"step": seconds per iteration, "peak": bytes or None, **layout}."""
    rows: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for bench in report.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if "sampler" not in info or "iterations" not in info:
            continue  # not a sampler-step case
        rows.setdefault((info["sampler"], int(info["numel"])), {})[info.get("variant", info["impl"])] = {
            "step": bench["stats"][stat] / info["iterations"],
            "peak": info.get("peak_alloc_bytes"),
            "x_bytes": info.get("x_bytes"),
            "slots": info.get("slots"),
            "writes": info.get("max_writes"),
            "tensors": info.get("tensors_streamed"),
            "bound": info.get("memory_bound_x"),
        }
    return rows


def collect_floor(report: dict[str, Any], stat: str) -> dict[int, dict[str, Any]]:
    """numel -> {"step": seconds per torch.add call, "bytes": bytes it moves}."""
    floor: dict[int, dict[str, Any]] = {}
    for bench in report.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if "floor" in info and "iterations" in info:
            floor[int(info["numel"])] = {
                "step": bench["stats"][stat] / info["iterations"],
                "bytes": info.get("bytes_per_iteration"),
            }
    return floor


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


def _peak_x(r: dict[str, Any]) -> float | None:
    return _ratio(r.get("peak"), r.get("x_bytes"))


def _fmt_peak_x(r: dict[str, Any]) -> str:
    p = _peak_x(r)
    return "n/a" if p is None else f"{p:.2f}"


def _native(variant: str) -> bool:
    return variant.startswith("diffcore-native")


def step_table(rows: dict, primary: str, others: list[str]) -> list[str]:
    head = (
        f"| sampler | elements | diffcore us/step ({primary.removeprefix('diffcore-')}) | diffusers us/step "
        "| speed-up (diffusers/diffcore) | "
        + "".join(f"{v.removeprefix('diffcore-')} us/step (speed-up) | " for v in others)
        + "peak alloc MiB diffcore / diffusers | peak / x: diffcore, diffusers (bound) |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for sampler in dict.fromkeys(k[0] for k in rows):
        for numel in sorted(n for s, n in rows if s == sampler):
            r = rows[(sampler, numel)]
            main_, df = r.get(primary, {}), r.get("diffusers", {})
            cells = [
                sampler,
                _elements(numel),
                _fmt_us(main_.get("step")),
                _fmt_us(df.get("step")),
                _fmt_ratio(df.get("step"), main_.get("step")),
            ]
            for v in others:
                step = r.get(v, {}).get("step")
                cells.append(f"{_fmt_us(step)} ({_fmt_ratio(df.get('step'), step)})")
            cells.append(f"{_fmt_mib(main_.get('peak'))} / {_fmt_mib(df.get('peak'))}")
            bound = main_.get("bound") or df.get("bound")
            cells.append(f"{_fmt_peak_x(main_)}, {_fmt_peak_x(df)} ({bound if bound is not None else 'n/a'})")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def floor_table(floor: dict[int, dict[str, Any]]) -> list[str]:
    lines = ["| elements | torch.add(x, y, out=z) us/call | GB/s (3 tensors) |", "|---|---|---|"]
    for numel in sorted(floor):
        f = floor[numel]
        gbs = _ratio(f.get("bytes"), f["step"])
        lines.append(f"| {_elements(numel)} | {_fmt_us(f['step'])} | {'n/a' if gbs is None else f'{gbs / 1e9:.1f}'} |")
    return lines


def floor_ratio_table(rows: dict, floor: dict[int, dict[str, Any]], numel: int) -> list[str]:
    """Each native variant's step / one torch.add pass at ``numel``; bandwidth vs add's, per tensor."""
    add = floor[numel]["step"]
    variants = sorted({v for (s, n), r in rows.items() if n == numel for v in r if _native(v)})
    head = "| sampler | history slots K, writes W | " + "".join(
        f"{v.removeprefix('diffcore-')}: step / add (tensors; bandwidth vs add) | " for v in variants
    )
    lines = [head.rstrip(" "), "|" + "---|" * (2 + len(variants))]
    for sampler in dict.fromkeys(s for s, n in rows if n == numel):
        r = rows[(sampler, numel)]
        some = next((r[v] for v in variants if v in r), {})
        cells = [sampler, f"{some.get('slots', 'n/a')}, {some.get('writes', 'n/a')}"]
        for v in variants:
            step, t = r.get(v, {}).get("step"), r.get(v, {}).get("tensors")
            if step is None:
                cells.append("n/a")
                continue
            eff = _ratio(t * add, 3 * step) if t else None  # (t bytes / step) / (3 bytes / add)
            cells.append(f"{step / add:.2f}x" + ("" if eff is None else f" ({t}; {eff:.0%})"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def targets(rows: dict, floor: dict[int, dict[str, Any]], primary: str, largest: int | None) -> list[str]:
    """Which cases miss the issue's targets (a report, not an assertion)."""
    out = []
    for label, pick in (
        ("default variant", lambda r: r.get(primary, {}).get("step")),
        ("fastest native variant", lambda r: min((v["step"] for k, v in r.items() if _native(k)), default=None)),
    ):
        miss = []
        for (sampler, numel), r in sorted(rows.items()):
            if numel in SPEEDUP_SIZES:
                s = _ratio(r.get("diffusers", {}).get("step"), pick(r))
                if s is not None and s < SPEEDUP_TARGET:
                    miss.append(f"{sampler} {_elements(numel)} ({s:.1f}x)")
        out.append(
            f"* >= {SPEEDUP_TARGET:.0f}x diffusers at 16K/256K, {label}: "
            + ("met everywhere measured" if not miss else "missed by " + ", ".join(miss))
        )
    if largest is not None:
        add = floor[largest]["step"]
        miss = []
        for (sampler, numel), r in sorted(rows.items()):
            best = min((v["step"] for k, v in r.items() if _native(k)), default=None) if numel == largest else None
            if best is not None and best / add > FLOOR_TARGET:
                miss.append(f"{sampler} ({best / add:.2f}x)")
        out.append(
            f"* fastest native step within {FLOOR_TARGET}x of torch.add at {_elements(largest)}: "
            + ("met by every sampler" if not miss else "missed by " + ", ".join(miss))
        )
    over = [
        f"{s} {_elements(n)} {v.removeprefix('diffcore-')} ({_peak_x(x):.2f} > {x['bound']})"
        for (s, n), r in sorted(rows.items())
        for v, x in r.items()
        if _native(v) and _peak_x(x) is not None and x.get("bound") is not None and _peak_x(x) > x["bound"]
    ]
    out.append(
        "* native peak extra memory <= (slots + 2) x size of x: "
        + ("met by every native case" if not over else "exceeded by " + ", ".join(over))
    )
    return out


def table(report: dict[str, Any], stat: str = "min") -> str:
    rows = collect(report, stat)
    if not rows:
        raise ValueError("no sampler-step benchmarks (extra_info with 'sampler') in this report")
    floor = collect_floor(report, stat)
    backend = report.get("machine_info", {}).get("diffcore", {}).get("kernel_backend", "reference")
    primary = f"diffcore-{backend}"
    variants = _order({v for r in rows.values() for v in r}, primary)
    if primary not in variants:
        primary = variants[0]
    others = [v for v in variants if v != primary]
    steps = {b["extra_info"].get("steps") for b in report["benchmarks"] if "steps" in b.get("extra_info", {})}
    notes = (
        f"Per-step time = {stat} over rounds of a whole {'/'.join(map(str, sorted(steps)))}-step run divided by "
        "its loop iterations (one model call + one update; heun: 2N-1 iterations), model excluded (it returns "
        "a precomputed tensor). Speed-up = diffusers time / diffcore time. `-nocheck`: without diffcore's "
        "default per-step NaN/inf check of the model output; `-philox`: noise drawn inside the kernel "
        "(`seed=0`) instead of torch.randn from a generator (stochastic samplers only). Peak alloc: bytes "
        "allocated by one run above its start (torch profiler, untimed run); peak / x divides it by the size "
        "of x; the bound is (history slots + 2)."
    )
    out = [machine_line(report), "", *step_table(rows, primary, others), "", notes]
    largest = max((n for n in floor if any(k[1] == n for k in rows)), default=None)
    if floor:
        out += [
            "",
            "Memory floor: one `torch.add(x, y, out=z)` (reads 2, writes 1 full-size tensor), "
            f"{stat} over rounds of {'/'.join(map(str, sorted(steps)))} back-to-back calls, same run.",
            "",
            *floor_table(floor),
        ]
    if largest is not None:
        out += [
            "",
            f"At {_elements(largest)} elements: native step time / torch.add time; in parentheses the "
            "bandwidth it achieves (tensors streamed x size / step time) as a share of add's.",
            "",
            *floor_ratio_table(rows, floor, largest),
        ]
    out += [
        "",
        "Targets of the native-kernels issue (reported, never asserted):",
        "",
        *targets(rows, floor, primary, largest),
    ]
    return "\n".join(out) + "\n"


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
