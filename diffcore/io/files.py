"""Files written whole or not at all, and output paths checked before the work that fills them.

Every writer in :mod:`diffcore.io` (and the checkpoint writer) writes to a temporary file in the
target's folder and renames it over the target (``os.replace`` is atomic on POSIX and Windows):
a full disk, a kill or an error mid-write leaves the previous file, or none, never half a file.
Temporaries are ``.<name>.<pid>.<random>`` + :data:`TEMP_SUFFIX`, so
:func:`remove_stale_temporaries` can tell those of dead writers. New files get mode 0666 minus
the umask, as ``open()`` gives.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "TEMP_SUFFIX",
    "atomic_write_bytes",
    "check_writable",
    "remove_stale_temporaries",
    "temporary_path",
]

TEMP_SUFFIX = ".diffcore.tmp"  # temporary files are ".<name>.<pid>.<random>.diffcore.tmp"


@contextlib.contextmanager
def temporary_path(path: Path) -> Iterator[Path]:
    """A fresh temporary file next to ``path`` (mode 0666 minus the umask, like any new file),
    renamed over ``path`` when the block succeeds and removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    mode = stat.S_IMODE(tmp.stat().st_mode)  # what the umask made of 0666
    try:
        yield tmp
        os.chmod(tmp, mode)  # a writer that recreated the file (safetensors does) made it 0600
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and an atomic rename."""
    with temporary_path(Path(path)) as tmp:
        tmp.write_bytes(data)


def check_writable(path: str | Path, what: str = "output") -> Path:
    """Create ``path``'s folder and a temporary file in it (removed again), so an output that
    cannot be written fails before the work that would fill it; OSError naming the path."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{what} {str(path)!r} is a folder; expected a file path")
    try:
        with temporary_path(path.parent / f"{path.name}.probe"):
            raise _Probe
    except _Probe:
        return path
    except OSError as exc:
        raise OSError(f"{what} {str(path)!r} cannot be written: {exc.strerror or exc}") from exc


class _Probe(Exception):
    """Aborts :func:`check_writable`'s probe so its temporary is removed, not renamed."""


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files in ``folder`` left by writers that died (their pid is gone);
    return them."""
    removed = []
    for tmp in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        pid = tmp.name[: -len(TEMP_SUFFIX)].rsplit(".", 2)[-2]
        if not (pid.isdigit() and _alive(int(pid))):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (this one included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OSError:
        return False
    return True
