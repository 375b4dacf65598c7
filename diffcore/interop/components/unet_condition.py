"""diffusers ``UNet2DConditionModel`` behind diffcore's model contract ``model(x, t, cond)``.

``cond`` is a dict: ``encoder_hidden_states`` (B, L, D) for cross-attention; SDXL's added
conditions ``text_embeds`` (B, P) and ``time_ids`` (B, 6); and ``concat`` (B, C', H, W), channels
appended to the (already scaled) model input, as the 9-channel inpainting UNets take the mask
and the masked image's latents.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffcore.interop.components import safetensors_only
from diffcore.interop.errors import DiffusersInteropError

__all__ = ["ConditionUNet"]

ADDED = ("text_embeds", "time_ids")


class ConditionUNet(nn.Module):
    """A ``UNet2DConditionModel``; ``model(x, t, cond)`` returns its output, shaped like ``x``."""

    name = "diffusers_condition_unet"

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        if type(unet).__name__ != "UNet2DConditionModel" or not hasattr(unet, "config"):
            raise TypeError(f"expected a diffusers UNet2DConditionModel, got {type(unet).__name__}")
        self.unet = unet
        config: Any = unet.config
        self.in_channels = int(config.in_channels)
        self.out_channels = int(config.out_channels)
        self.addition_embed_type = config.addition_embed_type
        size = config.sample_size
        self.sample_size = (size, size) if isinstance(size, int) else tuple(size)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, torch_dtype: torch.dtype | None = None) -> ConditionUNet:
        """Load a ``unet/`` folder (config.json + safetensors); pickle weights are refused."""
        from diffcore.interop.diffusers import import_diffusers

        folder = Path(path)
        safetensors_only(folder)
        try:
            unet = import_diffusers().UNet2DConditionModel.from_pretrained(
                folder, torch_dtype=torch_dtype, use_safetensors=True, local_files_only=True, low_cpu_mem_usage=False
            )
        except (OSError, ValueError, TypeError) as exc:
            raise DiffusersInteropError(f"{folder}: not a loadable UNet2DConditionModel: {exc}") from exc
        return cls(unet.eval())

    def forward(self, x: Tensor, t: Tensor, cond: Mapping[str, Any] | None = None) -> Tensor:
        """UNet output for state ``x`` (B, C, H, W) at timesteps ``t`` (B,) under ``cond``."""
        if not isinstance(cond, Mapping) or "encoder_hidden_states" not in cond:
            raise ValueError("a UNet2DConditionModel needs cond={'encoder_hidden_states': ...} (encoded prompts)")
        unknown = set(cond) - {"encoder_hidden_states", "concat", *ADDED}
        if unknown:
            raise ValueError(f"unknown UNet conditioning keys {sorted(unknown)}")
        dtype = next(self.unet.parameters()).dtype
        inp = x if cond.get("concat") is None else torch.cat([x, cond["concat"].to(x.dtype)], dim=1)
        if inp.shape[1] != self.in_channels:
            raise ValueError(f"the UNet takes {self.in_channels} input channels, got {inp.shape[1]}")
        added = {k: cond[k].to(dtype) for k in ADDED if cond.get(k) is not None}
        if self.addition_embed_type == "text_time" and len(added) != 2:
            raise ValueError("this UNet (SDXL) needs cond 'text_embeds' and 'time_ids'")
        out = self.unet(
            inp.to(dtype),
            t,
            encoder_hidden_states=cond["encoder_hidden_states"].to(dtype),
            added_cond_kwargs=added or None,
            return_dict=False,
        )[0]
        return out.to(x.dtype)
