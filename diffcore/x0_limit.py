"""The x0 limit a sampler step applies to the model's clean-data estimate: clipping or dynamic
thresholding, inside the fused op (:func:`diffcore.ops.sampler_step`), before x0 enters the step.

* ``clip``: x0 clamped to ``[-clip, clip]`` (diffusers' ``clip_sample`` / ``clip_sample_range``;
  Ho et al. 2020 clip DDPM's x0 to the data range [-1, 1]).
* ``dynamic_ratio``: dynamic thresholding (Saharia et al. 2022, "Photorealistic Text-to-Image
  Diffusion Models with Deep Language Understanding", sec. 2.3; diffusers' ``thresholding``,
  ``dynamic_thresholding_ratio``, ``sample_max_value``): per sample,
  ``s = clamp(quantile(|x0|, dynamic_ratio), 1, max_value)`` over the sample's flattened elements,
  then ``x0 = clamp(x0, -s, s) / s``, computed in float32 (float64 for float64 states).

Every column of the step's coefficient row that reads x0 reads the limited x0 (so a derivative
``(x - x0) / sigma`` uses it too, as diffusers' DPM-Solver and DDIM with
``use_clipped_model_output=True`` do).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class X0Limit:
    """Clip (``clip``) or dynamically threshold (``dynamic_ratio``, ``max_value``) the x0 estimate."""

    clip: float | None = None
    dynamic_ratio: float | None = None
    max_value: float = 1.0

    def __post_init__(self) -> None:
        if self.clip is not None and self.dynamic_ratio is not None:
            raise ValueError(f"X0Limit: clip={self.clip} and dynamic_ratio={self.dynamic_ratio}; set one, not both")
        if self.clip is not None and not (_real(self.clip) and 0 < self.clip < math.inf):
            raise ValueError(f"X0Limit: clip={self.clip!r} must be a positive finite number")
        if self.dynamic_ratio is not None and not (_real(self.dynamic_ratio) and 0 < self.dynamic_ratio <= 1):
            raise ValueError(f"X0Limit: dynamic_ratio={self.dynamic_ratio!r} must be in (0, 1]")
        if not (_real(self.max_value) and 1 <= self.max_value < math.inf):
            raise ValueError(f"X0Limit: max_value={self.max_value!r} must be a finite number >= 1")

    @property
    def active(self) -> bool:
        """Whether the limit changes anything (clip or dynamic_ratio set)."""
        return self.clip is not None or self.dynamic_ratio is not None

    def op_args(self) -> tuple[float | None, float | None, float]:
        """``(x0_clip, x0_ratio, x0_max)`` as the fused ops take them."""
        return (
            None if self.clip is None else float(self.clip),
            None if self.dynamic_ratio is None else float(self.dynamic_ratio),
            float(self.max_value),
        )


def _real(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


NO_LIMIT = (None, None, 1.0)
