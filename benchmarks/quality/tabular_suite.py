"""Tabular anomaly suite (issue #19): diffcore's detector and classical baselines on 25 settings
(14 development, 11 held-out), through one scikit-learn interface (``fit`` on normal rows,
``score_samples``: higher = more normal).

    .venv/bin/python -m benchmarks.quality.tabular_suite --cache outputs/quality/tabular-seeds-h19a \
        --skip dte_c                                                # the run of the results
    .venv/bin/python -m benchmarks.quality.tabular_suite            # full run (~40 min on 2 cores shared at load 8-10)
    .venv/bin/python -m benchmarks.quality.tabular_suite --quick    # 1 seed, 4 settings, capped budget

Settings: benchmarks/quality/tabular_settings.py (novel classes of sklearn's tables and ADBench's
local / global / dependency / clustered anomalies). Seeds 0, 1, 2 (split, synthetic anomalies,
model). Methods:

- diffcore: one :class:`diffcore.DiffusionDetector` fit per setting and seed with the library
  defaults (robust scaling, size and budget from the table, early stopping on 10% held-out
  normal rows), read out by every candidate score (:data:`DIFFCORE_SCORES`, declared before the
  runs that chose the default): ``recon`` (absolute error), ``recon_squared``, ``mahalanobis``
  (the whitened signed residual), ``dte`` (diffusion-time estimate, inverse-gamma crossing),
  ``dte_np`` and ``dte_c`` (Livernoche et al.'s non-parametric and categorical diffusion-time
  estimators, :mod:`diffcore.tasks.anomaly.dte_variants`) and one ensemble, ``recon_dte_np``
  (recon and DTE-NP, each standardized by the median and IQR of its scores on the training rows,
  DTE-NP leaving each row out of its own neighbours, then averaged).
- baselines on standardized columns (mean/std of the training rows, constant columns scale 1):
  IsolationForest (200 trees), LOF (novelty, 20 neighbours), OneClassSVM (RBF, gamma "scale",
  nu 0.1), kNN (mean distance to 5), PyOD's ECOD, COPOD, Deep SVDD (20 epochs); LOF, OneClassSVM
  and kNN also on raw columns (``*_raw``), since standardizing inflates near-constant columns.

Selection rule (fixed before the runs of the raised budget and the DTE variants; the held-out
numbers of the earlier recipe had been seen when it was written, see the README):

1. candidates: the diffcore scores of :data:`DIFFCORE_SCORES`;
2. keep the candidates within 0.05 AUROC (mean over seeds) of the best baseline on *every*
   development setting; if none is, keep them all;
3. of those, the best mean AUROC rank over the development settings, ranked among *all* methods
   (baselines included); ties go to the higher mean development AUROC.

Only development settings enter the rule (:func:`choose_default`); held-out numbers are
reported, never used.

The splits. The first split (7 development, 7 held-out settings) chose ``mahalanobis``, which
failed both targets on its held-out half (overall rank 5.36; digits 0-8 vs 9: 0.858 vs kNN 0.975).
Those 14 settings had then all been seen, so none was held-out any more: method fix, written here
and in the README before any new run: (1) all 14 became the development set (their cached
per-seed results kept, not rerun); (2) a fresh held-out set of 11 settings nobody had run
(:mod:`benchmarks.quality.tabular_settings`); (3) the same rule, unchanged, applied to the 14
development settings, its choice committed to ``diffcore/tasks/anomaly/defaults.py`` before the
fresh set was run; (4) the fresh set run once, 3 seeds (DTE-C left out there for time,
``--skip dte_c``: it was among the weakest candidates and is ranked on the development set only).
Every method is then reported on the held-out half and on all settings. Writes
``benchmarks/results/tabular_suite.{json,md,png}`` (``--quick``: outputs/quality/tabular-quick/).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.quality.evaluator import CACHE_DIR, ROOT, machine, task_parser
from benchmarks.quality.tabular_settings import SETTINGS, Setting, build
from diffcore.detector import DEFAULT_ERROR, DEFAULT_METHOD, DiffusionDetector
from diffcore.evaluation import auprc, auroc, baseline_estimators

RESULTS = ROOT / "benchmarks" / "results"
QUICK_DIR = CACHE_DIR / "tabular-quick"
SEED_CACHE = CACHE_DIR / "tabular-seeds"  # one JSON per (setting, seed): an interrupted run resumes
SEEDS = (0, 1, 2)
# the candidates of the selection rule, declared before the runs (issue #19)
DIFFCORE_SCORES = ("recon", "recon_squared", "mahalanobis", "dte", "dte_np", "dte_c", "recon_dte_np")
RAW_BASELINES = ("lof", "ocsvm", "knn")  # the scale-dependent ones, also run on raw columns
TARGETS = {
    "rank": "the default detector has the best mean AUROC rank across the suite",
    "gap": "on no setting is the default more than 0.05 AUROC below the best baseline",
}


def _standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (train - mean) / std, (test - mean) / std


def run_seed(setting: Setting, seed: int, quick: bool, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """AUROC / AUPRC / seconds of every method on one setting and seed (diffcore scores in
    ``skip`` left out)."""
    train, test, labels = build(setting, seed)
    out: dict[str, Any] = {"auroc": {}, "auprc": {}, "seconds": {}}

    def record(name: str, scores: np.ndarray, seconds: float) -> None:
        out["auroc"][name] = auroc(labels, scores)
        out["auprc"][name] = auprc(labels, scores)
        out["seconds"][name] = round(seconds, 2)

    t0 = time.perf_counter()
    options = {"n_steps": 150} if quick else {}
    det = DiffusionDetector(random_state=seed, **options).fit(train)
    fit_seconds = time.perf_counter() - t0
    out["budget"] = dict(det.budget_)
    for score in (s for s in DIFFCORE_SCORES if s not in skip):
        t1 = time.perf_counter()
        record(f"diffcore_{score}", det.anomaly_scores(test, score), fit_seconds + time.perf_counter() - t1)
    z_train, z_test = _standardize(train, test)
    for name, est in baseline_estimators(seed, pyod=True).items():
        if quick and name == "deep_svdd":
            continue
        for raw in (False, True) if name in RAW_BASELINES else (False,):
            t1 = time.perf_counter()
            fitted = est.fit(train if raw else z_train)
            scores = -fitted.score_samples(test if raw else z_test)
            record(f"{name}_raw" if raw else name, scores, time.perf_counter() - t1)
    out["n_train"], out["n_test_normal"], out["n_test_anomaly"] = (
        len(train),
        int((labels == 0).sum()),
        int(labels.sum()),
    )
    return out


def cached_seed(
    setting: Setting, seed: int, quick: bool, fresh: bool, cache: Path = SEED_CACHE, skip: tuple[str, ...] = ()
) -> dict[str, Any]:
    """:func:`run_seed`, read from / written to ``cache`` (full runs only)."""
    path = cache / f"{setting.name}-{seed}.json"
    if not quick and not fresh and path.exists():
        return dict(json.loads(path.read_text()))
    result = run_seed(setting, seed, quick, skip)
    if not quick:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result) + "\n")
    return result


def summary(values: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def mean_ranks(table: dict[str, dict[str, float]], methods: list[str], settings: list[str]) -> dict[str, float]:
    """Mean over ``settings`` of each method's rank by mean AUROC (1 = best; ties share the mean rank)."""
    from scipy.stats import rankdata

    ranks: dict[str, list[float]] = {m: [] for m in methods}
    for s in settings:
        r = rankdata([-table[s][m] for m in methods])
        for m, v in zip(methods, r):
            ranks[m].append(float(v))
    return {m: statistics.fmean(v) for m, v in ranks.items()}


def choose_default(auc: dict[str, dict[str, float]], methods: list[str], dev: list[str]) -> dict[str, Any]:
    """The selection rule of the module docstring, on the development settings ``dev`` only:
    ``auc[setting][method]`` mean AUROC; candidates are the ``diffcore_*`` methods."""
    candidates = [m for m in methods if m.startswith("diffcore_")]
    baselines = [m for m in methods if not m.startswith("diffcore_")]
    ranks = mean_ranks({s: auc[s] for s in dev}, methods, dev)
    best = {s: max(auc[s][b] for b in baselines) for s in dev}
    within = [m for m in candidates if all(auc[s][m] >= best[s] - 0.05 for s in dev)]
    pool = within or candidates
    dev_mean = {m: statistics.fmean(auc[s][m] for s in dev) for m in pool}
    chosen = min(pool, key=lambda m: (ranks[m], -dev_mean[m]))
    return {"chosen": chosen, "within": within, "ranks": {m: ranks[m] for m in candidates}, "dev_mean": dev_mean}


def _library_default() -> str:
    """The suite's name of DiffusionDetector's default score."""
    return (
        "diffcore_recon_squared"
        if DEFAULT_METHOD == "recon" and DEFAULT_ERROR == "squared"
        else f"diffcore_{DEFAULT_METHOD}"
    )


def common_methods(per_setting: dict[str, dict[str, Any]], names: list[str]) -> list[str]:
    """The methods run on every one of ``names`` (a score skipped somewhere is left out), in order."""
    first = list(per_setting[names[0]]["auroc"]) if names else []
    return [m for m in first if all(m in per_setting[s]["auroc"] for s in names)]


def _verdicts(ranks: dict[str, float], gaps: dict[str, float], default: str) -> dict[str, bool]:
    return {
        "rank": ranks[default] <= min(r for m, r in ranks.items() if m != default),
        "gap": min(gaps.values()) >= -0.05,
    }


def analyse(per_setting: dict[str, dict[str, Any]], settings: list[Setting]) -> dict[str, Any]:
    """Means, ranks, the default chosen on the development set and the targets' verdicts (on the
    held-out set and on all settings). Ranks are over the methods run on every setting reported;
    the rule ranks among every method run on the development settings."""
    names = [s.name for s in settings]
    dev = [s.name for s in settings if s.half == "dev"]
    held = [s.name for s in settings if s.half == "heldout"]
    methods = common_methods(per_setting, names)
    auc = {s: {m: v["mean"] for m, v in per_setting[s]["auroc"].items()} for s in names}
    baselines = [m for m in methods if not m.startswith("diffcore_")]
    choice = choose_default(auc, common_methods(per_setting, dev), dev) if dev else {}
    chosen = choice.get("chosen", _library_default())
    default = _library_default()  # what the library ships (diffcore.tasks.anomaly.defaults)
    if chosen != _library_default():
        print(f"NOTE: the development half chose {chosen}; the library default is {_library_default()}")
    ranks = {
        "all": mean_ranks(auc, methods, names),
        "dev": mean_ranks(auc, methods, dev) if dev else {},
        "heldout": mean_ranks(auc, methods, held) if held else {},
    }
    gaps = {s: auc[s][default] - max(auc[s][b] for b in baselines) for s in names}
    targets = {"all": _verdicts(ranks["all"], gaps, default)}
    if held:
        targets["heldout"] = _verdicts(ranks["heldout"], {s: gaps[s] for s in held}, default)
    return {
        "dev_candidate_ranks": choice.get("ranks", {}),
        "dev_within_gap": choice.get("within", []),
        "chosen_on_dev": chosen,
        "default": default,
        "mean_rank": ranks,
        "gap_to_best_baseline": gaps,
        "targets": targets,
        "methods_ranked": methods,
    }


def write_markdown(path: Path, report: dict[str, Any], settings: list[Setting]) -> None:
    names = [s.name for s in settings]
    per = report["settings"]
    a = report["analysis"]
    methods = a["methods_ranked"]
    order = sorted(methods, key=lambda m: a["mean_rank"]["all"][m])
    lines = [
        "# Tabular anomaly suite (benchmarks/quality/tabular_suite.py)",
        "",
        f"AUROC mean ± s.d. over seeds {report['seeds']} (fewer where a setting says so below); mean rank by "
        f"mean AUROC (1 = best) over the methods run on every setting. Default: "
        f"`{a['default']}` (chosen on the development set: `{a['chosen_on_dev']}`).",
        "",
        "| method | rank (all) | rank (dev) | rank (held-out) | " + " | ".join(names) + " |",
        "|---|---|---|---|" + "---|" * len(names),
    ]
    for m in order:
        cells = [f"{per[s]['auroc'][m]['mean']:.3f} ± {per[s]['auroc'][m]['sd']:.3f}" for s in names]
        r = a["mean_rank"]
        lines.append(
            f"| {m} | {r['all'][m]:.2f} | {r['dev'].get(m, float('nan')):.2f} | "
            f"{r['heldout'].get(m, float('nan')):.2f} | " + " | ".join(cells) + " |"
        )
    lines += ["", "AUPRC mean ± s.d.:", "", "| method | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for m in order:
        cells = [f"{per[s]['auprc'][m]['mean']:.3f} ± {per[s]['auprc'][m]['sd']:.3f}" for s in names]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Settings (seeds run, training rows, test normal + anomalous rows):", ""] + [
        f"- `{s.name}` ({s.half}): {s.description}; {per[s.name]['seeds']} seed(s), {per[s.name]['n_train']} train, "
        f"{per[s.name]['n_test_normal']} + {per[s.name]['n_test_anomaly']} test"
        for s in settings
    ]
    dev_only = sorted({m for s in names for m in per[s]["auroc"]} - set(methods))
    if dev_only:
        lines += ["", f"Not run on every setting, so not in the tables above: {dev_only} (see the selection rule)."]
    if report.get("excluded"):
        lines += ["", f"Left out of this report: {report['excluded']} (see benchmarks/quality/README.md)."]
    gaps = ", ".join(f"{s} {g:+.3f}" for s, g in a["gap_to_best_baseline"].items())
    dev_ranks = ", ".join(f"{m} {r:.2f}" for m, r in sorted(a["dev_candidate_ranks"].items(), key=lambda kv: kv[1]))
    lines += [
        "",
        "Selection rule (module docstring; development settings only): within 0.05 AUROC of the best baseline on "
        f"every development setting: {a['dev_within_gap']}; development rank among all methods: {dev_ranks}; "
        f"chosen: `{a['chosen_on_dev']}`.",
        "",
        f"Default minus best baseline (AUROC): {gaps}.",
        "",
        "Targets met (rank: best mean rank; gap: never more than 0.05 below the best baseline), on the held-out "
        f"set and on all settings: {a['targets']}.",
        "",
    ]
    path.write_text("\n".join(lines))


def plot_ranks(path: Path, analysis: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranks = analysis["mean_rank"]
    methods = sorted(ranks["all"], key=lambda m: ranks["all"][m])
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(methods) + 1.2))
    y = np.arange(len(methods))
    for i, (half, colour) in enumerate((("all", "C0"), ("dev", "C1"), ("heldout", "C2"))):
        if ranks[half]:
            ax.barh(y + (i - 1) * 0.27, [ranks[half][m] for m in methods], height=0.27, color=colour, label=half)
    ax.set_yticks(y, methods)
    ax.invert_yaxis()
    ax.set_xlabel("mean AUROC rank (lower is better)")
    ax.legend(loc="upper right")
    ax.set_title("tabular anomaly suite: mean rank over settings")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = task_parser(__doc__ or "", "1 seed, 4 settings, 150 training steps: a smoke run, meaningless numbers")
    ap.add_argument("--settings", nargs="*", default=None, help="setting names (default: all)")
    ap.add_argument("--fresh", action="store_true", help=f"ignore the per-seed results cached in {SEED_CACHE}")
    ap.add_argument("--cached-only", action="store_true", help="report the cached seeds only, run nothing")
    ap.add_argument("--seeds", nargs="*", type=int, default=None, help=f"seeds (default {list(SEEDS)})")
    ap.add_argument("--cache", default=str(SEED_CACHE), help="folder of the per-seed results")
    ap.add_argument("--exclude", nargs="*", default=[], help="methods left out of the report (e.g. a stale cache's)")
    ap.add_argument("--skip", nargs="*", default=[], help="diffcore scores not computed in new runs (e.g. dte_c)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = [s for s in SETTINGS if args.settings is None or s.name in args.settings]
    if args.quick and args.settings is None:
        settings = [s for s in settings if s.name in ("iris_01_vs_2", "wine_12_vs_0", "wine_local", "wine_global")]
    seeds = tuple(args.seeds) if args.seeds else SEEDS[:1] if args.quick else SEEDS
    out = Path(args.out) if args.out else (QUICK_DIR if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    started, per_setting = time.perf_counter(), {}
    # seeds outermost: an interrupted run (or --cached-only) still covers every setting
    runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in settings}
    for seed in seeds:
        for s in settings:
            cached = Path(args.cache) / f"{s.name}-{seed}.json"
            if args.cached_only and not cached.exists():
                continue
            result = cached_seed(s, seed, args.quick, args.fresh, Path(args.cache), tuple(args.skip))
            for key in ("auroc", "auprc", "seconds"):
                result[key] = {m: v for m, v in result[key].items() if m not in args.exclude}
            runs[s.name].append(result)
            print(f"{s.name} seed {seed}: default {runs[s.name][-1]['auroc'][_library_default()]:.3f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
    settings = [s for s in settings if runs[s.name]]
    for s in settings:
        done = runs[s.name]
        per_setting[s.name] = {
            "half": s.half,
            "description": s.description,
            "seeds": len(done),
            **{k: {m: summary([r[k][m] for r in done]) for m in done[0][k]} for k in ("auroc", "auprc", "seconds")},
            "budget": [r["budget"] for r in done],
            "n_train": done[0]["n_train"],
            "n_test_normal": done[0]["n_test_normal"],
            "n_test_anomaly": done[0]["n_test_anomaly"],
        }
    report = {
        "seeds": list(seeds),
        "quick": args.quick,
        "excluded": args.exclude,
        "targets": TARGETS,
        "settings": per_setting,
        "analysis": analyse(per_setting, settings),
        "seconds": round(time.perf_counter() - started, 1),
        "machine": machine(),
    }
    (out / "tabular_suite.json").write_text(json.dumps(report, indent=1) + "\n")
    write_markdown(out / "tabular_suite.md", report, settings)
    plot_ranks(out / "tabular_suite.png", report["analysis"])
    print(json.dumps(report["analysis"], indent=1))


if __name__ == "__main__":
    main()
