"""The built-in image denoiser: a DDPM-style UNet (Ho et al. 2020; Nichol & Dhariwal 2021).

conv_in -> per level: ``num_res_blocks`` x (ResBlock [+ attention]) then a stride-2 downsample
-> middle (ResBlock, attention, ResBlock) -> the mirrored up path, each block taking a skip
connection, nearest-neighbour upsample between levels -> GroupNorm, SiLU, zero-initialized
conv_out (so a fresh model outputs exactly zero).

Conditioning (``cond`` keys, all optional): ``class_labels`` (an embedding added to the time
embedding; the null label ``num_classes`` when absent), ``context`` + ``context_mask``
(cross-attention in every attention block; a learned null token is always attended to, so
missing or fully masked context is well defined), ``concat`` (extra input channels; zeros when
absent).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from diffcore.models.layers import (
    AttentionBlock,
    Downsample,
    NoiseLevelEmbedding,
    ResBlock,
    Stage,
    Upsample,
    batch_times,
    check_dropout,
    check_int,
    check_int_list,
    check_time_input,
    unpack_cond,
    zero_,
)

# Suggested configs; pass as ``get("models", "unet")(**PRESETS["mnist"])``.
PRESETS: dict[str, dict[str, Any]] = {
    "digits": {"in_channels": 1, "image_size": 8, "channel_mult": [1, 2], "attention_resolutions": [4]},
    "mnist": {"in_channels": 1, "image_size": 28, "channel_mult": [1, 2, 2], "attention_resolutions": [7]},
    "cifar": {
        "in_channels": 3,
        "image_size": 32,
        "channel_mult": [1, 2, 2, 2],
        "attention_resolutions": [16],
        "base_channels": 128,
        "dropout": 0.1,
    },
    "rgb64": {
        "in_channels": 3,
        "image_size": 64,
        "channel_mult": [1, 2, 3, 4],
        "attention_resolutions": [16, 8],
        "base_channels": 128,
    },
}


class UNet(nn.Module):
    """``UNet(**config)(x, t, cond=None) -> Tensor`` with x (B, in_channels, H, W) and output
    (B, out_channels, H, W); H and W must be divisible by ``2**(len(channel_mult) - 1)``.

    Args:
        in_channels / out_channels: image channels (out defaults to in).
        image_size: the square training resolution; ``attention_resolutions`` are sizes at
            which the feature map of some level has that height (``image_size // 2**level``).
        base_channels, channel_mult: level i has ``base_channels * channel_mult[i]`` channels.
        num_res_blocks: ResBlocks per level on the way down (one more on the way up).
        num_heads: attention heads (must divide the channels where attention is used).
        dropout: in every ResBlock.
        num_classes: 0 for none; else labels in [0, num_classes], num_classes = no class.
        context_dim: 0 for no cross-attention; else the width of ``cond["context"]`` tokens.
        concat_channels: channels of ``cond["concat"]``, concatenated to x.
        time_input: ``"timestep"`` (t is a DDPM timestep) or ``"sigma"`` (t is the EDM sigma).
        groups: GroupNorm groups; must divide ``base_channels * m`` for every m in channel_mult.
    """

    name = "unet"

    def __init__(
        self,
        *,
        in_channels: int,
        image_size: int,
        out_channels: int | None = None,
        base_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (),
        num_heads: int = 4,
        dropout: float = 0.0,
        num_classes: int = 0,
        context_dim: int = 0,
        concat_channels: int = 0,
        time_input: str = "timestep",
        groups: int = 32,
    ) -> None:
        super().__init__()
        cfg = check_config(
            in_channels=in_channels,
            out_channels=out_channels,
            image_size=image_size,
            base_channels=base_channels,
            channel_mult=channel_mult,
            num_res_blocks=num_res_blocks,
            attention_resolutions=attention_resolutions,
            num_heads=num_heads,
            dropout=dropout,
            num_classes=num_classes,
            context_dim=context_dim,
            concat_channels=concat_channels,
            time_input=time_input,
            groups=groups,
        )
        self.config: dict[str, Any] = cfg
        self.in_channels = cfg["in_channels"]
        self.num_classes = cfg["num_classes"]
        self.context_dim = cfg["context_dim"]
        self.concat_channels = cfg["concat_channels"]
        self.downsample_factor = 2 ** (len(cfg["channel_mult"]) - 1)
        blocks = _Blocks(cfg)
        self.embed = NoiseLevelEmbedding(cfg["base_channels"], blocks.emb_dim, cfg["time_input"], cfg["num_classes"])
        if self.context_dim:
            self.null_context = nn.Parameter(torch.randn(1, 1, self.context_dim) * 0.02)
        ch = blocks.width(0)
        self.conv_in = nn.Conv2d(self.in_channels + self.concat_channels, ch, 3, padding=1)
        self.down, skips = blocks.down_path(ch)
        ch = skips[-1]
        self.mid = Stage([blocks.res(ch, ch), blocks.attn(ch), blocks.res(ch, ch)])
        self.up = blocks.up_path(skips)
        ch = blocks.width(0)
        self.out = nn.Sequential(
            nn.GroupNorm(cfg["groups"], ch), nn.SiLU(), zero_(nn.Conv2d(ch, cfg["out_channels"], 3, padding=1))
        )

    @staticmethod
    def default_config(data: Any) -> dict[str, Any]:
        """The config ``diffcore.train`` picks for an image dataset ``data``: its channels, size and
        classes, and the ``digits`` (size <= 8) or ``mnist``-like (size <= 32) depth and attention."""
        meta = getattr(data, "meta", {}) or {}
        size = int(meta.get("height", data.train.shape[-1]))
        cfg: dict[str, Any] = {
            "in_channels": int(meta.get("channels", data.train.shape[1])),
            "image_size": size,
            "num_classes": int(getattr(data, "num_classes", 0) or 0),
        }
        if size <= 8:
            cfg.update(base_channels=64, channel_mult=[1, 2], attention_resolutions=[4])
        elif size <= 32:
            cfg.update(base_channels=64, channel_mult=[1, 2, 2], attention_resolutions=[size // 4])
        return cfg

    def forward(self, x: Tensor, t: Tensor, cond: Mapping[str, Any] | None = None) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x has shape {tuple(x.shape)}: expected (B, {self.in_channels}, H, W)")
        if x.shape[2] % self.downsample_factor or x.shape[3] % self.downsample_factor:
            raise ValueError(f"x has spatial size {tuple(x.shape[2:])}: expected multiples of {self.downsample_factor}")
        c = unpack_cond(
            cond, x, num_classes=self.num_classes, context_dim=self.context_dim, concat_channels=self.concat_channels
        )
        batch = x.shape[0]
        emb = self.embed(batch_times(t, batch, x.device), c.class_labels)

        context = mask = None
        if self.context_dim:
            null = self.null_context.to(x.dtype).expand(batch, 1, self.context_dim)
            keep_null = torch.ones(batch, 1, dtype=torch.bool, device=x.device)
            if c.context is None:
                context, mask = null, keep_null
            else:
                context = torch.cat([null, c.context.to(x.dtype)], dim=1)
                real = c.context_mask
                if real is None:
                    real = torch.ones(c.context.shape[:2], dtype=torch.bool, device=x.device)
                mask = torch.cat([keep_null, real], dim=1)

        if self.concat_channels:
            extra = c.concat if c.concat is not None else x.new_zeros(batch, self.concat_channels, *x.shape[2:])
            x = torch.cat([x, extra.to(x.dtype)], dim=1)

        h = self.conv_in(x)
        skips = [h]
        for stage in self.down:
            h = stage(h, emb, context, mask)
            skips.append(h)
        h = self.mid(h, emb, context, mask)
        for stage in self.up:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb, context, mask)
        return self.out(h)


def check_config(**raw: Any) -> dict[str, Any]:
    """The validated UNet config (``out_channels`` None -> ``in_channels``); raises ValueError /
    TypeError naming a bad value or a geometry the network cannot have."""
    cfg: dict[str, Any] = {"in_channels": check_int("in_channels", raw["in_channels"], 1)}
    out = raw["out_channels"]
    cfg["out_channels"] = cfg["in_channels"] if out is None else check_int("out_channels", out, 1)
    cfg["image_size"] = check_int("image_size", raw["image_size"], 1)
    cfg["base_channels"] = check_int("base_channels", raw["base_channels"], 1)
    cfg["channel_mult"] = check_int_list("channel_mult", raw["channel_mult"], 1, allow_empty=False)
    cfg["num_res_blocks"] = check_int("num_res_blocks", raw["num_res_blocks"], 1)
    cfg["attention_resolutions"] = check_int_list(
        "attention_resolutions", raw["attention_resolutions"], 1, allow_empty=True
    )
    cfg["num_heads"] = check_int("num_heads", raw["num_heads"], 1)
    cfg["dropout"] = check_dropout(raw["dropout"])
    for name in ("num_classes", "context_dim", "concat_channels"):
        cfg[name] = check_int(name, raw[name], 0)
    cfg["time_input"] = check_time_input(raw["time_input"])
    cfg["groups"] = check_int("groups", raw["groups"], 1)
    _check_geometry(cfg)
    return cfg


def _check_geometry(cfg: dict[str, Any]) -> None:
    """Sizes divisible by the downsampling, attention at existing sizes, groups and heads dividing
    the channels they split."""
    size, mult, base = cfg["image_size"], cfg["channel_mult"], cfg["base_channels"]
    levels = len(mult)
    factor = 2 ** (levels - 1)
    if size % factor:
        raise ValueError(
            f"image_size={size} is not divisible by 2**(len(channel_mult) - 1) = {factor} "
            f"(channel_mult={mult} downsamples {levels - 1} times)"
        )
    resolutions = [size // 2**i for i in range(levels)]
    for res in cfg["attention_resolutions"]:
        if res not in resolutions:
            raise ValueError(
                f"attention_resolutions contains {res}, which is not a feature-map size of this UNet; "
                f"image_size={size} with channel_mult={mult} has sizes {resolutions}"
            )
    for m in mult:
        if (base * m) % cfg["groups"]:
            raise ValueError(
                f"groups={cfg['groups']} does not divide {base * m} channels (base_channels={base} x {m}); "
                f"choose groups dividing base_channels * every channel_mult entry (e.g. 8)"
            )
    attn_levels = [i for i, r in enumerate(resolutions) if r in cfg["attention_resolutions"]] + [levels - 1]
    for i in attn_levels:
        ch = base * mult[i]
        if ch % cfg["num_heads"]:
            raise ValueError(
                f"num_heads={cfg['num_heads']} does not divide the {ch} channels of the attention "
                f"at size {resolutions[i]}"
            )


class _Blocks:
    """Builds the UNet's blocks from its validated config, in the order (and so with the random
    initial weights) of the original constructor."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.emb_dim = 4 * cfg["base_channels"]
        self.levels = len(cfg["channel_mult"])
        self.resolutions = [cfg["image_size"] // 2**i for i in range(self.levels)]

    def width(self, level: int) -> int:
        return self.cfg["base_channels"] * self.cfg["channel_mult"][level]

    def res(self, cin: int, cout: int) -> ResBlock:
        return ResBlock(cin, cout, self.emb_dim, self.cfg["dropout"], self.cfg["groups"])

    def attn(self, c: int) -> AttentionBlock:
        return AttentionBlock(c, self.cfg["num_heads"], self.cfg["groups"], self.cfg["context_dim"])

    def _attends(self, level: int) -> bool:
        return self.resolutions[level] in self.cfg["attention_resolutions"]

    def down_path(self, ch: int) -> tuple[nn.ModuleList, list[int]]:
        """The down stages from ``ch`` input channels, and the channels of every skip connection
        (conv_in's first; the last is the width at the bottom)."""
        down, skips = nn.ModuleList(), [ch]
        for level in range(self.levels):
            for _ in range(self.cfg["num_res_blocks"]):
                blocks: list[nn.Module] = [self.res(ch, self.width(level))]
                ch = self.width(level)
                if self._attends(level):
                    blocks.append(self.attn(ch))
                down.append(Stage(blocks))
                skips.append(ch)
            if level != self.levels - 1:
                down.append(Stage([Downsample(ch)]))
                skips.append(ch)
        return down, skips

    def up_path(self, skips: list[int]) -> nn.ModuleList:
        """The mirrored up stages, each taking the last unused skip connection."""
        skips = list(skips)
        up, ch = nn.ModuleList(), skips[-1]
        for level in reversed(range(self.levels)):
            for i in range(self.cfg["num_res_blocks"] + 1):
                blocks: list[nn.Module] = [self.res(ch + skips.pop(), self.width(level))]
                ch = self.width(level)
                if self._attends(level):
                    blocks.append(self.attn(ch))
                if level != 0 and i == self.cfg["num_res_blocks"]:
                    blocks.append(Upsample(ch))
                up.append(Stage(blocks))
        return up
