"""Progress bars of the command line's sampling loops: tqdm on stderr, shown only when stderr is a
terminal and the user did not pass ``--quiet``.

``progress`` follows the tasks' convention: ``None`` lets tqdm decide (a bar on a TTY, none when
stderr is a file or a pipe), ``False`` shows none, ``True`` shows one anyway.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = ["model_calls_bar", "progress_bar", "shown", "step_callback"]


def shown(quiet: bool) -> bool | None:
    """The ``progress`` setting for a command's ``--quiet`` flag (None: only on a terminal)."""
    return False if quiet else None


def progress_bar(total: int | None, desc: str, progress: bool | None, unit: str = "step") -> Any:
    """A tqdm bar on stderr (``total`` None: a counter with a rate); closed bars leave no line."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=None if progress is None else not progress,
        leave=False,
        dynamic_ncols=True,
    )


def step_callback(bar: Any) -> Callable[[dict[str, Any]], None]:
    """A ``callback`` for :func:`diffcore.sample` that advances ``bar`` by one per sampler step."""

    def tick(_: dict[str, Any]) -> None:
        bar.update(1)

    return tick


@contextlib.contextmanager
def model_calls_bar(model: Any, desc: str, progress: bool | None, total: int | None = None) -> Iterator[Any]:
    """A bar counting the forward calls of ``model`` (an nn.Module) inside the block: the
    progress of loops (SDEdit, RePaint, paired translation) that take no step callback."""
    bar = progress_bar(total, desc, progress, unit="call")
    handle = None
    if isinstance(model, torch.nn.Module) and not bar.disable:
        handle = model.register_forward_hook(lambda *_: bar.update(1))
    try:
        yield bar
    finally:
        if handle is not None:
            handle.remove()
        bar.close()
