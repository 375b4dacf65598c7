"""What ``diffcore.train`` does differently for a table (issue #19 point 5): the defaults of
:class:`diffcore.DiffusionDetector`.

For a tabular dataset every option the caller leaves out comes from the table recipe: the cosine
schedule of :mod:`diffcore.evaluation.recipes` and its learning rate, EMA and warm-up, the batch
size and (for the ``mlp`` model) width and depth of
:func:`~diffcore.tasks.anomaly.tables.table_budget`. Without ``steps`` the budget's step cap
applies and training stops early: 10% of the training rows are held out (seeded by the run's
seed; none below :data:`~diffcore.tasks.anomaly.fit.MIN_ROWS` rows) and the EMA weights with the
lowest held-out reconstruction error are kept (:func:`~diffcore.tasks.anomaly.fit.train_early_stopped`,
the loop the detector uses). Each round's error is a ``heldout_error`` record of
``metrics.jsonl``; the run's ``early_stopping`` section (config.json and the checkpoint) states the
split, cap, rounds and the step kept. Given ``steps`` train exactly that many steps on all
training rows; a resumed run leaves the same rows out with the same budget but never stops early
(it trains to its step cap). The scaled training
rows (at most :data:`MAX_REFERENCE_ROWS`, a seeded subset beyond) are saved as
``train_rows.safetensors`` for scores that need normal reference rows at scoring time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffcore.training.checkpoint import atomic_write_json, save_checkpoint
from diffcore.training.metrics_file import append_metrics

__all__ = ["MAX_REFERENCE_ROWS", "REFERENCE_FILE", "TablePlan", "plan_table", "save_reference", "train_table"]

VALIDATION_FRACTION = 0.1
MAX_REFERENCE_ROWS = 10_000  # scaled training rows kept in the run folder (float32, D values each)
REFERENCE_FILE = "train_rows.safetensors"


@dataclass
class TablePlan:
    """How a table run trains: TrainConfig ``options`` (the caller's win), the schedule, the
    model-config defaults, the held-out rows (None: a fixed budget) and the run record."""

    options: dict[str, Any]
    steps: int  # the steps given, or the budget's cap
    schedule: str
    model_defaults: dict[str, Any]
    held_out: Tensor | None
    rows: Tensor  # every training row (model space), held-out ones included: the reference rows
    record: dict[str, Any] = field(default_factory=dict)


def plan_table(
    data: Any, model: str, *, steps: int | None, config: dict[str, Any], model_config: dict[str, Any], resume: bool
) -> tuple[Any, TablePlan]:
    """(the dataset to train on, the plan) for a tabular ``data``: without ``steps`` the training
    split less its held-out rows, which a fresh run stops on and a ``resume`` leaves out again
    (same seed, same rows, same budget) while it trains to the cap."""
    from diffcore.evaluation.recipes import TABLE_SCHEDULE, TABLE_TRAIN
    from diffcore.tasks.anomaly.fit import budget_for, held_out_split, table_train_options

    seed = int(config.get("seed", 0))
    plan_rows = data.train  # every training row: the held-out ones and the stored reference rows
    keep, out = held_out_split(len(data.train), VALIDATION_FRACTION, seed, enabled=steps is None)
    given = {"steps": steps, "batch_size": config.get("batch_size")}
    if model == "mlp":
        given.update(hidden=model_config.get("hidden"), layers=model_config.get("depth"))
    budget = budget_for(len(keep), int(data.train.shape[1]), given)
    stops = len(out) > 0 and not resume
    # without steps the stopping point is not known in advance: a constant rate (a resumed run too)
    options = table_train_options(budget, held=steps is None, lr=config.get("lr", TABLE_TRAIN["lr"]), seed=seed)
    options = {**options, **config}
    if not stops:  # the steps given, or the whole cap (too few rows to hold any out, or a resumed run)
        options["steps"] = budget["steps"]
    defaults = {"hidden": budget["hidden"], "depth": budget["layers"]} if model == "mlp" else {}
    record: dict[str, Any] = {"held_out_rows": len(out), "cap": budget["steps"], "eval_every": budget["eval_every"]}
    record.update(patience=budget["patience"], fraction=VALIDATION_FRACTION if len(out) else 0.0)
    if len(out):
        labels = data.train_labels[keep] if data.train_labels is not None else None
        data = dataclasses.replace(data, train=data.train[keep].contiguous(), train_labels=labels)
    held_out = plan_rows[out] if stops else None
    return data, TablePlan(options, budget["steps"], TABLE_SCHEDULE, defaults, held_out, plan_rows, record)


def train_table(trainer: Any, plan: TablePlan, *, resume: bool, overwrite: bool) -> None:
    """Train a table run: the early-stopped rounds of ``plan`` (or one fixed budget), then the
    reference rows and the run's ``early_stopping`` record written to its folder."""
    from diffcore.tasks.anomaly import defaults
    from diffcore.tasks.anomaly.fit import recon_error, train_early_stopped

    out = trainer.out if trainer.rank == 0 else None
    if plan.held_out is None:
        trainer.train(resume=resume, overwrite=overwrite)
        done = {"steps_trained": int(trainer.step), "best_step": int(trainer.step), "stopped_early": False}
    else:  # a fresh run (plan_table holds no rows out of a resumed one)

        def log(step: int, error: float, best: bool) -> None:
            if out is not None:
                append_metrics(out / "metrics.jsonl", {"step": step, "heldout_error": error, "best": best})

        error = recon_error(plan.held_out, int(trainer.config.seed), defaults.DEPTHS)
        done = train_early_stopped(
            trainer, steps=plan.record["cap"], eval_every=plan.record["eval_every"], patience=plan.record["patience"],
            held_out_error=error, on_round=log,
        )  # fmt: skip
    trainer.run["early_stopping"] = {**plan.record, **done}
    trainer.save()  # the kept EMA weights (and the record) in the checkpoint
    if out is not None:
        atomic_write_json(out / "config.json", trainer.run)
        save_reference(out, plan.rows, int(trainer.config.seed))


def save_reference(out: Path, rows: Tensor, seed: int) -> Path:
    """The scaled training rows (at most :data:`MAX_REFERENCE_ROWS`, a seeded subset beyond) as
    ``out/train_rows.safetensors``."""
    rows = rows.detach().float().cpu()
    if len(rows) > MAX_REFERENCE_ROWS:
        pick = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:MAX_REFERENCE_ROWS]
        rows = rows[pick.sort().values]
    return save_checkpoint(out / REFERENCE_FILE, {"rows": rows}, {"kind": "reference_rows", "rows": len(rows)})
