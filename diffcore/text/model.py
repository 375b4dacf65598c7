"""``text_unet``: a UNet conditioned on prompts through cross-attention to a text encoder's tokens.

``model(x, t, cond)`` with ``cond = {"text": [prompt, ...]}`` (one prompt per sample) encodes the
prompts, normalizes the tokens with a learned LayerNorm and hands them to the UNet as
``context`` / ``context_mask``. An empty prompt ``""`` has no tokens, so the UNet attends only to
its learned null token: that is the unconditional branch of classifier-free guidance (Ho &
Salimans 2022) and what null-text dropout trains.

Config (``get("models", "text_unet")(**config)`` rebuilds the model)::

    {"unet": {...UNet config...}, "encoder": {"name": "builtin" | "minilm" | ..., "config": {...}}}

A trainable encoder (``builtin``) is a submodule and its weights are in the state dict; a frozen
one (``minilm``) is held outside the module tree, so checkpoints never contain its weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from diffcore.text.encoders import check_prompts

__all__ = ["TextUNet"]


class _Frozen:
    """Holds a frozen encoder out of ``nn.Module``'s sight: not in ``state_dict``/``parameters``,
    and shared, not copied, by ``copy.deepcopy`` (the trainer's EMA copy)."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder

    def __deepcopy__(self, memo: dict[int, Any]) -> _Frozen:
        return self


class TextUNet(nn.Module):
    """``TextUNet(unet={...}, encoder={"name": ..., "config": {...}})(x, t, cond=None) -> Tensor``.

    ``cond`` keys: ``text`` (list of B prompts; ``""`` = unconditional) and anything the UNet takes
    except ``class_labels`` / ``context`` (the context comes from the text). ``cond=None`` or no
    ``text`` is unconditional.
    """

    name = "text_unet"
    num_classes = 0
    accepts_text = True

    def __init__(self, *, unet: Mapping[str, Any], encoder: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        from diffcore.plugins import get

        if not isinstance(unet, Mapping):
            raise ValueError(f"unet={unet!r}: expected a dict of UNet config")
        spec = dict(encoder or {"name": "builtin"})
        unknown = sorted(set(spec) - {"name", "config"})
        if unknown or not isinstance(spec.get("name"), str):
            raise ValueError(f"encoder={spec!r}: expected {{'name': str, 'config': {{...}}}}")
        enc_cfg = dict(spec.get("config") or {})
        enc = get("text_encoders", spec["name"])(**enc_cfg)
        dim = int(enc.dim)

        unet_cfg = dict(unet)
        if unet_cfg.get("num_classes"):
            raise ValueError(
                f"unet num_classes={unet_cfg['num_classes']}: a text_unet is conditioned on text, not classes"
            )
        if unet_cfg.get("context_dim") not in (None, 0, dim):
            raise ValueError(
                f"unet context_dim={unet_cfg['context_dim']} differs from the {spec['name']!r} "
                f"encoder's token width {dim}; leave it out"
            )
        unet_cfg.update(num_classes=0, context_dim=dim)
        self.unet = get("models", "unet")(**unet_cfg)
        self.context_norm = nn.LayerNorm(dim)
        self.trainable_encoder = bool(getattr(enc, "trainable", isinstance(enc, nn.Module)))
        if self.trainable_encoder:
            if not isinstance(enc, nn.Module):
                raise ValueError(f"text encoder {spec['name']!r} says it is trainable but is not an nn.Module")
            self.encoder = enc
        else:
            if isinstance(enc, nn.Module):
                enc.eval().requires_grad_(False)
            self._frozen = _Frozen(enc)
        self.context_dim = dim
        self.config: dict[str, Any] = {
            "unet": dict(getattr(self.unet, "config", unet_cfg)),
            "encoder": {"name": spec["name"], "config": dict(getattr(enc, "config", enc_cfg))},
        }

    @staticmethod
    def default_config(data: Any) -> dict[str, Any]:
        """The UNet that ``diffcore.train`` picks for ``data`` (without classes) and the builtin encoder."""
        from diffcore.training.api import default_model_config

        unet = default_model_config("unet", data)
        unet["num_classes"] = 0
        return {"unet": unet, "encoder": {"name": "builtin", "config": {}}}

    @property
    def text_encoder(self) -> Any:
        return self.encoder if self.trainable_encoder else self._frozen.encoder

    def encode(self, prompts: list[str], device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(context (B, L, dim), mask (B, L)) for prompts; blank prompts have an all-False mask."""
        context, mask = self.text_encoder(prompts)
        context, mask = context.to(device), mask.to(device)
        blank = torch.tensor([not p.strip() for p in prompts], dtype=torch.bool).to(device)
        mask = mask & ~blank[:, None]
        return self.context_norm(context.to(self.context_norm.weight.dtype)).to(dtype), mask

    def forward(self, x: Tensor, t: Tensor, cond: Mapping[str, Any] | None = None) -> Tensor:
        if cond is None:
            return self.unet(x, t, None)
        if not isinstance(cond, Mapping):
            raise ValueError(f"cond must be None or a dict with a 'text' list of prompts; got {type(cond).__name__}")
        rest = dict(cond)
        prompts = rest.pop("text", None)
        taken = sorted({"context", "context_mask", "class_labels"} & {k for k, v in rest.items() if v is not None})
        if taken:
            raise ValueError(f"cond has {taken}: a text_unet makes its context from cond['text'] and has no classes")
        if prompts is not None:
            prompts = check_prompts(prompts, batch=x.shape[0])
            rest["context"], rest["context_mask"] = self.encode(prompts, x.device, x.dtype)
        return self.unet(x, t, rest or None)
