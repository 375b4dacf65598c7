"""The built-in vector denoiser: a residual MLP for tabular data, x of shape (B, dim).

in Linear -> ``depth`` x [h + Linear(dropout(SiLU(Linear(LayerNorm(h)) + proj(emb))))] ->
LayerNorm -> zero-initialized out Linear (a fresh model outputs exactly zero). ``emb`` is the
sinusoidal time embedding (plus a class embedding with ``num_classes``), as in the UNet.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from diffcore.models.layers import (
    NoiseLevelEmbedding,
    batch_times,
    check_dropout,
    check_int,
    check_time_input,
    unpack_cond,
    zero_,
)


class MLPBlock(nn.Module):
    """One pre-norm residual block; the embedding is added after the first Linear."""

    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb_proj = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        z = self.fc1(self.norm(h)) + self.emb_proj(F.silu(emb))
        return h + self.fc2(self.dropout(F.silu(z)))


class MLP(nn.Module):
    """``MLP(**config)(x, t, cond=None) -> Tensor`` with x and the output of shape (B, dim).

    Args:
        dim: features per sample.
        hidden: width of the residual stream and of the embedding.
        depth: number of residual blocks.
        dropout: inside every block.
        num_classes: 0 for none; else ``cond["class_labels"]`` in [0, num_classes],
            num_classes = no class (used when the key is absent).
        time_input: ``"timestep"`` (t is a DDPM timestep) or ``"sigma"`` (t is the EDM sigma).
    """

    name = "mlp"

    def __init__(
        self,
        *,
        dim: int,
        hidden: int = 256,
        depth: int = 3,
        dropout: float = 0.0,
        num_classes: int = 0,
        time_input: str = "timestep",
    ) -> None:
        super().__init__()
        self.config: dict[str, Any] = {
            "dim": check_int("dim", dim, 1),
            "hidden": check_int("hidden", hidden, 2),
            "depth": check_int("depth", depth, 1),
            "dropout": check_dropout(dropout),
            "num_classes": check_int("num_classes", num_classes, 0),
            "time_input": check_time_input(time_input),
        }
        self.dim = dim
        self.num_classes = num_classes
        self.embed = NoiseLevelEmbedding(hidden, hidden, time_input, num_classes)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(MLPBlock(hidden, dropout) for _ in range(depth))
        self.norm_out = nn.LayerNorm(hidden)
        self.out = zero_(nn.Linear(hidden, dim))

    @staticmethod
    def default_config(data: Any) -> dict[str, Any]:
        """The config ``diffcore.train`` picks for a table dataset ``data``: its width and classes."""
        return {"dim": int(data.train.shape[1]), "num_classes": int(getattr(data, "num_classes", 0) or 0)}

    def forward(self, x: Tensor, t: Tensor, cond: Mapping[str, Any] | None = None) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x has shape {tuple(x.shape)}: expected (B, {self.dim})")
        c = unpack_cond(cond, x, num_classes=self.num_classes)
        emb = self.embed(batch_times(t, x.shape[0], x.device), c.class_labels)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(self.norm_out(h))
