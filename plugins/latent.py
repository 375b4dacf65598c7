"""Built-in plugin: the latent pipelines' ``image2image`` and ``inpaint`` commands."""

from __future__ import annotations
