"""Run the bad-input corpus (benchmarks/faults/cli_cases.py) over every CLI verb and tally it.

    python benchmarks/faults/cli_inputs.py [--jobs 2] [--timeout 90] [--in-process] [--only VERB]
        [--out benchmarks/results/faults_cli.md] [--json FILE] [--verbose]

Each case is one ``python -m diffcore ...`` subprocess (``--in-process``: ``diffcore.cli.main`` in
this process, faster, for iterating on fixes) with its own output folder, classified as

* clear: exit != 0, exactly one ``diffcore: error:`` line on stderr (warnings aside), no traceback,
  and no temporary file left behind;
* traceback: a Python traceback, a crash, or more than one error line;
* silent wrong: exit 0 on bad input, exit 0 with NaN/inf in an output array, or a temporary left;
* ok: a valid control that exited 0 (a control that failed counts as "refused valid");
* hang: killed at ``--timeout`` seconds.

Writes a Markdown table per category and per verb (tried / clear / traceback / silent wrong /
...) and exits 1 unless every bad input got a clear error and every control ran.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_cases import CATEGORIES, Case, Fixtures, all_cases, build_fixtures  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT_MARK = "@OUT@"
VERDICTS = ("clear", "traceback", "silent wrong", "hang", "ok", "refused valid")


def run_subprocess(argv: list[str], timeout: float) -> tuple[int | None, str, str]:
    env = {**os.environ, "DIFFCORE_DISABLE_PLUGIN_AUTOLOAD": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "diffcore", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        return None, str(exc.stdout or ""), str(exc.stderr or "")
    return proc.returncode, proc.stdout, proc.stderr


class _Hang(BaseException):
    """Raised by the alarm of :func:`run_in_process`."""


def run_in_process(argv: list[str], timeout: float) -> tuple[int | None, str, str]:
    import signal
    import traceback

    from diffcore.cli import main

    def alarm(*_: object) -> None:
        raise _Hang

    out, err = io.StringIO(), io.StringIO()
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code: int | None = main(argv)
        except _Hang:
            code = None
        except BaseException:  # noqa: BLE001 - what escapes main() is what the user would see
            traceback.print_exc()
            code = 1
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    return code, out.getvalue(), err.getvalue()


def classify(case: Case, code: int | None, stderr: str, folder: Path) -> tuple[str, str]:
    """(verdict, the stderr line or reason)."""
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("diffcore: warning:")]
    # tqdm bars are off without a terminal; any other stderr text counts against "one line"
    leftovers = [p.name for p in folder.rglob("*.diffcore.tmp")] if folder.exists() else []
    if code is None:
        return "hang", "timeout"
    if "Traceback (most recent call last)" in stderr or code not in (0, 1, 2, 130):
        return "traceback", (lines[-1] if lines else f"exit {code}")[:300]
    if code == 0:
        bad = _non_finite_outputs(folder)
        if case.expect == "ok":
            return ("silent wrong", f"NaN/inf in {bad}") if bad else ("ok", "")
        return "silent wrong", f"exit 0{f' with NaN/inf in {bad}' if bad else ''}"
    if leftovers:
        return "silent wrong", f"left {leftovers[:2]}"
    if len(lines) != 1 or not lines[0].startswith("diffcore: error:"):
        return "traceback", " | ".join(lines)[:300] or f"exit {code}, nothing on stderr"
    return ("refused valid" if case.expect == "ok" else "clear"), lines[0][:300]


def _non_finite_outputs(folder: Path) -> list[str]:
    bad = []
    for path in folder.rglob("*.np[yz]"):
        try:
            loaded = np.load(path, allow_pickle=False)
            arrays = [loaded] if isinstance(loaded, np.ndarray) else [loaded[k] for k in loaded.files]
        except (OSError, ValueError):
            continue
        if any(np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all() for a in arrays):
            bad.append(path.name)
    return bad


def run_case(index: int, case: Case, work: Path, timeout: float, in_process: bool) -> dict[str, object]:
    folder = work / f"case{index:04d}"
    argv = [a.replace(OUT_MARK, str(folder)) for a in case.argv]
    started = time.perf_counter()
    code, _, stderr = (run_in_process if in_process else run_subprocess)(argv, timeout)
    verdict, detail = classify(case, code, stderr, folder)
    return {
        "index": index,
        "category": case.category,
        "verb": case.verb,
        "label": case.label,
        "expect": case.expect,
        "code": code,
        "verdict": verdict,
        "detail": detail.replace(str(work), "<work>"),
        "seconds": round(time.perf_counter() - started, 2),
    }


def table(results: list[dict[str, object]], key: str, order: tuple[str, ...] | None = None) -> list[str]:
    groups = order or tuple(sorted({str(r[key]) for r in results}))
    rows = [f"| {key} | tried | " + " | ".join(VERDICTS) + " |", "|---" * (len(VERDICTS) + 2) + "|"]
    total: Counter[str] = Counter()
    for group in groups:
        counts = Counter(str(r["verdict"]) for r in results if r[key] == group)
        if not counts:
            continue
        total.update(counts)
        rows.append(f"| {group} | {sum(counts.values())} | " + " | ".join(str(counts[v]) for v in VERDICTS) + " |")
    rows.append(f"| **all** | {sum(total.values())} | " + " | ".join(str(total[v]) for v in VERDICTS) + " |")
    return rows


def report(results: list[dict[str, object]], args: argparse.Namespace, seconds: float) -> str:
    failures = [r for r in results if r["verdict"] not in ("clear", "ok")]
    lines = [
        "# Bad CLI inputs (issue #18)",
        "",
        f"`python benchmarks/faults/cli_inputs.py{' --in-process' if args.in_process else f' --jobs {args.jobs}'}` "
        f"({'in-process' if args.in_process else 'one subprocess per case'}, {seconds:.0f} s wall clock). "
        "clear: exit != 0 with one `diffcore: error:` line and no traceback; silent wrong: exit 0 on bad "
        "input or with NaN/inf output, or a temporary file left; refused valid: a valid control that failed.",
        "",
        "## By category",
        "",
        *table(results, "category", CATEGORIES),
        "",
        "## By verb",
        "",
        *table(results, "verb"),
        "",
        "## Not clear",
        "",
    ]
    if not failures:
        lines.append("None.")
    for r in failures:
        lines.append(f"- {r['verdict']}: `{r['verb']} {r['label']}` ({r['category']}): {r['detail']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2)")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds before a case counts as a hang")
    parser.add_argument("--in-process", action="store_true", help="call diffcore.cli.main instead of a subprocess")
    parser.add_argument("--only", help="only the cases of this verb (or category)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/faults_cli.md")
    parser.add_argument("--json", type=Path, help="also write every case's verdict to this JSON-lines file, as it runs")
    parser.add_argument("--verbose", action="store_true", help="one line per case")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "fixtures").mkdir()
        started = time.time()
        fixtures: Fixtures = build_fixtures(root / "fixtures")
        cases = [c for c in all_cases(fixtures, OUT_MARK) if args.only in (None, c.verb, c.category)]
        print(f"{len(cases)} cases; fixtures in {time.time() - started:.0f} s", file=sys.stderr)
        work = root / "cases"
        work.mkdir()
        jobs = 1 if args.in_process else max(1, args.jobs)
        log = open(args.json, "w") if args.json is not None else None  # noqa: SIM115 - written as cases finish
        with ThreadPoolExecutor(jobs) as pool:  # in-process cases run here, in the main thread (SIGALRM)
            futures = [
                pool.submit(run_case, i, c, work, args.timeout, False) if not args.in_process else None
                for i, c in enumerate(cases)
            ]
            results = []
            for i, future in enumerate(futures):
                r = run_case(i, cases[i], work, args.timeout, True) if future is None else future.result()
                results.append(r)
                if log is not None:
                    log.write(json.dumps(r) + "\n")
                    log.flush()
                if args.verbose:
                    print(f"{r['verdict']:13s} {r['verb']:12s} {r['label']:40s} {r['detail']}", file=sys.stderr)
        if log is not None:
            log.close()
        seconds = time.time() - started
    text = report(results, args, seconds)
    if args.only is None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    bad = sum(r["verdict"] not in ("clear", "ok") for r in results)
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
