"""The command line under bad input and everyday use (issue #18): plugin isolation of
register_commands, --device, strict train flags, finite and clipped outputs, PNG metadata,
--out-dir, size bounds before allocation and outputs written whole or not at all."""

from __future__ import annotations

import sys
import types
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from diffcore import cli as diffcore_cli
from diffcore import plugins
from diffcore.plugins import PluginWarning, hookimpl


@pytest.fixture(autouse=True)
def fresh_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
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


def _commands_plugin(name: str, fn: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.register_commands = hookimpl(fn)  # type: ignore[attr-defined]
    return module


# --------------------------------------------------------------------------- plugin isolation


@pytest.mark.parametrize("exit_with", [SystemExit(4), SystemExit("bye"), GeneratorExit()])
def test_register_commands_raising_base_exception_is_reported_and_skipped(
    capsys: pytest.CaptureFixture[str], exit_with: BaseException
) -> None:
    def register_commands(cli: Any) -> None:
        cli.add_command("quitter", help="never added")
        raise exit_with

    plugins.register_plugin(_commands_plugin("quitting_plugin", register_commands))
    code, out, err = run_cli(capsys, "list", "samplers")
    assert code == 0 and "euler" in out
    assert "diffcore: warning:" in err and "quitting_plugin" in err
    code, _, err = run_cli(capsys, "quitter")
    assert code == 2 and "invalid choice" in err


def test_register_commands_keyboard_interrupt_propagates(capsys: pytest.CaptureFixture[str]) -> None:
    def register_commands(cli: Any) -> None:
        raise KeyboardInterrupt

    plugins.register_plugin(_commands_plugin("interrupting_plugin", register_commands))
    code, _, err = run_cli(capsys, "list", "samplers")
    assert code == 130 and "interrupted" in err


def test_sys_exit_in_register_commands_subprocess(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    (tmp_path / "exit_cmds.py").write_text(
        "import sys\nfrom diffcore.plugins import hookimpl\n\n@hookimpl\ndef register_commands(cli):\n    sys.exit(0)\n"
    )
    env = {
        **__import__("os").environ,
        "PYTHONPATH": str(tmp_path),
        "DIFFCORE_DISABLE_PLUGIN_AUTOLOAD": "1",
    }
    code = (
        "import sys, exit_cmds; from diffcore import plugins, cli; "
        "plugins.register_plugin(exit_cmds); sys.exit(cli.main(['list', 'schedules']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "linear" in proc.stdout
    assert "exit_cmds" in proc.stderr and "SystemExit" in proc.stderr
