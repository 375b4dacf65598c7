"""Whole-loop CUDA graph capture of a sampling run (model + fused steps).

The loop is capturable because coefficient tables live on the device, history and noise are
preallocated or generated in-kernel from (seed, offset), and nothing in it reads values back to
the host. A model that cannot be captured (it syncs, or changes shapes) makes the capture fail;
the run then falls back to eager execution with one warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


def run_captured(
    loop: Callable[[Tensor], None],
    x: Tensor,
    *,
    stochastic: bool,
    seed: int | None,
    callback: Callable[[dict[str, Any]], None] | None,
    denoiser: Any,
) -> Tensor:
    """Capture ``loop`` (which updates its argument in place) on a static copy of ``x``, replay it
    once and return the result (written into ``x``)."""
    if x.device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs CUDA tensors, got x on {x.device}")
    if callback is not None:
        raise ValueError("cuda_graph=True cannot call a per-step callback; pass callback=None")
    if stochastic and seed is None:
        raise ValueError("cuda_graph=True with a stochastic sampler needs seed= (in-kernel Philox noise)")
    static_x = x.clone()
    side = torch.cuda.Stream(device=x.device)
    side.wait_stream(torch.cuda.current_stream(x.device))
    try:
        with torch.cuda.stream(side):  # warm-up: lazy initialisation must not happen during capture
            loop(static_x.clone())
        torch.cuda.current_stream(x.device).wait_stream(side)
        denoiser._deferred.clear()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loop(static_x)
    except Exception as exc:  # a model that cannot be captured: run eagerly instead
        warnings.warn(f"diffcore: CUDA graph capture failed ({type(exc).__name__}: {exc}); running eagerly", RuntimeWarning, stacklevel=3)
        denoiser._deferred.clear()
        loop(x)
        denoiser.raise_deferred()
        return x
    static_x.copy_(x)
    graph.replay()
    x.copy_(static_x)
    denoiser.raise_deferred()
    return x
