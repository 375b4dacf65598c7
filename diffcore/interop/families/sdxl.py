"""Stable Diffusion XL: two CLIP text encoders, a UNet with added conditions, an AutoencoderKL.

Podell et al. 2023: the cross-attention context is the penultimate hidden states of both text
encoders concatenated along the features; the projection encoder's pooled embedding
(``text_embeds``) and the size/crop conditioning ``time_ids`` = (original size, crop top-left,
target size) -- or the aesthetic score in place of the target size for a refiner -- go to the
UNet's added embedding. Without a negative prompt the unconditional branch is zeros when the
folder says ``force_zeros_for_empty_prompt`` (the default).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from diffcore.interop.families.base import Cond, Family, register_family
from diffcore.interop.families.sd import check_negatives, embeds_dict

__all__ = ["StableDiffusionXL"]

CONTEXT, POOLED, TIME_IDS = "encoder_hidden_states", "text_embeds", "time_ids"


@register_family
class StableDiffusionXL(Family):
    """StableDiffusionXLPipeline folders (and their Img2Img / Inpaint class names)."""

    name = "stable-diffusion-xl"
    pipeline_classes = (
        "StableDiffusionXLPipeline",
        "StableDiffusionXLImg2ImgPipeline",
        "StableDiffusionXLInpaintPipeline",
    )
    required = ("vae", "text_encoder_2", "tokenizer_2", "unet")
    optional = ("text_encoder", "tokenizer")
    default_guidance = 5.0

    def _encoders(self) -> list[str]:
        return [c for c in ("text_encoder", "text_encoder_2") if self.components.get(c) is not None]

    def _encode(self, prompts: Sequence[str], max_length: int | None = None) -> tuple[Tensor, Tensor]:
        """(context, pooled): penultimate hidden states of every encoder, concatenated, and the
        projection encoder's pooled embedding."""
        hidden, pooled = [], None
        for name in self._encoders():
            enc = self.use(name).encode(prompts, layer=-2, max_length=max_length)
            hidden.append(enc.hidden)
            if pooled is None and self.use(name).kind == "CLIPTextModelWithProjection":
                pooled = enc.pooled
        if pooled is None:
            raise ValueError("SDXL needs a CLIPTextModelWithProjection text encoder for the pooled embedding")
        return torch.cat(hidden, dim=-1), pooled

    def time_ids(self, height: int, width: int, *, negative: bool, **options: Any) -> list[float]:
        """(original size, crop top-left, target size), or the aesthetic score instead of the
        target size when the folder ``requires_aesthetics_score`` (a refiner)."""
        original = tuple(options.get("original_size") or (height, width))
        crops = tuple(options.get("crops_coords_top_left") or (0, 0))
        target = tuple(options.get("target_size") or (height, width))
        if negative:
            original = tuple(options.get("negative_original_size") or original)
            target = tuple(options.get("negative_target_size") or target)
        if self.index.get("requires_aesthetics_score", False):
            score = options.get("negative_aesthetic_score", 2.5) if negative else options.get("aesthetic_score", 6.0)
            return [float(v) for v in (*original, *crops, score)]
        return [float(v) for v in (*original, *crops, *target)]

    def encode_prompt(
        self,
        prompts: Sequence[str],
        negative_prompts: Sequence[str] | None,
        *,
        guidance: bool,
        height: int,
        width: int,
        prompt_embeds: Any = None,
        negative_prompt_embeds: Any = None,
        **options: Any,
    ) -> tuple[Cond, Cond | None]:
        """``cond``: context, pooled ``text_embeds`` and ``time_ids``; ``prompt_embeds`` is a
        dict with ``encoder_hidden_states`` and ``text_embeds``."""
        if prompt_embeds is not None:
            cond = embeds_dict(prompt_embeds, CONTEXT)
            if POOLED not in cond:
                raise ValueError("SDXL prompt_embeds need 'text_embeds' (the pooled embedding) beside the context")
        else:
            context, pooled = self._encode(prompts)
            cond = {CONTEXT: context, POOLED: pooled}
        n, dtype, device = cond[CONTEXT].shape[0], cond[CONTEXT].dtype, cond[CONTEXT].device

        def ids(negative: bool) -> Tensor:
            row = self.time_ids(height, width, negative=negative, **options)
            return torch.tensor([row], dtype=dtype, device=device).repeat(n, 1)

        cond.setdefault(TIME_IDS, ids(False))
        if not guidance:
            return cond, None
        if negative_prompt_embeds is not None:
            uncond = embeds_dict(negative_prompt_embeds, CONTEXT)
        elif negative_prompts is None and self.index.get("force_zeros_for_empty_prompt", True):
            uncond = {CONTEXT: torch.zeros_like(cond[CONTEXT]), POOLED: torch.zeros_like(cond[POOLED])}
        else:
            context, pooled = self._encode(check_negatives(negative_prompts, n), cond[CONTEXT].shape[1])
            uncond = {CONTEXT: context, POOLED: pooled}
        uncond.setdefault(TIME_IDS, ids(True))
        return cond, uncond
