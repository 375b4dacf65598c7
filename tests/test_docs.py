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
