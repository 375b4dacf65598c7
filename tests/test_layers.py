"""The import layers of DESIGN.md, read from the source (no imports run): the library tasks do not
import the scale-out or command layers, no library module imports the CLI, and the scale-out
options reach the commands through :mod:`diffcore.scale.tasks`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports when it runs, at any depth (function-level imports included;
    those under ``if TYPE_CHECKING:`` left out)."""
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _runtime_nodes(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
        return [n for child in node.orelse for n in _runtime_nodes(child)]
    return [node, *(n for child in ast.iter_child_nodes(node) for n in _runtime_nodes(child))]


def offenders(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    out = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        bad = sorted(m for m in imported_modules(path) if m.startswith(forbidden))
        out.extend(f"{path.relative_to(ROOT)} imports {m}" for m in bad)
    return out


def test_the_tasks_import_neither_the_scale_out_nor_the_command_layer():
    assert offenders("diffcore/tasks", ("diffcore.scale", "diffcore.cli", "plugins")) == []


def test_no_library_module_imports_the_cli():
    library = [p for p in offenders("diffcore", ("diffcore.cli",)) if not p.startswith("diffcore/__main__")]
    assert library == []


def test_the_finder_sees_function_level_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import diffcore.cli\n"
        "def f():\n    from diffcore.scale.jobs import run_task\n"
    )
    found = imported_modules(source)
    assert "diffcore.scale.jobs.run_task" in found and "diffcore.cli" not in found


def test_the_scaled_params_keep_the_local_file_checks_and_take_a_folder_under_ray():
    pytest.importorskip("torch")
    from diffcore.scale.tasks import ScaledDetectParams, ScaledGenerateParams
    from diffcore.tasks.anomaly import DetectParams

    assert ScaledGenerateParams(checkpoint="run", engine="ray").out == "samples"
    assert ScaledGenerateParams(checkpoint="run").out == "samples.png"
    assert ScaledDetectParams(checkpoint="run", input="x.csv", output="shards", engine="ray").shards == "parquet"
    with pytest.raises(ValueError, match="expected a file ending in .json or .csv"):
        ScaledDetectParams(checkpoint="run", input="x.csv", output="shards")
    with pytest.raises(ValueError, match="needs --engine ray"):
        ScaledDetectParams(checkpoint="run", input="x.csv", output="s.csv", shard_format="csv")
    with pytest.raises(TypeError):
        DetectParams(checkpoint="run", input="x.csv", engine="ray")  # type: ignore[call-arg]


def test_no_module_is_longer_than_the_house_limit():
    """STYLE.md: no module past 500 lines without a reason (split by concept, re-export the names)."""
    long = [
        f"{p.relative_to(ROOT)}: {n} lines"
        for folder in ("diffcore", "plugins")
        for p in sorted((ROOT / folder).rglob("*.py"))
        if (n := p.read_text().count("\n")) > 500
    ]
    assert long == []
