"""What a latent text-to-image pipeline family (SD, SDXL, SD3, Flux) tells :class:`LatentPipeline`.

A :class:`Family` is built from the loaded components of one diffusers pipeline folder. It says
which components it needs, turns prompts into the ``cond`` / ``uncond`` its model wrapper takes
(``model(x, t, cond)``, diffcore's model contract), gives the latent shape of an image size,
packs latents into the sampler state and back (Flux's 2x2 patches; identity elsewhere) and the
scheduler spec for an image size (a flow schedule's dynamic shift ``mu`` depends on it).
Families register by the ``_class_name`` of ``model_index.json`` in :data:`FAMILIES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

from diffcore.interop.errors import DiffusersInteropError
from diffcore.interop.scheduler_config import SchedulerSpec, scheduler_from_config

__all__ = ["FAMILIES", "Cond", "Family", "register_family"]

Cond = dict[str, Any]
# model_index.json "_class_name" -> (family, the task that class name runs by default)
FAMILIES: dict[str, type[Family]] = {}


def register_family(family: type[Family]) -> type[Family]:
    """Add ``family`` to :data:`FAMILIES` under each of its ``pipeline_classes`` (a class decorator)."""
    for name in family.pipeline_classes:
        FAMILIES[name] = family
    return family


class Family:
    """Base class of a pipeline family; subclasses set the class variables and ``encode_prompt``.

    ``components``: the loaded components by model_index name (``vae`` an
    :class:`~diffcore.interop.components.autoencoder.Autoencoder`, text encoders as
    :class:`~diffcore.interop.components.text_encoders.TextEncoder`, the model wrapper under
    ``model_key``); ``index``: the model_index.json dict. ``use(name)`` returns a component ready
    to run (the pipeline's offload mode moves it to the execution device first).
    """

    name: ClassVar[str] = ""
    pipeline_classes: ClassVar[tuple[str, ...]] = ()
    required: ClassVar[tuple[str, ...]] = ()  # components that must be present
    optional: ClassVar[tuple[str, ...]] = ()  # components that may be null in model_index.json
    ignored: ClassVar[tuple[str, ...]] = ("safety_checker", "feature_extractor", "image_encoder")
    model_key: ClassVar[str] = "unet"
    default_steps: ClassVar[int] = 50
    default_guidance: ClassVar[float] = 7.5
    guidance_threshold: ClassVar[float] = 1.0  # classifier-free guidance runs when guidance_scale > this

    def __init__(self, components: Mapping[str, Any], index: Mapping[str, Any]) -> None:
        missing = [c for c in self.required if components.get(c) is None]
        if missing:
            raise DiffusersInteropError(f"a {self.name} pipeline needs components {missing}")
        self.components = dict(components)
        self.index = dict(index)
        self.use: Callable[[str], Any] = self.components.__getitem__
        self._specs: dict[Any, SchedulerSpec] = {}

    # ------------------------------------------------------------------ components
    @property
    def model(self) -> nn.Module:
        return self.components[self.model_key]

    @property
    def autoencoder(self) -> Any:
        return self.components["vae"]

    @property
    def downsample(self) -> int:
        return int(self.autoencoder.downsample)

    def text_components(self) -> tuple[str, ...]:
        """The components ``encode_prompt`` runs (offload moves them in turn)."""
        return tuple(c for c in ("text_encoder", "text_encoder_2", "text_encoder_3") if self.components.get(c))

    # ------------------------------------------------------------------ prompts
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
        """``(cond, uncond)`` for the model wrapper; ``uncond`` None without ``guidance``.
        ``prompt_embeds`` (a dict shaped like ``cond``, or the family's main tensor) replaces
        encoding ``prompts``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ latents
    def default_size(self) -> tuple[int, int]:
        """(height, width) in pixels when none is asked: the model's sample size times the VAE's factor."""
        size = getattr(self.model, "sample_size", None) or (64, 64)
        return int(size[0]) * self.downsample, int(size[1]) * self.downsample

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(C, h, w) of the latents of a ``height`` x ``width`` image."""
        f = self.downsample
        if height % f or width % f or height < f or width < f:
            raise ValueError(f"height={height} and width={width} must be positive multiples of {f}")
        return int(self.autoencoder.latent_channels), height // f, width // f

    def pack(self, latents: Tensor) -> Tensor:
        """The sampler state of latents (B, C, h, w): the latents themselves, or a family's packing."""
        return latents

    def unpack(self, state: Tensor, height: int, width: int) -> Tensor:
        """The latents (B, C, h, w) of a sampler state: the inverse of :meth:`pack`."""
        return state

    def concat_channels(self) -> int:
        """Input channels the model takes beyond the latents (a 9-channel inpainting UNet: 5)."""
        latent = int(self.autoencoder.latent_channels)
        return int(getattr(self.model, "in_channels", latent)) - latent

    def first_step(self, steps: int, strength: float) -> int:
        """The plan level an image-conditioned run of ``steps`` starts at for ``strength`` in (0, 1]:
        the SD / SDXL pipelines' ``steps - int(steps * strength)``."""
        return steps - min(int(steps * strength), steps)

    # ------------------------------------------------------------------ scheduler
    def scheduler_spec(self, config: Mapping[str, Any], height: int, width: int, *, strict: bool) -> SchedulerSpec:
        """The scheduler of this pipeline for a ``height`` x ``width`` image (cached per ``mu``)."""
        mu = self.shift_mu(config, height, width)
        spec = self._specs.get(mu)
        if spec is None:
            spec = self._specs[mu] = scheduler_from_config(config, strict=strict, mu=mu)
        return spec

    def shift_mu(self, config: Mapping[str, Any], height: int, width: int) -> float | None:
        """The dynamic-shift ``mu`` of a flow scheduler with ``use_dynamic_shifting`` (None: none)."""
        return None
