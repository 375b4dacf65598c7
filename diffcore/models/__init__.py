"""Built-in denoiser models: ``model(x, t, cond=None) -> Tensor`` of x's shape.

Each is built from JSON-serializable keyword config and keeps it in ``model.config``, so
``MODELS[model.name](**model.config)`` rebuilds the same architecture.
"""

from __future__ import annotations

from torch import nn

from diffcore.models.mlp import MLP
from diffcore.models.unet import PRESETS, UNet

MODELS: dict[str, type[nn.Module]] = {UNet.name: UNet, MLP.name: MLP}

__all__ = ["MLP", "MODELS", "PRESETS", "UNet"]
