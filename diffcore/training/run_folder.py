"""A training run's folder: refuse to replace a run by accident, and lock it while a run writes.

``diffcore.train(out=DIR)`` enters :func:`run_folder` before anything is written: it takes
``DIR/.diffcore.lock`` (created with ``O_CREAT | O_EXCL``, holding the writer's pid and host; a
lock whose process is gone on this host is taken over), refuses a folder that already holds a run
unless ``resume`` or ``overwrite`` says what to do with it, deletes the old run's files for
``overwrite``, and removes temporary files of writers that died. So two trainings into one folder
cannot interleave ``metrics.jsonl`` or leave ``config.json`` describing the other run: the second
raises :class:`RunLockedError` naming the holder.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from diffcore.training.checkpoint import remove_stale_temporaries

__all__ = [
    "LOCK_NAME",
    "RESUMABLE_CHANGES",
    "RUN_FILES",
    "RunLockedError",
    "acquire_lock",
    "changed_settings",
    "existing_run",
    "release_lock",
    "run_folder",
]

LOCK_NAME = ".diffcore.lock"
RUN_FILES = ("checkpoint.safetensors", "config.json", "metrics.jsonl")  # what makes a folder a run
_DERIVED = ("loss.png",)  # rewritten from the run files; deleted with them by overwrite
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "log_every")  # training options a resume may change
_SECTIONS = ("schedule", "prediction", "task_condition", "text", "reflow")  # run sections a resume must keep


class RunLockedError(ValueError):
    """Another process is writing to this run folder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _holder(lock: Path) -> dict[str, Any]:
    try:
        data = json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def acquire_lock(folder: str | Path) -> Path:
    """Create ``folder/.diffcore.lock`` for this process; take over one left by a dead process on
    this host. Raises :class:`RunLockedError` naming the live holder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _holder(lock)
            pid, host = holder.get("pid"), holder.get("host")
            same_host = host == record["host"]
            if isinstance(pid, int) and same_host and not _pid_alive(pid):
                _take_over(lock, pid)  # stale: its writer died (kill -9, power loss)
                continue
            if not holder:  # being written right now, or garbage: look again shortly
                time.sleep(0.05)
                holder = _holder(lock)
            who = f"process {holder.get('pid', '?')} on {holder.get('host', '?')}"
            raise RunLockedError(
                f"run folder {folder} is in use by {who} (lock file {lock}); wait for it to finish, "
                f"train into another folder, or delete {lock} if that process is gone"
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        return lock
    raise RunLockedError(f"run folder {folder}: could not take its lock {lock}")


def _take_over(lock: Path, dead: int) -> None:
    """Move the stale lock of process ``dead`` aside; if another process replaced it meanwhile
    with its own lock, put that one back (a hard link fails rather than overwrite a newer one)."""
    grave = lock.with_name(f"{LOCK_NAME}.{os.getpid()}.stale")
    try:
        os.rename(lock, grave)
    except FileNotFoundError:
        return
    if _holder(grave).get("pid") != dead:
        with contextlib.suppress(FileExistsError):
            os.link(grave, lock)
    grave.unlink(missing_ok=True)


def release_lock(lock: Path) -> None:
    """Remove ``lock`` if this process still holds it."""
    if _holder(lock).get("pid") == os.getpid():
        lock.unlink(missing_ok=True)


def existing_run(folder: Path) -> list[str]:
    """The run files ``folder`` already holds."""
    return [name for name in RUN_FILES if (folder / name).exists()]


def changed_settings(saved: dict[str, Any], run: dict[str, Any]) -> list[str]:
    """What a resumed ``run`` changes from the ``saved`` run, as ``"lr 0.0002 -> 0.001"`` items: the
    training options other than :data:`RESUMABLE_CHANGES`, the dataset (name and options) and the
    schedule, prediction, task condition, text and reflow sections."""
    saved, run = json.loads(json.dumps(saved)), json.loads(json.dumps(run))  # compare as stored (tuples: lists)
    changes = []
    old_train, new_train = saved.get("train") or {}, run.get("train") or {}
    for key in sorted(set(old_train) | set(new_train)):
        if key not in RESUMABLE_CHANGES and old_train.get(key) != new_train.get(key):
            changes.append(f"{key} {old_train.get(key)!r} -> {new_train.get(key)!r}")
    old_data, new_data = saved.get("dataset") or {}, run.get("dataset") or {}
    for key in ("name", "options"):
        if old_data.get(key) != new_data.get(key):
            changes.append(f"dataset {key} {old_data.get(key)!r} -> {new_data.get(key)!r}")
    for section in _SECTIONS:
        if saved.get(section) != run.get(section):
            changes.append(f"{section} {saved.get(section)!r} -> {run.get(section)!r}")
    return changes


@contextlib.contextmanager
def run_folder(out: str | Path, *, resume: bool, overwrite: bool, writer: bool = True) -> Iterator[Path]:
    """Lock ``out`` for the duration of the block and check what it holds (module docstring).

    ``resume``: continue the run there (its checkpoint is read by the trainer). ``overwrite``
    without ``resume``: delete the run's files and start afresh; with ``resume``: continue, but
    accept training options that differ from the run's. ``writer=False`` (torchrun ranks > 0,
    which write nothing) skips the lock and the checks."""
    out = Path(out)
    if not writer:
        yield out
        return
    if out.exists() and not out.is_dir():
        raise ValueError(f"out={str(out)!r} is a file; a run folder is a directory")
    lock = acquire_lock(out)
    try:
        found = existing_run(out)
        if found and not (resume or overwrite):
            raise ValueError(
                f"run folder {out} already holds a run ({', '.join(found)}); pass resume=True to continue it "
                f"or overwrite=True to replace it (CLI: --resume / --overwrite)"
            )
        if overwrite and not resume:
            for name in (*RUN_FILES, *_DERIVED):
                (out / name).unlink(missing_ok=True)
        remove_stale_temporaries(out)
        yield out
    finally:
        release_lock(lock)
