"""Per-run scratch of a sampling loop, pooled per thread (issue #20: host cost per call).

* Finiteness flags: one int32 device flag per step that the step's fused op sets on a NaN/inf x0
  (model output included), read once after the loop. Buffers and their per-step views are kept
  per (steps, device), since making the views costs more than the check it replaces.
* CPU history and noise buffers (:func:`take_buffer`): a fresh multi-megabyte tensor is fresh
  memory from the OS, and its first write page-faults every 4 KiB (a 1M-element float32 buffer:
  1024 faults, more than a fused step's own memory work); up to :data:`POOLED` buffers of at most
  :data:`POOLED_BYTES` each are kept per thread and handed out zeroed (history) or as they are
  (noise, always overwritten before it is read).

A run in progress holds what it took, so a nested run gets fresh buffers.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch
from torch import Tensor

from diffcore import ops
from diffcore.denoiser import NonFiniteModelOutput

_pool = threading.local()


class StepFlags:
    """``views[k]``: the one-element flag the op of step k sets (the ``nonfinite`` op argument)."""

    def __init__(self, buffer: Tensor) -> None:
        self.buffer = buffer
        self.views = list(buffer.unbind(0))
        self.clean = False  # known to be all zero: checked and found so after a run

    @classmethod
    def take(cls, steps: int, device: torch.device) -> StepFlags:
        """Zeroed flags for ``steps`` steps on ``device``, from this thread's pool if one is free."""
        free: dict[tuple[int, torch.device], StepFlags] = _pool.__dict__.setdefault("free", {})
        flags = free.pop((steps, device), None)
        if flags is None:
            return cls(torch.zeros(steps, dtype=torch.int32, device=device))
        if not flags.clean:  # a run that raised before its check may have left flags set
            flags.buffer.zero_()
        flags.clean = False
        return flags

    def release(self) -> None:
        """Give the buffer back to this thread's pool."""
        _pool.__dict__.setdefault("free", {})[(self.buffer.shape[0], self.buffer.device)] = self

    def check(self) -> None:
        """Raise :class:`NonFiniteModelOutput` naming the first flagged step (one device->host read)."""
        values = self.buffer.tolist()
        if not any(values):
            self.clean = True  # the next run can skip zeroing
            return
        self.clean = False
        step = next(i for i, bad in enumerate(values) if bad)
        raise NonFiniteModelOutput(f"step {step}: model output contains NaN or inf")


POOLED = 4  # CPU buffers kept per thread
POOLED_BYTES = 64 << 20  # larger buffers are not kept


def take_buffer(shape: tuple[int, ...], like: Tensor, zero: bool) -> Tensor:
    """A ``shape`` tensor with ``like``'s dtype and device: zeros if ``zero``, else uninitialized;
    on CPU from this thread's pool when one of that shape and dtype is free."""
    free: OrderedDict[tuple[object, ...], Tensor] | None = None
    if like.device.type == "cpu":
        free = _pool.__dict__.setdefault("buffers", OrderedDict())
        buf = free.pop((tuple(shape), like.dtype), None)
        if buf is not None:
            return buf.zero_() if zero else buf
    make = torch.zeros if zero else torch.empty
    return make(shape, dtype=like.dtype, device=like.device)


def release_buffer(buf: Tensor | None) -> None:
    """Give a :func:`take_buffer` tensor back to this thread's pool (CPU, small enough) once the
    run that took it no longer reads it."""
    if buf is None or buf.device.type != "cpu" or buf.numel() * buf.element_size() > POOLED_BYTES:
        return
    free: OrderedDict[tuple[object, ...], Tensor] = _pool.__dict__.setdefault("buffers", OrderedDict())
    key = (tuple(buf.shape), buf.dtype)
    free[key] = buf
    free.move_to_end(key)
    while len(free) > POOLED:
        free.popitem(last=False)


def slots_read_unwritten(writes: list[tuple[tuple[int, ...], Tensor]], slots: int) -> tuple[int, ...]:
    """The history slots a run on the native CPU kernels may read before they are written.

    ``writes``: the run's fused ops in order, each as ``(slots it writes, its coefficients)`` (a
    (width,) or (B, width) table). An op that weighs every history slot by exactly 0 in every row
    does not read the history; one that weighs any slot by anything else reads all of them, so
    every slot no earlier op wrote is read (by 0 or not) and must hold zeros, not stale memory."""
    written: set[int] = set()
    needed: set[int] = set()
    for op_writes, coeffs in writes:
        c = coeffs.reshape(-1, coeffs.shape[-1])
        hist_cols = [2 + r * (3 + slots) + 2 + j for r in range(1 + len(op_writes)) for j in range(slots)]
        if bool(c[:, hist_cols].ne(0).any()):
            needed.update(j for j in range(slots) if j not in written)
        written.update(op_writes)
        if len(needed | written) == slots:  # every slot is zeroed or already written
            break
    return tuple(sorted(needed))


def take_history(shape: tuple[int, ...], like: Tensor, read_unwritten: tuple[int, ...] | None) -> Tensor:
    """A pooled history buffer for a run: all zeros, or on the native CPU kernels only the slots
    in ``read_unwritten`` (:func:`slots_read_unwritten`; None: unknown, zero all)."""
    if read_unwritten is None or like.device.type != "cpu" or ops.backend("cpu") != "native-cpu":
        return take_buffer(shape, like, zero=True)
    buf = take_buffer(shape, like, zero=False)
    for j in read_unwritten:
        buf[j].zero_()
    return buf
