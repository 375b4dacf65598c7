"""The demo's output folder, its log lines and its cached training runs.

Runs are cached in ``DIR/runs/<name>`` with the recipe that made them (``demo_recipe.json``): a
rerun with the same recipe reuses the checkpoint, ``retrain=True`` trains again.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from diffcore.pipeline import Pipeline

__all__ = ["jsonable", "log", "prepare_out", "train_or_reuse"]


def log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def prepare_out(out: str | Path) -> Path:
    """Create the folder ``out`` (and its parents) and check that a file can be written in it.

    Raises ValueError naming the folder when it is a file, cannot be created or is not writable.
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {str(path)!r} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ValueError(f"output folder '{path}' is not writable ({exc.strerror or exc})") from None
    return path


def train_or_reuse(name: str, recipe: dict[str, Any], runs: Path, retrain: bool) -> tuple[Pipeline, dict[str, Any]]:
    """Train ``recipe`` into ``runs/name`` unless that folder holds a checkpoint of the same recipe."""
    import diffcore

    folder = runs / name
    stamp = folder / "demo_recipe.json"
    if not retrain and stamp.is_file() and (folder / "checkpoint.safetensors").is_file():
        try:
            same = json.loads(stamp.read_text()) == json.loads(json.dumps(recipe))
        except json.JSONDecodeError:
            same = False
        if same:
            log(f"{name}: reusing the trained checkpoint in {folder}")
            return Pipeline.load(folder), {"reused": True, "seconds": None}
    if folder.exists():
        shutil.rmtree(folder)  # a different recipe or a partial run: start clean
    args = dict(recipe)
    steps = args.pop("steps")
    log(f"{name}: training {args['model']} for {steps} iterations -> {folder}")
    start = time.perf_counter()
    pipe = diffcore.train(
        args.pop("dataset"),
        args.pop("model"),
        steps,
        folder,
        checkpoint_every=steps,
        log_every=max(1, min(50, steps // 4)),
        **args,
    )
    seconds = time.perf_counter() - start
    stamp.write_text(json.dumps(recipe, indent=2) + "\n")
    return pipe, {"reused": False, "seconds": round(seconds)}


def jsonable(v: Any) -> Any:
    """``json.dumps``'s ``default``: numpy scalars as Python numbers, anything else as its string
    (a float that is not finite is written as null)."""
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return str(v)
