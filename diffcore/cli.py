"""The ``diffcore`` command line.

Built-in commands: ``plugins`` (JSON of :func:`diffcore.plugins.plugin_info`), ``list KIND``
(JSON of registered names) and ``run TASK [--field value ...]`` (a registered task, its
``Params`` dataclass fields as options). Plugins add more through the
``register_commands(cli)`` hook; :meth:`PluginCommands.add_task` builds a command from a task's
``Params`` the same way. Bad input -- a parse error, or a ValueError / TypeError / OSError
raised while a command runs -- is one ``diffcore: error: COMMAND: ...`` line on stderr and exit
code 2; task warnings are ``diffcore: warning: ...`` lines.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import io
import json
import os
import sys
import types
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn, Union

from diffcore import plugins
from diffcore.tasks import TaskWarning

BUILTIN_COMMANDS: tuple[str, ...] = ("plugins", "list", "run")
_SCALARS: tuple[type, ...] = (int, float, str, bool, Path)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

__all__ = [
    "BUILTIN_COMMANDS",
    "PluginCommands",
    "UsageError",
    "add_params",
    "build_parser",
    "main",
    "parse_bool",
    "task_parser",
]


class UsageError(Exception):
    """Bad command-line input; ``main`` reports it as one ``diffcore: error:`` line, exit 2."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors become :class:`UsageError` instead of printing usage."""

    def error(self, message: str) -> NoReturn:
        context = self.prog.removeprefix("diffcore").strip()
        raise UsageError(f"{context}: {message}" if context else message)


class PluginCommands:
    """The ``cli`` object a ``register_commands`` hook receives; lets one plugin add commands."""

    def __init__(self, plugin: str, taken: Mapping[str, str]) -> None:
        self._plugin = plugin
        self._taken = taken  # command name -> who owns it, for collision messages
        self._added: dict[str, tuple[str, argparse.ArgumentParser]] = {}

    @property
    def commands(self) -> list[str]:
        """Names of the commands that exist so far (built-in, other plugins', this plugin's)."""
        return sorted({*self._taken, *self._added})

    def add_command(self, name: str, help: str) -> argparse.ArgumentParser:  # noqa: A002 - argparse's word
        """Add the subcommand ``diffcore NAME`` and return its parser.

        Add arguments to the parser and ``parser.set_defaults(func=fn)``, where
        ``fn(args: argparse.Namespace) -> int | None`` runs the command and returns its
        exit code. Raises :class:`diffcore.plugins.PluginError` if ``name`` is taken.
        """
        if not isinstance(name, str) or not name or name.startswith("-") or any(c.isspace() for c in name):
            raise plugins.PluginError(
                f"plugin {self._plugin!r} tried to add command {name!r}; expected a non-empty "
                "name without whitespace that does not start with '-'"
            )
        owner = self._taken.get(name) or (f"plugin {self._plugin!r}" if name in self._added else None)
        if owner is not None:
            raise plugins.PluginError(
                f"command {name!r} from plugin {self._plugin!r} collides with command {name!r} from {owner}"
            )
        parser = _Parser(prog=f"diffcore {name}", description=help, add_help=False)
        self._added[name] = (help, parser)
        return parser

    def add_task(self, name: str, task: Any, help: str) -> argparse.ArgumentParser:  # noqa: A002
        """Add ``diffcore NAME`` running ``task`` (a task object or class, as registered with
        ``register_tasks``): one option per field of ``task.Params``, built as for ``diffcore run``,
        except that fields with ``metadata["positional"]`` are positional arguments. The command
        prints the dict ``task.run(params)`` returns as JSON. Returns the parser."""
        task = _task_object(name, task)
        parser = self.add_command(name, help)
        parser.description = _own_doc(task) or help
        add_params(parser, name, task.Params, positionals=True)
        parser.set_defaults(func=functools.partial(_run_task, name, task))
        return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``diffcore`` command line with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", plugins.PluginWarning)
            parser = build_parser()
        _report_warnings(caught)
        args = parser.parse_args(args_list)
        if args.func is None:
            parser.print_help(sys.stderr)
            return 2
        code = _run_command(args)
    except (UsageError, plugins.PluginError, plugins.UnknownNameError) as exc:
        print(f"diffcore: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help / --version, or a command calling sys.exit()
        return _exit_code(exc.code)
    except KeyboardInterrupt:
        print("diffcore: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `diffcore plugins | head`: stop quietly
        _silence_stdout()
        return 141
    return _exit_code(code)


def _run_command(args: argparse.Namespace) -> Any:
    """Run the parsed command; its bad input (ValueError, TypeError, OSError, the
    FloatingPointError of a diverged training, an OverflowError of a number too large for torch)
    becomes a :class:`UsageError` naming the command, and task warnings ``diffcore: warning:`` lines."""
    context = f"run {args.task}" if args.command == "run" else args.command
    with warnings.catch_warnings():
        warnings.simplefilter("always", TaskWarning)
        shown = warnings.showwarning

        def show(message: Any, category: type[Warning], *rest: Any, **kw: Any) -> None:
            if issubclass(category, (TaskWarning, plugins.PluginWarning)):
                print(f"diffcore: warning: {message}", file=sys.stderr)
            else:
                shown(message, category, *rest, **kw)

        warnings.showwarning = show
        try:
            return args.func(args)
        except (plugins.PluginError, plugins.UnknownNameError, BrokenPipeError):
            raise
        except (ValueError, TypeError, OSError, FloatingPointError, OverflowError) as exc:  # diverged, too large
            raise UsageError(f"{context}: {exc}") from exc


def build_parser() -> argparse.ArgumentParser:
    """Return the full parser: built-in commands, then each plugin's, in plugin load order."""
    parser = _Parser(
        prog="diffcore",
        description="A plugin-based diffusion-model framework for PyTorch.",
        epilog="Environment: DIFFCORE_DISABLE_PLUGIN_AUTOLOAD=1 loads no third-party plugins; "
        "DIFFCORE_LOAD_PLUGINS=a,b loads only those.",
    )
    import diffcore

    parser.add_argument("--version", action="version", version=f"diffcore {getattr(diffcore, '__version__', '?')}")
    parser.set_defaults(func=None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser(
        "plugins",
        help="show installed plugins as JSON",
        description="Show each plugin "
        "(built-ins first), its version, the hooks it implements and any load error, as JSON.",
    )
    p.set_defaults(func=_cmd_plugins)

    p = sub.add_parser(
        "list",
        help="list the registered names of a kind as JSON",
        description="Print the sorted names registered under KIND as a JSON list.",
    )
    p.add_argument("kind", metavar="KIND", choices=plugins.KINDS, help=f"one of: {', '.join(plugins.KINDS)}")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser(
        "run",
        help="run a registered task",
        description="Run the task TASK. Its parameters "
        "are options; see `diffcore run TASK --help`. Prints the task's result as JSON.",
    )
    p.add_argument("task", metavar="TASK", help="a name from `diffcore list tasks`")
    p.add_argument("params", nargs=argparse.REMAINDER, metavar="...", help="the task's options, e.g. --steps 20")
    p.set_defaults(func=_cmd_run)

    _add_plugin_commands(sub)
    return parser


# --------------------------------------------------------------------------- built-in commands


def _cmd_plugins(args: argparse.Namespace) -> int:
    _print_json(plugins.plugin_info())
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    _print_json(plugins.available(args.kind))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    name: str = args.task
    task = _task_object(name, plugins.get("tasks", name))
    options = task_parser(name, task.Params, description=_own_doc(task)).parse_args(args.params)
    return _run_task(name, task, options)


# --------------------------------------------------------------------------- tasks


def task_parser(task: str, params_cls: type, description: str | None = None) -> argparse.ArgumentParser:
    """Build the parser for ``diffcore run TASK``: one ``--field-name`` option per init field.

    Supported field types: int, float, str, bool (``--flag [BOOL]`` / ``--no-flag``), Path,
    ``Optional[...]`` of those, ``Literal[...]`` (choices), and ``list[X]`` or ``X | list[X]`` of
    a scalar X (``--field V [V ...]``, always parsed as a list: the dataclass may collapse one
    value). A field's help text is ``field(metadata={"help": ...})``.
    """
    parser = _Parser(prog=f"diffcore run {task}", description=description)
    add_params(parser, task, params_cls)
    return parser


def add_params(parser: argparse.ArgumentParser, task: str, params_cls: type, *, positionals: bool = False) -> None:
    """Add one option per init field of the dataclass ``params_cls`` to ``parser`` (see
    :func:`task_parser`); with ``positionals``, a field with ``metadata["positional"]`` (True,
    or the argument's own help text) is a positional argument instead (``metadata["nargs"]``,
    ``metadata["metavar"]``). A help text that names no default gets ``(default: X)`` appended
    for a default other than None."""
    hints = typing.get_type_hints(params_cls)
    for f in dataclasses.fields(params_cls):
        if not f.init:
            continue
        convert, choices, many = _converter(task, f.name, hints.get(f.name, f.type))
        kwargs: dict[str, Any] = {"help": f.metadata.get("help", "")}
        if f.default is not dataclasses.MISSING:
            kwargs["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            kwargs["default"] = f.default_factory()
        if kwargs.get("default") is not None and "default" not in kwargs["help"]:
            kwargs["help"] = f"{kwargs['help']} (default: {kwargs['default']})".strip()
        positional = f.metadata.get("positional") if positionals else None
        if positional:
            if isinstance(positional, str):
                kwargs["help"] = positional
            parser.add_argument(
                f.name,
                type=convert,
                choices=choices,
                nargs=f.metadata.get("nargs"),
                metavar=f.metadata.get("metavar", f.name.upper()),
                **kwargs,
            )
            continue
        option = "--" + f.name.replace("_", "-")
        kwargs["dest"], kwargs["required"] = f.name, "default" not in kwargs
        if convert is parse_bool:
            parser.add_argument(option, nargs="?", const=True, type=parse_bool, metavar="BOOL", **kwargs)
            parser.add_argument("--no-" + option[2:], dest=f.name, action="store_false", help=f"set {f.name} to false")
        else:
            metavar = None if choices else f.metadata.get("metavar", f.name.upper())
            parser.add_argument(
                option, type=convert, choices=choices, metavar=metavar, nargs="+" if many else None, **kwargs
            )


def _task_object(name: str, task: Any) -> Any:
    """A registered task (a class is instantiated), checked for a ``Params`` dataclass and ``run``."""
    if isinstance(task, type):
        task = task()
    params_cls = getattr(task, "Params", None)
    if not (isinstance(params_cls, type) and dataclasses.is_dataclass(params_cls)):
        raise plugins.PluginError(f"task {name!r} has Params={params_cls!r}; expected a dataclass type")
    if not callable(getattr(task, "run", None)):
        raise plugins.PluginError(f"task {name!r} has no run(params) method")
    return task


def _run_task(name: str, task: Any, options: argparse.Namespace) -> int:
    """``task.run(Params(**options))`` (the Params fields of ``options``), its dict printed as JSON."""
    values = {f.name: getattr(options, f.name) for f in dataclasses.fields(task.Params) if f.init}
    result = task.run(task.Params(**values))
    if not isinstance(result, Mapping):
        raise plugins.PluginError(f"task {name!r} returned {type(result).__name__}; expected a dict")
    try:
        text = json.dumps(result, indent=2, default=_json_default)
    except TypeError as exc:
        raise plugins.PluginError(f"task {name!r} returned a result that is not JSON-serializable: {exc}") from exc
    print(text)
    return 0


def _converter(task: str, field: str, hint: Any) -> tuple[Callable[[str], Any], list[Any] | None, bool]:
    """Map a field's type hint to (string converter, choices or None, several values?)."""
    origin = typing.get_origin(hint)
    if origin is Union or origin is types.UnionType:
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(members) == 1:
            return _converter(task, field, members[0])
        lists = [m for m in members if typing.get_origin(m) is list]
        if (
            len(members) == 2
            and len(lists) == 1
            and typing.get_args(lists[0]) == tuple(m for m in members if m is not lists[0])
        ):
            return _converter(task, field, lists[0])  # X | list[X]
    elif origin is list:
        args = typing.get_args(hint)
        if len(args) == 1 and args[0] in _SCALARS and args[0] is not bool:
            return args[0], None, True
    elif origin is Literal:
        values = list(typing.get_args(hint))
        kinds = {type(v) for v in values}
        if len(kinds) == 1 and kinds <= set(_SCALARS):
            kind = kinds.pop()
            return (parse_bool if kind is bool else kind), values, False
    elif hint in _SCALARS:
        return (parse_bool if hint is bool else hint), None, False
    raise plugins.PluginError(
        f"task {task!r}: field {field!r} has type {hint!r}; the command line supports "
        "int, float, str, bool, Path, Optional[...] of those, Literal[...] and list[...] of a scalar"
    )


def _own_doc(task: object) -> str | None:
    """The docstring written on the task's own class or module, not an inherited one."""
    holder = task if isinstance(task, (type, types.ModuleType)) else type(task)
    doc = vars(holder).get("__doc__")
    return inspect.cleandoc(doc) if isinstance(doc, str) and doc.strip() else None


def parse_bool(text: str) -> bool:
    """``true/false, yes/no, on/off, 1/0`` (any case) as a bool; argparse's error for anything else."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value: {text!r} (expected true or false)")


# --------------------------------------------------------------------------- plugin commands


def _add_plugin_commands(sub: argparse._SubParsersAction) -> None:
    owners = {name: "built-in diffcore" for name in BUILTIN_COMMANDS}
    for plugin, call in plugins.implementations("register_commands"):
        cli = PluginCommands(plugin, owners)
        try:
            call(cli=cli)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - a broken plugin (sys.exit() too) must not break the CLI
            plugins.record_failure(plugin, exc, "register_commands")
            continue
        for name, (help_text, staged) in cli._added.items():
            # `parents` copies the staged parser's arguments and defaults (func=...).
            sub.add_parser(
                name,
                help=help_text,
                description=staged.description,
                epilog=staged.epilog,
                formatter_class=staged.formatter_class,
                parents=[staged],
            )
            owners[name] = f"plugin {plugin!r}"


# --------------------------------------------------------------------------- output


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=_json_default))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serializable")


def _report_warnings(caught: list[warnings.WarningMessage]) -> None:
    for w in caught:
        if issubclass(w.category, plugins.PluginWarning):
            print(f"diffcore: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)


def _silence_stdout() -> None:
    # Python would report the broken pipe again when flushing stdout at exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("message") convention
    return 1
