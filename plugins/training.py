"""Built-in plugin: the ``diffcore train`` command (every TrainConfig field is a flag)."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from diffcore.plugins import hookimpl
from diffcore.training.config import TrainConfig


def _key_values(pairs: list[str] | None, flag: str) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}``; values are JSON when they parse as JSON."""
    out: dict[str, Any] = {}
    for item in pairs or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _train_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`diffcore.train`: ``--config`` JSON, overridden by flags."""
    base: dict[str, Any] = {}
    if args.config is not None:
        try:
            base = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"--config {args.config}: {exc}") from exc
        if not isinstance(base, dict):
            raise ValueError(f"--config {args.config}: expected a JSON object")
    cli_values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
    merged = {**base, **cli_values}
    for key in (
        "dataset",
        "model",
        "schedule",
        "prediction",
        "sampler",
        "out",
        "task_condition",
        "captions",
        "text_dropout",
    ):
        if getattr(args, key) is not None:
            merged[key] = getattr(args, key)
    for key, flag in (
        ("dataset_options", "dataset_opt"),
        ("model_config", "model_opt"),
        ("schedule_options", "schedule_opt"),
        ("task_condition_options", "task_condition_opt"),
    ):
        extra = _key_values(getattr(args, flag), f"--{flag.replace('_', '-')}")
        if extra:
            merged[key] = {**merged.get(key, {}), **extra}
    merged.setdefault("out", "runs/default")
    return merged


def _cmd_train(args: argparse.Namespace) -> int:
    from diffcore.training.api import train

    options = _train_options(args)
    pipe = train(resume=args.resume, **options)
    out = Path(options["out"])
    print(
        json.dumps(
            {
                "out": str(out),
                "checkpoint": str(out / "checkpoint.safetensors"),
                "model": pipe.run["model"]["name"],
                "steps": pipe.run["train"]["steps"],
            }
        )
    )
    return 0


@hookimpl
def register_commands(cli: Any) -> None:
    p = cli.add_command("train", "train a diffusion model on a registered dataset")
    p.add_argument("--dataset", help="dataset name (diffcore list datasets), default digits")
    p.add_argument("--dataset-opt", action="append", metavar="KEY=VALUE", help="dataset option (repeatable)")
    p.add_argument("--model", help="model name (diffcore list models), default unet")
    p.add_argument("--model-opt", action="append", metavar="KEY=VALUE", help="model config entry (repeatable)")
    p.add_argument("--schedule", help="noise schedule name, default linear")
    p.add_argument("--schedule-opt", action="append", metavar="KEY=VALUE", help="schedule option (repeatable)")
    p.add_argument("--prediction", help="epsilon | sample | v_prediction | edm")
    p.add_argument("--sampler", help="default sampler stored with the model")
    p.add_argument("--out", help="run folder (checkpoint, config, metrics, loss curve)")
    p.add_argument("--task-condition", help="paired translation: super_resolution | inpainting")
    p.add_argument("--task-condition-opt", action="append", metavar="KEY=VALUE", help="e.g. factor=2")
    p.add_argument("--captions", help="caption set for text-to-image training (e.g. digits)")
    p.add_argument("--text-dropout", type=float, default=None, help="null-text dropout probability")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    p.add_argument("--config", help="JSON file with any of these options (command-line flags win)")
    for f in fields(TrainConfig):
        kind = {"int": int, "float": float, "bool": lambda s: s.lower() in ("1", "true", "yes", "on"), "str": str}[
            f.type if isinstance(f.type, str) else f.type.__name__
        ]
        p.add_argument(
            f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=None, help=f"TrainConfig.{f.name}"
        )
    p.set_defaults(func=_cmd_train)
