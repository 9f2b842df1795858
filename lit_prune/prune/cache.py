"""A per-batch tensor cache with a memory budget: entries beyond it are spilled to a temporary folder on disk.

Layer-by-layer mask tuning keeps, for every calibration batch, the hidden states entering the current layer (for the
pruned model and its reference), so that each pass runs one layer instead of the model up to it. Kept in memory,
that cache grows with the calibration sample (2 × examples × padded length × hidden size floats: about 750 MiB for
8,192 SST-2 examples on a 384-wide model, several GiB for SQuAD windows). :class:`SpillCache` holds entries in
memory until ``memory_bytes`` is reached and writes the rest to its own temporary folder (``torch.save``, read back
with ``weights_only=True``), so the peak memory of a calibration run stays bounded whatever its size; the folder is
removed by :meth:`SpillCache.close` (also on errors: use it as a context manager). A process killed outright
(SIGKILL, out of memory) cannot clean up: its folder's name holds the host and the process id, and the next
SpillCache that spills on the same host removes the folders of processes that no longer run.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import torch


class SpillCache:
    """Tensors by key, in memory up to ``memory_bytes`` and on disk beyond.

    An entry's place is chosen when its key is first stored: in memory if it fits in what is left of the budget,
    else on disk. Storing a key again replaces the entry in its place (the tuning stores same-shaped tensors layer
    after layer); a replacement that no longer fits in memory moves to disk.

    Args:
        memory_bytes: how many bytes of tensors to keep in memory; ``None``: no limit (nothing is spilled), 0: spill
            everything.
        folder: where to make the temporary folder (default: the system's, e.g. ``$TMPDIR``).

    Attributes:
        peak_memory_bytes, spilled_bytes: the most bytes held in memory and on disk at once (for reports).
    """

    def __init__(self, memory_bytes: int | None = None, folder: str | Path | None = None) -> None:
        if memory_bytes is not None and (isinstance(memory_bytes, bool) or not isinstance(memory_bytes, int)
                                         or memory_bytes < 0):
            raise ValueError(f"SpillCache: memory_bytes={memory_bytes!r}: expected an integer >= 0 or None")
        self.memory_bytes = memory_bytes
        self._parent = folder
        self._folder: Path | None = None
        self._memory: dict[Hashable, torch.Tensor] = {}
        self._disk: dict[Hashable, tuple[Path, torch.device, int]] = {}
        self._in_memory = 0
        self._on_disk = 0
        self.peak_memory_bytes = 0
        self.spilled_bytes = 0

    @staticmethod
    def _size(tensor: torch.Tensor) -> int:
        return tensor.numel() * tensor.element_size()

    @property
    def bytes_in_memory(self) -> int:
        return self._in_memory

    def __contains__(self, key: Hashable) -> bool:
        return key in self._memory or key in self._disk

    def __len__(self) -> int:
        return len(self._memory) + len(self._disk)

    def get(self, key: Hashable, default: Any = None) -> torch.Tensor | Any:
        """The tensor stored under ``key`` (on the device it was stored from), or ``default``."""
        if key in self._memory:
            return self._memory[key]
        if key in self._disk:
            path, device, _ = self._disk[key]
            return torch.load(path, map_location=device, weights_only=True)
        return default

    def __setitem__(self, key: Hashable, tensor: torch.Tensor) -> None:
        size = self._size(tensor)
        if key in self._memory:
            self._in_memory -= self._size(self._memory.pop(key))
        fits = self.memory_bytes is None or self._in_memory + size <= self.memory_bytes
        if fits and key not in self._disk:
            self._memory[key] = tensor.detach()
            self._in_memory += size
            self.peak_memory_bytes = max(self.peak_memory_bytes, self._in_memory)
            return
        path = self._path(key)
        tmp = path.with_suffix(".tmp")
        torch.save(tensor.detach().cpu().contiguous(), tmp)
        tmp.replace(path)
        if key in self._disk:
            self._on_disk -= self._disk[key][2]
        self._disk[key] = (path, tensor.device, size)
        self._on_disk += size
        self.spilled_bytes = max(self.spilled_bytes, self._on_disk)

    def _path(self, key: Hashable) -> Path:
        if self._folder is None:
            parent = Path(self._parent) if self._parent is not None else Path(tempfile.gettempdir())
            remove_stale_folders(parent)
            self._folder = Path(tempfile.mkdtemp(prefix=f"{_prefix()}{os.getpid()}_", dir=parent))
        if key in self._disk:
            return self._disk[key][0]
        return self._folder / f"{len(self._disk)}.pt"

    def close(self) -> None:
        """Drop every entry and remove the temporary folder."""
        self._memory.clear()
        self._disk.clear()
        self._in_memory = self._on_disk = 0
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __enter__(self) -> SpillCache:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _prefix() -> str:
    host = "".join(c if c.isalnum() or c in "-." else "-" for c in socket.gethostname())
    return f"lit_prune_cache_{host}_"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def remove_stale_folders(parent: Path) -> list[Path]:
    """Remove the spill folders under ``parent`` left by processes of this host that no longer run; return them."""
    removed = []
    prefix = _prefix()
    for folder in parent.glob(f"{prefix}*"):
        pid = folder.name[len(prefix):].split("_", 1)[0]
        if folder.is_dir() and pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


__all__ = ["SpillCache", "remove_stale_folders"]
