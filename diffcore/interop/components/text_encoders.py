"""transformers text encoders (``CLIPTextModel``, ``CLIPTextModelWithProjection``,
``T5EncoderModel``) with their tokenizers, loaded from local files only (safetensors weights).

:class:`TextEncoder` pairs a tokenizer with its model and returns what the diffusers pipelines
take from it: the hidden states of a chosen layer (SD: the last, after CLIP's final layer norm;
SDXL: the penultimate, ``hidden_states[-2]``), the pooled embedding (CLIP's ``pooler_output``,
or ``text_embeds`` of the projection model) and the token mask. As a registered text encoder
(``transformers_text``) it also follows diffcore's text-encoder contract, ``encoder(prompts) ->
(context, mask)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffcore.interop.components import safetensors_only
from diffcore.interop.errors import DiffusersInteropError

__all__ = ["TEXT_MODEL_CLASSES", "Encoded", "TextEncoder", "load_text_model", "load_tokenizer"]

TEXT_MODEL_CLASSES = ("CLIPTextModel", "CLIPTextModelWithProjection", "T5EncoderModel")


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise ImportError("text encoders need transformers: pip install 'diffcore[diffusers]'") from exc
    return transformers


def load_text_model(path: str | Path, *, torch_dtype: torch.dtype | None = None) -> nn.Module:
    """The transformers model of a ``text_encoder/`` folder (its config's ``architectures``), in eval mode."""
    import json

    folder = Path(path)
    safetensors_only(folder)
    try:
        arch = json.loads((folder / "config.json").read_text(encoding="utf-8"))["architectures"][0]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise DiffusersInteropError(f"{folder}/config.json does not name the model's architectures: {exc}") from exc
    if arch not in TEXT_MODEL_CLASSES:
        raise DiffusersInteropError(f"{folder}: text model {arch!r} is not one of {', '.join(TEXT_MODEL_CLASSES)}")
    cls = getattr(_transformers(), arch)
    try:
        model = cls.from_pretrained(folder, torch_dtype=torch_dtype, use_safetensors=True, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise DiffusersInteropError(f"{folder}: cannot load {arch}: {exc}") from exc
    return model.eval()


TOKENIZER_CLASSES = ("CLIPTokenizer", "CLIPTokenizerFast", "T5Tokenizer", "T5TokenizerFast", "AutoTokenizer")


def load_tokenizer(path: str | Path, class_name: str = "AutoTokenizer") -> Any:
    """The tokenizer of a ``tokenizer/`` folder, of transformers class ``class_name`` (the one
    model_index.json names, so it tokenizes as the diffusers pipeline does); local files only."""
    folder = Path(path)
    if not folder.is_dir():
        raise DiffusersInteropError(f"{folder} is not a tokenizer folder")
    if class_name not in TOKENIZER_CLASSES:
        raise DiffusersInteropError(f"{folder}: tokenizer {class_name!r} is not one of {', '.join(TOKENIZER_CLASSES)}")
    try:
        return getattr(_transformers(), class_name).from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise DiffusersInteropError(f"{folder}: cannot load its tokenizer: {exc}") from exc


@dataclass
class Encoded:
    """One encoder's view of a batch of prompts: ``hidden`` (B, L, D), ``pooled`` (B, P) or
    None, and ``mask`` (B, L) bool of real tokens."""

    hidden: Tensor
    pooled: Tensor | None
    mask: Tensor


class TextEncoder(nn.Module):
    """A tokenizer + transformers text model; ``max_length`` defaults to the tokenizer's."""

    def __init__(self, tokenizer: Any, model: nn.Module, *, max_length: int | None = None) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.model = model
        self.max_length = int(max_length or tokenizer.model_max_length)
        config: Any = model.config
        self.dim = int(getattr(config, "hidden_size", None) or config.d_model)
        self.kind = type(model).__name__

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, tokenizer: str | Path | None = None, torch_dtype: torch.dtype | None = None
    ) -> TextEncoder:
        """``path``: the model folder; ``tokenizer``: its tokenizer's (default: ``path``)."""
        return cls(load_tokenizer(tokenizer or path), load_text_model(path, torch_dtype=torch_dtype))

    def tokens(self, prompts: Sequence[str], max_length: int | None = None) -> tuple[Tensor, Tensor]:
        """``(input_ids, attention_mask)``, padded to ``max_length`` and truncated to it."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"prompts must be a list of strings, got {prompts!r}")
        out = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=max_length or self.max_length,
            truncation=True,
            return_tensors="pt",
        )
        return out.input_ids, out.attention_mask.bool()

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], *, layer: int | None = None, max_length: int | None = None) -> Encoded:
        """The hidden states of ``layer`` (None: the model's output, after CLIP's final layer
        norm; -2: the penultimate layer's, as SDXL), the pooled embedding and the token mask."""
        ids, mask = self.tokens(prompts, max_length)
        device = next(self.model.parameters()).device
        use_mask = bool(getattr(self.model.config, "use_attention_mask", False))
        kwargs: dict[str, Any] = {"attention_mask": mask.long().to(device)} if use_mask else {}
        out = self.model(ids.to(device), output_hidden_states=layer is not None, **kwargs)
        hidden = out[0] if layer is None else out.hidden_states[layer]
        pooled = getattr(out, "text_embeds", None)
        if pooled is None:
            pooled = getattr(out, "pooler_output", None)
        return Encoded(hidden, pooled, mask.to(device))

    def forward(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """diffcore's text-encoder contract: ``(context (B, L, dim), mask (B, L))``."""
        enc = self.encode(prompts)
        return enc.hidden, enc.mask
