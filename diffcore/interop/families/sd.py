"""Stable Diffusion 1.x / 2.x: one CLIP text encoder, a ``UNet2DConditionModel``, an ``AutoencoderKL``.

The prompt's conditioning is CLIP's last hidden state (after its final layer norm), padded to the
tokenizer's 77 tokens; the negative prompt ("" when none) is encoded the same way for the
unconditional branch (Rombach et al. 2022; Ho & Salimans 2022 for the guidance).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from diffcore.interop.families.base import Cond, Family, register_family

__all__ = ["StableDiffusion", "check_negatives", "embeds_dict"]


def check_negatives(negative_prompts: Sequence[str] | None, n: int) -> list[str]:
    """One negative prompt per prompt ("" when none is given)."""
    if negative_prompts is None:
        return [""] * n
    negatives = [negative_prompts] if isinstance(negative_prompts, str) else list(negative_prompts)
    if len(negatives) == 1 and n > 1:
        negatives = negatives * n
    if len(negatives) != n or not all(isinstance(p, str) for p in negatives):
        raise ValueError(f"negative_prompt must be a string or {n} strings, got {negative_prompts!r}")
    return negatives


def embeds_dict(embeds: Any, key: str) -> Cond:
    """Precomputed embeddings as a cond dict: a dict as it is, a tensor under ``key``."""
    if isinstance(embeds, dict):
        return dict(embeds)
    if isinstance(embeds, Tensor):
        return {key: embeds}
    raise TypeError(f"prompt embeddings must be a tensor or a dict of tensors, got {type(embeds).__name__}")


@register_family
class StableDiffusion(Family):
    """StableDiffusionPipeline folders (and their Img2Img / Inpaint class names)."""

    name = "stable-diffusion"
    pipeline_classes = (
        "StableDiffusionPipeline",
        "StableDiffusionImg2ImgPipeline",
        "StableDiffusionInpaintPipeline",
    )
    required = ("vae", "text_encoder", "tokenizer", "unet")

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
        key = "encoder_hidden_states"
        encoder = self.use("text_encoder")
        cond = embeds_dict(prompt_embeds, key) if prompt_embeds is not None else {key: encoder.encode(prompts).hidden}
        if not guidance:
            return cond, None
        if negative_prompt_embeds is not None:
            return cond, embeds_dict(negative_prompt_embeds, key)
        n = cond[key].shape[0]
        negatives = check_negatives(negative_prompts, n)
        return cond, {key: encoder.encode(negatives, max_length=cond[key].shape[1]).hidden}
