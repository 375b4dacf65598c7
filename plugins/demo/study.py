"""The sampler study behind ``make demo`` / ``diffcore demo --out DIR``.

Accuracy of every deterministic built-in sampler on closed-form data: the exact epsilon-model of
an 8-Gaussian ring (:class:`diffcore.analytic.GaussianMixture`) on the EDM schedule, sampled
through explicit Karras sigmas 80 -> 0.05 (rho 7, Karras et al. 2022 eq. 5) so every sampler
ends at the same positive level, where an RK4 solution of the probability-flow ODE is the
exact answer. The error is the RMS over points of the Euclidean distance to that solution; the
estimated order is minus the least-squares slope of log error vs log steps over the finest
step counts. Cost is also shown as model evaluations (heun and dpm_2 take two per step, pndm a
Runge-Kutta warm-up), next to dpm_adaptive at several tolerances (it picks its own steps). The
CFG++ samplers are left out: without guidance they are euler and dpmpp_2m. The stochastic
samplers are shown, not scored: a scatter of their samples on the discrete "linear" schedule next
to real data.

Writes ``samplers.png`` (error vs steps and vs model evaluations), ``samples.png`` (scatter) and
``samplers.json``.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import diffcore
from diffcore import ops
from diffcore.analytic import GaussianMixture, exact_model
from diffcore.evaluation import adaptive_errors, estimated_order, mixture_log_density, rms_error, sampler_errors
from diffcore.schedules import EDMSchedule
from diffcore_plugins.demo.runs import prepare_out

DETERMINISTIC = ("ddim", "euler", "heun", "dpmpp_2m", "unipc", "lms", "dpm_2", "dpmpp_2s", "deis", "ipndm", "pndm")
# dpmpp_2m (deterministic) for reference, then every stochastic sampler but the CFG++ one
GALLERY = (
    "dpmpp_2m",
    "euler_ancestral",
    "dpmpp_2m_sde",
    "ddpm",
    "dpm_2_ancestral",
    "dpmpp_2s_ancestral",
    "dpmpp_3m_sde",
    "dpmpp_sde",
    "lcm",
    "tcd",
)
ADAPTIVE_RTOLS = (0.1, 0.03, 0.01, 0.003, 0.001)
ADAPTIVE_ATOL = 1e-4  # small enough that rtol sets the step size on this data (|x| ~ 2)
SIGMA_MAX, SIGMA_MIN, RHO = 80.0, 0.05, 7.0
RING: dict[str, Any] = {"k": 8, "radius": 2.0, "std": 0.25, "dim": 2}


@dataclass(frozen=True)
class StudyConfig:
    """Sizes of the study; the default is the full ``make demo`` run."""

    points: int = 512  # x_T points integrated by every sampler
    steps: tuple[int, ...] = (5, 10, 20, 50, 100)
    finest: int = 3  # step counts the order is fitted over (the largest ones)
    reference_steps: int = 400  # RK4 steps of the exact ODE solution
    gallery_points: int = 1000
    gallery_steps: int = 20
    seed: int = 0


QUICK = StudyConfig(points=128, reference_steps=200, gallery_points=300)


def accuracy_study(gm: GaussianMixture, cfg: StudyConfig, tick: Callable[[str], None]) -> dict[str, Any]:
    """Errors of every deterministic sampler against the RK4 solution, per step count."""
    sched = EDMSchedule(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO)
    x_T = torch.randn(cfg.points, gm.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(cfg.seed))
    tick("reference ODE (half steps)")
    coarse = gm.ode_solution(x_T * SIGMA_MAX, SIGMA_MAX, SIGMA_MIN, steps=cfg.reference_steps // 2)
    tick("reference ODE")
    ref = gm.ode_solution(x_T * SIGMA_MAX, SIGMA_MAX, SIGMA_MIN, steps=cfg.reference_steps)
    errors: dict[str, list[float]] = {}
    evaluations: dict[str, list[int]] = {}
    for name in DETERMINISTIC:
        errors[name], evaluations[name] = sampler_errors(
            gm, sched, name, x_T, ref, cfg.steps, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO, tick=tick
        )
    fit = list(cfg.steps[-cfg.finest :])
    orders = {name: estimated_order(fit, errs[-cfg.finest :]) for name, errs in errors.items()}
    adaptive, adaptive_evals = adaptive_errors(
        gm, sched, x_T, ref, ADAPTIVE_RTOLS, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, atol=ADAPTIVE_ATOL, tick=tick
    )
    return {
        "schedule": {**sched.config(), "prediction": "epsilon", "sigma_to": SIGMA_MIN},
        "reference": {
            "method": "RK4 in log sigma (GaussianMixture.ode_solution)",
            "steps": cfg.reference_steps,
            "error_bound": rms_error(coarse, ref),  # error of the half-step solution; ours is ~16x smaller
        },
        "steps": list(cfg.steps),
        "errors": errors,
        "model_evaluations": evaluations,
        "orders": orders,
        "order_fit_steps": fit,
        "adaptive": {
            "sampler": "dpm_adaptive",
            "rtol": list(ADAPTIVE_RTOLS),
            "atol": ADAPTIVE_ATOL,
            "errors": adaptive,
            "model_evaluations": adaptive_evals,
        },
    }


def gallery(gm: GaussianMixture, cfg: StudyConfig, tick: Callable[[str], None]) -> dict[str, Tensor]:
    """Real samples and samples of the :data:`GALLERY` samplers on the discrete "linear" schedule."""
    sched = diffcore.get("schedules", "linear")(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02)
    model = exact_model(gm, sched, prediction="epsilon")
    out = {"data": gm.sample(cfg.gallery_points, generator=torch.Generator().manual_seed(cfg.seed + 1))}
    for i, name in enumerate(GALLERY):
        tick(f"gallery {name}")
        g = torch.Generator().manual_seed(cfg.seed + 2 + i)
        x_T = torch.randn(cfg.gallery_points, gm.dim, dtype=torch.float64, generator=g)
        out[name] = diffcore.sample(
            model, x_T, sampler=name, steps=cfg.gallery_steps, schedule=sched, prediction="epsilon", generator=g
        )
    return out


def _slope_guides(ax: Any, x0: float, y0: float) -> None:
    """Order 1, 2, 3 slope guides fanning out of (x0, y0) over a factor 2.5 in x."""
    x1 = x0 * 2.5
    for p in (1, 2, 3):
        y1 = y0 * (x0 / x1) ** p
        ax.loglog([x0, x1], [y0, y1], color="0.5", ls=":", lw=1.2)
        ax.text(x1 * 1.04, y1, f"order {p}", ha="left", va="center", fontsize=8, color="0.35")


def plot_errors(study: dict[str, Any], path: Path) -> None:
    """Error vs steps (with the estimated orders) and error vs model evaluations (with dpm_adaptive)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    steps = study["steps"]
    fig, (ax, cx) = plt.subplots(1, 2, figsize=(14.0, 6.6), dpi=110)
    styles = {"ddim": {"ls": "--", "mfc": "none", "ms": 9, "zorder": 3}}  # ddim coincides with euler: keep both visible
    colors = plt.get_cmap("tab20")
    for i, (name, errs) in enumerate(study["errors"].items()):
        kw = {
            "marker": "osD^vP<>hXp"[i % 11],
            "ms": 5,
            "lw": 1.5,
            "color": colors((2 * i) % 20 + (i // 10) % 2),
            **styles.get(name, {}),
        }
        ax.loglog(steps, errs, label=f"{name} ({study['orders'][name]:.2f})", **kw)
        cx.loglog(study["model_evaluations"][name], errs, label=name, **kw)
    ad = study["adaptive"]
    cx.loglog(ad["model_evaluations"], ad["errors"], "k*-", ms=9, lw=1.5, label="dpm_adaptive (rtol)")
    for n, e, r in zip(ad["model_evaluations"], ad["errors"], ad["rtol"]):
        cx.annotate(f"{r:g}", (n, e), textcoords="offset points", xytext=(4, 4), fontsize=7)
    lo = min(min(e) for e in study["errors"].values())
    _slope_guides(ax, steps[0], lo * 20)  # fanning out of the empty lower-left corner
    ax.set_xticks(steps)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("sampler steps n")
    cx.xaxis.set_major_formatter(ScalarFormatter())
    cx.set_xlabel("model evaluations (heun, dpm_2: 2 per step; pndm: + warm-up)")
    sched = study["schedule"]
    for a, title in ((ax, "by steps"), (cx, "by cost")):
        a.set_ylabel("RMS error vs exact ODE solution")
        a.set_title(
            f"Sampler accuracy on an 8-Gaussian ring (exact model), {title}\n"
            f"EDM \u03c3 {sched['sigma_max']:g}\u2192{sched['sigma_to']:g}, Karras \u03c1={sched['rho']:g}, "
            f"{study['points']} points",
            fontsize=10,
        )
        a.grid(True, which="major", alpha=0.35)
        a.grid(True, which="minor", alpha=0.12)
    below = {"fontsize": 8, "loc": "upper center", "bbox_to_anchor": (0.5, -0.12), "ncol": 4, "frameon": False}
    ax.legend(title="sampler (estimated order)", title_fontsize=8, **below)
    cx.legend(**below)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_samples(
    samples: dict[str, Tensor], scores: dict[str, float], steps: int, gm: GaussianMixture, path: Path
) -> None:
    import matplotlib.pyplot as plt

    cols = min(len(samples), 4)
    rows = -(-len(samples) // cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(3.3 * cols, 3.5 * rows + 0.4),
        dpi=110,
        sharex=True,
        sharey=True,
        layout="constrained",
        squeeze=False,
    )
    lim = float(gm.means.abs().max() + 5 * gm.stds.max())
    for i, ax in enumerate(axes.flat):
        if i >= len(samples):
            ax.set_visible(False)
            continue
        name, x = list(samples.items())[i]
        pts = x.to(torch.float64).numpy()
        color = "C0" if name == "data" else f"C{i % 10}"
        ax.scatter(pts[:, 0], pts[:, 1], s=3, alpha=0.45, color=color, linewidths=0, rasterized=True)
        ax.scatter(gm.means[:, 0], gm.means[:, 1], marker="+", s=40, color="k", linewidths=1)
        title = "real data" if name == "data" else f"{name}, {steps} steps"
        ax.set_title(f"{title}\nmean log p = {scores[name]:.3f}", fontsize=10)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.grid(True, alpha=0.25)
    fig.suptitle(
        '8-Gaussian ring: real data vs samples of the exact model on the "linear" schedule '
        "(+ = component means; log p under the true mixture)",
        fontsize=11,
    )
    fig.savefig(path)
    plt.close(fig)


def summary_table(study: dict[str, Any]) -> str:
    steps = study["steps"]
    head = "sampler     " + "".join(f"{n:>10d}" for n in steps) + "     order"
    lines = [f"RMS error vs exact ODE solution, by steps ({study['points']} points):", head]
    for name, errs in study["errors"].items():
        lines.append(f"{name:<12}" + "".join(f"{e:>10.2e}" for e in errs) + f"{study['orders'][name]:>10.2f}")
    ad = study["adaptive"]
    lines.append(f"dpm_adaptive (atol {ad['atol']:g}): rtol / model evaluations / RMS error")
    lines += [f"  {r:<8g}{n:>6d}{e:>12.2e}" for r, n, e in zip(ad["rtol"], ad["model_evaluations"], ad["errors"])]
    return "\n".join(lines)


def main(out: str | Path = "outputs/demo", *, quick: bool = False) -> dict[str, Any]:
    """Run the sampler study, write ``samplers.png``, ``samples.png``, ``samplers.json`` into ``out``.

    ``quick=True`` uses fewer points and RK4 steps (for tests); the step counts are the same.
    Returns the JSON content (with the written paths under ``"files"``).
    """
    import matplotlib

    matplotlib.use("Agg")
    from tqdm import tqdm

    path = prepare_out(out)
    cfg = QUICK if quick else StudyConfig()
    gm = GaussianMixture.ring(**RING)
    start = time.perf_counter()
    total = 2 + len(DETERMINISTIC) * len(cfg.steps) + len(ADAPTIVE_RTOLS) + len(GALLERY) + 2
    with tqdm(total=total, desc="sampler study", unit="task", leave=True) as bar:
        started = [False]

        def tick(what: str) -> None:  # called before each task: the previous one is done
            if started[0]:
                bar.update(1)
            started[0] = True
            bar.set_postfix_str(what)

        study = accuracy_study(gm, cfg, tick)
        study = {"data": {"mixture": "GaussianMixture.ring", **RING, "seed": cfg.seed}, "points": cfg.points, **study}
        samples = gallery(gm, cfg, tick)
        scores = {name: float(mixture_log_density(gm, x).mean()) for name, x in samples.items()}
        files = {
            "samplers_png": path / "samplers.png",
            "samples_png": path / "samples.png",
            "samplers_json": path / "samplers.json",
        }
        tick("plot errors")
        plot_errors(study, files["samplers_png"])
        tick("plot samples")
        plot_samples(samples, scores, cfg.gallery_steps, gm, files["samples_png"])
        bar.update(1)
    result = {
        **study,
        "gallery": {
            "schedule": "linear",
            "steps": cfg.gallery_steps,
            "points": cfg.gallery_points,
            "mean_log_density": scores,
        },
        "kernel_backend": ops.backend(),
        "machine": {"processor": platform.processor() or platform.machine(), "torch": torch.__version__},
        "quick": quick,
        "seconds": round(time.perf_counter() - start, 2),
        "files": {k: str(v) for k, v in files.items()},
    }
    files["samplers_json"].write_text(json.dumps(result, indent=2) + "\n")
    print(summary_table(study))
    print(f"kernel backend: {result['kernel_backend']}; {result['seconds']:.1f} s")
    for p in files.values():
        print(f"wrote {p}")
    return result
