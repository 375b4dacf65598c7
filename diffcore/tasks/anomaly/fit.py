"""Training a table model with early stopping on held-out normal rows (issue #19 point 5): the one
loop :class:`diffcore.DiffusionDetector` and ``diffcore train --dataset tabular`` share.

:func:`held_out_split` sets a seeded share of the training rows aside (none with fewer than
``MIN_ROWS`` rows); :func:`budget_for` is :func:`~diffcore.tasks.anomaly.tables.table_budget` for
the rows that remain, with the sizes a caller gives in place of the derived ones;
:func:`train_early_stopped` trains a :class:`~diffcore.training.trainer.Trainer` in rounds of
``eval_every`` steps up to the step cap, measures the held-out error of the EMA weights after
each round and keeps the best of them, stopping after ``patience`` rounds without a 0.1%
improvement. The learning rate should be constant after the warm-up (the stopping point is not
known in advance).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from diffcore.tasks.anomaly.tables import table_budget

__all__ = ["MIN_ROWS", "budget_for", "held_out_split", "recon_error", "table_train_options", "train_early_stopped"]

MIN_ROWS = 20  # fewer training rows than this: no held-out split, the whole step cap is trained
IMPROVEMENT = 1e-3  # a round counts as better when its held-out error is lower by this share


def held_out_split(n: int, fraction: float, seed: int, enabled: bool = True) -> tuple[Tensor, Tensor]:
    """(train, held-out) row indices of ``n`` rows: a seeded permutation, its first
    ``round(fraction * n)`` held out (none when not ``enabled`` or ``n < MIN_ROWS``)."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation_fraction={fraction!r} must be in (0, 1)")
    held = int(round(fraction * n)) if enabled and n >= MIN_ROWS else 0
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[held:], order[:held]


def budget_for(n_rows: int, dim: int, given: dict[str, int | None]) -> dict[str, int]:
    """:func:`table_budget` of ``n_rows`` x ``dim`` with the values of ``given`` (keys ``steps``,
    ``batch_size``, ``hidden``, ``layers``; None = derived) in place of the derived ones."""
    budget = table_budget(n_rows, dim)
    budget.update({k: int(v) for k, v in given.items() if v is not None})
    budget["eval_every"] = min(budget["eval_every"], budget["steps"])
    return budget


def table_train_options(budget: dict[str, int], *, held: bool, lr: float, seed: int) -> dict[str, Any]:
    """:class:`~diffcore.training.config.TrainConfig` fields of the table recipe
    (:data:`~diffcore.evaluation.recipes.TABLE_TRAIN`'s EMA and warm-up) for ``budget``: with
    held-out rows (``held``) the first round's steps and a constant rate after the warm-up,
    else the whole cap on the recipe's schedule."""
    from diffcore.evaluation.recipes import TABLE_TRAIN

    recipe = {k: v for k, v in TABLE_TRAIN.items() if k not in ("steps", "batch_size", "lr", "warmup_steps")}
    if held:  # the stopping point is not known in advance: constant rate after the warm-up
        recipe["lr_schedule"] = "constant"
    steps = budget["steps"]
    return {
        "steps": budget["eval_every"] if held else steps,
        "batch_size": budget["batch_size"],
        "lr": lr,
        "warmup_steps": min(TABLE_TRAIN["warmup_steps"], steps // 10),
        "seed": seed,
        **recipe,
    }


def recon_error(rows: Tensor, seed: int, depths: Any, repeats: int = 2) -> Callable[[Any], float]:
    """A held-out error for :func:`train_early_stopped`: the mean absolute one-shot reconstruction
    error (:func:`~diffcore.tasks.anomaly.reconstruction_scores`, ddim 1 step) of ``rows`` at
    ``depths``, ``repeats`` draws each, with the noise of ``seed``."""
    from diffcore.tasks.anomaly.scores import reconstruction_scores

    def error(pipe: Any) -> float:
        x = rows.to(pipe.device, torch.float32)
        scores = reconstruction_scores(
            pipe, x, depth=list(depths), repeats=repeats, error="abs", sampler="ddim", steps=1, seed=seed,
            batch_size=max(1, len(x)), progress=False,
        )  # fmt: skip
        return float(scores.scores.mean())

    return error


def train_early_stopped(
    trainer: Any,
    *,
    steps: int,
    eval_every: int,
    patience: int,
    held_out_error: Callable[[Any], float] | None,
    on_round: Callable[[int, float, bool], None] | None = None,
) -> dict[str, Any]:
    """Train ``trainer`` (a :class:`~diffcore.training.trainer.Trainer` whose ``config.steps`` is
    the first round's end) to at most ``steps``; with ``held_out_error`` (a function of the EMA
    weights' :class:`~diffcore.pipeline.Pipeline`, one-shot ddim), keep the EMA weights with the
    lowest error (loaded into ``trainer.ema`` at the end) and stop after ``patience`` rounds of
    ``eval_every`` steps without improvement. ``on_round(step, error, best)`` sees each round.
    Returns ``steps_trained``, ``best_step``, ``best_error`` (None without held-out rows) and
    ``stopped_early``."""
    from diffcore.pipeline import Pipeline

    best: tuple[float, dict[str, Any], int] = (math.inf, {}, 0)
    stale = 0
    obj = trainer.objective
    while True:
        trainer.train()
        if held_out_error is None:
            break
        pipe = Pipeline(trainer.ema, obj.schedule, obj.param, run=trainer.run, sampler="ddim", steps=1)
        loss = held_out_error(pipe)
        if not math.isfinite(loss) and not best[1]:  # no weights to fall back on (a later one counts as stale)
            raise FloatingPointError(f"held-out error {loss!r} at step {trainer.step}: training diverged")
        improved = loss < best[0] * (1 - IMPROVEMENT)
        if improved:
            best, stale = (loss, copy.deepcopy(trainer.ema.state_dict()), trainer.step), 0
        else:
            stale += 1
        if on_round is not None:
            on_round(int(trainer.step), float(loss), improved)
        if stale >= patience or trainer.step >= steps:
            trainer.ema.load_state_dict(best[1])
            break
        trainer.config.steps = min(steps, trainer.step + eval_every)
    held = held_out_error is not None
    return {
        "steps_trained": int(trainer.step),
        "best_step": int(best[2] if held else trainer.step),
        "best_error": float(best[0]) if held else None,
        "stopped_early": bool(held and trainer.step < steps),
    }
