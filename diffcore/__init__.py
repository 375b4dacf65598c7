"""diffcore: a plugin-based diffusion-model framework with fused sampler kernels.

Public API::

    diffcore.sample(model, x_T, sampler="dpmpp_2m", steps=20, schedule=..., prediction="epsilon")
    diffcore.available("samplers"); diffcore.get("schedules", "linear")(num_train_timesteps=1000)
    diffcore.train(...) -> Pipeline; diffcore.Pipeline.load(run); diffcore.DiffusionDetector().fit(X)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from diffcore.plugins import available, get, hookimpl, plugin_info  # noqa: E402
from diffcore.sampling import sample, sample_from  # noqa: E402
from diffcore.x0_limit import X0Limit  # noqa: E402


def __getattr__(name: str) -> Any:  # the training stack loads on first use, not with `import diffcore`
    if name == "train":
        from diffcore.training.api import train

        return train
    if name == "Pipeline":
        from diffcore.pipeline import Pipeline

        return Pipeline
    if name == "DiffusionDetector":  # scikit-learn loads only for the detector
        from diffcore.detector import DiffusionDetector

        return DiffusionDetector
    raise AttributeError(f"module 'diffcore' has no attribute {name!r}")


__all__ = [
    "DiffusionDetector",
    "Pipeline",
    "X0Limit",
    "__version__",
    "available",
    "get",
    "hookimpl",
    "plugin_info",
    "sample",
    "sample_from",
    "train",
]
