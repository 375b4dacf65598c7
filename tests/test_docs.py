"""docs/plugins.md documents every hook in diffcore.hookspecs, and nothing else."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from diffcore import hookspecs

DOCS = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"


def hook_specs() -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(obj)
        for name, obj in vars(hookspecs).items()
        if callable(obj) and hasattr(obj, "diffcore_spec")  # set by HookspecMarker("diffcore")
    }


def hooks_section() -> str:
    text = DOCS.read_text(encoding="utf-8")
    match = re.search(r"^## Hooks\n(.*?)(?=^## |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    assert match is not None, f"{DOCS} has no '## Hooks' section"
    return match.group(1)


def documented_hooks() -> dict[str, str]:
    """Heading name -> the text under that ``### name`` heading."""
    parts = re.split(r"^### (\S+)\s*$", hooks_section(), flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_hookspecs_are_found() -> None:
    assert "register_samplers" in hook_specs() and len(hook_specs()) >= 7


@pytest.mark.parametrize("hook", sorted(hook_specs()))
def test_hook_is_documented_with_its_signature(hook: str) -> None:
    sections = documented_hooks()
    assert hook in sections, f"hook {hook!r} has no '### {hook}' section in {DOCS.name}"
    call = f"{hook}({', '.join(hook_specs()[hook].parameters)})"
    assert call in sections[hook], f"the '### {hook}' section does not show the signature {call}"


def test_every_documented_hook_exists() -> None:
    stale = sorted(set(documented_hooks()) - set(hook_specs()))
    assert not stale, f"{DOCS.name} documents hooks that diffcore.hookspecs lacks: {stale}"


@pytest.mark.parametrize("hook", sorted(hook_specs()))
def test_hookspec_has_a_docstring(hook: str) -> None:
    assert inspect.getdoc(getattr(hookspecs, hook)), f"hookspec {hook!r} has no docstring"


def test_sampler_example_in_docs_runs_and_equals_builtin_euler() -> None:
    """The coefficient-program example of docs/plugins.md is real code: it must run and agree
    with the built-in Euler sampler."""
    import re

    import torch

    import diffcore
    from diffcore.analytic import GaussianMixture, exact_model

    text = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    section = text.split("## Writing a sampler", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    namespace: dict = {}
    exec(compile(code, "docs/plugins.md", "exec"), namespace)
    gm = GaussianMixture.ring(k=4, radius=2.0, std=0.3, dim=2)
    sched = diffcore.get("schedules", "linear")()
    x_T = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ours = diffcore.sample(exact_model(gm, sched), x_T, sampler=namespace["euler"], steps=12, schedule=sched)
    builtin = diffcore.sample(exact_model(gm, sched), x_T, sampler="euler", steps=12, schedule=sched)
    assert torch.allclose(ours, builtin, atol=1e-10)
