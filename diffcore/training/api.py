"""``diffcore.train``: dataset + model + schedule + parameterization -> trained Pipeline.

Mirrors the ``diffcore train`` command. Under ``torchrun`` (WORLD_SIZE > 1) it joins the process
group (gloo on CPU, nccl on CUDA) and trains with DistributedDataParallel; rank 0 writes, and
holds the run folder's lock.
"""

from __future__ import annotations

import gc
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from diffcore.devices import resolve_device
from diffcore.parameterization import make_parameterization
from diffcore.pipeline import Pipeline
from diffcore.plugins import available, get
from diffcore.training.config import TrainConfig
from diffcore.training.run_folder import run_folder
from diffcore.training.tabular import TablePlan, plan_table, train_table
from diffcore.training.trainer import Trainer

DEFAULT_STEPS = 2000  # optimizer steps when none are given (a table: its budget's cap, stopping early)


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


def _maybe_init_distributed(device: str | torch.device | None) -> bool:
    """Join the torchrun process group when launched with WORLD_SIZE > 1; True if we did. NCCL
    (each rank on GPU ``LOCAL_RANK``) when the device is CUDA (``auto`` with a GPU), else gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    name = "auto" if device is None else str(device)
    cuda = name.startswith("cuda") or (name == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return True


def _writes() -> bool:
    """Whether this process writes the run folder: rank 0 (or no torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def check_sampler(sampler: str, sample_steps: int) -> None:
    """The default sampler a run stores must exist: ValueError listing the registered ones."""
    if not isinstance(sampler, str) or sampler not in available("samplers"):
        raise ValueError(f"sampler={sampler!r} is not a registered sampler; known: {', '.join(available('samplers'))}")
    if isinstance(sample_steps, bool) or not isinstance(sample_steps, int) or sample_steps < 1:
        raise ValueError(f"sample_steps={sample_steps!r} must be an integer >= 1")


def train(
    dataset: str = "digits",
    model: str = "unet",
    steps: int | None = None,
    out: str | Path = "runs/default",
    *,
    dataset_options: dict[str, Any] | None = None,
    model_config: dict[str, Any] | None = None,
    schedule: str | None = None,
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
    overwrite: bool = False,
    device: str | torch.device | None = "auto",
    reflow_from: str | Path | None = None,
    pairs: int = 10_000,
    pair_sampler: str = "heun",
    pair_steps: int = 32,
    autoencoder: str | Path | None = None,
    **config: Any,
) -> Pipeline:
    """Train a diffusion model and return its Pipeline (EMA weights); see ``diffcore train -h``.

    ``config`` holds :class:`~diffcore.training.TrainConfig` fields (batch_size, lr, ...).
    ``steps`` None: :data:`DEFAULT_STEPS`, or for a table the step cap of its budget with early
    stopping; a table's other options left out follow the detector's recipe
    (:mod:`diffcore.training.tabular`). ``schedule`` None: ``linear`` (tables: the recipe's cosine).
    ``out`` is the run folder (:mod:`diffcore.training.run_folder`): one that holds a run is
    refused unless ``resume`` (continue it; changed options other than steps are refused unless
    ``overwrite`` too) or ``overwrite`` (replace it); it is locked while the run writes.
    ``device``: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    ``task_condition`` (``super_resolution`` | ``inpainting``) trains a paired-translation model
    that sees the degraded image as extra input channels; ``captions`` names a caption set
    (``diffcore.text.captions``) for text-to-image models, with null-text dropout ``text_dropout``.
    ``reflow_from`` (a flow run) trains a reflowed model instead (:mod:`diffcore.training.reflow`):
    ``pairs`` (noise, sample) pairs solved with ``pair_sampler`` in ``pair_steps`` steps, the
    teacher's dataset, architecture, schedule and weights; the pairs are saved in ``out``.
    ``autoencoder`` (a diffusers AutoencoderKL folder) trains in its latent space: the images are
    encoded once and cached in ``out`` (:mod:`diffcore.training.latents`); generation decodes.
    """
    check_sampler(sampler, sample_steps)
    if device is not None and str(device) != "auto":
        resolve_device(device)  # a device this machine lacks is refused before anything is built
    fit: dict[str, Any] = {"resume": resume, "overwrite": overwrite, "sampler": sampler, "sample_steps": sample_steps}
    n_steps = DEFAULT_STEPS if steps is None else steps  # 0 stays 0, and TrainConfig refuses it
    if reflow_from is not None:
        with run_folder(out, resume=resume, overwrite=overwrite, writer=_writes()):
            options: dict[str, Any] = {"pairs": pairs, "pair_sampler": pair_sampler, "pair_steps": pair_steps}
            return _reflow(reflow_from, out, fit=fit, device=device, steps=n_steps, **options, **config)
    train_cfg = TrainConfig.from_dict({"steps": n_steps, **config})  # bad options: refused before the folder is made
    with run_folder(out, resume=resume, overwrite=overwrite, writer=_writes()):
        table = {"steps": steps, "config": config, "resume": resume}
        setup = _setup(
            dataset, model, dataset_options, model_config, train_cfg.seed, task_condition,
            task_condition_options, captions, autoencoder=autoencoder, out=out, table=table,
        )  # fmt: skip
        if setup.plan is not None:  # a table: the detector's recipe, budget and early stopping
            train_cfg = TrainConfig.from_dict(setup.plan.options)
            fit["loop"] = lambda trainer: train_table(trainer, setup.plan, resume=resume, overwrite=overwrite)
        sched = get("schedules", schedule or setup.default_schedule)(**(schedule_options or {}))
        param = make_parameterization(prediction, **(prediction_options or {}))
        run = setup.run_record(dataset, dataset_options, model, sched, param, train_cfg)
        run["sampler"] = {"name": sampler, "steps": sample_steps}
        if setup.captions is not None:
            run["text"] = {"captions": captions, "dropout": text_dropout}
        json.dumps(run)  # the run config must be JSON: fail here, not at the first checkpoint
        return _fit(
            lambda: Trainer(
                setup.net, sched, param, setup.data, train_cfg, out, run, device=device,
                condition=setup.condition, captions=setup.captions, text_dropout=text_dropout,
            ),
            device=device,
            **fit,
        )  # fmt: skip


@dataclass
class _Setup:
    """The dataset, model and conditioning a run trains on."""

    data: Any
    net: Any
    model_config: dict[str, Any]
    condition: Any
    captions: Any
    autoencoder: dict[str, Any] | None = None  # the latent run's autoencoder record
    plan: TablePlan | None = None  # a table's recipe, budget and early stopping (diffcore.training.tabular)

    @property
    def default_schedule(self) -> str:
        """The schedule when none is given: ``linear``, a table's recipe's."""
        return self.plan.schedule if self.plan is not None else "linear"

    def run_record(
        self, name: str, options: dict[str, Any] | None, model: str, sched: Any, param: Any, train_cfg: TrainConfig
    ) -> dict[str, Any]:
        """The run config's dataset, model, schedule, prediction, train and conditioning sections."""
        run: dict[str, Any] = {
            "dataset": self.dataset_record(name, options),
            "model": {"name": model, "config": dict(getattr(self.net, "config", self.model_config))},
            "schedule": sched.config(),
            "prediction": param.config(),
            "train": {**train_cfg.to_dict(), **({"steps": self.plan.steps} if self.plan else {})},
        }
        if self.condition is not None:
            run["task_condition"] = self.condition.config()
        if self.autoencoder is not None:
            run["autoencoder"] = self.autoencoder
        return run

    def dataset_record(self, name: str, options: dict[str, Any] | None) -> dict[str, Any]:
        data = self.data
        return {
            "name": name,
            "options": options or {},
            "meta": data.meta,
            "num_classes": int(data.num_classes),
            "kind": data.kind,
            "shape": list(data.shape),
        }


def _setup(
    dataset: str,
    model: str,
    dataset_options: dict[str, Any] | None,
    model_config: dict[str, Any] | None,
    seed: int,
    task_condition: str | None,
    task_condition_options: dict[str, Any] | None,
    captions: str | None,
    *,
    autoencoder: str | Path | None = None,
    out: str | Path | None = None,
    table: dict[str, Any] | None = None,
) -> _Setup:
    """Load the dataset (encoded to latents with ``autoencoder``, cached in ``out``) and build the
    model (initial weights from ``seed``) and conditioning; a table's plan from ``table``
    (``steps``, ``config``, ``resume``: :func:`~diffcore.training.tabular.plan_table`)."""
    data = get("datasets", dataset)(**(dataset_options or {}))
    plan = None
    if table is not None and getattr(data, "kind", None) == "tabular":
        data, plan = plan_table(data, model, model_config=model_config or {}, **table)
    record = None
    if autoencoder is not None:
        from diffcore.training.latents import latent_dataset

        data, record = latent_dataset(data, autoencoder, out if _writes() else None)
    condition = None
    if task_condition is not None:
        from diffcore.conditions import make_task_condition

        condition = make_task_condition(task_condition, **(task_condition_options or {}))
    caption_set = None
    if captions is not None:
        from diffcore.text.captions import caption_set as _caption_set

        caption_set = _caption_set(captions)
    model_cfg = {**default_model_config(model, data), **(plan.model_defaults if plan else {})}
    if condition is not None and _takes(get("models", model), "concat_channels"):  # the degraded image as input
        model_cfg["concat_channels"] = condition.channels(int(data.shape[0]))
    model_cfg = {**model_cfg, **(model_config or {})}
    torch.manual_seed(seed)  # the initial weights depend only on the seed
    net = get("models", model)(**model_cfg)
    return _Setup(data, net, model_cfg, condition, caption_set, record, plan)


def _fit(
    build: Any,
    *,
    resume: bool,
    overwrite: bool,
    sampler: str,
    sample_steps: int,
    device: str | torch.device | None,
    loop: Any = None,
) -> Pipeline:
    """Run the trainer ``build()`` makes (after joining torchrun's process group, if any), by
    ``loop(trainer)`` when given, and return the Pipeline of its EMA weights."""
    started = _maybe_init_distributed(device)
    trainer = build()
    try:
        if loop is None:
            trainer.train(resume=resume, overwrite=overwrite)
        else:
            loop(trainer)
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
    fit: dict[str, Any],
    pairs: int,
    pair_sampler: str,
    pair_steps: int,
    steps: int,
    device: str | torch.device | None,
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
    run.update(
        train=train_cfg.to_dict(), sampler={"name": fit["sampler"], "steps": fit["sample_steps"]}, reflow=drawn.meta
    )
    net = teacher_pipe.model.train().requires_grad_(True)  # 2-rectified flow starts from the teacher (Alg. 1)
    return _fit(
        lambda: Trainer(
            net, teacher_pipe.schedule, teacher_pipe.param, data, train_cfg, out, run, device=device, pairs=drawn
        ),
        device=device,
        **fit,
    )
