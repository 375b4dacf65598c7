"""``diffcore.train``: dataset + model + schedule + parameterization -> trained Pipeline.

Mirrors the ``diffcore train`` command. Under ``torchrun`` (WORLD_SIZE > 1) it joins the process
group (gloo on CPU, nccl on CUDA) and trains with DistributedDataParallel; rank 0 writes.
"""

from __future__ import annotations

import gc
import inspect
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from diffcore.parameterization import make_parameterization
from diffcore.pipeline import Pipeline
from diffcore.plugins import get
from diffcore.training.config import TrainConfig
from diffcore.training.trainer import Trainer


def default_model_config(model: str, data: Any) -> dict[str, Any]:
    """Model config that fits ``data``, from the factory's ``default_config(data)`` attribute
    (the built-ins: channels / size / classes for images, dim / classes for tables); ``{}`` for a
    factory without one."""
    factory = get("models", model)
    if hasattr(factory, "default_config"):
        return dict(factory.default_config(data))
    return {}


def _takes(factory: Any, name: str) -> bool:
    """Whether ``factory`` has a parameter called ``name``."""
    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # no introspectable signature
        return False


def _maybe_init_distributed() -> bool:
    """Join the torchrun process group when launched with WORLD_SIZE > 1; True if we did."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def train(
    dataset: str = "digits",
    model: str = "unet",
    steps: int = 2000,
    out: str | Path = "runs/default",
    *,
    dataset_options: dict[str, Any] | None = None,
    model_config: dict[str, Any] | None = None,
    schedule: str = "linear",
    schedule_options: dict[str, Any] | None = None,
    prediction: str = "epsilon",
    prediction_options: dict[str, Any] | None = None,
    sampler: str = "dpmpp_2m",
    sample_steps: int = 20,
    task_condition: str | None = None,
    task_condition_options: dict[str, Any] | None = None,
    captions: str | None = None,
    text_dropout: float = 0.1,
    resume: bool = False,
    device: str | None = None,
    reflow_from: str | Path | None = None,
    pairs: int = 10_000,
    pair_sampler: str = "heun",
    pair_steps: int = 32,
    **config: Any,
) -> Pipeline:
    """Train a diffusion model and return its Pipeline (EMA weights); see ``diffcore train -h``.

    ``config`` holds :class:`~diffcore.training.TrainConfig` fields (batch_size, lr, ...).
    ``task_condition`` (``super_resolution`` | ``inpainting``) trains a paired-translation model
    that sees the degraded image as extra input channels; ``captions`` names a caption set
    (``diffcore.text.captions``) for text-to-image models, with null-text dropout ``text_dropout``.
    ``reflow_from`` (a flow run) trains a reflowed model instead (:mod:`diffcore.training.reflow`):
    ``pairs`` (noise, sample) pairs solved with ``pair_sampler`` in ``pair_steps`` steps, the
    teacher's dataset, architecture, schedule and weights; the pairs are saved in ``out``.
    """
    if reflow_from is not None:
        return _reflow(
            reflow_from,
            out,
            pairs=pairs,
            pair_sampler=pair_sampler,
            pair_steps=pair_steps,
            steps=steps,
            sampler=sampler,
            sample_steps=sample_steps,
            resume=resume,
            device=device,
            **config,
        )
    train_cfg = TrainConfig.from_dict({"steps": steps, **config})
    data = get("datasets", dataset)(**(dataset_options or {}))
    condition = None
    if task_condition is not None:
        from diffcore.conditions import make_task_condition

        condition = make_task_condition(task_condition, **(task_condition_options or {}))
    caption_set = None
    if captions is not None:
        from diffcore.text.captions import caption_set as _caption_set

        caption_set = _caption_set(captions)
    model_cfg = default_model_config(model, data)
    if condition is not None and _takes(get("models", model), "concat_channels"):  # the degraded image as input
        model_cfg["concat_channels"] = condition.channels(int(data.shape[0]))
    model_cfg = {**model_cfg, **(model_config or {})}
    torch.manual_seed(train_cfg.seed)  # the initial weights depend only on the seed
    net = get("models", model)(**model_cfg)
    sched = get("schedules", schedule)(**(schedule_options or {}))
    param = make_parameterization(prediction, **(prediction_options or {}))
    run = {
        "dataset": {
            "name": dataset,
            "options": dataset_options or {},
            "meta": data.meta,
            "num_classes": int(data.num_classes),
            "kind": data.kind,
            "shape": list(data.shape),
        },
        "model": {"name": model, "config": dict(getattr(net, "config", model_cfg))},
        "schedule": sched.config(),
        "prediction": param.config(),
        "train": train_cfg.to_dict(),
        "sampler": {"name": sampler, "steps": sample_steps},
    }
    if condition is not None:
        run["task_condition"] = condition.config()
    if caption_set is not None:
        run["text"] = {"captions": captions, "dropout": text_dropout}
    json.dumps(run)  # the run config must be JSON: fail here, not at the first checkpoint
    return _fit(
        lambda: Trainer(
            net,
            sched,
            param,
            data,
            train_cfg,
            out,
            run,
            device=device,
            condition=condition,
            captions=caption_set,
            text_dropout=text_dropout,
        ),
        resume,
        sampler,
        sample_steps,
    )


def _fit(build: Any, resume: bool, sampler: str, sample_steps: int) -> Pipeline:
    """Run the trainer ``build()`` makes (after joining torchrun's process group, if any) and
    return the Pipeline of its EMA weights."""
    started = _maybe_init_distributed()
    trainer = build()
    try:
        trainer.train(resume=resume)
        obj = trainer.objective
        return Pipeline(
            trainer.ema.cpu(), obj.schedule, obj.param, run=trainer.run, sampler=sampler, steps=sample_steps
        )
    finally:
        if started:  # gloo can abort at exit unless the group is torn down after the last tensor
            del trainer
            gc.collect()
            dist.barrier()
            dist.destroy_process_group()


def _reflow(
    teacher: str | Path,
    out: str | Path,
    *,
    pairs: int,
    pair_sampler: str,
    pair_steps: int,
    steps: int,
    sampler: str,
    sample_steps: int,
    resume: bool,
    device: str | None,
    **config: Any,
) -> Pipeline:
    """Train a reflowed copy of the flow model ``teacher`` on its own ODE pairs."""
    from diffcore.training.reflow import pairs_for

    teacher_pipe = Pipeline.load(teacher)
    seed = int(config.get("seed", 0))
    drawn = pairs_for(Path(out), teacher, pairs, seed=seed, sampler=pair_sampler, steps=pair_steps)
    run = dict(teacher_pipe.run)
    train_cfg = TrainConfig.from_dict({**run.get("train", {}), "steps": steps, **config})
    data = get("datasets", run["dataset"]["name"])(**run["dataset"].get("options", {}))
    run.update(train=train_cfg.to_dict(), sampler={"name": sampler, "steps": sample_steps}, reflow=drawn.meta)
    net = teacher_pipe.model.train().requires_grad_(True)  # 2-rectified flow starts from the teacher (Alg. 1)
    return _fit(
        lambda: Trainer(
            net, teacher_pipe.schedule, teacher_pipe.param, data, train_cfg, out, run, device=device, pairs=drawn
        ),
        resume,
        sampler,
        sample_steps,
    )
