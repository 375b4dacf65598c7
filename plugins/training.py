"""Built-in plugin: the ``diffcore train`` command (every TrainConfig field is a flag)."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from diffcore.cli import parse_bool
from diffcore.devices import DEVICE_CHOICES
from diffcore.parameterization import ALIASES, PARAMETERIZATIONS
from diffcore.plugins import hookimpl
from diffcore.training.config import LR_SCHEDULES, TrainConfig
from diffcore.training.objective import TIMESTEP_SAMPLINGS, WEIGHTINGS


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


# TrainConfig field -> (help, choices); a field not listed gets "TrainConfig.<name>"
FIELD_HELP: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "steps": (
        "optimizer steps (a table without --steps: its budget's cap, stopping early on 10%% held-out rows)",
        None,
    ),
    "batch_size": ("samples per step (over all processes)", None),
    "lr": ("peak learning rate (AdamW)", None),
    "warmup_steps": ("linear warmup steps", None),
    "lr_schedule": (f"{' | '.join(LR_SCHEDULES)}", None),
    "weight_decay": ("AdamW weight decay", None),
    "beta1": ("AdamW beta1", None),
    "beta2": ("AdamW beta2", None),
    "ema_decay": ("decay of the EMA weights a checkpoint samples with", None),
    "grad_clip": ("gradient-norm clip (0: off)", None),
    "min_snr_gamma": ("the gamma of min_snr weighting", None),
    "sigma_data": ("data std of edm weighting", None),
    "loss_weighting": (f"{' | '.join(WEIGHTINGS)} (min_snr: min(SNR, --min-snr-gamma); edm: Karras et al.)", None),
    "timestep_sampling": (
        "where training times are drawn (discrete and flow schedules): uniform, logit_normal (the sigmoid of "
        "N(--logit-mean, --logit-std^2), SD3) or mode (SD3's mode sampling with --mode-scale)",
        TIMESTEP_SAMPLINGS,
    ),
    "logit_mean": ("logit_normal: mean of the normal before the sigmoid", None),
    "logit_std": ("logit_normal: std of the normal before the sigmoid (> 0)", None),
    "mode_scale": ("mode: the scale s of SD3's mode sampling, in [-1, 2 / (pi - 2)]", None),
    "label_dropout": ("probability of the null class label (classifier-free guidance)", None),
    "bf16": ("bfloat16 autocast (true/false)", None),
    "checkpoint_every": ("write the checkpoint every N steps", None),
    "log_every": ("log the loss every N steps", None),
    "seed": ("seed of the initial weights, data order and noise", None),
}
# what a reflowed model takes from its teacher: these options cannot be given with --reflow-from
TEACHER_OPTIONS = (
    "dataset",
    "dataset_options",
    "model",
    "model_config",
    "schedule",
    "schedule_options",
    "prediction",
    "prediction_options",
    "task_condition",
    "task_condition_options",
    "captions",
    "text_dropout",
)
REFLOW_OPTIONS = ("pairs", "pair_sampler", "pair_steps")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be an integer >= 1")
    return value


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
        "reflow_from",
        "device",
        "autoencoder",
        *REFLOW_OPTIONS,
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
    _check_reflow(merged)
    return merged


def _flag(key: str) -> str:
    return (
        "--"
        + key.removesuffix("_options").removesuffix("_config").replace("_", "-")
        + ("-opt" if key.endswith(("_options", "_config")) else "")
    )


def _check_reflow(options: dict[str, Any]) -> None:
    """Reflow options only with ``reflow_from``, which takes the dataset, model, schedule and
    prediction from the teacher; the pair sampler must be registered."""
    if options.get("reflow_from") is None:
        given = [_flag(k) for k in REFLOW_OPTIONS if options.get(k) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} only apply with --reflow-from RUN (a trained flow model)")
        return
    taken = [_flag(k) for k in TEACHER_OPTIONS if options.get(k) is not None]
    if taken:
        raise ValueError(
            f"{', '.join(taken)}: a reflowed model takes its dataset, model, schedule and prediction from "
            f"the teacher {str(options['reflow_from'])!r}; drop them"
        )
    for key in ("pairs", "pair_steps"):
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{key}={value!r} must be an integer >= 1")
    sampler = options.get("pair_sampler")
    if sampler is not None:
        from diffcore.plugins import available

        if sampler not in available("samplers"):
            raise ValueError(f"--pair-sampler {sampler!r} is not a registered sampler (diffcore list samplers)")


def _cmd_train(args: argparse.Namespace) -> int:
    from diffcore.training.api import train

    options = _train_options(args)
    pipe = train(resume=args.resume, overwrite=args.overwrite, **options)
    out = Path(options["out"])
    print(
        json.dumps(
            {
                "out": str(out),
                "checkpoint": str(out / "checkpoint.safetensors"),
                "model": pipe.run["model"]["name"],
                "steps": pipe.run["train"]["steps"],
                # a table trained without --steps: the held-out split, the cap and where it stopped
                **({"early_stopping": pipe.run["early_stopping"]} if "early_stopping" in pipe.run else {}),
            }
        )
    )
    return 0


@hookimpl
def register_commands(cli: Any) -> None:
    p = cli.add_command("train", "train a diffusion or flow-matching model on a registered dataset")
    p.add_argument("--dataset", help="dataset name (diffcore list datasets), default digits")
    p.add_argument("--dataset-opt", action="append", metavar="KEY=VALUE", help="dataset option (repeatable)")
    p.add_argument("--model", help="model name (diffcore list models), default unet")
    p.add_argument("--model-opt", action="append", metavar="KEY=VALUE", help="model config entry (repeatable)")
    p.add_argument(
        "--schedule",
        help="noise schedule (diffcore list schedules), default linear; flow: the straight path "
        "x_t = (1 - t) x0 + t eps of flow matching (options shift, use_dynamic_shifting, ... via --schedule-opt)",
    )
    p.add_argument("--schedule-opt", action="append", metavar="KEY=VALUE", help="schedule option (repeatable)")
    p.add_argument(
        "--prediction",
        choices=[*PARAMETERIZATIONS, *ALIASES],
        metavar="PREDICTION",
        help="what the model predicts: epsilon (default) | sample | v_prediction | edm | flow (the velocity "
        "eps - x0, with --schedule flow; flow_prediction is an alias)",
    )
    p.add_argument("--sampler", help="default sampler stored with the model")
    p.add_argument("--out", help="run folder (checkpoint, config, metrics, loss curve)")
    p.add_argument("--task-condition", help="paired translation: super_resolution | inpainting")
    p.add_argument("--task-condition-opt", action="append", metavar="KEY=VALUE", help="e.g. factor=2")
    p.add_argument("--captions", help="caption set for text-to-image training (e.g. digits)")
    p.add_argument("--text-dropout", type=float, default=None, help="null-text dropout probability")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in --out (without --resume), or resume with other training options (with it); "
        "without either flag a folder holding a run is refused",
    )
    p.add_argument(
        "--device",
        metavar="DEVICE",
        help=f"{', '.join(DEVICE_CHOICES)} (default auto: CUDA, then Apple MPS, then CPU)",
    )
    p.add_argument("--config", help="JSON file with any of these options (command-line flags win)")
    p.add_argument(
        "--autoencoder",
        metavar="DIR",
        help="train in the latent space of this diffusers AutoencoderKL folder: images are encoded once "
        "(cached in --out as latents.safetensors, scaling factor applied); generation decodes",
    )
    reflow = p.add_argument_group(
        "reflow (rectified flow, Liu et al. 2023)",
        "train a straighter copy of a trained flow model on (noise, sample) pairs of its ODE; dataset, "
        "model, schedule and prediction come from the teacher",
    )
    reflow.add_argument("--reflow-from", metavar="RUN", help="the teacher: a trained flow model's run folder")
    reflow.add_argument("--pairs", type=_positive_int, metavar="N", help="pairs to draw (default 10000)")
    reflow.add_argument("--pair-sampler", metavar="NAME", help="sampler solving the teacher's ODE (default heun)")
    reflow.add_argument("--pair-steps", type=_positive_int, metavar="N", help="its steps per pair (default 32)")
    for f in fields(TrainConfig):
        kind = {"int": int, "float": float, "bool": parse_bool, "str": str}[
            f.type if isinstance(f.type, str) else f.type.__name__
        ]
        text, choices = FIELD_HELP.get(f.name, (f"TrainConfig.{f.name}", None))
        p.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f.name,
            type=kind,
            default=None,
            choices=choices,
            help=f"{text} (default: {f.default})",
        )
    p.set_defaults(func=_cmd_train)
