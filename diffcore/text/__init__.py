"""Text conditioning: caption sets, text encoders and the ``text_unet`` model.

Prompt-conditioned sampling is :func:`diffcore.tasks.text2image.generate_from_prompts`; a model
takes prompts as ``cond={"text": [...]}`` when it sets ``accepts_text = True``.
"""

from __future__ import annotations

from typing import Any

from diffcore.text.captions import CaptionSet, caption_set
from diffcore.text.encoders import TextEncoderUnavailable, check_prompts

__all__ = ["CaptionSet", "TextEncoderUnavailable", "accepts_text", "caption_set", "check_prompts"]


def accepts_text(model: Any) -> bool:
    """Whether ``model`` takes ``cond={"text": [...]}`` (it sets ``accepts_text = True``)."""
    return bool(getattr(model, "accepts_text", False))
