"""Pipeline: a trained denoiser with its schedule, parameterization and default sampler.

``Pipeline.load(path)`` rebuilds everything from one safetensors checkpoint (weights + JSON run
config; EMA weights by default) and ``generate(n, ...)`` samples through :func:`diffcore.sample`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffcore.parameterization import Parameterization, make_parameterization
from diffcore.sampling import sample
from diffcore.schedules import Schedule, make_schedule
from diffcore.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

CHECKPOINT_NAME = "checkpoint.safetensors"


def checkpoint_file(path: str | Path) -> Path:
    """The checkpoint file of a run folder, or ``path`` itself when it is a file."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    return path


def _model_from(run: dict[str, Any]) -> nn.Module:
    from diffcore.plugins import get

    spec = run["model"]
    return get("models", spec["name"])(**spec["config"])


class Pipeline:
    """A denoiser ``model(x, t, cond)`` + schedule + parameterization + default sampler."""

    def __init__(
        self,
        model: nn.Module,
        schedule: Schedule,
        parameterization: Parameterization,
        *,
        run: dict[str, Any] | None = None,
        sampler: str = "dpmpp_2m",
        steps: int = 20,
    ) -> None:
        self.model = model.eval()
        self.schedule = schedule
        self.param = parameterization
        self.run = dict(run or {})
        self.sampler = sampler
        self.steps = steps

    # ---------------------------------------------------------------- facts of the training data
    @property
    def dataset(self) -> dict[str, Any]:
        return self.run.get("dataset", {})

    @property
    def num_classes(self) -> int:
        return int(self.dataset.get("num_classes", 0))

    @property
    def sample_shape(self) -> tuple[int, ...]:
        shape = self.dataset.get("shape")
        if shape is None:
            raise ValueError("this pipeline does not know its sample shape; pass shape= to generate()")
        return tuple(int(s) for s in shape)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---------------------------------------------------------------- sampling
    def conditioning(self, class_labels: Tensor | None, n: int) -> tuple[Any, Any]:
        """(cond, uncond) dicts for class labels; uncond uses the null label ``num_classes``."""
        if class_labels is None:
            return None, None
        if self.num_classes == 0:
            raise ValueError("class_labels given, but this model was trained without classes")
        labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
        if labels.numel() == 1:
            labels = labels.expand(n)
        if labels.shape[0] != n:
            raise ValueError(f"got {labels.shape[0]} class labels for {n} samples")
        if int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
            raise ValueError(f"class labels must be in [0, {self.num_classes}), got {labels.tolist()[:8]}...")
        labels = labels.to(self.device)
        return {"class_labels": labels}, {"class_labels": torch.full_like(labels, self.num_classes)}

    @torch.no_grad()
    def generate(
        self,
        n: int,
        *,
        sampler: str | None = None,
        steps: int | None = None,
        class_labels: Tensor | list[int] | int | None = None,
        guidance_scale: float | None = None,
        guidance_rescale: float = 0.0,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        batch_size: int = 256,
        shape: tuple[int, ...] | None = None,
        **sample_kwargs: Any,
    ) -> Tensor:
        """``n`` samples in model space (images in [-1, 1]), batched by ``batch_size``."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n={n!r} must be an integer >= 1")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if guidance_scale is not None and class_labels is None and self.num_classes:
            raise ValueError("guidance_scale needs class_labels (the conditional branch)")
        shape = tuple(shape) if shape is not None else self.sample_shape
        cond_all, uncond_all = self.conditioning(class_labels, n)
        g = generator if generator is not None else torch.Generator().manual_seed(0 if seed is None else seed)
        outs = []
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            x_T = torch.randn((m, *shape), generator=g).to(self.device)
            cond = None if cond_all is None else {k: v[start : start + m] for k, v in cond_all.items()}
            uncond = None if uncond_all is None else {k: v[start : start + m] for k, v in uncond_all.items()}
            batch_seed = int(torch.randint(0, 2**62, (1,), generator=g))
            outs.append(
                sample(
                    self._model_fn,
                    x_T,
                    sampler=sampler or self.sampler,
                    steps=steps or self.steps,
                    schedule=self.schedule,
                    prediction=self.param,
                    cond=cond,
                    uncond=uncond if guidance_scale is not None else None,
                    guidance_scale=guidance_scale,
                    guidance_rescale=guidance_rescale,
                    seed=batch_seed,
                    **sample_kwargs,
                )
            )
        return torch.cat(outs)

    def _model_fn(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return self.model(x, t, cond)

    # ---------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write a checkpoint holding the current weights and the run config."""
        path = Path(path)
        if path.suffix != ".safetensors":
            path = path / CHECKPOINT_NAME
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        meta = {"format": 1, "kind": "pipeline", "run": self.run, "sampler": {"name": self.sampler, "steps": self.steps}}
        return save_checkpoint(path, tensors, meta)

    @classmethod
    def load(cls, path: str | Path, *, ema: bool = True, device: str | torch.device = "cpu") -> Pipeline:
        """Load a run folder or checkpoint file (EMA weights when present and ``ema``)."""
        file = checkpoint_file(path)
        tensors, meta = load_checkpoint(file)
        run = meta.get("run")
        if not isinstance(run, dict) or "model" not in run or "schedule" not in run:
            raise CheckpointError(f"{file}: metadata has no run config (model, schedule)")
        model = _model_from(run)
        prefix = "ema." if ema and any(k.startswith("ema.") for k in tensors) else "model."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{file}: weights do not fit the model config: {exc}") from exc
        schedule = make_schedule(**run["schedule"])
        pred = dict(run.get("prediction", {"name": "epsilon"}))
        param = make_parameterization(pred.pop("name"), **pred)
        sampler = meta.get("sampler") or run.get("sampler") or {}
        return cls(model.to(device), schedule, param, run=run, sampler=sampler.get("name", "dpmpp_2m"),
                   steps=int(sampler.get("steps", 20)))
