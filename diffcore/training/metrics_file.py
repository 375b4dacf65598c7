"""A run's ``metrics.jsonl``: one JSON record per line, ``{"step", "loss", "lr", "images_per_s"}``
every ``log_every`` steps and ``{"checkpoint": step, ...}`` at every checkpoint.

Reading skips a line that does not parse (the torn last line of a killed run) with a warning;
:func:`truncate_metrics` keeps the records up to the step a resumed run restarts from, so a resume
never duplicates steps; :func:`plot_loss_curve` draws the loss.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from diffcore.training.checkpoint import atomic_write_bytes, temporary_path

__all__ = ["append_metrics", "plot_loss_curve", "read_metrics", "record_step", "truncate_metrics"]


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of ``path`` (none when it does not exist); lines that are not a JSON object,
    such as the torn last line of a killed run, are skipped with a warning."""
    path = Path(path)
    if not path.exists():
        return []
    records, torn = [], []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            torn.append(number)
    if torn:
        warnings.warn(
            f"{path}: skipped {len(torn)} unreadable line(s) (line {torn[0]}: torn by a killed run?)", stacklevel=2
        )
    return records


def record_step(record: dict[str, Any]) -> int | None:
    """The training step a record belongs to (loss records' ``step``, checkpoint records' ``checkpoint``)."""
    step = record.get("step", record.get("checkpoint"))
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(path: str | Path, step: int) -> int:
    """Keep the records of steps <= ``step`` (and drop unreadable lines), rewriting ``path``
    atomically; return how many lines were dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    lines = sum(1 for line in path.read_text(errors="replace").splitlines() if line.strip())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the caller reports what was dropped
        kept = [r for r in read_metrics(path) if (s := record_step(r)) is not None and s <= step]
    if len(kept) < lines:
        atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in kept).encode())
    return lines - len(kept)


def plot_loss_curve(metrics: Path, png: Path) -> None:
    """Loss vs step from metrics.jsonl (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(metrics) if "loss" in r and record_step(r) is not None]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.set_title("diffcore training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with temporary_path(png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
