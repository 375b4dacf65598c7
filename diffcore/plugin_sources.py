"""Where diffcore's plugins come from: the environment switches that select entry points, and
the versions of the distributions that provide them (what ``diffcore plugins`` reports)."""

from __future__ import annotations

import importlib.metadata
import os
import sys

__all__ = ["DISABLE_AUTOLOAD_ENV", "LOAD_PLUGINS_ENV", "allow_list", "diffcore_version", "env_flag", "version_of"]

DISABLE_AUTOLOAD_ENV = "DIFFCORE_DISABLE_PLUGIN_AUTOLOAD"
LOAD_PLUGINS_ENV = "DIFFCORE_LOAD_PLUGINS"


def env_flag(name: str) -> bool:
    """Whether environment variable ``name`` is set to something other than 0/false/no/off/empty."""
    return os.environ.get(name, "").strip().lower() not in {"", "0", "false", "no", "off"}


def allow_list() -> set[str] | None:
    """The entry-point names ``DIFFCORE_LOAD_PLUGINS`` allows, or None when it is unset."""
    value = os.environ.get(LOAD_PLUGINS_ENV)
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def diffcore_version() -> str | None:
    """diffcore's version: the loaded package's, else the installed distribution's."""
    version = getattr(sys.modules.get("diffcore"), "__version__", None)
    if version is not None:
        return str(version)
    try:
        return importlib.metadata.version("diffcore")
    except importlib.metadata.PackageNotFoundError:
        return None


def version_of(module: str | None) -> str | None:
    """Version of the installed distribution providing ``module``, if any."""
    if not module:
        return None
    top = module.partition(".")[0]
    if top in {"diffcore", "diffcore_plugins"}:
        return diffcore_version()
    for dist in importlib.metadata.packages_distributions().get(top, []):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None
