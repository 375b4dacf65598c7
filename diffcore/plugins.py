"""The plugin manager and the registries it fills.

Loading order, done once on first use: the built-in modules in :data:`BUILTIN_PLUGINS`
(registered under their short names, e.g. ``"samplers"``), then every entry point of
group ``diffcore`` (sorted by name; one whose module is already loaded is skipped).
Each plugin's ``register_*`` hooks are then called, in that order, with a ``register``
callback that fills the registry of that kind. A plugin that fails to import or raises
in a hook -- any exception, ``SystemExit`` from a plugin calling ``sys.exit()`` included; only
``KeyboardInterrupt`` goes through -- is reported with a :class:`PluginWarning`, recorded in
:func:`plugin_info`, and skipped with all its registrations rolled back; diffcore keeps working.
A registration that is not callable (a task: without ``Params`` and ``run``) is refused naming
the plugin. A plugin's ``override=True`` of another plugin's name is listed in
:func:`plugin_info` (``overrides``) and, when it replaces a built-in, warned about once, on
first use.

Environment: ``DIFFCORE_DISABLE_PLUGIN_AUTOLOAD=1`` loads no entry points;
``DIFFCORE_LOAD_PLUGINS=a,b`` loads only the entry points named ``a`` and ``b``.
Built-ins load in both cases.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.metadata
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

import pluggy

from diffcore import hookspecs
from diffcore.plugin_errors import PluginError, PluginWarning, UnknownNameError, describe_failure
from diffcore.plugin_sources import (
    DISABLE_AUTOLOAD_ENV,
    LOAD_PLUGINS_ENV,
    allow_list,
    diffcore_version,
    env_flag,
    version_of,
)

hookimpl = pluggy.HookimplMarker("diffcore")

ENTRY_POINT_GROUP = "diffcore"
KINDS: tuple[str, ...] = ("models", "schedules", "samplers", "tasks", "datasets", "text_encoders", "autoencoders")
# Built-in plugin modules, loaded first. Later work appends e.g. "diffcore_plugins.unet".
BUILTIN_PLUGINS: list[str] = ["diffcore_plugins.schedules", "diffcore_plugins.samplers"]
BUILTIN_PLUGINS.append("diffcore_plugins.models")
BUILTIN_PLUGINS.append("diffcore_plugins.training")
BUILTIN_PLUGINS.append("diffcore_plugins.datasets")
BUILTIN_PLUGINS.append("diffcore_plugins.generation")
BUILTIN_PLUGINS.append("diffcore_plugins.text")
BUILTIN_PLUGINS.append("diffcore_plugins.text2image")
BUILTIN_PLUGINS.append("diffcore_plugins.img2img")
BUILTIN_PLUGINS.append("diffcore_plugins.anomaly")
BUILTIN_PLUGINS.append("diffcore_plugins.denoise")
BUILTIN_PLUGINS.append("diffcore_plugins.autoencoders")
BUILTIN_PLUGINS.append("diffcore_plugins.latent")
BUILTIN_PLUGINS.append("diffcore_plugins.export")
BUILTIN_PLUGINS.append("diffcore_plugins.demo")  # an application: the `diffcore demo` command

__all__ = [
    "BUILTIN_PLUGINS",
    "KINDS",
    "PluginError",
    "PluginWarning",
    "Register",
    "UnknownNameError",
    "available",
    "get",
    "get_plugin_manager",
    "hookimpl",
    "implementations",
    "plugin_info",
    "record_failure",
    "register_plugin",
    "registered_by",
    "reset",
]


class Register(Protocol):
    """The callback passed to every ``register_*`` hook."""

    def __call__(self, name: str, obj: object, *, override: bool = False) -> None: ...


class _HookFailed(Exception):
    """Internal: a register_* hook raised ``error``."""

    def __init__(self, hook: str, error: BaseException) -> None:
        super().__init__(f"{hook} raised {describe_failure(error)}")
        self.hook = hook
        self.error = error


@dataclass
class _Plugin:
    name: str
    module: str | None
    version: str | None
    builtin: bool
    hooks: list[str] = field(default_factory=list)
    error: str | None = None
    overrides: list[dict[str, str]] = field(default_factory=list)  # {"kind", "name", "replaces"}


@dataclass(frozen=True)
class _Entry:
    obj: object
    plugin: str
    replaces_builtin: str | None = None  # the built-in plugin this third-party registration overrides


class _State:
    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("diffcore")
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, _Plugin] = {}  # load order
        self.registries: dict[str, dict[str, _Entry]] = {kind: {} for kind in KINDS}
        self.warned: set[tuple[str, str]] = set()  # overrides of built-ins already warned about


_lock = threading.RLock()
_state: _State | None = None
_building = False


# --------------------------------------------------------------------------- public API


def get_plugin_manager() -> pluggy.PluginManager:
    """Return the pluggy manager, loading plugins on first use."""
    return _ensure().pm


def available(kind: str) -> list[str]:
    """Return the sorted names registered under ``kind`` (e.g. ``"samplers"``)."""
    return sorted(_registry(kind))


def get(kind: str, name: str) -> Any:
    """Return the object registered as ``name`` under ``kind``.

    Raises :class:`UnknownNameError` (a ``KeyError``) listing the known kinds or names.
    """
    registry = _registry(kind)
    try:
        entry = registry[name]
    except (KeyError, TypeError):
        raise UnknownNameError(_unknown_name_message(kind, name, registry)) from None
    if entry.replaces_builtin is not None:
        _warn_override(kind, name, entry)
    return entry.obj


def _warn_override(kind: str, name: str, entry: _Entry) -> None:
    """Warn, once per process and name, that a third-party plugin's object replaces a built-in."""
    state = _ensure()
    with _lock:
        if (kind, name) in state.warned:
            return
        state.warned.add((kind, name))
    warnings.warn(
        f"{kind[:-1]} {name!r} is plugin {entry.plugin!r}'s override of the built-in from plugin "
        f"{entry.replaces_builtin!r} (override=True); `diffcore plugins` lists overrides",
        PluginWarning,
        stacklevel=3,
    )


def registered_by(kind: str, name: str) -> str:
    """Return the name of the plugin whose registration of ``kind``/``name`` is in effect."""
    registry = _registry(kind)
    if name not in registry:
        raise UnknownNameError(_unknown_name_message(kind, name, registry))
    return registry[name].plugin


def plugin_info() -> list[dict[str, Any]]:
    """Describe every plugin, in load order, failed ones included.

    Each dict has ``name``, ``version`` (of the distribution providing it; diffcore's
    for built-ins), ``hooks`` (sorted hook names), ``builtin``, ``error`` (None if fine) and
    ``overrides``: the registrations it replaced with ``override=True``, as ``{"kind", "name",
    "replaces"}`` (the plugin whose object it replaced).
    """
    state = _ensure()
    return [
        {
            "name": p.name,
            "version": p.version,
            "hooks": list(p.hooks),
            "builtin": p.builtin,
            "error": p.error,
            "overrides": [dict(o) for o in p.overrides],
        }
        for p in state.plugins.values()
    ]


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register a module or object with ``@hookimpl`` methods after autoloading; return its name.

    Its registrations are added after all others, so it may replace names with
    ``override=True``. A name clash raises :class:`PluginError` and leaves nothing
    registered; any other exception in its hooks is reported and the plugin skipped.
    """
    with _lock:
        state = _ensure()
        module = plugin.__name__ if isinstance(plugin, ModuleType) else getattr(plugin, "__module__", None)
        plugin_name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        _add_plugin(state, plugin, plugin_name, module, version_of(module), builtin=False, strict=True)
        return plugin_name


def implementations(hook: str) -> list[tuple[str, Callable[..., Any]]]:
    """Return ``(plugin name, call)`` for each implementation of ``hook``, in load order.

    ``call(**kwargs)`` passes the implementation the spec arguments it accepts.
    """
    state = _ensure()
    caller = getattr(state.pm.hook, hook, None)
    if caller is None or not hasattr(caller, "get_hookimpls"):
        raise UnknownNameError(f"unknown hook {hook!r}; known hooks: {', '.join(_hook_names())}")
    order = {name: i for i, name in enumerate(state.plugins)}
    impls = sorted(caller.get_hookimpls(), key=lambda impl: order.get(impl.plugin_name, len(order)))
    return [(impl.plugin_name, functools.partial(_call_impl, impl)) for impl in impls]


def record_failure(plugin: str, error: BaseException, during: str) -> None:
    """Report that ``plugin`` raised ``error`` in ``during`` (e.g. a hook name) and that what
    it contributed there was skipped: warn, and record it in :func:`plugin_info`."""
    with _lock:
        state = _ensure()
        message = f"{during} raised {describe_failure(error)}"
        record = state.plugins.get(plugin)
        if record is not None and message not in (record.error or ""):
            record.error = message if record.error is None else f"{record.error}; {message}"
        warnings.warn(f"plugin {plugin!r}: {message}; skipped what it added there", PluginWarning, stacklevel=2)


def reset() -> None:
    """Forget every plugin and registration; the next call reloads them (for tests)."""
    global _state
    with _lock:
        _state = None


# --------------------------------------------------------------------------- loading


def _ensure() -> _State:
    global _state, _building
    with _lock:
        if _state is not None:
            return _state
        if _building:
            raise PluginError(
                "diffcore's registries were used while plugins are still loading; "
                "a plugin must look up other plugins' objects at call time, not at import time"
            )
        _building = True
        try:
            state = _State()
            _load_builtins(state)
            if not env_flag(DISABLE_AUTOLOAD_ENV):
                _load_entry_points(state)
            _state = state
        finally:
            _building = False
        return state


def _load_builtins(state: _State) -> None:
    version = diffcore_version()
    for module_name in BUILTIN_PLUGINS:
        short = module_name.rpartition(".")[2]
        try:
            module = importlib.import_module(module_name)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - a broken plugin (sys.exit too) must not break diffcore
            _fail(state, _Plugin(short, module_name, version, builtin=True), f"import failed: {describe_failure(exc)}")
            continue
        _add_plugin(state, module, short, module_name, version, builtin=True, strict=False)


def _load_entry_points(state: _State) -> None:
    allowed = allow_list()
    builtin_modules = set(BUILTIN_PLUGINS)
    seen: set[str] = set()
    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        seen.add(ep.name)
        loaded_modules = {p.module for p in state.plugins.values()}
        if ep.module in builtin_modules or ep.module in loaded_modules:
            continue
        if allowed is not None and ep.name not in allowed:
            continue
        version = ep.dist.version if ep.dist is not None else None
        try:
            plugin = ep.load()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - SystemExit too
            _fail(state, _Plugin(ep.name, ep.module, version, builtin=False), f"import failed: {describe_failure(exc)}")
            continue
        _add_plugin(state, plugin, ep.name, ep.module, version, builtin=False, strict=False)
    for missing in sorted((allowed or set()) - seen):
        warnings.warn(
            f"{LOAD_PLUGINS_ENV} names {missing!r}, but no installed package has a "
            f"{ENTRY_POINT_GROUP!r} entry point of that name; found: {', '.join(sorted(seen)) or 'none'}",
            PluginWarning,
            stacklevel=2,
        )


def _add_plugin(
    state: _State,
    plugin: object,
    name: str,
    module: str | None,
    version: str | None,
    *,
    builtin: bool,
    strict: bool,
) -> None:
    """Register ``plugin`` with pluggy and commit its registrations, all or nothing."""
    record = _Plugin(name, module, version, builtin)
    if name in state.plugins:
        taken_by = state.plugins[name].module
        error = PluginError(f"plugin name {name!r} is already taken by another plugin (module {taken_by!r})")
        if strict:
            raise error
        _fail(state, record, str(error))
        return
    try:
        state.pm.register(plugin, name=name)
    except Exception as exc:  # noqa: BLE001 - pluggy validation errors, a name clash
        if strict:
            raise PluginError(f"plugin {name!r} cannot be registered: {describe_failure(exc)}") from exc
        _fail(state, record, f"invalid plugin: {describe_failure(exc)}")
        return
    record.hooks = sorted(caller.name for caller in (state.pm.get_hookcallers(plugin) or []))
    try:
        staged = _collect_registrations(state, plugin, record)
    except (PluginError, _HookFailed) as exc:
        state.pm.unregister(plugin)
        cause = exc.error if isinstance(exc, _HookFailed) else exc
        if strict and isinstance(cause, PluginError):
            raise cause from None
        _fail(state, record, str(exc))
        return
    for kind, entries in staged.items():
        state.registries[kind].update(entries)
    state.plugins[name] = record


def _collect_registrations(state: _State, plugin: object, record: _Plugin) -> dict[str, dict[str, _Entry]]:
    """Call ``plugin``'s register_* hooks; return what they registered, per kind (overrides are
    noted in ``record``)."""
    plugin_name = record.name
    staged: dict[str, dict[str, _Entry]] = {kind: {} for kind in KINDS}
    for kind in KINDS:
        hook = f"register_{kind}"
        for impl in getattr(state.pm.hook, hook).get_hookimpls():
            if impl.plugin is not plugin:
                continue
            if impl.hookwrapper or impl.wrapper:
                raise PluginError(f"plugin {plugin_name!r}: {hook} must be a plain hook, not a wrapper")
            register = _make_register(state, kind, record, staged[kind])
            try:
                _call_impl(impl, register=register)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - SystemExit from a hook is the plugin's failure too
                raise _HookFailed(hook, exc) from exc
    return staged


def _make_register(state: _State, kind: str, record: _Plugin, staged: dict[str, _Entry]) -> Register:
    singular, plugin_name = kind[:-1], record.name

    def register(name: str, obj: object, *, override: bool = False) -> None:
        if not isinstance(name, str) or not name.strip():
            raise PluginError(
                f"plugin {plugin_name!r} registered a {singular} named {name!r}; expected a non-empty string"
            )
        problem = _unusable(kind, obj)
        if problem:
            raise PluginError(f"plugin {plugin_name!r} registered {singular} {name!r} as {_short(obj)}: {problem}")
        existing = staged.get(name) or state.registries[kind].get(name)
        if existing is not None and not override:
            raise PluginError(
                f"{singular} {name!r} is registered by both plugin {existing.plugin!r} and plugin "
                f"{plugin_name!r}; pass override=True in {plugin_name!r} to replace it"
            )
        replaces_builtin = None
        if existing is not None and existing.plugin != plugin_name:
            record.overrides.append({"kind": kind, "name": name, "replaces": existing.plugin})
            replaced = state.plugins.get(existing.plugin)
            if not record.builtin and replaced is not None and replaced.builtin:
                replaces_builtin = existing.plugin
            elif existing.replaces_builtin is not None:
                replaces_builtin = existing.replaces_builtin
        staged[name] = _Entry(obj, plugin_name, replaces_builtin)

    return register


def _unusable(kind: str, obj: object) -> str | None:
    """Why ``obj`` cannot be registered under ``kind`` (None if it can): tasks need ``Params``
    (a dataclass) and a callable ``run``; everything else is a factory or function to call."""
    if kind == "tasks":
        params = getattr(obj, "Params", None)
        if not (isinstance(params, type) and dataclasses.is_dataclass(params)) or not callable(
            getattr(obj, "run", None)
        ):
            return "a task needs a Params dataclass and a run(params) method"
        return None
    if not callable(obj):
        return f"a {kind[:-1]} must be callable (a factory, class or function)"
    return None


def _short(obj: object) -> str:
    text = repr(obj)
    return f"{text if len(text) <= 60 else text[:57] + '...'} ({type(obj).__name__})"


def _call_impl(impl: Any, **kwargs: Any) -> Any:
    # Same calling convention as pluggy: positional, only the arguments the impl declares.
    return impl.function(*(kwargs[arg] for arg in impl.argnames))


def _fail(state: _State, record: _Plugin, message: str) -> None:
    record.error = message
    key, n = record.name, 1
    while key in state.plugins:  # a clash of names must not hide either report
        n += 1
        key = f"{record.name}#{n}"
    state.plugins[key] = record
    _warn(record.name, message)


def _warn(plugin: str, message: str) -> None:
    warnings.warn(f"plugin {plugin!r} was skipped: {message}", PluginWarning, stacklevel=3)


# --------------------------------------------------------------------------- helpers


def _registry(kind: str) -> dict[str, _Entry]:
    state = _ensure()
    try:
        return state.registries[kind]
    except (KeyError, TypeError):
        raise UnknownNameError(f"unknown registry kind {kind!r}; known kinds: {', '.join(KINDS)}") from None


def _unknown_name_message(kind: str, name: object, registry: dict[str, _Entry]) -> str:
    known = ", ".join(sorted(registry)) or "none"
    message = f"unknown {kind[:-1]} {name!r}; registered {kind}: {known}"
    state = _ensure()
    failed = [p.name for p in state.plugins.values() if p.error is not None]
    if failed:
        message += f" (plugins that failed to load: {', '.join(failed)}; see `diffcore plugins`)"
    return message


def _hook_names() -> list[str]:
    return sorted(name for name in dir(hookspecs) if name.startswith("register_"))
