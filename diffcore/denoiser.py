"""The denoiser wrapper: a model plus its parameterization and guidance, evaluated at one level.

``Denoiser(x, level)`` calls ``model(c_in * x, t, cond)`` exactly as a diffusers pipeline calls
its UNet (the scaled model input and the timestep tensor) and returns a :class:`Prediction`:
the raw output(s) plus the ``(a, b)`` with ``x0 = a*x + b*out``. The x0 conversion and the
guidance combination (:mod:`diffcore.guidance`, folded into ``[w, r]``) happen later inside the
fused sampler step; :meth:`Denoiser.predict_x0` runs that step once for the x0 estimate alone.
A guidance method that does not fold (APG with momentum) gives the guided output ``out`` itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from diffcore import ops
from diffcore.guidance import Guidance, StepGuide, apply_factor, make_guidance, rescaled, rescaled_output, step_guides
from diffcore.ops.philox import DEFAULT_NOISE_MODE
from diffcore.parameterization import Parameterization
from diffcore.timesteps import Level
from diffcore.x0_limit import X0Limit


@dataclass
class Prediction:
    """Raw model output(s) at a level and the coefficients that turn them into x0: ``out`` for the
    plain fused step, or ``uncond``/``cond`` with ``guidance`` for the CFG step; a guidance
    method computed in Torch sets ``out`` and keeps ``uncond``/``cond`` (CFG++ reads ``uncond``)."""

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
        guidance: a :class:`~diffcore.guidance.Guidance` (CFG, APG, CFG-Zero*, with interval).
        guidance_scale / guidance_rescale: shorthand for ``guidance=CFG(scale, rescale)``
            (None: no guidance); not together with ``guidance``.
        check_finite: raise :class:`NonFiniteModelOutput` naming the step when the model output
            holds NaN/inf (checked at once on CPU; on other devices at the end of sampling; in a
            sampling loop by a flag the fused step sets, read once at the end).
        sample_index: index of the batch's first sample in the seeded sequence: in-kernel noise
            of sample b is keyed by (seed, sample_index + b).
        noise_mode: ``fast`` or ``exact`` in-kernel noise (:mod:`diffcore.ops.philox`).
        x0_limit: clip or dynamic thresholding of x0 inside the fused step (:class:`~diffcore.X0Limit`).
    """

    def __init__(
        self,
        model: ModelFn,
        parameterization: Parameterization,
        *,
        timestep_dtype: torch.dtype = torch.float32,
        cond: Any = None,
        uncond: Any = None,
        guidance: Guidance | None = None,
        guidance_scale: float | None = None,
        guidance_rescale: float = 0.0,
        check_finite: bool = True,
        sample_index: int = 0,
        noise_mode: str = DEFAULT_NOISE_MODE,
        x0_limit: X0Limit | None = None,
    ) -> None:
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        if isinstance(sample_index, bool) or not isinstance(sample_index, int) or sample_index < 0:
            raise ValueError(f"sample_index={sample_index!r} must be a non-negative integer")
        ops.noise_mode_code(noise_mode)  # raises for an unknown mode
        if x0_limit is not None and not isinstance(x0_limit, X0Limit):
            raise TypeError(f"x0_limit must be a diffcore.X0Limit, got {type(x0_limit).__name__}")
        if guidance is None:
            guidance = make_guidance("cfg", guidance_scale, rescale=guidance_rescale)
        elif not isinstance(guidance, Guidance):
            raise TypeError(f"guidance must be a diffcore.guidance.Guidance, got {type(guidance).__name__}")
        elif guidance_scale is not None or guidance_rescale:
            raise ValueError("pass guidance or guidance_scale/guidance_rescale, not both")
        self.model = model
        self.param = parameterization
        self.timestep_dtype = timestep_dtype
        self.cond, self.uncond = cond, uncond
        self.guidance = guidance
        self.check_finite = check_finite
        self.sample_index, self.noise_mode = sample_index, noise_mode
        self.x0_limit = x0_limit if x0_limit is not None and x0_limit.active else None
        self.kernel_checked = False  # a sampling loop checks finiteness in its fused ops (flags)
        self.evaluations = 0
        self._deferred: list[tuple[int, Tensor]] = []
        self._guidance_cache: dict[torch.device, Tensor] = {}
        self._state: Tensor | None = None  # a Torch-side guidance method's memory (APG momentum)

    @property
    def guidance_scale(self) -> float | None:
        """The guidance scale w, or None without guidance."""
        return None if self.guidance is None else float(self.guidance.scale)

    @property
    def guidance_rescale(self) -> float:
        """Guidance rescale phi (0: off)."""
        return 0.0 if self.guidance is None else float(self.guidance.rescale)

    def _call(self, x: Tensor, t: Tensor, cond: Any) -> Tensor:
        out: Any = self.model(x, t) if cond is None else self.model(x, t, cond)
        if not isinstance(out, Tensor):
            # diffusers models return an output object whose `.sample` holds the tensor
            out = getattr(out, "sample", out[0] if isinstance(out, (tuple, list)) else out)
        return out

    def _validate(self, out: Tensor, x: Tensor, step: int) -> Tensor:
        if out.shape != x.shape:
            raise ValueError(f"step {step}: model output has shape {tuple(out.shape)} but x has shape {tuple(x.shape)}")
        if out.dtype != x.dtype:
            out = out.to(x.dtype)
        if self.check_finite and not self.kernel_checked:
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

    def step_extras(self, x: Tensor, seed: int | None) -> tuple[int, int, float | None, float | None, float]:
        """The fused ops' arguments after ``offset`` for a run on ``x``: noise keys and x0 limit
        (:func:`diffcore.ops.step_extras`), checked once per run."""
        return ops.step_extras(x, seed, self.sample_index, self.noise_mode, self.x0_limit)

    def raise_deferred(self) -> None:
        """Raise for the first step whose (device-side) finiteness check failed."""
        for step, ok in self.take_deferred():
            if not bool(ok):
                raise NonFiniteModelOutput(f"step {step}: model output contains NaN or inf")

    def take_deferred(self) -> list[tuple[int, Tensor]]:
        """The pending device-side finiteness checks, ``(step, finite)`` per model output with
        ``finite`` a 0-dim bool tensor, in call order; the pending list is emptied."""
        taken, self._deferred = self._deferred, []
        return taken

    def reset_deferred(self) -> None:
        """Drop the pending device-side finiteness checks (e.g. those of a warm-up run)."""
        self._deferred.clear()

    @property
    def constants(self) -> tuple[Tensor, ...]:
        """The device tensors this denoiser made and reuses across calls (the guidance ``[w, 1]``
        per device, a guidance method's state): a CUDA graph that reads them must keep them alive."""
        return (*self._guidance_cache.values(), *(() if self._state is None else (self._state,)))

    def time_table(self, times: list[list[float]], x: Tensor) -> Tensor:
        """(steps, B) model-time tensors built once, so a sampling loop makes none per step;
        ``times`` holds one list per program (one program: shared by the batch)."""
        col = torch.tensor(times, dtype=torch.float64).to(self.timestep_dtype).T  # (steps, P)
        if col.shape[1] == 1:
            col = col.expand(col.shape[0], x.shape[0])
        return col.contiguous().to(x.device)

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
        self,
        x: Tensor,
        level: Level,
        step: int = 0,
        t: Tensor | None = None,
        c_in: Tensor | float | None = None,
        guide: StepGuide | None = None,
    ) -> Prediction:
        """Evaluate the model at ``level`` on state ``x`` (B, ...); ``t`` and ``c_in`` override the
        (B,) time tensor and input scale derived from ``level`` (per-sample levels). ``step`` is
        the index of this model evaluation in the run (CFG-Zero*'s zero-init counts it; APG's
        momentum restarts at 0); ``guide`` is the step's precomputed guidance
        (:func:`diffcore.guidance.step_guides`), by default decided from ``level`` and ``step``."""
        a, b = self.param.x0_coeffs(level.alpha, level.std)
        if step == 0 and self._state is not None:  # a new run: forget the guidance method's memory
            self._state.zero_()
        if self.guidance is not None and guide is None:
            guide = self.guide([level], step, x)
        if guide is not None and guide.mode == "zero":
            return Prediction(a, b, out=torch.zeros_like(x))
        if c_in is None:
            c_in = self.param.input_scale(level.alpha, level.std)
        x_in = x if isinstance(c_in, float) and c_in == 1.0 else x * c_in
        if t is None:
            t = torch.full((x.shape[0],), level.t, dtype=self.timestep_dtype, device=x.device)
        self.evaluations += 1
        if guide is None or guide.mode == "cond":
            return Prediction(a, b, out=self._validate(self._call(x_in, t, self.cond), x, step))
        if self.uncond is None:
            uncond = self._call(x_in, t, None)
            cond = self._call(x_in, t, self.cond)
        else:
            both = self._call(torch.cat([x_in, x_in]), torch.cat([t, t]), _cat(self.uncond, self.cond))
            uncond, cond = both.chunk(2)
        uncond, cond = self._validate(uncond, x, step), self._validate(cond, x, step)
        pair, out = self._combine(uncond, cond, guide)
        return Prediction(a, b, out=out, uncond=uncond, cond=cond, guidance=pair)

    def output(self, x: Tensor, t: Tensor, c_in: Tensor | float, step: int) -> Tensor:
        """The checked model output on ``x`` without guidance: the host-light call of a sampling
        loop that made the (B,) times ``t`` and input scale ``c_in`` beforehand."""
        x_in = x if isinstance(c_in, float) and c_in == 1.0 else x * c_in
        self.evaluations += 1
        cond = self.cond
        out: Any = self.model(x_in, t) if cond is None else self.model(x_in, t, cond)
        # the common case (a tensor of x's shape and dtype, finiteness left to the fused op's flag)
        # needs no further call; a sampling loop spells this method out the same way
        if type(out) is not Tensor or out.shape != x.shape or out.dtype != x.dtype or not self.kernel_checked:
            return self.checked_output(out, x, step)
        return out

    def checked_output(self, out: Any, x: Tensor, step: int) -> Tensor:
        """A raw model output at evaluation ``step`` on ``x``: a diffusers output object unwrapped,
        its shape, dtype and (unless the fused op checks it) finiteness checked."""
        if not isinstance(out, Tensor):
            out = getattr(out, "sample", out[0] if isinstance(out, (tuple, list)) else out)
        return self._validate(out, x, step)

    def guide(self, levels: Sequence[Level], step: int, x: Tensor) -> StepGuide:
        """The guidance of a call at ``levels`` (one, or one per sample) as evaluation ``step``,
        without CFG++ factors; constant guidance reuses one device ``[w, 1]``."""
        g = self.guidance
        if g is None:
            raise ValueError("this denoiser has no guidance")
        on = {g.active_at(lv) for lv in levels}
        if len(on) == 2:  # samples on both sides of the interval
            return step_guides(g, [[lv] for lv in levels], [[1.0]] * len(levels), x, first=step)[0]
        if step < g.zero_steps:
            return StepGuide("zero")
        return StepGuide("guided", pair=self._guidance_const(x.device)) if on == {True} else StepGuide("cond")

    def _combine(self, u: Tensor, c: Tensor, guide: StepGuide) -> tuple[Tensor | None, Tensor | None]:
        """``(pair, None)``: the op's ``[w, r]``; or ``(None, out)`` for a method computed in Torch."""
        g = self.guidance
        assert g is not None
        if not g.fused:
            out = g.combine(u, c, self._method_state(u), guide.active)
            if g.rescale:
                out = rescaled_output(out, c, g.rescale)
            uf = u.to(out.dtype)
            if guide.factor is not None:  # CFG++: u + f (m_g - u)
                out = uf + guide.factor.to(out.dtype).reshape(-1, *([1] * (u.dim() - 1))) * (out - uf)
            if guide.active is not None:
                out = torch.where(guide.active.reshape(-1, *([1] * (u.dim() - 1))), out, c.to(out.dtype))
            return None, out.to(u.dtype)
        if g.constant:
            return guide.pair, None  # [w * f, 1] from the table: CFG++ factor and interval included
        if g.per_sample:
            pair = g.pair(u, c)
            if g.rescale:
                pair = rescaled(pair, u, c, g.rescale)
        else:  # CFG with rescale, as Lin et al. 2023
            r = ops.cfg_rescale_factor(u, c, self._guidance_const(u.device)[0], g.rescale)
            pair = torch.stack([torch.full_like(r, float(g.scale)), r], dim=1)
        if guide.factor is not None:
            pair = apply_factor(pair, guide.factor)
        if guide.active is not None:
            pair = torch.where(guide.active[:, None], pair, torch.ones_like(pair))
        return pair, None

    def _method_state(self, u: Tensor) -> Tensor:
        """The (B, N) state of a Torch-side method: made once, zeroed by every evaluation 0."""
        dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
        shape = (u.shape[0], u[0].numel())
        st = self._state
        if st is None or st.shape != shape or st.dtype != dtype or st.device != u.device:
            self._state = st = torch.zeros(shape, dtype=dtype, device=u.device)
        return st

    def predict_x0(self, x: Tensor, level: Level | Sequence[Level], step: int = 0) -> Tensor:
        """The model's x0 estimate on state ``x`` (B, ...) at ``level`` (one for the batch, or a
        sequence with one per sample); ``x`` is not modified.

        It is the fused sampler step (:func:`diffcore.ops.sampler_step`, or
        :func:`~diffcore.ops.cfg_sampler_step` with guidance) run once on a copy of ``x`` with
        the row ``[c_x, c_x0, c_z] = [0, 1, 0]``: ``x0 = a*x + b*out`` with ``out`` the model
        output, or ``r*(uncond + w*(cond - uncond))`` under guidance (rescale factor r of
        Lin et al. 2023), computed exactly as every sampler step computes it.
        """
        levels = [level] if isinstance(level, Level) else list(level)
        if len(levels) == 1:
            pred = self(x, levels[0], step)
            heads = [(pred.a, pred.b)]
        elif len(levels) == x.shape[0]:
            t = self.time_table([[lv.t] for lv in levels], x)[0]
            c_in = self.scale_table([[lv] for lv in levels], x)[0]
            guide = None if self.guidance is None else self.guide(levels, step, x)
            pred = self(x, levels[0], step, t=t, c_in=c_in, guide=guide)
            heads = [self.param.x0_coeffs(lv.alpha, lv.std) for lv in levels]
        else:
            raise ValueError(f"got {len(levels)} levels for a batch of {x.shape[0]}; expected 1 or {x.shape[0]}")
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        coeffs = torch.tensor([[a, b, 0.0, 1.0, 0.0] for a, b in heads], dtype=dtype).to(x.device)
        x0 = x.clone()
        co, limit = coeffs[0] if len(heads) == 1 else coeffs, self.x0_limit
        if pred.out is not None:
            ops.sampler_step(x0, pred.out, co, x0_limit=limit)
        else:
            assert pred.uncond is not None and pred.cond is not None and pred.guidance is not None
            ops.cfg_sampler_step(x0, pred.uncond, pred.cond, pred.guidance, co, x0_limit=limit)
        self.raise_deferred()
        return x0

    def _guidance_const(self, device: torch.device) -> Tensor:
        """``[w, 1]`` on ``device``, made once: a host->device copy cannot happen inside a CUDA graph."""
        cached = self._guidance_cache.get(device)
        if cached is None:
            w = float(self.guidance.scale)  # type: ignore[union-attr]
            cached = torch.tensor([w, 1.0], dtype=torch.float32).to(device)
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
