"""Per-step finiteness flags of a sampling loop: one int32 device flag per step that the step's
fused op sets on a NaN/inf x0 (model output included), read once after the loop.

Buffers and their per-step views are pooled per thread, (steps, device) and reused, since making
the views costs more than the check it replaces (issue #20: host work per step); a run in
progress holds its buffer, so a nested run gets a fresh one.
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

from diffcore.denoiser import NonFiniteModelOutput

_pool = threading.local()


class StepFlags:
    """``views[k]``: the one-element flag the op of step k sets (the ``nonfinite`` op argument)."""

    def __init__(self, buffer: Tensor) -> None:
        self.buffer = buffer
        self.views = list(buffer.unbind(0))

    @classmethod
    def take(cls, steps: int, device: torch.device) -> StepFlags:
        """Zeroed flags for ``steps`` steps on ``device``, from this thread's pool if one is free."""
        free: dict[tuple[int, torch.device], StepFlags] = _pool.__dict__.setdefault("free", {})
        flags = free.pop((steps, device), None)
        if flags is None:
            return cls(torch.zeros(steps, dtype=torch.int32, device=device))
        flags.buffer.zero_()
        return flags

    def release(self) -> None:
        """Give the buffer back to this thread's pool."""
        _pool.__dict__.setdefault("free", {})[(self.buffer.shape[0], self.buffer.device)] = self

    def check(self) -> None:
        """Raise :class:`NonFiniteModelOutput` naming the first flagged step (one device->host read)."""
        for step, bad in enumerate(self.buffer.tolist()):
            if bad:
                raise NonFiniteModelOutput(f"step {step}: model output contains NaN or inf")
