"""The speedup table of ``test_e2e_speed.py``: diffusers time / diffcore time per 50-step run.

    python benchmarks/summarize_e2e.py e2e.json [more.json ...] [--stat min|median|mean] [--out e2e.md]

Reads pytest-benchmark JSON (cases of other suites in it are ignored), scales every round to a
50-step run (``time / steps_measured * steps_target``), prints one markdown table per device
and writes it to ``--out`` when given (appending when ``--append``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

STATS = ("min", "median", "mean")
VARIANTS = ("diffcore", "diffcore-graph", "diffcore-graph-replay")
UNET_ORDER = {"small": 0, "mid": 1}


def collect(reports: list[dict[str, Any]], stat: str) -> dict[str, dict[tuple[str, int, str], dict[str, Any]]]:
    """device -> (unet, batch, sampler) -> impl -> {"s": seconds per 50-step run, "err": rel err, ...}."""
    rows: dict[str, dict[tuple[str, int, str], dict[str, Any]]] = {}
    for report in reports:
        for bench in report.get("benchmarks", []):
            info = bench.get("extra_info", {})
            if info.get("suite") != "e2e":
                continue
            per_run = bench["stats"][stat] / info["steps_measured"] * info["steps_target"]
            key = (info["unet"], int(info["batch"]), info["scheduler"])
            rows.setdefault(info["device"], {}).setdefault(key, {})[info["impl"]] = {
                "s": per_run,
                "err": info.get("rel_err_vs_diffusers"),
                "steps": info["steps_measured"],
                "threads": info.get("torch_threads"),
                "rounds": bench["stats"].get("rounds"),
            }
    return rows


def _s(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 1e3:,.0f} ms" if v < 10 else f"{v:,.1f} s"


def _x(num: float | None, den: float | None) -> str:
    return "n/a" if num is None or den is None or den == 0 else f"{num / den:.2f}x"


def table(device: str, rows: dict[tuple[str, int, str], dict[str, Any]], stat: str) -> list[str]:
    present = [v for v in VARIANTS if any(v in r for r in rows.values())]
    head = ["UNet", "batch", "sampler", "steps timed", "diffusers"]
    for v in present:
        head += [v, f"speedup ({v})"]
    head.append("max rel err vs diffusers")
    lines = [
        f"### {device}: time per 50-step run ({stat} round), speedup = diffusers / diffcore",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for key in sorted(rows, key=lambda k: (UNET_ORDER.get(k[0], 9), k[1], k[2])):
        impls = rows[key]
        ref = impls.get("diffusers", {}).get("s")
        steps = sorted({i["steps"] for i in impls.values()})
        cells = [key[0], str(key[1]), key[2], "/".join(map(str, steps)), _s(ref)]
        for v in present:
            cells += [_s(impls.get(v, {}).get("s")), _x(ref, impls.get(v, {}).get("s"))]
        errs = [i["err"] for name, i in impls.items() if name != "diffusers" and i["err"] is not None]
        cells.append(f"{max(errs):.1e}" if errs else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    slower = [
        f"{k[0]} b{k[1]} {k[2]}"
        for k, i in rows.items()
        if "diffusers" in i and "diffcore" in i and i["diffcore"]["s"] > i["diffusers"]["s"]
    ]
    lines += ["", f"diffcore (eager) slower than diffusers in: {', '.join(slower) if slower else 'none'}", ""]
    return lines


def summary(reports: list[dict[str, Any]], stat: str = "min") -> str:
    rows = collect(reports, stat)
    if not rows:
        raise ValueError("no end-to-end cases (extra_info suite='e2e') in the report(s)")
    machine = reports[0].get("machine_info", {}).get("diffcore", {})
    lines = [
        "## End-to-end sampling: diffcore.sample vs the diffusers pipeline loop",
        "",
        (
            f"torch {machine.get('torch', '?')}, diffusers {machine.get('diffusers', '?')}, "
            f"torch threads {machine.get('torch_threads', '?')}, kernel backend {machine.get('kernel_backend', '?')}"
        ),
        "",
    ]
    for device, dev_rows in rows.items():
        lines += table(device, dev_rows, stat)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", type=Path, nargs="+")
    parser.add_argument("--stat", choices=STATS, default="min")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--append", action="store_true", help="append to --out instead of replacing it")
    args = parser.parse_args(argv)
    text = summary([json.loads(p.read_text()) for p in args.json], args.stat)
    print(text)
    if args.out:
        with open(args.out, "a" if args.append else "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
