"""Guidance methods: how the unconditional and conditional model outputs ``u``, ``c`` make the
guided output ``m`` that the fused step turns into x0.

Each method is, per sample and per step, a linear combination of ``u`` and ``c``, so it folds
into the ``[w, r]`` of :func:`diffcore.ops.cfg_sampler_step` (``m = r * (u + w * (c - u))``):

* :class:`CFG`, classifier-free guidance (Ho & Salimans 2022) in diffusers' form
  ``m = u + w (c - u)``: ``[w, 1]``, a constant.
* :class:`CFGZeroStar` (Fan et al. 2025, "CFG-Zero*"): the unconditional output scaled by the
  per-sample optimum ``s* = <c, u> / ||u||^2`` (eq. 6), ``m = s* u + w (c - s* u)``, so
  ``r = w + (1 - w) s*`` and ``w' = w / r``; the first ``zero_init_steps`` model evaluations are
  skipped with output 0 (sec. 4.2; x0 = a*x, no model call).
* :class:`APG`, adaptive projected guidance (Sadat et al. 2024, eq. 8-11): the difference
  ``D = c - u`` clipped to norm ``norm_threshold``, its component parallel to ``c`` scaled by
  ``eta``: ``m = u + w (D - (1 - eta) p c)`` with ``p = <D, c> / ||c||^2``, i.e.
  ``r = 1 - w (1 - eta) p`` and ``w' = (w k - w (1 - eta) p) / r`` (k the clip factor). With
  ``momentum`` the difference is a running average over steps, which is not a combination of
  this step's ``u`` and ``c``: ``m`` is then computed in Torch and stepped by the plain fused op.

Common settings: ``rescale`` (phi of Lin et al. 2023, applied to the guided output) and
``interval``, the VE noise levels ``lo < sigma <= hi`` where guidance applies (Kynkäänniemi et
al. 2024); outside it a step uses the conditional output alone and skips the unconditional pass.
At scale 1 every method is the conditional output and the unconditional pass is skipped (as
diffusers' guiders and pipelines do), except at CFG++ steps. A ``|r|`` that would be 0 is kept at
``1e-12`` (it changes ``m`` by ``1e-12 u``).

CFG++ samplers (:mod:`diffcore.samplers.cfg_pp`) mix the guided and the unconditional x0 with
a per-step factor ``f``; ``m = u + f (m_g - u)`` is again ``[w, r]``: ``r' = 1 + f (r - 1)``,
``w' = f r w / r'`` (see :func:`apply_factor`). :func:`step_guides` decides everything static
per step on the host and makes its device tensors once, before a sampling loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from diffcore import ops
from diffcore.timesteps import Level

GUARD = 1e-12  # smallest |r| a folded pair may have


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Guidance:
    """Settings every guidance method has (see the module docstring).

    Args:
        scale: guidance scale w (CFG++ samplers: lambda, ComfyUI's cfg for them).
        rescale: guidance rescale phi in [0, 1] (Lin et al. 2023); 0 is off.
        interval: ``(lo, hi)`` in VE sigma; guidance only where ``lo < sigma <= hi``.
    """

    scale: float
    rescale: float = 0.0
    interval: tuple[float, float] | None = None

    name: ClassVar[str] = "cfg"
    per_sample: ClassVar[bool] = False  # whether [w, r] depends on u and c

    def __post_init__(self) -> None:
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)):
            raise TypeError(f"guidance_scale must be a number, got {type(self.scale).__name__}")
        if not math.isfinite(self.scale):
            raise ValueError(f"guidance_scale={self.scale} must be finite")
        if not 0.0 <= _number("guidance_rescale", self.rescale) <= 1.0:
            raise ValueError(f"guidance_rescale={self.rescale} must be in [0, 1]")
        if self.interval is not None:
            lo, hi = self._interval(self.interval)
            object.__setattr__(self, "interval", (lo, hi))

    @staticmethod
    def _interval(interval: object) -> tuple[float, float]:
        if not isinstance(interval, (tuple, list)) or len(interval) != 2:
            raise ValueError(f"guidance_interval={interval!r} must be (lo, hi) VE sigmas")
        lo, hi = (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan for v in interval)
        if not 0.0 <= lo < hi:  # NaN fails too; hi may be inf
            raise ValueError(f"guidance_interval={tuple(interval)!r} must be (lo, hi) with 0 <= lo < hi")
        return lo, hi

    @property
    def fused(self) -> bool:
        """Whether ``m`` folds into the op's per-sample ``[w, r]`` (else it is computed in Torch)."""
        return True

    @property
    def constant(self) -> bool:
        """Whether ``[w, r]`` is the constant ``[scale, 1]`` at every guided step."""
        return not self.per_sample and not self.rescale

    @property
    def zero_steps(self) -> int:
        """Model evaluations at the start of a run whose output is zero (CFG-Zero*)."""
        return 0

    def active(self, sigma: float) -> bool:
        """Whether ``sigma`` (VE) is in the guidance interval."""
        return self.interval is None or self.interval[0] < sigma <= self.interval[1]

    def active_at(self, level: Level, reads_uncond: bool = False) -> bool:
        """Whether a step at ``level`` needs the unconditional pass: in the interval, and a scale
        other than 1 (at 1 every method is the conditional output, as diffusers' guiders have it)
        or a CFG++ step (``reads_uncond``), which renoises with the unconditional x0 at any scale."""
        if self.scale == 1.0 and not reads_uncond:
            return False
        return self.active(math.inf if level.alpha == 0 else level.std / level.alpha)

    def pair(self, u: Tensor, c: Tensor) -> Tensor:
        """Per-sample ``[w, r]``, (B, 2) in the accumulation dtype of ``u`` (before rescale)."""
        w = torch.full((u.shape[0],), float(self.scale), dtype=_acc(u), device=u.device)
        return torch.stack([w, torch.ones_like(w)], dim=1)

    def combine(self, u: Tensor, c: Tensor, state: Tensor, active: Tensor | None = None) -> Tensor:
        """The guided output in Torch, for methods that do not fuse (``fused`` False); ``state``
        (B, N) in the accumulation dtype carries the method's memory across steps, zero at step 0."""
        raise NotImplementedError(f"guidance {self.name!r} fuses into the op")


@dataclass(frozen=True)
class CFG(Guidance):
    """Classifier-free guidance, ``m = u + w (c - u)`` (Ho & Salimans 2022)."""

    name: ClassVar[str] = "cfg"


@dataclass(frozen=True)
class CFGZeroStar(Guidance):
    """CFG-Zero* (Fan et al. 2025): optimized scale s* per sample and ``zero_init_steps``
    evaluations with output 0 (diffusers' ClassifierFreeZeroStarGuidance)."""

    zero_init_steps: int = 1
    name: ClassVar[str] = "cfg_zero_star"
    per_sample: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if (
            isinstance(self.zero_init_steps, bool)
            or not isinstance(self.zero_init_steps, int)
            or self.zero_init_steps < 0
        ):
            raise ValueError(f"zero_init_steps={self.zero_init_steps!r} must be an integer >= 0")

    @property
    def zero_steps(self) -> int:
        return self.zero_init_steps

    def pair(self, u: Tensor, c: Tensor) -> Tensor:
        """``r = w + (1 - w) s*``, ``w' = w / r`` with ``s* = <c, u> / (||u||^2 + 1e-8)`` (eq. 6)."""
        uf, cf = u.flatten(1).to(_acc(u)), c.flatten(1).to(_acc(u))
        s = (cf * uf).sum(1) / ((uf * uf).sum(1) + 1e-8)
        w = float(self.scale)
        return _folded(torch.full_like(s, w), w + (1.0 - w) * s)


@dataclass(frozen=True)
class APG(Guidance):
    """Adaptive projected guidance (Sadat et al. 2024; diffusers' AdaptiveProjectedGuidance with
    its norms over every non-batch dimension).

    Args:
        eta: weight of the difference's component parallel to ``c`` (1: plain CFG direction).
        norm_threshold: clip the difference to this L2 norm per sample (0: off).
        momentum: beta of the running average of the difference (0: off; the paper uses < 0).
    """

    eta: float = 1.0
    norm_threshold: float = 15.0
    momentum: float = 0.0
    name: ClassVar[str] = "apg"
    per_sample: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _number("eta", self.eta)
        _number("momentum", self.momentum)
        if _number("norm_threshold", self.norm_threshold) < 0:
            raise ValueError(f"norm_threshold={self.norm_threshold} must be >= 0 (0: off)")

    @property
    def fused(self) -> bool:
        return self.momentum == 0

    def _clip(self, d: Tensor) -> Tensor:
        """Per-sample clip factor ``min(1, threshold / ||d||)`` of (B, N) differences."""
        if self.norm_threshold <= 0:
            return torch.ones(d.shape[0], dtype=d.dtype, device=d.device)
        return torch.clamp(self.norm_threshold / d.norm(dim=1), max=1.0)

    def _parallel(self, d: Tensor, c: Tensor) -> Tensor:
        """``<d, c> / ||c||^2`` per sample (0 for c = 0)."""
        return (d * c).sum(1) / (c * c).sum(1).clamp_min(1e-24)

    def pair(self, u: Tensor, c: Tensor) -> Tensor:
        """``r = 1 - w (1 - eta) p``, ``w' = (w k - w (1 - eta) p) / r`` (module docstring)."""
        uf, cf = u.flatten(1).to(_acc(u)), c.flatten(1).to(_acc(u))
        d = cf - uf
        k = self._clip(d)
        p = k * self._parallel(d, cf)
        w = float(self.scale)
        return _folded(w * k - w * (1.0 - self.eta) * p, 1.0 - w * (1.0 - self.eta) * p)

    def combine(self, u: Tensor, c: Tensor, state: Tensor, active: Tensor | None = None) -> Tensor:
        """``u + w (D - (1 - eta) p c)`` with ``D = c - u + momentum * D_previous`` the running
        average in ``state`` (B, N), updated in place (only where ``active``, if given)."""
        cf = c.flatten(1).to(state.dtype)
        new = state * self.momentum + (cf - u.flatten(1).to(state.dtype))
        state.copy_(new if active is None else torch.where(active[:, None], new, state))
        d = state * self._clip(state)[:, None]
        update = d - (1.0 - self.eta) * self._parallel(d, cf)[:, None] * cf
        return (u.flatten(1).to(state.dtype) + float(self.scale) * update).reshape(u.shape)


GUIDANCE: dict[str, type[Guidance]] = {g.name: g for g in (CFG, CFGZeroStar, APG)}


def options_of(method: type[Guidance]) -> dict[str, Any]:
    """A method's own options and their defaults (those beyond scale, rescale and interval)."""
    common = {f.name for f in fields(Guidance)}
    return {f.name: f.default for f in fields(method) if f.name not in common}


def make_guidance(
    method: str | Guidance = "cfg",
    scale: float | None = None,
    *,
    rescale: float = 0.0,
    interval: Sequence[float] | None = None,
    options: dict[str, Any] | None = None,
) -> Guidance | None:
    """The guidance of ``diffcore.sample``'s arguments: None without ``scale`` (no guidance), a
    method by name with its ``options``, or a :class:`Guidance` passed through (its settings then
    live in the object)."""
    if isinstance(method, Guidance):
        if scale is not None or rescale or interval is not None or options:
            raise ValueError("guidance is a Guidance object: set scale, rescale, interval and options inside it")
        return method
    if not isinstance(method, str) or method not in GUIDANCE:
        raise ValueError(f"guidance={method!r}: expected one of {sorted(GUIDANCE)} or a Guidance object")
    if scale is None:
        if rescale:
            raise ValueError(f"guidance_rescale={rescale} needs guidance_scale")
        if interval is not None or options or method != "cfg":
            raise ValueError(f"guidance={method!r}, guidance_interval and guidance_options need guidance_scale")
        return None
    cls = GUIDANCE[method]
    options = dict(options or {})
    unknown = sorted(set(options) - set(options_of(cls)))
    if unknown:
        raise TypeError(
            f"guidance {method!r} got unknown option(s) {unknown}; it accepts: {', '.join(options_of(cls)) or 'none'}"
        )
    lo_hi = None if interval is None else Guidance._interval(tuple(interval))  # checked: (lo, hi), lo < hi
    return cls(scale=scale, rescale=rescale, interval=lo_hi, **options)


# --------------------------------------------------------------------------- device side


def _acc(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _folded(rw: Tensor, r: Tensor) -> Tensor:
    """``[w, r]`` (B, 2) of ``m = (r - rw) u + rw c``, with ``|r| >= GUARD``."""
    r = torch.where(r.abs() < GUARD, torch.full_like(r, GUARD).copysign(r), r)
    return torch.stack([rw / r, r], dim=1)


def apply_factor(pair: Tensor, f: Tensor) -> Tensor:
    """``[w', r']`` of ``m = u + f (m_g - u)`` where ``m_g`` has ``pair = [w, r]`` (B, 2) and ``f``
    is the CFG++ factor, () or (B,): ``r' = 1 + f (r - 1)``, ``w' = f r w / r'``."""
    w, r = pair[:, 0], pair[:, 1]
    f = f.to(pair.dtype)
    return _folded(f * r * w, 1.0 + f * (r - 1.0))


def rescaled(pair: Tensor, u: Tensor, c: Tensor, phi: float) -> Tensor:
    """``pair`` with the guidance-rescale factor of Lin et al. 2023 folded into r:
    ``phi * std(c) / std(m) + 1 - phi`` with ``std(m) = |r| std(u + w (c - u))``."""
    w, r = pair[:, 0], pair[:, 1]
    ratio = ops.cfg_rescale_factor(u, c, w, 1.0)
    factor = phi * ratio.to(pair.dtype) / r.abs() + (1.0 - phi)
    return torch.stack([w, r * factor], dim=1)


def rescaled_output(m: Tensor, c: Tensor, phi: float) -> Tensor:
    """``m * (phi * std(c) / std(m) + 1 - phi)`` per sample, for an output made in Torch."""
    dims = list(range(1, m.dim()))
    ratio = c.to(m.dtype).std(dim=dims, keepdim=True) / m.std(dim=dims, keepdim=True)
    return m * (phi * ratio + (1.0 - phi))


@dataclass(frozen=True)
class StepGuide:
    """What guidance does at one model evaluation, decided before the loop (device tensors only).

    ``mode``: ``"guided"`` (both passes), ``"cond"`` (outside the interval: the conditional pass
    alone) or ``"zero"`` (CFG-Zero* zero-init: no model call, output 0). ``pair``: the op's
    ``[w, r]`` for a constant method, scale times the CFG++ factor where guided and ``[1, 1]``
    where not, (2,) or (B, 2). ``factor``: the CFG++ factor, (1,) or (B,), None when 1 everywhere.
    ``active``: (B,) bool where the batch's samples differ in interval membership, else None.
    ``side``: ``[w, r]`` of the unconditional-x0 side op, ``[0, 1]`` and ``[1, 1]`` where not guided.
    """

    mode: str
    pair: Tensor | None = None
    factor: Tensor | None = None
    active: Tensor | None = None
    side: Tensor | None = None


def step_guides(
    guidance: Guidance,
    levels: Sequence[Sequence[Level]],
    factors: Sequence[Sequence[float]],
    x: Tensor,
    first: int = 0,
    reads_uncond: Sequence[bool] | None = None,
) -> list[StepGuide]:
    """One :class:`StepGuide` per model evaluation, from the ``levels`` and CFG++ ``factors`` of
    each program, shape (programs, steps) with programs 1 (shared) or B; ``first`` is the index of
    the first evaluation (for zero-init), ``reads_uncond`` per step whether it is a CFG++ step.
    Every device tensor comes from one host->device copy."""
    fac = np.asarray(factors, dtype=np.float64)
    reads = list(reads_uncond) if reads_uncond is not None else [False] * fac.shape[1]
    act = np.array([[guidance.active_at(lv, r) for lv, r in zip(row, reads)] for row in levels], dtype=bool).reshape(
        fac.shape
    )
    f_eff = np.where(act, fac, 1.0)
    ones = np.ones_like(f_eff)
    pair = np.stack([np.where(act, guidance.scale * f_eff, 1.0), ones], -1)  # (P, S, 2)
    side = np.stack([np.where(act, 0.0, 1.0), ones], -1)
    host = np.concatenate([a.swapaxes(0, 1).reshape(-1) for a in (pair, side, f_eff[..., None], act[..., None])])
    dev = torch.from_numpy(host).to(device=x.device, dtype=_acc(x))
    n_prog, steps = fac.shape
    pair_d, side_d, f_d, act_d = (t.reshape(steps, n_prog, -1) for t in dev.split([2 * fac.size] * 2 + [fac.size] * 2))
    shared = n_prog == 1
    guides = []
    for k in range(steps):
        on = act[:, k]
        mode = "zero" if first + k < guidance.zero_steps else ("guided" if on.any() else "cond")
        guides.append(
            StepGuide(
                mode,
                pair=pair_d[k, 0] if shared else pair_d[k],
                factor=None if np.all(f_eff[:, k] == 1.0) else f_d[k, :, 0],
                active=None if on.all() else act_d[k, :, 0] > 0.5,
                side=side_d[k, 0] if shared else side_d[k],
            )
        )
    return guides
