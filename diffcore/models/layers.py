"""Blocks shared by the built-in models: config checks, the noise-level embedding, the
conditioning dict, and the UNet's residual / attention / resampling blocks.

Every block takes NCHW (or (B, F) for the MLP) tensors and never syncs with the host, so
a model built from them can be captured in a CUDA graph.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TIME_INPUTS: tuple[str, ...] = ("timestep", "sigma")
COND_KEYS: tuple[str, ...] = ("class_labels", "context", "context_mask", "concat")
# "sigma" embeds c_noise = ln(sigma)/4 (EDM, Karras et al. 2022, Table 1) times this factor, so
# sigma in [0.002, 80] spans ~660 "positions", like timesteps in [0, 1000).
SIGMA_POSITION_SCALE = 250.0
_MAX_PERIOD = 10_000.0


# --------------------------------------------------------------------------- config checks


def check_int(name: str, value: Any, minimum: int) -> int:
    """Return ``value`` if it is an int >= ``minimum``; else raise ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r}: expected an integer >= {minimum}")
    return value


def check_dropout(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"dropout={value!r}: expected a probability in [0, 1)")
    return float(value)


def check_time_input(value: Any) -> str:
    if value not in TIME_INPUTS:
        raise ValueError(f"time_input={value!r}: expected one of {', '.join(map(repr, TIME_INPUTS))}")
    return value


def check_int_list(name: str, value: Any, minimum: int, *, allow_empty: bool) -> list[int]:
    """Return ``value`` as a list of ints >= ``minimum`` (JSON-friendly); else raise ValueError."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{name}={value!r}: expected a list of integers")
    items = list(value)
    if not items and not allow_empty:
        raise ValueError(f"{name}={value!r}: expected a non-empty list of integers")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int) or item < minimum:
            raise ValueError(f"{name}={value!r}: element {item!r} is not an integer >= {minimum}")
    return items


def batch_times(t: Tensor | float, batch: int, device: torch.device) -> Tensor:
    """Return ``t`` as a float32 (B,) tensor; a scalar or a (1,) tensor is broadcast."""
    t = torch.as_tensor(t, device=device)
    if t.ndim == 0 or t.shape == (1,):
        t = t.reshape(1).expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t has shape {tuple(t.shape)}: expected ({batch},), one time per sample")
    return t.to(torch.float32)


# --------------------------------------------------------------------------- conditioning


@dataclass
class Conditioning:
    """The validated entries of a ``cond`` dict; None means "absent" (unconditional)."""

    class_labels: Tensor | None = None
    context: Tensor | None = None
    context_mask: Tensor | None = None
    concat: Tensor | None = None


def unpack_cond(
    cond: Mapping[str, Any] | None,
    x: Tensor,
    *,
    num_classes: int = 0,
    context_dim: int = 0,
    concat_channels: int = 0,
) -> Conditioning:
    """Validate ``cond`` against what the model was built for (shapes only: no host sync).

    A key whose value is None counts as absent. A key the model has no input for raises
    ValueError rather than being silently ignored.
    """
    if cond is None:
        return Conditioning()
    if not isinstance(cond, Mapping):
        raise ValueError(f"cond must be None or a dict with keys {COND_KEYS}; got {type(cond).__name__}")
    unknown = sorted(set(cond) - set(COND_KEYS))
    if unknown:
        raise ValueError(f"cond has unknown keys {unknown}; expected some of {list(COND_KEYS)}")
    out = Conditioning(**{k: v for k, v in cond.items() if v is not None})
    batch = x.shape[0]
    if out.class_labels is not None:
        if num_classes == 0:
            raise ValueError("cond has 'class_labels' but the model was built with num_classes=0")
        labels = out.class_labels
        if labels.shape != (batch,) or labels.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"class_labels has shape {tuple(labels.shape)} and dtype {labels.dtype}: expected "
                f"a ({batch},) integer tensor in [0, {num_classes}] ({num_classes} = no class)"
            )
    if out.context is not None:
        if context_dim == 0:
            raise ValueError("cond has 'context' but the model was built with context_dim=0")
        ctx = out.context
        if ctx.ndim != 3 or ctx.shape[0] != batch or ctx.shape[2] != context_dim:
            raise ValueError(f"context has shape {tuple(ctx.shape)}: expected ({batch}, L, {context_dim})")
    if out.context_mask is not None:
        if out.context is None:
            raise ValueError("cond has 'context_mask' but no 'context'")
        mask = out.context_mask
        if mask.dtype != torch.bool or mask.shape != out.context.shape[:2]:
            raise ValueError(
                f"context_mask has shape {tuple(mask.shape)} and dtype {mask.dtype}: expected a bool "
                f"tensor of shape {tuple(out.context.shape[:2])} (True = real token)"
            )
    if out.concat is not None:
        if concat_channels == 0:
            raise ValueError("cond has 'concat' but the model was built with concat_channels=0")
        expected = (batch, concat_channels, *x.shape[2:])
        if tuple(out.concat.shape) != expected:
            raise ValueError(f"concat has shape {tuple(out.concat.shape)}: expected {expected}")
    return out


# --------------------------------------------------------------------------- embeddings


def sinusoidal_features(t: Tensor, dim: int, time_input: str) -> Tensor:
    """Sinusoidal features (B, dim) of model time ``t`` (B,) (Vaswani et al. 2017, sec. 3.5).

    ``"timestep"`` embeds t itself (frequencies 1 .. 1/10000 cover t in [0, 1000));
    ``"sigma"`` embeds ``SIGMA_POSITION_SCALE * ln(sigma) / 4``.
    """
    t = t.to(torch.float32)
    if time_input == "sigma":
        t = torch.log(t.clamp_min(1e-20)) * (SIGMA_POSITION_SCALE / 4.0)
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(_MAX_PERIOD) / half))
    args = t[:, None] * freqs[None, :]
    features = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        features = F.pad(features, (0, 1))
    return features


class NoiseLevelEmbedding(nn.Module):
    """Model time (and optional class label) -> an embedding vector (B, emb_dim).

    ``emb = MLP(sinusoid(t)) + class_table[label]``; the class table has ``num_classes + 1``
    rows, the last being the null label used when no label is given (classifier-free guidance).
    """

    def __init__(self, feature_dim: int, emb_dim: int, time_input: str, num_classes: int = 0) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.time_input = time_input
        self.num_classes = num_classes
        self.mlp = nn.Sequential(nn.Linear(feature_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_table = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None

    def forward(self, t: Tensor, class_labels: Tensor | None = None) -> Tensor:
        features = sinusoidal_features(t, self.feature_dim, self.time_input)
        first: nn.Linear = self.mlp[0]  # type: ignore[assignment]
        emb = self.mlp(features.to(first.weight.dtype))
        if self.class_table is not None:
            if class_labels is None:
                class_labels = torch.full_like(t, self.num_classes, dtype=torch.long)
            emb = emb + self.class_table(class_labels.long())
        return emb


def zero_(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` in place; return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


# --------------------------------------------------------------------------- UNet blocks


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, scale-shift by the embedding, GroupNorm-SiLU-dropout-conv (zero-init),
    plus a 1x1 skip when channels change (Dhariwal & Nichol 2021, "BigGAN-style" AdaGN)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


def _attend(q: Tensor, k: Tensor, v: Tensor, heads: int, mask: Tensor | None = None) -> Tensor:
    """Multi-head attention of (B, N, C) queries over (B, S, C) keys/values; mask (B, S) True = keep."""
    b, n, c = q.shape
    q, k, v = (z.reshape(b, z.shape[1], heads, c // heads).transpose(1, 2) for z in (q, k, v))
    attn_mask = None if mask is None else mask[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return out.transpose(1, 2).reshape(b, n, c)


class AttentionBlock(nn.Module):
    """Self-attention over the H*W positions, then (if ``context_dim``) cross-attention to the
    context tokens; each a residual branch with a zero-initialized output projection."""

    def __init__(self, channels: int, num_heads: int, groups: int, context_dim: int = 0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero_(nn.Linear(channels, channels))
        if context_dim:
            self.cross_norm = nn.LayerNorm(channels)
            self.cross_q = nn.Linear(channels, channels)
            self.cross_kv = nn.Linear(context_dim, 2 * channels)
            self.cross_proj = zero_(nn.Linear(channels, channels))
        self.has_cross = bool(context_dim)

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = self.qkv(self.norm(x).flatten(2).transpose(1, 2)).chunk(3, dim=2)
        tokens = tokens + self.proj(_attend(q, k, v, self.num_heads))
        if self.has_cross:
            if context is None:
                raise ValueError("this attention block does cross-attention and needs context tokens")
            k, v = self.cross_kv(context).chunk(2, dim=2)
            q = self.cross_q(self.cross_norm(tokens))
            tokens = tokens + self.cross_proj(_attend(q, k, v, self.num_heads, mask))
        return tokens.transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    """Stride-2 3x3 conv: (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Stage(nn.ModuleList):
    """A run of blocks applied in order; each gets the inputs its kind needs."""

    def forward(self, x: Tensor, emb: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        for block in self:
            if isinstance(block, ResBlock):
                x = block(x, emb)
            elif isinstance(block, AttentionBlock):
                x = block(x, context, mask)
            else:
                x = block(x)
        return x
