"""diffusers' MMDiT transformers (SD3, Flux) behind diffcore's model contract ``model(x, t, cond)``.

Both predict the flow velocity ``v = eps - x0`` on ``x_t = (1 - t) x0 + t eps`` (Esser et al. 2024,
"Scaling Rectified Flow Transformers", eq. 1 and 2), so they sample with the ``flow`` schedule and
the ``flow`` parameterization (``x0 = x - t v``, :class:`diffcore.parameterization.Flow`). The
sampler state is the latent image ``(B, C, H, W)`` for both; ``t`` is the model time
``t_flow * 1000`` that diffusers' flow schedulers hand the SD3 transformer.

``cond`` is a dict of transformer inputs, batched along dim 0 (so classifier-free guidance can
concatenate an unconditional and a conditional dict):

* ``encoder_hidden_states`` (B, L, D): the prompt tokens (SD3: CLIP-L | CLIP-G padded to the T5
  width, then T5; Flux: T5);
* ``pooled_projections`` (B, P): the pooled CLIP embeddings (SD3: CLIP-L and CLIP-G concatenated;
  Flux: CLIP-L);
* ``guidance`` (B,): Flux only, the embedded guidance scale of a guidance-distilled transformer
  (``guidance_embeds=True``); required there, refused elsewhere.

Flux sees 2x2 patches of the latent as tokens (``pack_latents``) with 3-axis rotary positions
``(0, row, column)`` per patch and ``(0, 0, 0)`` per text token (Black Forest Labs, "FLUX.1",
2024; diffusers' FluxPipeline), and its time and guidance inputs in units of 1 (the transformer
multiplies them by 1000 itself). The wrapper packs and unpacks, so samplers and noise see the
unpacked latent, where diffusers draws its noise too.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from diffcore.interop.components import safetensors_only
from diffcore.interop.errors import DiffusersInteropError

__all__ = [
    "FLUX_TIME_SCALE",
    "FluxTransformer",
    "MMDiTTransformer",
    "SD3Transformer",
    "latent_image_ids",
    "pack_latents",
    "unpack_latents",
]

# FluxPipeline hands its transformer ``timestep / 1000`` (the transformer multiplies by 1000 again)
FLUX_TIME_SCALE = 1000.0


def pack_latents(x: Tensor) -> Tensor:
    """(B, C, H, W) latents as Flux's (B, H/2 * W/2, 4C) tokens: one token per 2x2 patch, row-major
    over patches, features ordered (channel, row in patch, column in patch)."""
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"Flux packs 2x2 latent patches: latent height and width must be even, got {h}x{w}")
    patches = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: Tensor, height: int, width: int) -> Tensor:
    """The inverse of :func:`pack_latents`: (B, H/2 * W/2, 4C) tokens to (B, C, H, W) latents."""
    b, n, f = tokens.shape
    if n != (height // 2) * (width // 2) or f % 4:
        raise ValueError(f"tokens of shape {tuple(tokens.shape)} are not the 2x2 patches of a {height}x{width} latent")
    patches = tokens.reshape(b, height // 2, width // 2, f // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(b, f // 4, height, width)


def latent_image_ids(rows: int, cols: int, *, device: torch.device | str, dtype: torch.dtype) -> Tensor:
    """(rows * cols, 3) rotary positions ``(0, row, column)`` of Flux's patch tokens, row-major;
    made on ``device`` directly (no host copy, so it can run inside a CUDA graph capture)."""
    r = torch.arange(rows, device=device, dtype=dtype).repeat_interleave(cols)
    c = torch.arange(cols, device=device, dtype=dtype).repeat(rows)
    return torch.stack([torch.zeros_like(r), r, c], dim=1)


def _public(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


class MMDiTTransformer(nn.Module):
    """Shared part of the SD3 and Flux wrappers: build from a ``config.json`` dict or wrap an
    existing diffusers transformer (weights shared), and check ``cond``."""

    name: ClassVar[str] = ""
    diffusers_class: ClassVar[str] = ""
    # required conditioning keys and their number of dimensions
    cond_keys: ClassVar[dict[str, int]] = {"encoder_hidden_states": 3, "pooled_projections": 2}
    optional_keys: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, **config: Any) -> None:
        super().__init__()
        import diffusers

        cls = getattr(diffusers, self.diffusers_class)
        try:
            model = cls.from_config(_public(config))
        except (TypeError, ValueError) as exc:
            raise DiffusersInteropError(f"not a valid {self.diffusers_class} config: {exc}") from exc
        self._adopt(model)

    def _adopt(self, model: nn.Module) -> None:
        self.transformer = model
        self.config: dict[str, Any] = _public(model.config)  # type: ignore[arg-type]

    @classmethod
    def from_transformer(cls, transformer: nn.Module) -> MMDiTTransformer:
        """Wrap an existing diffusers transformer of this class (its weights are shared, not copied)."""
        if type(transformer).__name__ != cls.diffusers_class or not hasattr(transformer, "config"):
            raise TypeError(f"expected a diffusers {cls.diffusers_class}, got {type(transformer).__name__}")
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._adopt(transformer)
        return self

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, torch_dtype: torch.dtype | None = None) -> MMDiTTransformer:
        """The transformer saved in ``folder`` (a pipeline's ``transformer/``), from safetensors
        and local files only, in eval mode."""
        import diffusers

        folder = Path(folder)
        safetensors_only(folder)
        model_cls = getattr(diffusers, cls.diffusers_class)
        try:
            model = model_cls.from_pretrained(
                str(folder),
                torch_dtype=torch_dtype,
                use_safetensors=True,
                local_files_only=True,
                low_cpu_mem_usage=False,
            )
        except (OSError, ValueError, TypeError, RuntimeError) as exc:
            raise DiffusersInteropError(f"{folder}: cannot load a {cls.diffusers_class}: {exc}") from exc
        return cls.from_transformer(model.eval())

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    @property
    def latent_channels(self) -> int:
        """Channels C of the (B, C, H, W) latent state."""
        raise NotImplementedError

    def _inputs(self, x: Tensor, cond: Any) -> dict[str, Tensor]:
        """The checked conditioning tensors, in the transformer's dtype."""
        if not isinstance(cond, Mapping):
            raise TypeError(
                f"{type(self).__name__} needs cond = a dict with {sorted(self.cond_keys)}, got {type(cond).__name__}"
            )
        unknown = set(cond) - set(self.cond_keys) - self.optional_keys
        if unknown:
            raise ValueError(f"{type(self).__name__}: unknown cond keys {sorted(unknown)}; expected {self.cond_keys}")
        out: dict[str, Tensor] = {}
        for key, ndim in self.cond_keys.items():
            value = cond.get(key)
            if not isinstance(value, Tensor) or value.dim() != ndim or value.shape[0] != x.shape[0]:
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(
                    f"{type(self).__name__}: cond[{key!r}] must be a {ndim}-d tensor with batch {x.shape[0]}, got {got}"
                )
            out[key] = value.to(self.dtype)
        return out

    def _check_state(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.latent_channels:
            raise ValueError(
                f"{type(self).__name__}: x must be a (B, {self.latent_channels}, H, W) latent, got {tuple(x.shape)}"
            )


class SD3Transformer(MMDiTTransformer):
    """diffusers ``SD3Transformer2DModel`` (SD3 / SD3.5) as ``model(x, t, cond)``: ``x`` the
    (B, C, H, W) latent, ``t`` (B,) the model time ``t_flow * 1000`` (what StableDiffusion3Pipeline
    passes), ``cond`` with ``encoder_hidden_states`` and ``pooled_projections``. An inpainting
    transformer (``in_channels`` = 2 C + 1, e.g. 33) also takes ``cond["concat"]`` (B, C + 1, H, W),
    the mask and the masked image's latents, appended to ``x`` along the channels."""

    name = "diffusers_sd3_transformer"
    diffusers_class = "SD3Transformer2DModel"

    optional_keys = frozenset({"concat"})

    @property
    def in_channels(self) -> int:
        """Input channels: the latent's, plus the concatenated ones of an inpainting transformer."""
        return int(self.config["in_channels"])

    @property
    def latent_channels(self) -> int:
        return int(self.config.get("out_channels") or self.config["in_channels"])

    def forward(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """Velocity (B, C, H, W) at state ``x`` and model times ``t``."""
        self._check_state(x)
        kw = self._inputs(x, cond)
        inp = x.to(self.dtype)
        extra = self.in_channels - self.latent_channels
        concat = cond.get("concat")
        if extra and (not isinstance(concat, Tensor) or concat.shape != (x.shape[0], extra, *x.shape[2:])):
            got = tuple(concat.shape) if isinstance(concat, Tensor) else type(concat).__name__
            raise ValueError(
                f"this SD3 transformer takes {extra} extra input channels: cond['concat'] "
                f"must be ({x.shape[0]}, {extra}, {x.shape[2]}, {x.shape[3]}), got {got}"
            )
        if not extra and concat is not None:
            raise ValueError("cond['concat'] is for an inpainting transformer (in_channels > out_channels)")
        if extra:
            inp = torch.cat([inp, concat.to(self.dtype)], dim=1)
        return self.transformer(hidden_states=inp, timestep=t, **kw, return_dict=False)[0]


class FluxTransformer(MMDiTTransformer):
    """diffusers ``FluxTransformer2DModel`` as ``model(x, t, cond)`` on the unpacked (B, C, H, W)
    latent: packs it into 2x2-patch tokens with their image ids, gives text tokens the zero ids,
    divides the model time ``t_flow * 1000`` by :data:`FLUX_TIME_SCALE` as FluxPipeline does, and
    unpacks the velocity. ``cond["guidance"]`` (B,) is the embedded guidance scale, required when
    the transformer has ``guidance_embeds`` (FLUX.1-dev) and refused otherwise (FLUX.1-schnell)."""

    name = "diffusers_flux_transformer"
    diffusers_class = "FluxTransformer2DModel"
    optional_keys = frozenset({"guidance"})

    @property
    def latent_channels(self) -> int:
        return int(self.config["in_channels"]) // 4

    @property
    def guidance_embeds(self) -> bool:
        return bool(self.config.get("guidance_embeds"))

    def _guidance(self, x: Tensor, cond: Mapping[str, Any]) -> Tensor | None:
        g = cond.get("guidance")
        if not self.guidance_embeds:
            if g is not None:
                raise ValueError(
                    "this FluxTransformer2DModel has guidance_embeds=False (not guidance-distilled): "
                    "drop cond['guidance'] and use classifier-free guidance"
                )
            return None
        if not isinstance(g, Tensor) or g.shape != (x.shape[0],):
            got = tuple(g.shape) if isinstance(g, Tensor) else type(g).__name__
            raise ValueError(
                f"this FluxTransformer2DModel has guidance_embeds=True: cond['guidance'] must be a ({x.shape[0]},) "
                f"tensor of guidance scales, got {got}"
            )
        return g.to(self.dtype)

    def forward(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """Velocity (B, C, H, W) at state ``x`` and model times ``t``."""
        self._check_state(x)
        kw = self._inputs(x, cond)
        guidance = self._guidance(x, cond)
        h, w = x.shape[-2:]
        text = kw["encoder_hidden_states"]
        out = self.transformer(
            hidden_states=pack_latents(x.to(self.dtype)),
            timestep=t.to(self.dtype) / FLUX_TIME_SCALE,
            guidance=guidance,
            img_ids=latent_image_ids(h // 2, w // 2, device=x.device, dtype=self.dtype),
            txt_ids=torch.zeros(text.shape[1], 3, device=x.device, dtype=self.dtype),
            return_dict=False,
            **kw,
        )[0]
        return unpack_latents(out, h, w)
