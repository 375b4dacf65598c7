"""Task conditions for paired image-to-image translation (Palette, Saharia et al. 2022).

The model sees a *source* image as extra input channels (``cond["concat"]``) and learns to
produce the target. A task condition makes the source from a clean training batch, and from a
user's input at inference time: ``super_resolution`` (the image downsampled by ``factor`` and
upsampled back, so source and target share a size) and ``inpainting`` (the image with a masked
region zeroed, plus the mask as one more channel).

``dropout`` > 0 replaces the source of that fraction of training samples by the *null source*
(:meth:`null`: no information: a zero image, and for inpainting a mask that says every pixel is
missing), so one network also learns the source-free model and sampling can apply
classifier-free guidance on the source (``translate(..., source_guidance=w)``), as
InstructPix2Pix does for its image condition.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_dropout(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"task condition dropout={value!r} must be a number in [0, 1)")


def _drop(concat: Tensor, null: Tensor, rate: float, generator: torch.Generator) -> Tensor:
    """Replace each sample's source by ``null`` with probability ``rate`` (no draw when 0)."""
    if rate <= 0:
        return concat
    drop = (torch.rand(concat.shape[0], generator=generator) < rate).to(concat.device)
    return torch.where(drop.view(-1, *([1] * (concat.dim() - 1))), null, concat)


@dataclass(frozen=True)
class SuperResolution:
    """Source = the image average-pooled by ``factor`` then upsampled back (nearest)."""

    factor: int = 2
    dropout: float = 0.0
    name: str = "super_resolution"

    def __post_init__(self) -> None:
        if isinstance(self.factor, bool) or not isinstance(self.factor, int) or self.factor < 2:
            raise ValueError(f"super_resolution factor={self.factor!r} must be an integer >= 2")
        _check_dropout(self.dropout)

    def channels(self, image_channels: int) -> int:
        return image_channels

    def source(self, image: Tensor) -> Tensor:
        """(B, C, H, W) target-size image -> its low-resolution source at target size."""
        h, w = image.shape[-2:]
        if h % self.factor or w % self.factor:
            raise ValueError(f"image size {h}x{w} is not divisible by the super-resolution factor {self.factor}")
        low = F.avg_pool2d(image, self.factor)
        return F.interpolate(low, scale_factor=self.factor, mode="nearest")

    def from_low_resolution(self, low: Tensor) -> Tensor:
        """A user's low-resolution input (B, C, H/f, W/f) -> the source the model expects."""
        return F.interpolate(low, scale_factor=self.factor, mode="nearest")

    def null(self, concat: Tensor) -> Tensor:
        """The source-free condition for sources shaped like ``concat``: zeros."""
        return torch.zeros_like(concat)

    def make(self, x0: Tensor, generator: torch.Generator) -> Tensor:
        concat = self.source(x0)
        return _drop(concat, self.null(concat), self.dropout, generator)

    def config(self) -> dict:
        return {"name": self.name, "factor": self.factor, **({"dropout": self.dropout} if self.dropout else {})}


@dataclass(frozen=True)
class Inpainting:
    """Source = [image with the masked region set to 0, mask] (mask 1 = missing pixel).

    Training masks are random rectangles covering 20-60% of the image, or one of its halves.
    """

    dropout: float = 0.0
    name: str = "inpainting"

    def __post_init__(self) -> None:
        _check_dropout(self.dropout)

    def channels(self, image_channels: int) -> int:
        return image_channels + 1

    def source(self, image: Tensor, mask: Tensor) -> Tensor:
        if mask.dim() == 3:
            mask = mask[:, None]
        if mask.shape[0] != image.shape[0] or mask.shape[-2:] != image.shape[-2:] or mask.shape[1] != 1:
            raise ValueError(
                f"mask has shape {tuple(mask.shape)}; expected (B, 1, H, W) for images {tuple(image.shape)}"
            )
        m = mask.to(image.dtype)
        return torch.cat([image * (1 - m), m], dim=1)

    def random_masks(self, batch: int, h: int, w: int, generator: torch.Generator) -> Tensor:
        masks = torch.zeros(batch, 1, h, w)
        kinds = torch.randint(0, 5, (batch,), generator=generator)
        for i in range(batch):
            k = int(kinds[i])
            if k < 4:  # a half: top, bottom, left, right
                half = [
                    (slice(0, h // 2), slice(None)),
                    (slice(h // 2, h), slice(None)),
                    (slice(None), slice(0, w // 2)),
                    (slice(None), slice(w // 2, w)),
                ][k]
                masks[i, 0][half] = 1
            else:
                frac = 0.2 + 0.4 * float(torch.rand(1, generator=generator))
                mh, mw = max(1, round(h * frac**0.5)), max(1, round(w * frac**0.5))
                top = int(torch.randint(0, h - mh + 1, (1,), generator=generator))
                left = int(torch.randint(0, w - mw + 1, (1,), generator=generator))
                masks[i, 0, top : top + mh, left : left + mw] = 1
        return masks

    def null(self, concat: Tensor) -> Tensor:
        """The source-free condition for sources shaped like ``concat``: a zero image whose mask
        says every pixel is missing."""
        null = torch.zeros_like(concat)
        null[:, -1] = 1
        return null

    def make(self, x0: Tensor, generator: torch.Generator) -> Tensor:
        masks = self.random_masks(x0.shape[0], x0.shape[-2], x0.shape[-1], generator).to(x0.device)
        concat = self.source(x0, masks)
        return _drop(concat, self.null(concat), self.dropout, generator)

    def config(self) -> dict:
        return {"name": self.name, **({"dropout": self.dropout} if self.dropout else {})}


TASK_CONDITIONS = {"super_resolution": SuperResolution, "inpainting": Inpainting}
TaskCondition = SuperResolution | Inpainting


def make_task_condition(name: str, **options: object) -> TaskCondition:
    if name not in TASK_CONDITIONS:
        raise ValueError(f"task condition {name!r}: expected one of {sorted(TASK_CONDITIONS)}")
    fields = {"super_resolution": ("factor", "dropout"), "inpainting": ("dropout",)}[name]
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ValueError(f"task condition {name!r} has no option(s) {unknown}; its options: {list(fields)}")
    return TASK_CONDITIONS[name](**options)
