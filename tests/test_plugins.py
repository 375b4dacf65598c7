"""The plugin manager: load order, registries, name clashes, failing plugins, env vars."""

from __future__ import annotations

import importlib.metadata
import sys
import types
import warnings
from collections.abc import Callable, Iterator
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


def fake() -> Callable[..., None]:
    """A new callable, distinct from every other: something registrable to tell apart."""
    return lambda *args, **kwargs: None


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
    sampler = fake()
    plugins.register_plugin(sampler_plugin("fake_one", fake_sampler=sampler))
    assert plugins.get("samplers", "fake_sampler") is sampler
    assert plugins.registered_by("samplers", "fake_sampler") == "fake_one"
    assert "fake_sampler" in plugins.available("samplers")
    assert "fake_sampler" not in plugins.available("schedules")


def test_same_name_from_two_plugins_is_an_error_naming_both() -> None:
    first, second = fake(), fake()
    plugins.register_plugin(sampler_plugin("plugin_first", dup=first))
    with pytest.raises(PluginError) as excinfo:
        plugins.register_plugin(sampler_plugin("plugin_second", dup=second, other=fake()))
    message = str(excinfo.value)
    assert "'dup'" in message and "plugin_first" in message and "plugin_second" in message
    assert isinstance(excinfo.value, ValueError)
    # Nothing of the rejected plugin stays behind.
    assert plugins.get("samplers", "dup") is first
    assert "other" not in plugins.available("samplers")
    assert "plugin_second" not in [p["name"] for p in plugins.plugin_info()]
    assert "plugin_second" not in [name for name, _ in plugins.get_plugin_manager().list_name_plugin()]


def test_override_true_replaces_an_earlier_registration() -> None:
    first, second = fake(), fake()
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
    plugins.register_plugin(sampler_plugin("good_before", good_a=fake()))
    broken = types.ModuleType("broken_plugin")

    @hookimpl
    def register_schedules(register: plugins.Register) -> None:
        register("half_registered", fake())

    @hookimpl
    def register_samplers(register: plugins.Register) -> None:
        raise RuntimeError("boom in samplers")

    broken.register_schedules = register_schedules  # type: ignore[attr-defined]
    broken.register_samplers = register_samplers  # type: ignore[attr-defined]
    with pytest.warns(PluginWarning, match="broken_plugin.*boom in samplers"):
        plugins.register_plugin(broken)
    plugins.register_plugin(sampler_plugin("good_after", good_b=fake()))

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
        plugins.register_plugin(sampler_plugin("bad_names", **{"": fake()}))


def test_unknown_name_error_lists_known_names() -> None:
    plugins.register_plugin(sampler_plugin("named", alpha=fake(), beta=fake()))
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
    plugins.register_plugin(sampler_plugin("unsorted", zeta=fake(), alpha=fake(), mid=fake()))
    names = plugins.available("samplers")
    assert names == sorted(names)
    assert [n for n in names if n in {"zeta", "alpha", "mid"}] == ["alpha", "mid", "zeta"]


def test_plugin_info_reports_builtins_first_with_diffcore_version() -> None:
    import diffcore

    plugins.register_plugin(sampler_plugin("late", late=fake()))
    infos = plugins.plugin_info()
    builtin_names = [name.rpartition(".")[2] for name in plugins.BUILTIN_PLUGINS]
    assert [p["name"] for p in infos[: len(builtin_names)]] == builtin_names
    assert all(p["builtin"] and p["version"] == diffcore.__version__ for p in infos[: len(builtin_names)])
    assert infos[-1]["name"] == "late" and infos[-1]["builtin"] is False
    assert set(infos[-1]) == {"name", "version", "hooks", "builtin", "error", "overrides"}


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
    monkeypatch.setitem(sys.modules, "fake_ep_one", sampler_plugin("fake_ep_one", from_one=fake()))
    monkeypatch.setitem(sys.modules, "fake_ep_two", sampler_plugin("fake_ep_two", from_two=fake()))
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


# --------------------------------------------------------------------------- isolation (issue #18, finding 7)


def test_a_plugin_calling_sys_exit_at_import_is_reported_and_skipped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    (tmp_path / "exiting_plugin_mod.py").write_text("import sys\nsys.exit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "BUILTIN_PLUGINS", [*plugins.BUILTIN_PLUGINS, "exiting_plugin_mod"])
    plugins.reset()
    with pytest.warns(PluginWarning, match=r"exiting_plugin_mod.*SystemExit\(3\).*sys\.exit"):
        assert "ddim" in plugins.available("samplers")  # diffcore keeps working
    assert "SystemExit" in info("exiting_plugin_mod")["error"]


@pytest.mark.usefixtures("fake_entry_points")
def test_an_entry_point_calling_sys_exit_at_import_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.metadata.entry_points

    class Exiting(importlib.metadata.EntryPoint):
        def load(self) -> Any:
            raise SystemExit("bye")

    exiting = Exiting("ep_exit", "exiting_ep_mod", plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **sel: [*real(**sel), exiting])
    with pytest.warns(PluginWarning, match="ep_exit"):
        names = [p["name"] for p in plugins.plugin_info()]
    assert "ep_exit" in names and "from_one" in plugins.available("samplers")
    assert "SystemExit('bye')" in info("ep_exit")["error"]


class _Odd(BaseException):
    """A BaseException that is neither Exception, SystemExit nor KeyboardInterrupt."""


@pytest.mark.parametrize("error", [SystemExit(0), SystemExit(), _Odd("odd")])
def test_a_hook_raising_a_base_exception_is_reported_and_rolled_back(error: BaseException) -> None:
    module = types.ModuleType("exiting_hook")

    @hookimpl
    def register_samplers(register: plugins.Register) -> None:
        register("before_exit", fake())
        raise error

    module.register_samplers = register_samplers  # type: ignore[attr-defined]
    with pytest.warns(PluginWarning, match=f"exiting_hook.*{type(error).__name__}"):
        plugins.register_plugin(module)
    assert "before_exit" not in plugins.available("samplers")
    assert type(error).__name__ in info("exiting_hook")["error"]


def test_keyboard_interrupt_in_a_hook_still_interrupts() -> None:
    module = types.ModuleType("interrupted_hook")

    @hookimpl
    def register_samplers(register: plugins.Register) -> None:
        raise KeyboardInterrupt

    module.register_samplers = register_samplers  # type: ignore[attr-defined]
    with pytest.raises(KeyboardInterrupt):
        plugins.register_plugin(module)


@pytest.mark.parametrize(
    ("kind", "obj", "match"),
    [
        ("samplers", 42, r"plugin 'odd_one' registered sampler 'odd' as 42 \(int\): a sampler must be callable"),
        ("models", "unet", r"registered model 'odd' as 'unet' \(str\)"),
        ("datasets", None, "a dataset must be callable"),
        ("tasks", fake(), "a task needs a Params dataclass and a run"),
    ],
)
def test_unusable_registrations_are_refused_naming_the_plugin(kind: str, obj: object, match: str) -> None:
    module = types.ModuleType("odd_one")

    def hook(register: plugins.Register) -> None:
        register("odd", obj)

    setattr(module, f"register_{kind}", hookimpl(hook))
    hook.__name__ = f"register_{kind}"
    with pytest.raises(PluginError, match=match):
        plugins.register_plugin(module)
    assert "odd" not in plugins.available(kind)


@pytest.mark.usefixtures("fake_entry_points")
def test_an_installed_plugin_with_a_non_callable_is_reported_and_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fake_ep_one", sampler_plugin("fake_ep_one", from_one=42))
    with pytest.warns(PluginWarning, match=r"ep_one.*'from_one' as 42"):
        assert "from_one" not in plugins.available("samplers")
    assert "must be callable" in info("ep_one")["error"]


def test_an_override_of_a_builtin_is_listed_and_warned_once_at_first_use(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from diffcore.cli import main

    mine = fake()
    module = types.ModuleType("faster_ddim")

    @hookimpl
    def register_samplers(register: plugins.Register) -> None:
        register("ddim", mine, override=True)

    module.register_samplers = register_samplers  # type: ignore[attr-defined]
    plugins.register_plugin(module)
    assert info("faster_ddim")["overrides"] == [{"kind": "samplers", "name": "ddim", "replaces": "samplers"}]
    assert info("samplers")["overrides"] == []
    with pytest.warns(PluginWarning, match=r"sampler 'ddim' is plugin 'faster_ddim'.s override of the built-in"):
        assert plugins.get("samplers", "ddim") is mine
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plugins.get("samplers", "ddim") is mine  # once
        assert plugins.get("samplers", "ddpm") is not mine  # built-ins in effect do not warn
    assert main(["plugins"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["faster_ddim"]["overrides"] == [{"kind": "samplers", "name": "ddim", "replaces": "samplers"}]
