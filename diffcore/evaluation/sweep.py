"""Comparing samplers and sigma schedules on a trained model (issue #16): the configurations to
run, the model evaluations each one took, and which reaches a target FD in the fewest.

A configuration ("run") is a dict with ``sampler``, ``steps`` and ``guidance_scale`` (None or 1:
the conditional model, one pass per call; 0: the unconditional model), and optionally
``schedule`` (a sigma spacing from :func:`sigma_schedules`, default :data:`TIMESTEPS`: the model's
own schedule), ``sigmas`` (explicit VE levels instead, e.g. :func:`uniform_flow_sigmas`) and
``sampler_options``. Cost is counted in model evaluations per image (rows
through the network: a guided call costs two), not in steps: heun, dpm_2 and dpmpp_sde take about
two per step, pndm adds a Runge-Kutta warm-up, and dpm_adaptive chooses its own steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from diffcore.plugins import available, get
from diffcore.schedules import Schedule, make_schedule

__all__ = [
    "ADAPTIVE",
    "TIMESTEPS",
    "EvaluationCounter",
    "fd_target",
    "fewest_evaluations",
    "generate_run",
    "is_cfg_pp",
    "model_calls",
    "run_cost",
    "run_sweep",
    "sigma_schedules",
    "stepped_samplers",
    "uniform_flow_sigmas",
    "with_schedule",
]

TIMESTEPS = "timesteps"  # the model's own schedule: noise levels of its (spaced) training timesteps
ADAPTIVE = "dpm_adaptive"  # chooses its own steps: compared by tolerance (rtol), not by step count


def is_cfg_pp(sampler: str) -> bool:
    """Whether ``sampler`` is a CFG++ sampler (Chung et al. 2024; ``*_cfg_pp``), whose guidance
    scale is lambda (~0.3-1.5) and which renoises with the unconditional x0 even at scale 1."""
    return sampler.endswith("_cfg_pp")


def stepped_samplers(*, cfg_pp: bool = True) -> list[str]:
    """The registered samplers that take a step count (all but :data:`ADAPTIVE`), with or without
    the CFG++ ones."""
    return [s for s in available("samplers") if s != ADAPTIVE and (cfg_pp or not is_cfg_pp(s))]


def sigma_schedules(schedule: Schedule) -> dict[str, Schedule]:
    """``schedule`` respaced by every registered sigma spacing (``karras``, ``exponential``, ...:
    each schedule name that rebuilds this one with ``sigma_spacing=name``), by name; base noise
    schedules (``linear``, ``edm``, ...) are not spacings and are left out."""
    config = schedule.config()
    out: dict[str, Schedule] = {}
    for name in available("schedules"):
        try:
            spaced = make_schedule(**{**config, "sigma_spacing": name})
        except (TypeError, ValueError, KeyError):
            continue
        if getattr(spaced, "sigma_spacing", TIMESTEPS) == name:
            out[name] = spaced
    return out


def uniform_flow_sigmas(steps: int) -> Tensor:
    """VE noise levels (``steps + 1``, float64) of the flow times ``t = 1, 1 - 1/steps, ..., 0``
    (sigma = t / (1 - t); inf at t = 1): ``steps`` equal steps in t. The flow schedule's default
    plan (diffusers' FlowMatchEuler) spaces t from 1 to 1/T and adds a last step to 0, so its
    ``steps``-th step only covers [1/T, 0]."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be an integer >= 1")
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return torch.where(t >= 1, torch.full_like(t, math.inf), t / (1 - t))


def with_schedule(pipe: Any, schedule: Schedule) -> Any:
    """A Pipeline sharing ``pipe``'s model, parameterization and run config, sampling on ``schedule``."""
    return type(pipe)(
        pipe.model, schedule, pipe.param, run=pipe.run, sampler=pipe.sampler, steps=pipe.steps, set_eval=False
    )


class EvaluationCounter:
    """Counts the rows (images) passed through ``model`` while the ``with`` block runs (a forward
    pre-hook): a guided call of a batch of B counts 2B."""

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"EvaluationCounter needs an nn.Module, got {type(model).__name__}")
        self.model, self.count = model, 0
        self._hook: RemovableHandle | None = None

    def _add(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.count += int(args[0].shape[0])

    def __enter__(self) -> EvaluationCounter:
        self._hook = self.model.register_forward_pre_hook(self._add)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


def model_calls(
    pipe: Any,
    sampler: str,
    steps: int,
    *,
    schedule: str = TIMESTEPS,
    timestep_spacing: str = "trailing",
    sampler_options: dict[str, Any] | None = None,
) -> int:
    """Denoiser calls of one unguided run of ``sampler`` for ``steps`` on ``pipe``'s schedule (or
    its sigma spacing ``schedule``), counted on a stand-in model that returns zeros. Exact for the
    fixed-step samplers; dpm_adaptive's count depends on the model and is only a lower bound here."""
    calls = [0]

    def zeros(x: Tensor, t: Tensor, *rest: Any) -> Tensor:
        calls[0] += 1
        return torch.zeros_like(x)

    sched = pipe.schedule if schedule == TIMESTEPS else sigma_schedules(pipe.schedule)[schedule]
    stand_in = type(pipe)(zeros, sched, pipe.param, run=pipe.run, set_eval=False)
    spacing = {"timestep_spacing": timestep_spacing} if schedule == TIMESTEPS else {}
    stand_in.sample(torch.ones(1, 1), sampler=sampler, steps=steps, seed=0, sampler_options=sampler_options, **spacing)
    return calls[0]


def run_cost(pipe: Any, run: dict[str, Any], *, timestep_spacing: str = "trailing", adaptive_calls: int = 40) -> int:
    """Model evaluations per image that ``run`` will take: :func:`model_calls` (``adaptive_calls`` for
    :data:`ADAPTIVE`, which decides at run time), twice when guided (:func:`generate_run`'s passes);
    0 when the sampler or schedule refuses the run."""
    if run["sampler"] == ADAPTIVE:
        calls = adaptive_calls
    else:
        try:
            calls = model_calls(
                pipe,
                run["sampler"],
                run["steps"],
                schedule=run.get("schedule", TIMESTEPS),
                timestep_spacing=timestep_spacing,
                sampler_options=run.get("sampler_options"),
            )
        except ValueError:
            return 0
    w = run.get("guidance_scale")
    one_pass = w is None or (w in (0.0, 1.0) and not is_cfg_pp(run["sampler"]))
    return calls if one_pass else 2 * calls


def generate_run(
    pipe: Any,
    run: dict[str, Any],
    labels: Tensor,
    *,
    seed: int = 0,
    batch_size: int = 500,
    timestep_spacing: str = "trailing",
) -> tuple[Tensor, dict[str, Any]]:
    """Samples (one per label, images in [-1, 1]) of the configuration ``run`` and its facts:
    ``image_evals`` (model rows), ``evals_per_image``, ``seconds`` and, for a sampler that takes an
    ``info`` option (dpm_adaptive: ``nfe``, ``steps``, ``n_accept``, ``n_reject``), that of the last batch.

    Every run with the same ``seed`` starts from the same noise. Guidance 1 (or None) is the
    conditional model in one pass and 0 the unconditional one (the null label), except for the
    CFG++ samplers, which always take the unconditional pass too.
    """
    w = run.get("guidance_scale")
    given: Tensor | None = labels
    if w is not None and not is_cfg_pp(run["sampler"]) and w in (0.0, 1.0):
        given, w = (None if w == 0.0 else labels), None
    schedule = run.get("schedule", TIMESTEPS)
    target = pipe if schedule == TIMESTEPS else with_schedule(pipe, sigma_schedules(pipe.schedule)[schedule])
    plan: dict[str, Any] = {"timestep_spacing": timestep_spacing} if schedule == TIMESTEPS else {}
    if run.get("sigmas") is not None:
        plan = {"sigmas": run["sigmas"]}
    options = dict(run.get("sampler_options") or {})
    info: dict[str, Any] = {}
    if "info" in (getattr(get("samplers", run["sampler"]), "options", None) or {}):
        options["info"] = info  # dpm_adaptive reports its model evaluations here
    start = time.perf_counter()
    with EvaluationCounter(pipe.model) as counter:
        x = target.generate(
            len(labels),
            sampler=run["sampler"],
            steps=run["steps"],
            class_labels=given,
            guidance_scale=w,
            seed=seed,
            batch_size=batch_size,
            sampler_options=options or None,
            **plan,
        )
    facts: dict[str, Any] = {
        "image_evals": counter.count,
        "evals_per_image": counter.count / len(labels),
        "seconds": round(time.perf_counter() - start, 3),
    }
    if info:
        facts["info"] = info
    return x, facts


def run_sweep(
    pipe: Any,
    runs: Sequence[dict[str, Any]],
    labels: Tensor,
    score: Callable[[Tensor, Tensor], dict[str, Any]],
    *,
    seed: int = 0,
    batch_size: int = 500,
    timestep_spacing: str = "trailing",
    on_row: Callable[[int, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Generate and ``score(samples, labels)`` every run; one row each (the run, its facts and
    scores). A run the sampler or schedule refuses (ValueError) gives a row with its ``error``
    instead of scores. ``on_row(i, row)`` is called after each run."""
    rows = []
    for i, run in enumerate(runs):
        row: dict[str, Any] = {"schedule": TIMESTEPS, **run}
        try:
            x, facts = generate_run(
                pipe, run, labels, seed=seed, batch_size=batch_size, timestep_spacing=timestep_spacing
            )
        except ValueError as exc:
            row["error"] = str(exc)
        else:
            row.update(facts, **score(x, labels))
        rows.append(row)
        if on_row is not None:
            on_row(i, row)
    return rows


def fd_target(
    rows: Sequence[dict[str, Any]], sampler: str, steps: int, factor: float = 1.1, *, metric: str = "fd"
) -> dict[str, Any]:
    """The target ``factor`` x the ``metric`` of ``sampler`` at ``steps`` on the model's own schedule
    (the first such scored row): ``{"sampler", "steps", "factor", "reference", "target"}``."""
    for r in rows:
        if (r["sampler"], r.get("schedule", TIMESTEPS), r["steps"]) == (sampler, TIMESTEPS, steps) and metric in r:
            ref = float(r[metric])
            return {"sampler": sampler, "steps": steps, "factor": factor, "reference": ref, "target": factor * ref}
    raise ValueError(f"no scored row of sampler {sampler!r} at steps={steps} on the {TIMESTEPS!r} schedule")


def fewest_evaluations(rows: Sequence[dict[str, Any]], target: float, *, metric: str = "fd") -> list[dict[str, Any]]:
    """Per (sampler, schedule) group of scored ``rows``, the row with the fewest ``evals_per_image``
    whose ``metric`` is <= ``target`` (``reached: True``), cheapest first; then each group that
    never reaches it, with its best row (``reached: False``), best first."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if metric in r:
            groups.setdefault((r["sampler"], r.get("schedule", TIMESTEPS)), []).append(r)
    reached, missed = [], []
    for group in groups.values():
        good = [r for r in group if r[metric] <= target]
        if good:
            reached.append({**min(good, key=lambda r: (r["evals_per_image"], r[metric])), "reached": True})
        else:
            missed.append({**min(group, key=lambda r: r[metric]), "reached": False})
    reached.sort(key=lambda r: (r["evals_per_image"], r[metric]))
    missed.sort(key=lambda r: r[metric])
    return reached + missed
