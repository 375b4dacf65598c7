"""Pipeline: a trained denoiser with its schedule, parameterization and default sampler.

``Pipeline.load(path)`` rebuilds everything from one safetensors checkpoint (weights + JSON run
config; EMA weights by default) and ``generate(n, ...)`` samples through :func:`diffcore.sample`.
Every task works on a Pipeline (:meth:`Pipeline.wrap` turns a bare ``model(x, t, cond)`` into
one): it is the one home of the conditioning (class labels, prompts, extra inputs and their null
branches), of batched generation and of the model's one-shot x0 estimate.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffcore import ops
from diffcore.denoiser import Denoiser
from diffcore.ops.philox import INIT_NOISE_OFFSET
from diffcore.parameterization import Parameterization, make_parameterization
from diffcore.sampling import resolve_schedule, sample, sample_from
from diffcore.schedules import Schedule, make_schedule
from diffcore.timesteps import Level
from diffcore.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

__all__ = ["CHECKPOINT_NAME", "Pipeline", "checkpoint_file"]

CHECKPOINT_NAME = "checkpoint.safetensors"
Cond = dict[str, Any] | None


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


def _bare_dataset(model: Any) -> dict[str, Any]:
    """What a bare model's ``config`` dict tells about its samples: shape and class count."""
    config = getattr(model, "config", None) or {}
    if not isinstance(config, dict):
        return {}
    facts: dict[str, Any] = {"num_classes": int(config.get("num_classes", 0) or 0)}
    if "in_channels" in config and "image_size" in config:
        facts["shape"] = [int(config["in_channels"]), int(config["image_size"]), int(config["image_size"])]
    elif "dim" in config:
        facts["shape"] = [int(config["dim"])]
    return facts


def _rows(cond: Cond, start: int, stop: int) -> Cond:
    """The samples ``start:stop`` of every conditioning entry (tensors and prompt lists)."""
    return None if cond is None else {k: v[start:stop] for k, v in cond.items()}


class Pipeline:
    """A denoiser ``model(x, t, cond)`` + schedule + parameterization + default sampler.

    ``set_eval`` puts an ``nn.Module`` model in eval mode (:meth:`wrap` leaves a caller's model
    as it is).
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: Schedule,
        parameterization: Parameterization,
        *,
        run: dict[str, Any] | None = None,
        sampler: str = "dpmpp_2m",
        steps: int = 20,
        set_eval: bool = True,
    ) -> None:
        self.model = model.eval() if set_eval and isinstance(model, nn.Module) else model
        self.schedule = schedule
        self.param = parameterization
        self.run = dict(run or {})
        self.sampler = sampler
        self.steps = steps

    @classmethod
    def wrap(
        cls,
        pipe_or_model: Any,
        schedule: str | Schedule | None = None,
        prediction: str | Parameterization | None = None,
    ) -> Pipeline:
        """A Pipeline as it is, or a bare ``model(x, t, cond)`` with ``schedule`` (an object or a
        name) and ``prediction`` (default epsilon); a bare model's ``config`` dict may tell its
        sample shape (``in_channels`` + ``image_size``, or ``dim``) and ``num_classes``."""
        if isinstance(pipe_or_model, Pipeline):
            return pipe_or_model
        if not callable(pipe_or_model):
            raise TypeError(
                f"expected a diffcore.Pipeline or a model(x, t, cond) callable, got {type(pipe_or_model).__name__}"
            )
        if schedule is None:
            raise ValueError("a bare model needs schedule= (a schedule object or name) and prediction=")
        return cls(
            pipe_or_model,
            resolve_schedule(schedule),
            make_parameterization(prediction or "epsilon"),
            run={"dataset": _bare_dataset(pipe_or_model)},
            set_eval=False,
        )

    # ---------------------------------------------------------------- facts of the training data
    @property
    def dataset(self) -> dict[str, Any]:
        return self.run.get("dataset", {})

    @property
    def num_classes(self) -> int:
        """Classes the model is conditioned on: the model's own count when it declares one (a
        model trained unconditionally on labelled data has 0), else the training data's."""
        own = getattr(self.model, "num_classes", None)
        return own if isinstance(own, int) and not isinstance(own, bool) else int(self.dataset.get("num_classes", 0))

    @property
    def shape(self) -> tuple[int, ...] | None:
        """The sample shape the model was trained on ((C, H, W) or (D,)), when known."""
        shape = self.dataset.get("shape")
        return None if not shape else tuple(int(s) for s in shape)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        if self.shape is None:
            raise ValueError("this pipeline does not know its sample shape; pass shape= to generate()")
        return self.shape

    @property
    def device(self) -> torch.device:
        try:
            return next(self.model.parameters()).device
        except (AttributeError, StopIteration):
            return torch.device("cpu")

    @property
    def autoencoder(self) -> Any:
        """A latent run's autoencoder (``run["autoencoder"]``, :mod:`diffcore.training.latents`),
        loaded on first use through the ``autoencoders`` registry; None for a pixel-space run."""
        record = self.run.get("autoencoder")
        if not record:
            return None
        if getattr(self, "_autoencoder", None) is None:
            from diffcore.plugins import get

            self._autoencoder = get("autoencoders", record.get("name", "autoencoder_kl"))(record["path"])
        return self._autoencoder.to(self.device)

    # ---------------------------------------------------------------- conditioning
    def class_labels(self, class_labels: Any, n: int) -> Tensor:
        """``class_labels`` (one label, or one per sample) as a (n,) int64 tensor on the device."""
        k = self.num_classes
        if k == 0:
            raise ValueError("class_labels given, but this model was trained without classes")
        labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
        labels = labels.expand(n) if labels.numel() == 1 else labels
        if labels.shape[0] != n:
            raise ValueError(f"got {labels.shape[0]} class labels for {n} samples")
        if int(labels.min()) < 0 or int(labels.max()) >= k:
            raise ValueError(f"class labels must be in [0, {k}), got {labels.tolist()[:8]}")
        return labels.to(self.device)

    def conditioning(
        self,
        n: int,
        *,
        class_labels: Any = None,
        prompts: Sequence[str] | None = None,
        extra: dict[str, Any] | None = None,
        guidance_scale: float | None = None,
    ) -> tuple[Cond, Cond]:
        """``(cond, uncond)`` for ``n`` samples: ``extra`` entries (e.g. ``{"concat": source}``)
        plus ``class_labels`` and/or ``prompts`` (one per sample). ``uncond`` -- the same with the
        null label ``num_classes`` and the null prompt ``""`` -- comes only with a
        ``guidance_scale``, which needs labels or prompts to guide towards."""
        cond, null = dict(extra or {}), dict(extra or {})
        if class_labels is not None:
            cond["class_labels"] = self.class_labels(class_labels, n)
            null["class_labels"] = torch.full_like(cond["class_labels"], self.num_classes)
        if prompts is not None:
            cond["text"], null["text"] = self._prompts(prompts, n), [""] * n
        if guidance_scale is None:
            return cond or None, None
        if class_labels is None and prompts is None:
            raise ValueError("guidance_scale needs class_labels (the conditional branch)")
        return cond, null

    def _prompts(self, prompts: Sequence[str], n: int) -> list[str]:
        from diffcore.text import accepts_text
        from diffcore.text.encoders import check_prompts

        if not accepts_text(self.model):
            name = self.run.get("model", {}).get("name", type(self.model).__name__)
            raise ValueError(
                f"this model ({name!r}) was trained without text conditioning and cannot follow "
                "prompts; train one with --model text_unet --captions digits"
            )
        return check_prompts(prompts, n)

    # ---------------------------------------------------------------- sampling
    def call_model(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """``model(x, t)``, or ``model(x, t, cond)`` with conditioning: what samplers call."""
        return self.model(x, t) if cond is None else self.model(x, t, cond)

    def sample(self, x_T: Tensor, *, sampler: str | None = None, steps: int | None = None, **kwargs: Any) -> Tensor:
        """:func:`diffcore.sample` of this model from noise ``x_T``; sampler and steps default to
        the pipeline's, other keywords (cond, uncond, guidance, seed, ...) go through."""
        return sample(
            self.call_model,
            x_T,
            sampler=sampler or self.sampler,
            steps=self.steps if steps is None else steps,
            schedule=self.schedule,
            prediction=self.param,
            **kwargs,
        )

    def sample_from(
        self, x: Tensor, t_start: float | Tensor, *, sampler: str | None = None, steps: int | None = None, **kwargs: Any
    ) -> Tensor:
        """:func:`diffcore.sample_from` of this model from model time ``t_start``; defaults as
        :meth:`sample`."""
        return sample_from(
            self.call_model,
            x,
            t_start,
            sampler=sampler or self.sampler,
            steps=self.steps if steps is None else steps,
            schedule=self.schedule,
            prediction=self.param,
            **kwargs,
        )

    def denoiser(self, *, timestep_dtype: torch.dtype = torch.float32, **guidance: Any) -> Denoiser:
        """A :class:`~diffcore.denoiser.Denoiser` of this model (``cond``, ``uncond`` and the
        guidance keywords go to it)."""
        return Denoiser(self.call_model, self.param, timestep_dtype=timestep_dtype, **guidance)

    @torch.no_grad()
    def predict_x0(self, x: Tensor, level: Level | Sequence[Level]) -> Tensor:
        """The model's one-shot estimate of x0 from state ``x`` (B, ...) at ``level`` (one, or one
        per sample), unconditional (a class-conditional model's null label); ``x`` is unchanged."""
        return self.denoiser().predict_x0(x, level)

    @torch.no_grad()
    def generate(
        self,
        n: int,
        *,
        sampler: str | None = None,
        steps: int | None = None,
        class_labels: Tensor | list[int] | int | None = None,
        prompts: Sequence[str] | None = None,
        guidance_scale: float | None = None,
        guidance_rescale: float = 0.0,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        batch_size: int = 256,
        start: int = 0,
        shape: tuple[int, ...] | None = None,
        **sample_kwargs: Any,
    ) -> Tensor:
        """``n`` samples in model space (images in [-1, 1]; a latent run decodes them), batched by ``batch_size``.

        ``class_labels``: one label or one per sample; ``prompts``: one per sample (a text model).
        Noise, with ``seed`` (default 0): sample ``i``'s start noise x_T (Philox offset
        :data:`~diffcore.ops.philox.INIT_NOISE_OFFSET`) and every step's noise are keyed by
        ``(seed, i)`` only, so the samples do not depend on ``batch_size`` (bitwise on CPU) and
        ``start=k`` returns samples ``k .. k+n-1`` of the same sequence: any split of the index
        range reproduces the whole run. With ``generator`` (torch RNG, diffusers' draw order) each
        batch draws its x_T, then its Philox seed, from it: repeatable for the same batch size,
        but no invariance is promised and ``start`` is refused."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n={n!r} must be an integer >= 1")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(f"start={start!r} must be an integer >= 0")
        if generator is not None and (seed is not None or start):
            raise ValueError("generator= (torch RNG noise) takes neither seed= nor start=; pass seed= for keyed noise")
        shape = tuple(shape) if shape is not None else self.sample_shape
        cond, uncond = self.conditioning(n, class_labels=class_labels, prompts=prompts, guidance_scale=guidance_scale)
        seed = 0 if seed is None else seed
        outs = []
        for first in range(0, n, batch_size):
            stop = min(first + batch_size, n)
            if generator is not None:
                x_T = torch.randn((stop - first, *shape), generator=generator).to(self.device)
                noise: dict[str, Any] = {"seed": int(torch.randint(0, 2**62, (1,), generator=generator))}
            else:
                like = torch.empty((stop - first, *shape), device=self.device)
                x_T = ops.philox_noise_like(like, seed, offset=INIT_NOISE_OFFSET, sample_index=start + first)
                noise = {"seed": seed, "sample_index": start + first}
            outs.append(
                self.sample(
                    x_T,
                    sampler=sampler,
                    steps=steps or self.steps,
                    cond=_rows(cond, first, stop),
                    uncond=_rows(uncond, first, stop),
                    guidance_scale=guidance_scale,
                    guidance_rescale=guidance_rescale,
                    **noise,
                    **sample_kwargs,
                )
            )
        out = torch.cat(outs)
        return out if self.autoencoder is None else self.autoencoder.decode(out).float()

    # ---------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write a checkpoint holding the current weights and the run config."""
        path = Path(path)
        if path.suffix != ".safetensors":
            path = path / CHECKPOINT_NAME
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        meta = {
            "format": 1,
            "kind": "pipeline",
            "run": self.run,
            "sampler": {"name": self.sampler, "steps": self.steps},
        }
        return save_checkpoint(path, tensors, meta)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write a diffusers DDPMPipeline folder (:func:`diffcore.interop.export.save_pretrained`)."""
        from diffcore.interop.export import save_pretrained

        return save_pretrained(self, path)

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
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{file}: weights do not fit the model config: {exc}") from exc
        schedule = make_schedule(**run["schedule"])
        pred = dict(run.get("prediction", {"name": "epsilon"}))
        param = make_parameterization(pred.pop("name"), **pred)
        sampler = meta.get("sampler") or run.get("sampler") or {}
        return cls(
            model.to(device),
            schedule,
            param,
            run=run,
            sampler=sampler.get("name", "dpmpp_2m"),
            steps=int(sampler.get("steps", 20)),
        )
