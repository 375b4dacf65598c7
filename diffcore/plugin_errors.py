"""What the plugin system reports: its exception and warning types, and how a plugin's failure reads.

:mod:`diffcore.plugins` raises and re-exports these (``diffcore.plugins.PluginError`` is the same class).
"""

from __future__ import annotations

__all__ = ["PluginError", "PluginWarning", "UnknownNameError", "describe_failure"]


class PluginError(ValueError):
    """A plugin misbehaved: a name registered twice, a bad name, a failed hook."""


class PluginWarning(UserWarning):
    """A plugin failed to load or register and was skipped."""


class UnknownNameError(KeyError):
    """A registry kind or a name in a registry does not exist; the message lists the known ones."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.message


def describe_failure(exc: BaseException) -> str:
    """``exc`` as a plugin failure report: ``Type: message``, or what a ``sys.exit()`` call was."""
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}): the plugin called sys.exit()"
    return f"{type(exc).__name__}: {exc}"
