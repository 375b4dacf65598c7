"""The ``diffcore`` command line, in-process through ``main()`` and once as ``python -m diffcore``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Optional

import pytest

from diffcore import cli as diffcore_cli
from diffcore import plugins
from diffcore.plugins import PluginError, PluginWarning, hookimpl

BUILTIN_PLUGIN_NAMES = [name.rpartition(".")[2] for name in plugins.BUILTIN_PLUGINS]


@pytest.fixture(autouse=True)
def fresh_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A fresh manager per test, blind to whatever third-party plugins are installed."""
    monkeypatch.setenv("DIFFCORE_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("DIFFCORE_LOAD_PLUGINS", raising=False)
    plugins.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        plugins.get_plugin_manager()
    yield
    plugins.reset()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = diffcore_cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def plugin_module(name: str, **hooks: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, hookimpl(fn))
    return module


# --------------------------------------------------------------------------- plugins / list


def test_plugins_prints_json_with_the_builtins(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "plugins")
    assert code == 0
    entries = json.loads(out)
    names = [entry["name"] for entry in entries]
    assert names[: len(BUILTIN_PLUGIN_NAMES)] == BUILTIN_PLUGIN_NAMES
    assert all({"name", "version", "hooks", "error"} <= set(entry) for entry in entries)


@pytest.mark.slow
def test_python_m_diffcore_plugins_subprocess() -> None:
    env = {**os.environ, "DIFFCORE_DISABLE_PLUGIN_AUTOLOAD": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "diffcore", "plugins"], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    names = [entry["name"] for entry in json.loads(proc.stdout)]
    assert set(BUILTIN_PLUGIN_NAMES) <= set(names)


def test_list_samplers_prints_sorted_json(capsys: pytest.CaptureFixture[str]) -> None:
    def register_samplers(register: plugins.Register) -> None:
        register("zz_cli_sampler", lambda *a, **k: None)
        register("aa_cli_sampler", lambda *a, **k: None)

    plugins.register_plugin(plugin_module("cli_samplers", register_samplers=register_samplers))
    code, out, _ = run_cli(capsys, "list", "samplers")
    names = json.loads(out)
    assert code == 0
    assert {"aa_cli_sampler", "zz_cli_sampler"} <= set(names)
    assert names == sorted(names)


def test_list_unknown_kind_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "list", "samplerz")
    assert code == 2 and out == ""
    assert err.startswith("diffcore: error:") and "samplerz" in err and "samplers" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys)
    assert code == 2 and "COMMAND" in err


# --------------------------------------------------------------------------- run


@dataclasses.dataclass
class EchoParams:
    steps: int = 10
    scale: float = 1.0
    label: str = "x"
    flag: bool = False
    keep: bool = True
    out: Path = Path("outputs/echo")
    seed: Optional[int] = None  # noqa: UP007, UP045 - the Optional spelling must work too
    mode: Literal["fast", "exact"] = "fast"


class EchoTask:
    name = "echo"
    Params = EchoParams

    def __init__(self) -> None:
        self.calls: list[EchoParams] = []

    def run(self, params: EchoParams) -> dict[str, Any]:
        self.calls.append(params)
        return {**dataclasses.asdict(params), "types": {k: type(v).__name__ for k, v in vars(params).items()}}


@pytest.fixture
def echo_task() -> EchoTask:
    task = EchoTask()

    def register_tasks(register: plugins.Register) -> None:
        register("echo", task)

    plugins.register_plugin(plugin_module("echo_plugin", register_tasks=register_tasks))
    return task


def test_run_converts_options_to_field_types(capsys: pytest.CaptureFixture[str], echo_task: EchoTask) -> None:
    code, out, err = run_cli(
        capsys,
        "run",
        "echo",
        "--steps",
        "3",
        "--scale",
        "0.5",
        "--label",
        "hi",
        "--flag",
        "--no-keep",
        "--out",
        "some/dir",
        "--seed",
        "7",
        "--mode",
        "exact",
    )
    assert code == 0, err
    params = echo_task.calls[-1]
    assert params == EchoParams(3, 0.5, "hi", True, False, Path("some/dir"), 7, "exact")
    assert isinstance(params.out, Path) and isinstance(params.scale, float)
    result = json.loads(out)
    assert result["out"] == "some/dir" and result["steps"] == 3 and result["flag"] is True
    assert result["types"]["out"] in {"PosixPath", "WindowsPath"}


def test_run_uses_dataclass_defaults(capsys: pytest.CaptureFixture[str], echo_task: EchoTask) -> None:
    code, _, _ = run_cli(capsys, "run", "echo", "--flag", "false")
    assert code == 0
    assert echo_task.calls[-1] == EchoParams(flag=False)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--steps", "three"], "--steps"),
        (["--flag", "maybe"], "boolean"),
        (["--mode", "slow"], "invalid choice"),
        (["--nope", "1"], "unrecognized arguments"),
    ],
)
def test_run_bad_option_is_one_line_usage_error(
    capsys: pytest.CaptureFixture[str], echo_task: EchoTask, argv: list[str], fragment: str
) -> None:
    code, out, err = run_cli(capsys, "run", "echo", *argv)
    assert code == 2 and out == ""
    assert err.startswith("diffcore: error: run echo:") and fragment in err
    assert len(err.strip().splitlines()) == 1
    assert echo_task.calls == []


def test_run_task_help_lists_its_options(capsys: pytest.CaptureFixture[str], echo_task: EchoTask) -> None:
    code, out, _ = run_cli(capsys, "run", "echo", "--help")
    assert code == 0
    assert "--steps" in out and "--no-keep" in out and "--out" in out


def test_run_unknown_task_names_the_known_tasks(capsys: pytest.CaptureFixture[str], echo_task: EchoTask) -> None:
    code, out, err = run_cli(capsys, "run", "nonexistent")
    assert code == 2 and out == ""
    assert err.startswith("diffcore: error:")
    assert "nonexistent" in err and "echo" in err
    assert "Traceback" not in err


def test_run_required_field_and_validation(capsys: pytest.CaptureFixture[str]) -> None:
    @dataclasses.dataclass
    class StrictParams:
        count: int

        def __post_init__(self) -> None:
            if self.count < 1:
                raise ValueError(f"count must be >= 1, got {self.count}")

    class StrictTask:
        name = "strict"
        Params = StrictParams

        def run(self, params: StrictParams) -> dict[str, Any]:
            return {"count": params.count}

    def register_tasks(register: plugins.Register) -> None:
        register("strict", StrictTask)  # a class: the CLI instantiates it

    plugins.register_plugin(plugin_module("strict_plugin", register_tasks=register_tasks))
    code, _, err = run_cli(capsys, "run", "strict")
    assert code == 2 and "--count" in err
    code, _, err = run_cli(capsys, "run", "strict", "--count", "0")
    assert code == 2 and "count must be >= 1, got 0" in err
    code, out, _ = run_cli(capsys, "run", "strict", "--count", "4")
    assert code == 0 and json.loads(out) == {"count": 4}


def test_run_unsupported_field_type_names_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    @dataclasses.dataclass
    class DictParams:
        sizes: dict[str, int] = dataclasses.field(default_factory=dict)

    task = types.SimpleNamespace(name="dicts", Params=DictParams, run=lambda params: {})
    plugins.register_plugin(plugin_module("dict_plugin", register_tasks=lambda register: register("dicts", task)))
    code, _, err = run_cli(capsys, "run", "dicts")
    assert code == 2 and "'sizes'" in err and "'dicts'" in err


def test_run_list_fields_take_several_values(capsys: pytest.CaptureFixture[str]) -> None:
    @dataclasses.dataclass
    class ListParams:
        sizes: list[int] = dataclasses.field(default_factory=lambda: [1])
        depth: float | list[float] = 0.5

    task = types.SimpleNamespace(name="lists", Params=ListParams, run=lambda params: dataclasses.asdict(params))
    plugins.register_plugin(plugin_module("list_plugin", register_tasks=lambda register: register("lists", task)))
    code, out, _ = run_cli(capsys, "run", "lists", "--sizes", "2", "3", "--depth", "0.1", "0.4")
    assert code == 0 and json.loads(out) == {"sizes": [2, 3], "depth": [0.1, 0.4]}
    code, out, _ = run_cli(capsys, "run", "lists")
    assert code == 0 and json.loads(out) == {"sizes": [1], "depth": 0.5}
    code, _, err = run_cli(capsys, "run", "lists", "--sizes", "2", "x")
    assert code == 2 and "invalid int value: 'x'" in err


# --------------------------------------------------------------------------- plugin commands


def hello_commands(cli: diffcore_cli.PluginCommands) -> None:
    parser = cli.add_command("hello", help="say hello")
    parser.add_argument("--name", default="world")
    parser.add_argument("--code", type=int, default=0)

    def hello(args: argparse.Namespace) -> int:
        print(f"hello {args.name}")
        return args.code

    parser.set_defaults(func=hello)


def test_plugin_command_runs(capsys: pytest.CaptureFixture[str]) -> None:
    plugins.register_plugin(plugin_module("hello_plugin", register_commands=hello_commands))
    code, out, _ = run_cli(capsys, "hello", "--name", "diffcore")
    assert code == 0 and out == "hello diffcore\n"
    code, out, _ = run_cli(capsys, "hello", "--code", "3")
    assert code == 3 and out == "hello world\n"
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "say hello" in out


def test_command_colliding_with_builtin_is_an_error_naming_both(capsys: pytest.CaptureFixture[str]) -> None:
    commands = diffcore_cli.PluginCommands("clasher", {"list": "built-in diffcore"})
    with pytest.raises(PluginError) as excinfo:
        commands.add_command("list", help="shadow list")
    assert "'list'" in str(excinfo.value) and "clasher" in str(excinfo.value) and "built-in" in str(excinfo.value)

    def clash(cli: diffcore_cli.PluginCommands) -> None:
        cli.add_command("extra", help="added before the clash")
        cli.add_command("list", help="shadow list")

    plugins.register_plugin(plugin_module("clasher", register_commands=clash))
    code, out, err = run_cli(capsys, "list", "tasks")
    assert code == 0 and isinstance(json.loads(out), list)  # the built-in still runs
    assert "diffcore: warning:" in err and "clasher" in err and "'list'" in err and "built-in" in err
    code, _, err = run_cli(capsys, "extra")  # the failing plugin's other commands are rolled back
    assert code == 2 and "extra" in err
    entry = next(p for p in plugins.plugin_info() if p["name"] == "clasher")
    assert entry["error"] is not None and "register_commands" in entry["error"]


def test_command_colliding_between_plugins_names_both(capsys: pytest.CaptureFixture[str]) -> None:
    plugins.register_plugin(plugin_module("hello_first", register_commands=hello_commands))
    plugins.register_plugin(plugin_module("hello_second", register_commands=hello_commands))
    code, out, err = run_cli(capsys, "hello")
    assert code == 0 and out == "hello world\n"
    assert "hello_first" in err and "hello_second" in err


# --------------------------------------------------------------------------- demo


def test_demo_is_a_plugin_command_not_a_builtin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert "demo" not in diffcore_cli.BUILTIN_COMMANDS
    calls: list[dict[str, Any]] = []
    fake = types.ModuleType("diffcore_plugins.demo.app")
    fake.main = lambda **kwargs: calls.append(kwargs) or {"ok": True}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "diffcore_plugins.demo.app", fake)
    if "diffcore_plugins.demo" not in plugins.BUILTIN_PLUGINS:  # registered by hand until it is built in
        import diffcore_plugins.demo

        plugins.register_plugin(diffcore_plugins.demo, "demo")
    code, _, err = run_cli(capsys, "demo", "--out", str(tmp_path / "d"), "--quick")
    assert code == 0, err
    assert calls[-1]["out"] == tmp_path / "d" and calls[-1]["quick"] is True
    owner = next(p for p in plugins.plugin_info() if "register_commands" in p["hooks"] and p["name"] == "demo")
    assert owner["error"] is None


# --------------------------------------------------------------------------- task commands


@dataclasses.dataclass
class PlotParams:
    """A task whose command has a positional field."""

    names: str = dataclasses.field(metadata={"help": "names", "positional": True, "nargs": "*", "metavar": "NAME"})
    count: int = dataclasses.field(default=2, metadata={"help": "how many"})
    check: bool = True


class PlotTask:
    """Plot some names."""

    name = "plot"
    Params = PlotParams

    def run(self, params: PlotParams) -> dict[str, Any]:
        if params.count < 0 or (params.check and not params.names):
            raise ValueError(f"count={params.count} must be >= 0" if params.count < 0 else "names is empty")
        return {"names": params.names, "count": params.count}


def test_add_task_builds_the_command_from_the_params_dataclass(capsys: pytest.CaptureFixture[str]) -> None:
    plugins.register_plugin(
        plugin_module("plot_plugin", register_commands=lambda cli: cli.add_task("plot", PlotTask, help="plot names"))
    )
    code, out, err = run_cli(capsys, "plot", "a", "b", "--count", "3")
    assert code == 0, err
    assert json.loads(out) == {"names": ["a", "b"], "count": 3}
    code, out, _ = run_cli(capsys, "plot", "--help")
    assert code == 0 and "NAME" in out and "--count" in out and "(default: 2)" in out and "--no-check" in out
    assert "Plot some names." in out
    for argv, fragment in [
        (["--count", "-1"], "plot: count=-1 must be >= 0"),
        ([], "plot: names is empty"),
        (["x", "--count", "two"], "plot: argument --count: invalid int value"),
    ]:
        code, out, err = run_cli(capsys, "plot", *argv)
        assert code == 2 and out == "" and err.startswith("diffcore: error:") and fragment in err, err
        assert len(err.strip().splitlines()) == 1


def test_task_warnings_are_one_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    from diffcore.tasks import TaskWarning

    class Warns:
        name = "warns"
        Params = EchoParams

        def run(self, params: EchoParams) -> dict[str, Any]:
            warnings.warn("first thing", TaskWarning, stacklevel=1)
            warnings.warn("first thing", TaskWarning, stacklevel=1)
            return {}

    plugins.register_plugin(
        plugin_module("warns_plugin", register_commands=lambda cli: cli.add_task("warns", Warns(), help="warn"))
    )
    code, out, err = run_cli(capsys, "warns")
    assert code == 0 and json.loads(out) == {}
    assert err.splitlines() == ["diffcore: warning: first thing"] * 2


# --------------------------------------------------------------------------- diffcore train --help


def test_train_help_documents_predictions_timestep_sampling_and_reflow(capsys: pytest.CaptureFixture[str]) -> None:
    from diffcore.training.config import TrainConfig

    code, out, _ = run_cli(capsys, "train", "--help")
    text = " ".join(out.split())  # argparse wraps the help text
    assert code == 0
    assert "--prediction PREDICTION" in text and "epsilon (default) | sample | v_prediction | edm | flow" in text
    assert "--timestep-sampling {uniform,logit_normal,mode}" in text
    for flag in ("--logit-mean", "--logit-std", "--mode-scale", "--reflow-from RUN", "--pairs N"):
        assert flag in text
    assert "--pair-sampler NAME" in text and "--pair-steps N" in text and "dataset, model, schedule and" in text
    for f in dataclasses.fields(TrainConfig):  # every TrainConfig field is a flag, with its default
        assert f"--{f.name.replace('_', '-')}" in text and f"(default: {f.default})" in text
    assert "TrainConfig." not in text  # each has its own help
