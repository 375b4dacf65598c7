"""The fused ops every sampler and the trainer go through.

Three implementations share one definition: :mod:`diffcore.ops.reference` (pure Torch, the
canonical math), the C++ CPU kernels and the CUDA kernels of the compiled extension
``diffcore._C``. This module validates inputs where they enter, then dispatches to the active
backend. ``DIFFCORE_KERNELS=reference`` forces the Torch fallback; ``backend()`` says which runs.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from diffcore.ops import philox, reference
from diffcore.x0_limit import X0Limit

__all__ = [
    "all_finite",
    "backend",
    "cfg_rescale_factor",
    "check_noise_source",
    "check_seed",
    "check_state",
    "check_step",
    "step_kernels",
    "cfg_sampler_step",
    "coeff_width",
    "forward_noise",
    "noise_mode_code",
    "philox_noise_like",
    "sampler_step",
    "start_state",
    "step_extras",
]

_KERNELS_ENV = "DIFFCORE_KERNELS"
MAX_HISTORY_SLOTS = 4  # the native kernels' limit (csrc/ops.h kMaxSlots); the reference enforces it too
_native_state: dict[str, object] = {}


def _native_module() -> object | None:
    """The compiled extension, or None (with one warning) when it is missing or broken."""
    if "module" in _native_state:
        return _native_state["module"]
    module = None
    try:
        from diffcore import _C
        from diffcore.ops import _fake  # noqa: F401  (fake kernels for torch.compile / meta)

        module = _C
    except Exception as exc:  # a missing or broken build falls back to the reference kernels
        warnings.warn(
            f"diffcore: native kernels unavailable ({type(exc).__name__}: {exc}); using the Torch reference kernels",
            RuntimeWarning,
            stacklevel=3,
        )
    _native_state["module"] = module
    return module


def backend(device: torch.device | str = "cpu") -> str:
    """Name of the backend used for tensors on ``device``: native-cpu, native-cuda or reference."""
    choice = os.environ.get(_KERNELS_ENV, "auto")
    if choice not in ("auto", "native", "reference"):
        raise ValueError(f"{_KERNELS_ENV}={choice!r}: expected 'auto', 'native' or 'reference'")
    if choice == "reference":
        return "reference"
    dev = torch.device(device)
    module = _native_module()
    if module is None or dev.type not in ("cpu", "cuda") or not getattr(module, f"has_{dev.type}")():
        if choice == "native":
            raise RuntimeError(f"{_KERNELS_ENV}=native but no native kernels for device {dev}")
        return "reference"
    return f"native-{dev.type}"


def _native(device: torch.device) -> bool:
    return backend(device) != "reference"


def coeff_width(history_slots: int, writes: int) -> int:
    """Length of one coefficient vector: ``[a, b]`` plus ``1 + writes`` rows of ``3 + history_slots``."""
    return 2 + (1 + writes) * (3 + history_slots)


def _check_float(name: str, t: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")


def _check_like(name: str, t: Tensor, x: Tensor) -> None:
    _check_float(name, t)
    if t.shape != x.shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)} but x has shape {tuple(x.shape)}")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    if t.dtype != x.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but x has dtype {x.dtype}")


def _check_coeffs(name: str, c: Tensor, x: Tensor, width: int, per_row: int | None = None) -> None:
    _check_float(name, c)
    if c.device != x.device:
        raise ValueError(f"{name} is on {c.device} but x is on {x.device}")
    if c.dim() == 1 and c.shape[0] == width:
        return
    if c.dim() == 2 and c.shape == (x.shape[0], width):
        return
    raise ValueError(
        f"{name} has shape {tuple(c.shape)}; expected ({width},) or (batch={x.shape[0]}, {width})"
        + (f" for {per_row} history slots" if per_row is not None else "")
    )


def _span(t: Tensor) -> tuple[int, int]:
    """[first, last] byte addresses ``t`` touches."""
    last = sum((n - 1) * st for n, st in zip(t.shape, t.stride()) if n > 1)
    return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size() - 1


def _overlapping(a: Tensor, b: Tensor) -> bool:
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() and a0 <= b1 and b0 <= a1


def _self_overlapping(t: Tensor) -> bool:
    return any(st == 0 and n > 1 for n, st in zip(t.shape, t.stride()))


def check_state(x: Tensor) -> None:
    """Raise unless ``x`` can be a fused step's state: a non-empty floating-point (B, ...) tensor
    the step may update in place (no leaf that requires grad under grad mode, no self-overlap)."""
    _check_float("x", x)
    if x.dim() < 1:
        raise ValueError("x must have a batch dimension")
    if x.requires_grad and x.is_leaf and torch.is_grad_enabled():
        raise RuntimeError(
            "x is a leaf tensor that requires grad and the step updates it in place; "
            "sample under torch.no_grad() or pass x.detach()"
        )
    if _self_overlapping(x):
        raise ValueError(f"x has overlapping memory (stride {tuple(x.stride())}); the step writes it in place")


def _check_step_args(
    x: Tensor, coeffs: Tensor, history: Tensor | None, noise: Tensor | None, writes: Sequence[int]
) -> list[int]:
    check_state(x)
    k = 0
    if history is not None:
        _check_float("history", history)
        if history.shape[1:] != x.shape:
            raise ValueError(
                f"history has shape {tuple(history.shape)}; expected (slots, {', '.join(map(str, x.shape))})"
            )
        if history.device != x.device or history.dtype != x.dtype:
            raise ValueError(f"history is {history.dtype} on {history.device}; x is {x.dtype} on {x.device}")
        k = history.shape[0]
        if _self_overlapping(history):
            raise ValueError(
                f"history has overlapping memory (stride {tuple(history.stride())}); each slot needs its own storage"
            )
        if _overlapping(x, history):
            raise ValueError("x shares memory with history; the step reads every slot before it writes x")
        if k > MAX_HISTORY_SLOTS:
            raise ValueError(f"history has {k} slots; the kernels support at most {MAX_HISTORY_SLOTS}")
    if noise is not None:
        _check_like("noise", noise, x)
    writes = [int(w) for w in writes]
    if writes and history is None:
        raise ValueError(f"writes={writes} needs a history tensor")
    if len(set(writes)) != len(writes) or any(not 0 <= w < k for w in writes):
        raise ValueError(f"writes={writes}: slots must be distinct and in [0, {k})")
    _check_coeffs("coeffs", coeffs, x, coeff_width(k, len(writes)), k)
    return writes


def forward_noise(x0: Tensor, noise: Tensor, t: Tensor, table: Tensor) -> tuple[Tensor, Tensor]:
    """Noise ``x0`` at per-sample timesteps and return ``(x_t, target)`` in one pass.

    Args:
        x0: clean batch (B, ...), floating point.
        noise: standard-normal noise, same shape/dtype/device as ``x0``.
        t: (B,) integer row indices into ``table``.
        table: (T, 4) rows ``[c_x0, c_noise, target_x0, target_noise]`` (see
            :meth:`diffcore.parameterization.Parameterization.forward_table`).
    """
    _check_float("x0", x0)
    _check_like("noise", noise, x0)
    if not isinstance(t, Tensor) or t.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"t must be an int32/int64 tensor, got {getattr(t, 'dtype', type(t).__name__)}")
    if t.shape != (x0.shape[0],):
        raise ValueError(f"t has shape {tuple(t.shape)}; expected ({x0.shape[0]},)")
    _check_float("table", table)
    if table.dim() != 2 or table.shape[1] != 4:
        raise ValueError(f"table has shape {tuple(table.shape)}; expected (T, 4)")
    if t.device != x0.device or table.device != x0.device:
        raise ValueError(f"t ({t.device}) and table ({table.device}) must be on x0's device {x0.device}")
    if x0.device.type == "cpu":  # a cheap check on the host; on CUDA it would force a sync
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= table.shape[0]:
            raise IndexError(f"t has values in [{lo}, {hi}] but table has {table.shape[0]} rows")
    if _native(x0.device):
        return torch.ops.diffcore.forward_noise(x0, noise, t.long(), table)
    return reference.forward_noise(x0, noise, t.long(), table)


def _check_seed(seed: int | None, offset: int, noise: Tensor | None) -> int:
    if seed is None:
        return -1
    if noise is not None:
        raise ValueError("pass either a noise tensor or a seed, not both")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed={seed!r} must be an integer in [0, 2**63)")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < 2**63:
        raise ValueError(f"offset={offset!r} must be an integer in [0, 2**63)")
    return seed


def noise_mode_code(mode: str) -> int:
    """The fused ops' ``noise_mode`` integer of a mode name (``exact`` 0, ``fast`` 1)."""
    if mode not in philox.NOISE_MODES:
        raise ValueError(f"noise_mode={mode!r}: expected one of {philox.NOISE_MODES}")
    return philox.NOISE_MODES.index(mode)


def _check_flag(nonfinite: Tensor | None, x: Tensor) -> None:
    if nonfinite is None:
        return
    if not isinstance(nonfinite, Tensor) or nonfinite.dtype != torch.int32 or nonfinite.numel() != 1:
        raise TypeError(f"nonfinite must be a one-element int32 tensor, got {nonfinite!r}")
    if nonfinite.device != x.device:
        raise ValueError(f"nonfinite is on {nonfinite.device} but x is on {x.device}")


def step_extras(
    x: Tensor,
    seed: int | None,
    sample_index: int = 0,
    noise_mode: str = philox.DEFAULT_NOISE_MODE,
    x0_limit: X0Limit | None = None,
) -> tuple[int, int, float | None, float | None, float]:
    """Validate the noise keys and the x0 limit of a step on ``x`` and return the op arguments
    that follow ``offset``: ``(sample_index, noise_mode, x0_clip, x0_ratio, x0_max)``."""
    code = noise_mode_code(noise_mode)
    if seed is not None:
        batch = x.shape[0] if x.dim() else 1
        philox.check_keys(batch, x.numel() // max(batch, 1), sample_index, noise_mode)
    if x0_limit is not None and not isinstance(x0_limit, X0Limit):
        raise TypeError(f"x0_limit must be a diffcore.X0Limit, got {type(x0_limit).__name__}")
    limit = x0_limit.op_args() if x0_limit is not None else (None, None, 1.0)
    return (sample_index, code, *limit)


def sampler_step(
    x: Tensor,
    model_out: Tensor,
    coeffs: Tensor,
    history: Tensor | None = None,
    noise: Tensor | None = None,
    writes: Sequence[int] = (),
    *,
    seed: int | None = None,
    offset: int = 0,
    sample_index: int = 0,
    noise_mode: str = philox.DEFAULT_NOISE_MODE,
    x0_limit: X0Limit | None = None,
    nonfinite: Tensor | None = None,
) -> Tensor:
    """Fused sampler step, in place: ``x0 = limit(a*x + b*model_out)``, then
    ``x <- c_x*x + c_x0*x0 + sum_j c_hj*history[j] + c_z*z`` and, for each ``writes[r]``,
    ``history[writes[r]] <- (row r+1 of the same form)``; all rows read the pre-step values.

    ``coeffs`` is ``(coeff_width(K, len(writes)),)`` or per sample ``(B, width)``; float32/64 on
    ``x``'s device. ``z`` is ``noise``, or the Philox draw ``(seed, offset)`` generated inside
    the kernel, sample b keyed ``sample_index + b`` (:mod:`diffcore.ops.philox`, ``noise_mode``
    ``exact`` or ``fast``), or 0. ``x0_limit``: clip or dynamic thresholding of x0
    (:class:`diffcore.X0Limit`). ``nonfinite``: a one-element int32 tensor the op sets to 1 when
    an x0 (before the limit) is NaN or inf, with no host sync. fp16/bf16 accumulate in fp32.
    Returns ``x``.
    """
    writes = _check_step_args(x, coeffs, history, noise, writes)
    _check_like("model_out", model_out, x)
    s = _check_seed(seed, offset, noise)
    extras = step_extras(x, seed, sample_index, noise_mode, x0_limit)
    _check_flag(nonfinite, x)
    step_kernels(x.device)[0](x, model_out, coeffs, history, noise, writes, s, offset, *extras, nonfinite)
    return x


def cfg_sampler_step(
    x: Tensor,
    uncond: Tensor,
    cond: Tensor,
    guidance: Tensor,
    coeffs: Tensor,
    history: Tensor | None = None,
    noise: Tensor | None = None,
    writes: Sequence[int] = (),
    *,
    seed: int | None = None,
    offset: int = 0,
    sample_index: int = 0,
    noise_mode: str = philox.DEFAULT_NOISE_MODE,
    x0_limit: X0Limit | None = None,
    nonfinite: Tensor | None = None,
) -> Tensor:
    """:func:`sampler_step` with classifier-free guidance folded in: the model output is
    ``r * (uncond + w * (cond - uncond))`` where ``guidance = [w, r]``, shape (2,) or (B, 2)."""
    writes = _check_step_args(x, coeffs, history, noise, writes)
    _check_like("uncond", uncond, x)
    _check_like("cond", cond, x)
    _check_coeffs("guidance", guidance, x, 2)
    s = _check_seed(seed, offset, noise)
    extras = step_extras(x, seed, sample_index, noise_mode, x0_limit)
    _check_flag(nonfinite, x)
    step_kernels(x.device)[1](x, uncond, cond, guidance, coeffs, history, noise, writes, s, offset, *extras, nonfinite)
    return x


def cfg_rescale_factor(uncond: Tensor, cond: Tensor, scale: Tensor | float, phi: float) -> Tensor:
    """Per-sample guidance-rescale factor ``phi*std(cond)/std(cfg) + (1-phi)``, shape (B,)."""
    _check_float("uncond", uncond)
    _check_like("cond", cond, uncond)
    if not 0.0 <= phi <= 1.0:
        raise ValueError(f"guidance rescale phi={phi} must be in [0, 1]")
    scale_t = scale if isinstance(scale, Tensor) else torch.as_tensor(scale, dtype=torch.float32, device=uncond.device)
    if scale_t.device != uncond.device:
        raise ValueError(f"scale is on {scale_t.device} but uncond is on {uncond.device}")
    if scale_t.dim() not in (0, 1) or (scale_t.dim() == 1 and scale_t.shape[0] != uncond.shape[0]):
        raise ValueError(f"scale has shape {tuple(scale_t.shape)}; expected a scalar or ({uncond.shape[0]},)")
    if _native(uncond.device):
        return torch.ops.diffcore.cfg_rescale_factor(uncond, cond, scale_t, float(phi))
    return reference.cfg_rescale_factor(uncond, cond, scale_t, float(phi))


StepFn = Callable[..., None]


def check_seed(seed: int | None, offset: int = 0) -> None:
    """Raise unless ``seed`` is None or a valid Philox seed (and ``offset`` a valid offset)."""
    _check_seed(seed, offset, None)


def check_noise_source(seed: int | None, generator: torch.Generator | None) -> None:
    """Raise unless at most one noise source is given: ``generator`` (torch RNG) or ``seed``
    (in-kernel Philox), and ``seed`` is a valid Philox seed."""
    if seed is not None and generator is not None:
        raise ValueError("pass either generator (torch RNG noise) or seed (in-kernel Philox noise), not both")
    check_seed(seed)


_TAIL_DEFAULTS = (0, 1, None, None, 1.0, None)  # sample_index, noise_mode, x0_clip, x0_ratio, x0_max, nonfinite


def _reference_tail(
    x: Tensor, noise: Tensor | None, seed: int, offset: int, extra: tuple[object, ...]
) -> tuple[Tensor | None, reference.Limit, Tensor | None]:
    """The reference step's noise, x0 limit and flag from the op schema's trailing arguments."""
    tail = list(extra) + list(_TAIL_DEFAULTS[len(extra) :])
    index, mode, clip, ratio, top, flag = tail
    z = noise if seed < 0 else philox.fill_like(x, seed, offset, int(index), philox.NOISE_MODES[int(mode)])  # type: ignore[call-overload]
    return z, (clip, ratio, float(top)), flag  # type: ignore[arg-type, return-value]


def step_kernels(device: torch.device | str) -> tuple[StepFn, StepFn]:
    """The ``(sampler_step, cfg_sampler_step)`` kernels of the active backend for ``device``,
    without the Python-side checks: for loops that validated their buffers once (see
    :func:`check_step`, :func:`step_extras`). Arguments are positional as in the op schema:
    ``..., writes, seed, offset[, sample_index, noise_mode, x0_clip, x0_ratio, x0_max,
    nonfinite]`` (seed -1: no in-kernel noise; noise_mode from :func:`noise_mode_code`; omitted
    trailing arguments take the schema defaults, as in the Python API: noise_mode 1 = ``fast``,
    :data:`diffcore.ops.philox.DEFAULT_NOISE_MODE`). The native kernels still check everything
    in C++. On CPU they are the extension's direct entry points (the op's checks and kernel
    without the dispatcher's per-call cost, nor its version-counter bumps of ``x`` and
    ``history``): for buffers the calling loop owns. Looked up once per backend and device type."""
    dev_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    found: dict[tuple[str, str], tuple[StepFn, StepFn]] = _native_state.setdefault("kernels", {})  # type: ignore[assignment]
    key = (os.environ.get(_KERNELS_ENV, "auto"), dev_type)
    kernels = found.get(key)
    if kernels is None:
        kernels = found[key] = _step_kernels(torch.device(dev_type))
    return kernels


def _step_kernels(device: torch.device) -> tuple[StepFn, StepFn]:
    if _native(device):
        module = _native_module()
        if device.type == "cpu" and hasattr(module, "cpu_sampler_step"):
            return module.cpu_sampler_step, module.cpu_cfg_sampler_step  # type: ignore[attr-defined]
        return torch.ops.diffcore.sampler_step, torch.ops.diffcore.cfg_sampler_step

    def step(x, m, coeffs, history, noise, writes, seed=-1, offset=0, *extra):
        z, limit, flag = _reference_tail(x, noise, seed, offset, extra)
        reference.sampler_step(x, m, coeffs, history, z, list(writes), limit, flag)

    def cfg_step(x, u, c, guidance, coeffs, history, noise, writes, seed=-1, offset=0, *extra):
        z, limit, flag = _reference_tail(x, noise, seed, offset, extra)
        reference.cfg_sampler_step(x, u, c, guidance, coeffs, history, z, list(writes), limit, flag)

    return step, cfg_step


def all_finite(x: Tensor) -> bool:
    """Whether every element of ``x`` is finite: a finite sum means so (one read pass, no
    temporary); only a non-finite sum, which large finite values can also give, needs the
    elementwise check."""
    return math.isfinite(float(x.sum())) or bool(torch.isfinite(x).all())


def start_state(x: Tensor, scale: float) -> tuple[Tensor, bool]:
    """``(x * scale, finite)``: a new tensor with x's layout (x's clone when ``scale`` is 1), and
    whether every element of ``x`` is finite. On the native CPU kernels one pass over x (the
    product rounded as torch rounds ``x * scale``); elsewhere :func:`all_finite`, then the torch
    op. ``x``: a floating-point tensor; ``scale``: a finite number."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"start_state: x must be a floating-point torch.Tensor, got {got}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"start_state: scale={scale!r} must be a finite number")
    dense = x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))
    # a lazily negated view (e.g. the .imag of a conjugate) holds -x in memory: the torch ops resolve it
    if x.device.type == "cpu" and dense and not x.is_neg() and backend(x.device) == "native-cpu":
        module = _native_module()
        if hasattr(module, "cpu_start_state"):
            out, finite = module.cpu_start_state(x, float(scale))
            return out, bool(finite)
    return (x.clone() if scale == 1.0 else x * scale), all_finite(x)


def check_step(
    x: Tensor, coeffs: Tensor, history: Tensor | None = None, noise: Tensor | None = None, writes: Sequence[int] = ()
) -> list[int]:
    """Validate the arguments of :func:`sampler_step` (except the model output); returns writes."""
    return _check_step_args(x, coeffs, history, noise, writes)


def philox_noise_like(
    x: Tensor, seed: int, offset: int = 0, *, sample_index: int = 0, noise_mode: str = philox.DEFAULT_NOISE_MODE
) -> Tensor:
    """A tensor like ``x`` holding the Philox draw ``(seed, offset)``: sample ``b`` (leading
    dimension) is sample ``sample_index + b`` of the sequence, in row-major order, so it does not
    depend on the batch it is drawn in. It is the exact noise a fused step draws for the same
    keys and ``noise_mode`` (``exact`` or ``fast``, :mod:`diffcore.ops.philox`)."""
    _check_float("x", x)
    _check_seed(seed, offset, None)
    step_extras(x, seed, sample_index, noise_mode)
    if _native(x.device):
        out = torch.empty_like(x)
        torch.ops.diffcore.philox_normal_(out, seed, offset, sample_index, noise_mode_code(noise_mode))
        return out
    return philox.fill_like(x, seed, offset, sample_index, noise_mode)
