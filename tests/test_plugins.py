"""The plugin manager: load order, registries, name clashes, failing plugins, env vars."""

from __future__ import annotations

import importlib.metadata
import sys
import types
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from diffcore import plugins
from diffcore.plugins import PluginError, PluginWarning, hookimpl


@pytest.fixture(autouse=True)
def fresh_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A fresh manager per test, blind to whatever third-party plugins are installed."""
    monkeypatch.setenv("DIFFCORE_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("DIFFCORE_LOAD_PLUGINS", raising=False)
    plugins.reset()
    with warnings.catch_warnings():
        # The built-in modules may not exist yet while the project grows.
        warnings.simplefilter("ignore", PluginWarning)
        plugins.get_plugin_manager()
    yield
    plugins.reset()


def sampler_plugin(module_name: str, **samplers: Any) -> types.ModuleType:
    """A plugin module registering ``samplers`` (name -> object)."""
    module = types.ModuleType(module_name)

    @hookimpl
    def register_samplers(register: plugins.Register) -> None:
        for name, obj in samplers.items():
            register(name, obj)

    module.register_samplers = register_samplers  # type: ignore[attr-defined]
    return module


def info(name: str) -> dict[str, Any]:
    matches = [p for p in plugins.plugin_info() if p["name"] == name]
    assert len(matches) == 1, f"{name!r} appears {len(matches)} times in plugin_info()"
    return matches[0]


def test_registered_objects_are_returned_by_get() -> None:
    sampler = object()
    plugins.register_plugin(sampler_plugin("fake_one", fake_sampler=sampler))
    assert plugins.get("samplers", "fake_sampler") is sampler
    assert plugins.registered_by("samplers", "fake_sampler") == "fake_one"
    assert "fake_sampler" in plugins.available("samplers")
    assert "fake_sampler" not in plugins.available("schedules")


def test_same_name_from_two_plugins_is_an_error_naming_both() -> None:
    first, second = object(), object()
    plugins.register_plugin(sampler_plugin("plugin_first", dup=first))
    with pytest.raises(PluginError) as excinfo:
        plugins.register_plugin(sampler_plugin("plugin_second", dup=second, other=object()))
    message = str(excinfo.value)
    assert "'dup'" in message and "plugin_first" in message and "plugin_second" in message
    assert isinstance(excinfo.value, ValueError)
    # Nothing of the rejected plugin stays behind.
    assert plugins.get("samplers", "dup") is first
    assert "other" not in plugins.available("samplers")
    assert "plugin_second" not in [p["name"] for p in plugins.plugin_info()]
    assert "plugin_second" not in [name for name, _ in plugins.get_plugin_manager().list_name_plugin()]


def test_override_true_replaces_an_earlier_registration() -> None:
    first, second = object(), object()
    plugins.register_plugin(sampler_plugin("plugin_first", dup=first))
    overriding = types.ModuleType("plugin_override")

    @hookimpl
    def register_samplers(register: plugins.Register) -> None:
        register("dup", second, override=True)

    overriding.register_samplers = register_samplers  # type: ignore[attr-defined]
    plugins.register_plugin(overriding)
    assert plugins.get("samplers", "dup") is second
    assert plugins.registered_by("samplers", "dup") == "plugin_override"


def test_class_instance_plugins_work() -> None:
    class SchedulePlugin:
        @hookimpl
        def register_schedules(self, register: plugins.Register) -> None:
            register("fake_schedule", len)

    name = plugins.register_plugin(SchedulePlugin(), name="class_plugin")
    assert name == "class_plugin"
    assert plugins.get("schedules", "fake_schedule") is len
    assert info("class_plugin")["hooks"] == ["register_schedules"]


def test_plugin_raising_in_a_hook_is_skipped_rolled_back_and_reported() -> None:
    plugins.register_plugin(sampler_plugin("good_before", good_a=object()))
    broken = types.ModuleType("broken_plugin")

    @hookimpl
    def register_schedules(register: plugins.Register) -> None:
        register("half_registered", object())

    @hookimpl
    def register_samplers(register: plugins.Register) -> None:
        raise RuntimeError("boom in samplers")

    broken.register_schedules = register_schedules  # type: ignore[attr-defined]
    broken.register_samplers = register_samplers  # type: ignore[attr-defined]
    with pytest.warns(PluginWarning, match="broken_plugin.*boom in samplers"):
        plugins.register_plugin(broken)
    plugins.register_plugin(sampler_plugin("good_after", good_b=object()))

    assert "half_registered" not in plugins.available("schedules")
    entry = info("broken_plugin")
    assert entry["error"] is not None and "boom in samplers" in entry["error"]
    assert entry["hooks"] == ["register_samplers", "register_schedules"]
    assert info("good_before")["error"] is None
    assert {"good_a", "good_b"} <= set(plugins.available("samplers"))
    # The failed plugin's hooks are no longer called by anyone.
    assert "broken_plugin" not in [name for name, _ in plugins.implementations("register_samplers")]


def test_bad_registration_name_is_rejected() -> None:
    with pytest.raises(PluginError, match="non-empty string"):
        plugins.register_plugin(sampler_plugin("bad_names", **{"": object()}))


def test_unknown_name_error_lists_known_names() -> None:
    plugins.register_plugin(sampler_plugin("named", alpha=object(), beta=object()))
    with pytest.raises(KeyError) as excinfo:
        plugins.get("samplers", "gamma")
    message = str(excinfo.value)
    assert isinstance(excinfo.value, plugins.UnknownNameError)
    assert "'gamma'" in message and "alpha" in message and "beta" in message
    assert not message.startswith('"')  # not KeyError's repr-quoting


def test_unknown_kind_error_lists_kinds() -> None:
    with pytest.raises(KeyError) as excinfo:
        plugins.available("sampler")
    message = str(excinfo.value)
    assert "'sampler'" in message
    assert all(kind in message for kind in plugins.KINDS)


def test_available_is_sorted() -> None:
    plugins.register_plugin(sampler_plugin("unsorted", zeta=1, alpha=2, mid=3))
    names = plugins.available("samplers")
    assert names == sorted(names)
    assert [n for n in names if n in {"zeta", "alpha", "mid"}] == ["alpha", "mid", "zeta"]


def test_plugin_info_reports_builtins_first_with_diffcore_version() -> None:
    import diffcore

    plugins.register_plugin(sampler_plugin("late", late=object()))
    infos = plugins.plugin_info()
    builtin_names = [name.rpartition(".")[2] for name in plugins.BUILTIN_PLUGINS]
    assert [p["name"] for p in infos[: len(builtin_names)]] == builtin_names
    assert all(p["builtin"] and p["version"] == diffcore.__version__ for p in infos[: len(builtin_names)])
    assert infos[-1]["name"] == "late" and infos[-1]["builtin"] is False
    assert set(infos[-1]) == {"name", "version", "hooks", "builtin", "error"}


def test_missing_builtin_module_is_reported_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugins, "BUILTIN_PLUGINS", [*plugins.BUILTIN_PLUGINS, "diffcore_plugins.no_such_module"])
    plugins.reset()
    with pytest.warns(PluginWarning, match="no_such_module"):
        samplers = plugins.available("samplers")
    assert {"ddim", "ddpm", "dpmpp_2m"} <= set(samplers)  # the other built-ins still load
    assert "generate" in plugins.available("tasks")
    entry = info("no_such_module")
    assert entry["builtin"] is True
    assert "ModuleNotFoundError" in entry["error"]


# --------------------------------------------------------------------------- entry points


@pytest.fixture
def fake_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    """Install entry points ep_one, ep_two, a broken one, and one duplicating a built-in."""
    monkeypatch.setitem(sys.modules, "fake_ep_one", sampler_plugin("fake_ep_one", from_one=object()))
    monkeypatch.setitem(sys.modules, "fake_ep_two", sampler_plugin("fake_ep_two", from_two=object()))
    eps = [
        importlib.metadata.EntryPoint("ep_two", "fake_ep_two", plugins.ENTRY_POINT_GROUP),
        importlib.metadata.EntryPoint("ep_one", "fake_ep_one", plugins.ENTRY_POINT_GROUP),
        importlib.metadata.EntryPoint("ep_broken", "fake_ep_not_importable_xyz", plugins.ENTRY_POINT_GROUP),
        importlib.metadata.EntryPoint("samplers", "diffcore_plugins.samplers", plugins.ENTRY_POINT_GROUP),
    ]

    def entry_points(**selection: str) -> list[importlib.metadata.EntryPoint]:
        return [ep for ep in eps if all(getattr(ep, k) == v for k, v in selection.items())]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    monkeypatch.delenv("DIFFCORE_DISABLE_PLUGIN_AUTOLOAD")
    plugins.reset()


def loaded_names() -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        return [p["name"] for p in plugins.plugin_info()]


@pytest.mark.usefixtures("fake_entry_points")
def test_entry_points_load_after_builtins_and_skip_builtin_modules() -> None:
    with pytest.warns(PluginWarning, match="ep_broken"):
        names = [p["name"] for p in plugins.plugin_info()]
    assert names.count("samplers") == 1  # the built-in's own entry point is not loaded twice
    assert names.index("ep_one") > names.index("samplers")
    assert names.index("ep_one") < names.index("ep_two")  # sorted by entry-point name
    assert {"from_one", "from_two"} <= set(plugins.available("samplers"))
    assert "ModuleNotFoundError" in info("ep_broken")["error"]


@pytest.mark.usefixtures("fake_entry_points")
def test_disable_autoload_loads_builtins_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFCORE_DISABLE_PLUGIN_AUTOLOAD", "1")
    names = loaded_names()
    assert not {"ep_one", "ep_two", "ep_broken"} & set(names)
    assert {"schedules", "samplers"} <= set(names)


@pytest.mark.usefixtures("fake_entry_points")
def test_disable_autoload_zero_means_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFCORE_DISABLE_PLUGIN_AUTOLOAD", "0")
    assert "ep_one" in loaded_names()


@pytest.mark.usefixtures("fake_entry_points")
def test_load_plugins_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFCORE_LOAD_PLUGINS", " ep_two , not_installed")
    with pytest.warns(PluginWarning, match="not_installed"):
        names = [p["name"] for p in plugins.plugin_info()]
    assert "ep_two" in names
    assert "ep_one" not in names and "ep_broken" not in names
    assert {"schedules", "samplers"} <= set(names)
    assert "from_two" in plugins.available("samplers")
    assert "from_one" not in plugins.available("samplers")
