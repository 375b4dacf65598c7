"""The errors and warnings of diffcore's diffusers interop."""

from __future__ import annotations


class DiffusersInteropError(ValueError):
    """A diffusers model, pipeline or scheduler config that diffcore cannot load as asked."""


class DiffusersInteropWarning(UserWarning):
    """A diffusers option diffcore does not reproduce: its samples will differ from diffusers'."""
