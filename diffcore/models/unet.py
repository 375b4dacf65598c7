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
    "cifar": {"in_channels": 3, "image_size": 32, "channel_mult": [1, 2, 2, 2], "attention_resolutions": [16],
              "base_channels": 128, "dropout": 0.1},
    "rgb64": {"in_channels": 3, "image_size": 64, "channel_mult": [1, 2, 3, 4], "attention_resolutions": [16, 8],
              "base_channels": 128},
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
        in_channels = check_int("in_channels", in_channels, 1)
        out_channels = in_channels if out_channels is None else check_int("out_channels", out_channels, 1)
        image_size = check_int("image_size", image_size, 1)
        base_channels = check_int("base_channels", base_channels, 1)
        channel_mult = check_int_list("channel_mult", channel_mult, 1, allow_empty=False)
        num_res_blocks = check_int("num_res_blocks", num_res_blocks, 1)
        attention_resolutions = check_int_list("attention_resolutions", attention_resolutions, 1, allow_empty=True)
        num_heads = check_int("num_heads", num_heads, 1)
        dropout = check_dropout(dropout)
        num_classes = check_int("num_classes", num_classes, 0)
        context_dim = check_int("context_dim", context_dim, 0)
        concat_channels = check_int("concat_channels", concat_channels, 0)
        time_input = check_time_input(time_input)
        groups = check_int("groups", groups, 1)

        levels = len(channel_mult)
        factor = 2 ** (levels - 1)
        if image_size % factor:
            raise ValueError(
                f"image_size={image_size} is not divisible by 2**(len(channel_mult) - 1) = {factor} "
                f"(channel_mult={channel_mult} downsamples {levels - 1} times)"
            )
        resolutions = [image_size // 2**i for i in range(levels)]
        for res in attention_resolutions:
            if res not in resolutions:
                raise ValueError(
                    f"attention_resolutions contains {res}, which is not a feature-map size of this UNet; "
                    f"image_size={image_size} with channel_mult={channel_mult} has sizes {resolutions}"
                )
        for mult in channel_mult:
            ch = base_channels * mult
            if ch % groups:
                raise ValueError(
                    f"groups={groups} does not divide {ch} channels (base_channels={base_channels} x {mult}); "
                    f"choose groups dividing base_channels * every channel_mult entry (e.g. 8)"
                )
        attn_levels = [i for i, r in enumerate(resolutions) if r in attention_resolutions] + [levels - 1]
        for i in attn_levels:
            ch = base_channels * channel_mult[i]
            if ch % num_heads:
                raise ValueError(
                    f"num_heads={num_heads} does not divide the {ch} channels of the attention at size {resolutions[i]}"
                )

        self.config: dict[str, Any] = {
            "in_channels": in_channels,
            "out_channels": out_channels,
            "image_size": image_size,
            "base_channels": base_channels,
            "channel_mult": channel_mult,
            "num_res_blocks": num_res_blocks,
            "attention_resolutions": attention_resolutions,
            "num_heads": num_heads,
            "dropout": dropout,
            "num_classes": num_classes,
            "context_dim": context_dim,
            "concat_channels": concat_channels,
            "time_input": time_input,
            "groups": groups,
        }
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.context_dim = context_dim
        self.concat_channels = concat_channels
        self.downsample_factor = factor

        emb_dim = 4 * base_channels
        self.embed = NoiseLevelEmbedding(base_channels, emb_dim, time_input, num_classes)
        if context_dim:
            self.null_context = nn.Parameter(torch.randn(1, 1, context_dim) * 0.02)

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, dropout, groups)

        def attn(c: int) -> AttentionBlock:
            return AttentionBlock(c, num_heads, groups, context_dim)

        ch = base_channels * channel_mult[0]
        self.conv_in = nn.Conv2d(in_channels + concat_channels, ch, 3, padding=1)
        skips = [ch]
        self.down = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                blocks: list[nn.Module] = [res(ch, base_channels * mult)]
                ch = base_channels * mult
                if resolutions[level] in attention_resolutions:
                    blocks.append(attn(ch))
                self.down.append(Stage(blocks))
                skips.append(ch)
            if level != levels - 1:
                self.down.append(Stage([Downsample(ch)]))
                skips.append(ch)

        self.mid = Stage([res(ch, ch), attn(ch), res(ch, ch)])

        self.up = nn.ModuleList()
        for level in reversed(range(levels)):
            for i in range(num_res_blocks + 1):
                blocks = [res(ch + skips.pop(), base_channels * channel_mult[level])]
                ch = base_channels * channel_mult[level]
                if resolutions[level] in attention_resolutions:
                    blocks.append(attn(ch))
                if level != 0 and i == num_res_blocks:
                    blocks.append(Upsample(ch))
                self.up.append(Stage(blocks))

        self.out = nn.Sequential(nn.GroupNorm(groups, ch), nn.SiLU(), zero_(nn.Conv2d(ch, out_channels, 3, padding=1)))

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
