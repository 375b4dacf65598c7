"""Stable Diffusion 3 / 3.5: CLIP-L, CLIP-G and T5 text encoders, an ``SD3Transformer2DModel``
(MMDiT) and an ``AutoencoderKL`` with a shift factor, sampled as a rectified flow.

Esser et al. 2024 ("Scaling Rectified Flow Transformers", sec. 5.2 and appendix B.2): the
transformer's context is CLIP-L's and CLIP-G's penultimate hidden states concatenated along the
features, zero-padded to T5's width, followed along the sequence by T5's last hidden states; its
pooled vector is both CLIP projections concatenated. Without T5 (``text_encoder_3`` null) its
tokens are zeros. The negative prompt ("" when none) is encoded the same way for classifier-free
guidance. With a scheduler that shifts dynamically, ``mu`` follows the latent's patch count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from diffcore.interop.components import COMPONENT_LOADERS
from diffcore.interop.components.mmdit import SD3Transformer
from diffcore.interop.families.base import Cond, Family, register_family
from diffcore.interop.families.sd import check_negatives, embeds_dict
from diffcore.schedules import calculate_shift

__all__ = [
    "CONTEXT",
    "POOLED",
    "StableDiffusion3",
    "config_of",
    "dynamic_mu",
    "flow_first_step",
    "pooled_embeds",
    "text_options",
]

CONTEXT, POOLED = "encoder_hidden_states", "pooled_projections"
SD3_MAX_SEQUENCE_LENGTH = 256  # StableDiffusion3Pipeline's default T5 length

COMPONENT_LOADERS["SD3Transformer2DModel"] = lambda folder, dtype: SD3Transformer.from_pretrained(
    folder, torch_dtype=dtype
)


def dynamic_mu(config: Mapping[str, Any], image_seq_len: int, max_shift: float = 1.15) -> float | None:
    """mu of :func:`diffcore.schedules.calculate_shift` for ``image_seq_len`` latent tokens, with the
    scheduler config's sequence lengths and shifts; None unless it has ``use_dynamic_shifting``."""
    if not config.get("use_dynamic_shifting"):
        return None
    return calculate_shift(
        image_seq_len,
        config.get("base_image_seq_len", 256),
        config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5),
        config.get("max_shift", max_shift),
    )


def config_of(family: Family) -> dict[str, Any]:
    """The ``config.json`` dict of a family's model wrapper (an MMDiT transformer's)."""
    model: Any = family.model
    return model.config


def flow_first_step(steps: int, strength: float) -> int:
    """The SD3 / Flux image-to-image start level ``int(steps - steps * strength)``: one level
    earlier than SD's ``steps - int(steps * strength)`` when ``steps * strength`` is fractional."""
    return int(max(steps - steps * strength, 0))


def text_options(options: Mapping[str, Any], allowed: Sequence[str]) -> dict[str, Any]:
    """The family options a flow family's ``encode_prompt`` takes; others are refused by name."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"unknown family_options {unknown}; this pipeline takes {sorted(allowed)}")
    length = options.get("max_sequence_length")
    if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
        raise ValueError(f"max_sequence_length={length!r} must be a positive integer")
    return dict(options)


@register_family
class StableDiffusion3(Family):
    """StableDiffusion3Pipeline folders (and their Img2Img / Inpaint class names). Family
    options: ``max_sequence_length`` (T5 tokens, default 256) and ``clip_skip`` (CLIP layers
    skipped before the penultimate one, prompt only, as diffusers). ``prompt_embeds`` is a dict
    with ``encoder_hidden_states`` (B, L, D) and ``pooled_projections`` (B, P)."""

    name = "stable-diffusion-3"
    pipeline_classes = (
        "StableDiffusion3Pipeline",
        "StableDiffusion3Img2ImgPipeline",
        "StableDiffusion3InpaintPipeline",
    )
    required = ("vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "transformer")
    optional = ("text_encoder_3", "tokenizer_3")
    model_key = "transformer"
    default_steps = 28
    default_guidance = 7.0

    def default_size(self) -> tuple[int, int]:
        size = int(config_of(self)["sample_size"]) * self.downsample
        return size, size

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        c, h, w = super().latent_shape(height, width)
        p = int(config_of(self)["patch_size"])
        if h % p or w % p:
            raise ValueError(
                f"height={height} and width={width} must be multiples of {self.downsample * p} "
                f"(the VAE's factor {self.downsample} times the transformer's patch size {p})"
            )
        return c, h, w

    def first_step(self, steps: int, strength: float) -> int:
        return flow_first_step(steps, strength)

    def shift_mu(self, config: Mapping[str, Any], height: int, width: int) -> float | None:
        _, h, w = self.latent_shape(height, width)
        p = int(config_of(self)["patch_size"])
        return dynamic_mu(config, (h // p) * (w // p), max_shift=1.16)

    def _clip(self, prompts: Sequence[str], layer: int) -> tuple[Tensor, Tensor]:
        """CLIP-L | CLIP-G hidden states of ``layer`` (features concatenated) and pooled projections."""
        hidden, pooled = [], []
        for name in ("text_encoder", "text_encoder_2"):
            enc = self.use(name).encode(prompts, layer=layer)
            if enc.pooled is None:
                raise ValueError(f"SD3's {name} must be a CLIPTextModelWithProjection (it gives no pooled output)")
            hidden.append(enc.hidden)
            pooled.append(enc.pooled)
        return torch.cat(hidden, dim=-1), torch.cat(pooled, dim=-1)

    def _encode(self, prompts: Sequence[str], *, max_length: int, clip_skip: int | None) -> Cond:
        clip, pooled = self._clip(prompts, -2 if clip_skip is None else -(clip_skip + 2))
        width = int(config_of(self)["joint_attention_dim"])
        if self.components.get("text_encoder_3") is not None:
            t5 = self.use("text_encoder_3").encode(prompts, max_length=max_length).hidden
        else:
            t5 = torch.zeros(len(prompts), max_length, width, dtype=clip.dtype, device=clip.device)
        if clip.shape[-1] > t5.shape[-1]:
            raise ValueError(f"SD3's CLIP features ({clip.shape[-1]}) are wider than T5's ({t5.shape[-1]})")
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return {CONTEXT: torch.cat([clip, t5.to(clip.device, clip.dtype)], dim=-2), POOLED: pooled}

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
        opts = text_options(options, ("max_sequence_length", "clip_skip"))
        length = int(opts.get("max_sequence_length") or SD3_MAX_SEQUENCE_LENGTH)
        if prompt_embeds is not None:
            cond = pooled_embeds(prompt_embeds, "prompt_embeds")
        else:
            cond = self._encode(prompts, max_length=length, clip_skip=opts.get("clip_skip"))
        if not guidance:
            return cond, None
        if negative_prompt_embeds is not None:
            return cond, pooled_embeds(negative_prompt_embeds, "negative_prompt_embeds")
        negatives = check_negatives(negative_prompts, cond[CONTEXT].shape[0])
        return cond, self._encode(negatives, max_length=length, clip_skip=None)


def pooled_embeds(embeds: Any, name: str) -> Cond:
    """Precomputed ``prompt_embeds`` (a dict) with the context and the pooled embedding both present."""
    cond = embeds_dict(embeds, CONTEXT)
    if POOLED not in cond:
        raise ValueError(f"{name} need {POOLED!r} (the pooled CLIP embedding) beside {CONTEXT!r}")
    return cond
