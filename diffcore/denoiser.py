"""The denoiser wrapper: a model plus its parameterization and guidance, evaluated at one level.

``Denoiser(x, level)`` calls ``model(c_in * x, t, cond)`` exactly as a diffusers pipeline calls
its UNet (the scaled model input and the timestep tensor) and returns a :class:`Prediction`:
the raw output(s) plus the ``(a, b)`` with ``x0 = a*x + b*out``. The x0 conversion and the
classifier-free-guidance combination happen later inside the fused sampler step.
"""

from __future__ import annotations

import math

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from diffcore import ops
from diffcore.parameterization import Parameterization
from diffcore.timesteps import Level


@dataclass
class Prediction:
    """Raw model output(s) at a level and the coefficients that turn them into x0."""

    a: float
    b: float
    out: Tensor | None = None
    uncond: Tensor | None = None
    cond: Tensor | None = None
    guidance: Tensor | None = None  # (2,) or (B, 2): [scale w, rescale factor r]


class NonFiniteModelOutput(FloatingPointError):
    """The model returned NaN or inf."""


ModelFn = Callable[..., Tensor]


class Denoiser:
    """Evaluate ``model`` at a level, with optional classifier-free guidance.

    Args:
        model: ``model(x, t, cond) -> Tensor`` with ``t`` a (B,) tensor of timesteps (sigmas for
            EDM schedules); ``cond`` is passed only when not None.
        parameterization: what the model predicts.
        timestep_dtype: dtype of the ``t`` tensor the model receives.
        cond / uncond: conditioning for the conditional and unconditional passes; with guidance
            and ``uncond`` None the unconditional pass calls ``model(x, t)`` without ``cond``.
        guidance_scale: classifier-free guidance scale w (None: no guidance).
        guidance_rescale: phi of Lin et al. 2023 (0: off).
        check_finite: raise :class:`NonFiniteModelOutput` naming the step when the model output
            holds NaN/inf (checked at once on CPU; on other devices at the end of sampling).
    """

    def __init__(
        self,
        model: ModelFn,
        parameterization: Parameterization,
        *,
        timestep_dtype: torch.dtype = torch.float32,
        cond: Any = None,
        uncond: Any = None,
        guidance_scale: float | None = None,
        guidance_rescale: float = 0.0,
        check_finite: bool = True,
    ) -> None:
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        if guidance_scale is not None and not isinstance(guidance_scale, (int, float)):
            raise TypeError(f"guidance_scale must be a number, got {type(guidance_scale).__name__}")
        if not 0.0 <= guidance_rescale <= 1.0:
            raise ValueError(f"guidance_rescale={guidance_rescale} must be in [0, 1]")
        if guidance_rescale and guidance_scale is None:
            raise ValueError("guidance_rescale needs guidance_scale")
        self.model = model
        self.param = parameterization
        self.timestep_dtype = timestep_dtype
        self.cond, self.uncond = cond, uncond
        self.guidance_scale = guidance_scale
        self.guidance_rescale = float(guidance_rescale)
        self.check_finite = check_finite
        self.evaluations = 0
        self._deferred: list[tuple[int, Tensor]] = []
        self._guidance_cache: dict[torch.device, Tensor] = {}

    def _call(self, x: Tensor, t: Tensor, cond: Any) -> Tensor:
        out = self.model(x, t) if cond is None else self.model(x, t, cond)
        if not isinstance(out, Tensor):
            # diffusers models return an output object whose `.sample` holds the tensor
            out = getattr(out, "sample", out[0] if isinstance(out, (tuple, list)) else out)
        return out

    def _validate(self, out: Tensor, x: Tensor, step: int) -> Tensor:
        if out.shape != x.shape:
            raise ValueError(f"step {step}: model output has shape {tuple(out.shape)} but x has shape {tuple(x.shape)}")
        if out.dtype != x.dtype:
            out = out.to(x.dtype)
        if self.check_finite:
            # A finite sum means every element is finite (NaN or inf would propagate into it); it is
            # one read pass with no full-size temporary. Only a non-finite sum needs the full check,
            # since a sum of large finite values can overflow.
            total = out.sum()
            if x.device.type == "cpu":
                if not math.isfinite(total.item()) and not bool(torch.isfinite(out).all()):
                    raise NonFiniteModelOutput(f"step {step}: model output contains NaN or inf")
            else:
                self._deferred.append((step, torch.isfinite(total)))  # no sync; read at the end
        return out

    def raise_deferred(self) -> None:
        """Raise for the first step whose (device-side) finiteness check failed."""
        for step, ok in self._deferred:
            if not bool(ok):
                self._deferred.clear()
                raise NonFiniteModelOutput(f"step {step}: model output contains NaN or inf")
        self._deferred.clear()

    def time_table(self, times: list[list[float]], x: Tensor) -> Tensor:
        """(steps, B) model-time tensors built once, so a sampling loop makes none per step;
        ``times`` holds one list per program (one program: shared by the batch)."""
        col = torch.tensor(times, dtype=torch.float64).to(self.timestep_dtype).T  # (steps, P)
        return col.expand(col.shape[0], x.shape[0]).contiguous().to(x.device) if col.shape[1] == 1 else col.contiguous().to(x.device)

    def scale_table(self, levels: list[list[Level]], x: Tensor) -> list[Tensor | float]:
        """Per step, the model-input scale c_in: a float shared by the batch, or a broadcastable
        (B, 1, ...) tensor when samples sit at different levels."""
        out: list[Tensor | float] = []
        for k in range(len(levels[0])):
            vals = [self.param.input_scale(lv[k].alpha, lv[k].std) for lv in levels]
            if len(set(vals)) == 1:
                out.append(vals[0])
            else:
                out.append(torch.tensor(vals, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1))).to(x.device))
        return out

    def __call__(
        self, x: Tensor, level: Level, step: int = 0, t: Tensor | None = None, c_in: Tensor | float | None = None
    ) -> Prediction:
        """Evaluate the model at ``level`` on state ``x`` (B, ...); ``t`` and ``c_in`` override the
        (B,) time tensor and input scale derived from ``level`` (per-sample levels)."""
        a, b = self.param.x0_coeffs(level.alpha, level.std)
        if c_in is None:
            c_in = self.param.input_scale(level.alpha, level.std)
        x_in = x if isinstance(c_in, float) and c_in == 1.0 else x * c_in
        if t is None:
            t = torch.full((x.shape[0],), level.t, dtype=self.timestep_dtype, device=x.device)
        self.evaluations += 1
        if self.guidance_scale is None:
            return Prediction(a, b, out=self._validate(self._call(x_in, t, self.cond), x, step))
        if self.uncond is None:
            uncond = self._call(x_in, t, None)
            cond = self._call(x_in, t, self.cond)
        else:
            both = self._call(torch.cat([x_in, x_in]), torch.cat([t, t]), _cat(self.uncond, self.cond))
            uncond, cond = both.chunk(2)
        uncond, cond = self._validate(uncond, x, step), self._validate(cond, x, step)
        w = float(self.guidance_scale)
        const = self._guidance_const(x.device)
        if self.guidance_rescale > 0:
            r = ops.cfg_rescale_factor(uncond, cond, const[0], self.guidance_rescale)
            guidance = torch.stack([torch.full_like(r, w), r], dim=1)
        else:
            guidance = const
        return Prediction(a, b, uncond=uncond, cond=cond, guidance=guidance)

    def _guidance_const(self, device: torch.device) -> Tensor:
        """``[w, 1]`` on ``device``, made once: a host->device copy cannot happen inside a CUDA graph."""
        cached = self._guidance_cache.get(device)
        if cached is None:
            cached = torch.tensor([float(self.guidance_scale), 1.0], dtype=torch.float32).to(device)  # type: ignore[arg-type]
            self._guidance_cache[device] = cached
        return cached


def _cat(uncond: Any, cond: Any) -> Any:
    if isinstance(cond, Tensor):
        return torch.cat([uncond, cond])
    if isinstance(cond, dict):
        return {k: _cat(uncond[k], v) for k, v in cond.items()}
    if isinstance(cond, list):  # e.g. prompts
        return list(uncond) + list(cond)
    raise TypeError(f"cannot batch conditioning of type {type(cond).__name__}; pass uncond=None")


def apply_step(
    x: Tensor,
    pred: Prediction,
    rows: Tensor,
    history: Tensor | None = None,
    noise: Tensor | None = None,
    writes: tuple[int, ...] = (),
) -> Tensor:
    """Run the fused op for ``pred``: ``rows`` is the flat coefficient vector after ``[a, b]``."""
    head = torch.tensor([pred.a, pred.b], dtype=rows.dtype, device=rows.device)
    coeffs = torch.cat([head, rows])
    if pred.out is not None:
        return ops.sampler_step(x, pred.out, coeffs, history, noise, writes)
    assert pred.uncond is not None and pred.cond is not None and pred.guidance is not None
    return ops.cfg_sampler_step(x, pred.uncond, pred.cond, pred.guidance, coeffs, history, noise, writes)
