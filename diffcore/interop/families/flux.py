"""FLUX.1: a CLIP-L text encoder (pooled vector), a T5 text encoder (tokens), a
``FluxTransformer2DModel`` and an ``AutoencoderKL`` with a shift factor, sampled as a rectified
flow (Black Forest Labs 2024; diffusers' FluxPipeline).

The sampler state is the unpacked latent: :class:`~diffcore.interop.components.mmdit.FluxTransformer`
packs its 2x2 patches itself, so noise is drawn where FluxPipeline draws it. FluxPipeline's
steps are evenly spaced flow times ``1, 1 - 1/n, ..., 1/n`` (then the shift), diffcore's
``timestep_spacing="trailing"`` on a FlowMatchEuler schedule, with ``mu`` from the packed token
count ``(h/2) (w/2)``.

Guidance: FLUX.1-dev is guidance-distilled, its transformer embeds a guidance scale
(``family_options={"embedded_guidance": 3.5}``, FluxPipeline's ``guidance_scale``); diffcore's
``guidance_scale`` > 1 is true classifier-free guidance with the negative prompt (FluxPipeline's
``true_cfg_scale``), "" when none is given, through the fused CFG step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from diffcore.interop.components import COMPONENT_LOADERS
from diffcore.interop.components.mmdit import FluxTransformer
from diffcore.interop.families.base import Cond, Family, register_family
from diffcore.interop.families.sd import check_negatives
from diffcore.interop.families.sd3 import (
    CONTEXT,
    POOLED,
    config_of,
    dynamic_mu,
    flow_first_step,
    pooled_embeds,
    text_options,
)
from diffcore.interop.scheduler_config import SchedulerSpec

__all__ = ["EMBEDDED_GUIDANCE", "Flux"]

EMBEDDED_GUIDANCE = 3.5  # FluxPipeline's default guidance_scale for a guidance-distilled transformer
FLUX_MAX_SEQUENCE_LENGTH = 512
FLUX_SAMPLE_SIZE = 128  # FluxPipeline's default latent size before packing

COMPONENT_LOADERS["FluxTransformer2DModel"] = lambda folder, dtype: FluxTransformer.from_pretrained(
    folder, torch_dtype=dtype
)


@register_family
class Flux(Family):
    """FluxPipeline folders (and FluxImg2ImgPipeline / FluxInpaintPipeline). Family options:
    ``max_sequence_length`` (T5 tokens, default 512) and ``embedded_guidance`` (the distilled
    guidance scale, default 3.5; refused for a transformer without ``guidance_embeds``).
    ``prompt_embeds`` is a dict with ``encoder_hidden_states`` (B, L, D) and ``pooled_projections``
    (B, P); ``latents`` are unpacked, (B, C, H/f, W/f) (``pack_latents`` of them is FluxPipeline's)."""

    name = "flux"
    pipeline_classes = ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline")
    required = ("vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "transformer")
    model_key = "transformer"
    default_steps = 28
    default_guidance = 1.0  # no true CFG unless asked: FLUX.1 models are distilled

    def default_size(self) -> tuple[int, int]:
        size = FLUX_SAMPLE_SIZE * self.downsample
        return size, size

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        c, h, w = super().latent_shape(height, width)
        if h % 2 or w % 2:
            raise ValueError(
                f"height={height} and width={width} must be multiples of {2 * self.downsample} "
                f"(Flux packs 2x2 patches of the latent, which is {self.downsample} times smaller)"
            )
        return c, h, w

    def first_step(self, steps: int, strength: float) -> int:
        return flow_first_step(steps, strength)

    def shift_mu(self, config: Mapping[str, Any], height: int, width: int) -> float | None:
        _, h, w = self.latent_shape(height, width)
        return dynamic_mu(config, (h // 2) * (w // 2))

    def scheduler_spec(self, config: Mapping[str, Any], height: int, width: int, *, strict: bool) -> SchedulerSpec:
        """The folder's scheduler; on FlowMatchEuler, FluxPipeline's evenly spaced sigmas."""
        spec = super().scheduler_spec(config, height, width, strict=strict)
        if spec.scheduler_class == "FlowMatchEulerDiscreteScheduler":
            spec = dataclasses.replace(spec, timestep_spacing="trailing")
        return spec

    def _guidance_value(self, options: Mapping[str, Any]) -> float | None:
        value = options.get("embedded_guidance")
        distilled = bool(config_of(self).get("guidance_embeds"))
        if not distilled:
            if value is not None:
                raise ValueError(
                    f"embedded_guidance={value}: this FluxTransformer2DModel has guidance_embeds=False; "
                    "use guidance_scale (true CFG) instead"
                )
            return None
        value = EMBEDDED_GUIDANCE if value is None else value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"embedded_guidance={value!r} must be a number >= 0")
        return float(value)

    def _encode(self, prompts: Sequence[str], max_length: int) -> Cond:
        pooled = self.use("text_encoder").encode(prompts).pooled
        if pooled is None:
            raise ValueError("Flux's text_encoder gives no pooled output (expected a CLIPTextModel)")
        tokens = self.use("text_encoder_2").encode(prompts, max_length=max_length).hidden
        return {CONTEXT: tokens, POOLED: pooled.to(tokens.device)}

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
        opts = text_options(options, ("max_sequence_length", "embedded_guidance"))
        length = int(opts.get("max_sequence_length") or FLUX_MAX_SEQUENCE_LENGTH)
        scale = self._guidance_value(opts)
        cond = (
            pooled_embeds(prompt_embeds, "prompt_embeds")
            if prompt_embeds is not None
            else self._encode(prompts, length)
        )
        uncond: Cond | None = None
        if guidance and negative_prompt_embeds is not None:
            uncond = pooled_embeds(negative_prompt_embeds, "negative_prompt_embeds")
        elif guidance:
            uncond = self._encode(check_negatives(negative_prompts, cond[CONTEXT].shape[0]), length)
        if scale is not None:
            for c in (cond, uncond):
                if c is not None:
                    c["guidance"] = torch.full((c[CONTEXT].shape[0],), scale, device=c[CONTEXT].device)
        return cond, uncond
