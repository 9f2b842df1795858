"""Atomic writes: nothing half-written is ever left at a destination path."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(destination: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``destination``; on success it replaces ``destination``.

    On an exception the temporary folder is removed and ``destination`` is left as it was. An existing
    ``destination`` is moved aside first and removed only once the new folder is in place. A writer killed outright
    (SIGKILL) leaves only hidden ``.<name>.tmp.*`` / ``.<name>.old.*`` folders, never a partial ``destination``; the
    next write to the same destination removes them (and puts back a moved-aside folder if the kill came between
    the two renames).
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(destination)
    tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}.tmp.", dir=destination.parent))
    try:
        yield tmp
        old = None
        if destination.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old.", dir=destination.parent))
            os.rmdir(old)
            os.replace(destination, old)
        os.replace(tmp, destination)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _clean_leftovers(destination: Path) -> None:
    """Remove what a killed :func:`atomic_directory` left beside ``destination``."""
    aside = sorted(destination.parent.glob(f".{destination.name}.old.*"))
    if not destination.exists() and len(aside) == 1:  # killed between moving the old folder aside and the new in
        os.replace(aside.pop(), destination)
    for leftover in aside + sorted(destination.parent.glob(f".{destination.name}.tmp.*")):
        shutil.rmtree(leftover, ignore_errors=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for leftover in path.parent.glob(f".{path.name}.*"):  # what a killed writer of this file left
        if leftover.is_file():
            leftover.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename."""
    return atomic_write_bytes(path, text.encode("utf-8"))
