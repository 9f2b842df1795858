"""SpillCache: tensors in memory up to a budget, the rest in a temporary folder that is removed on close."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from lit_prune.prune import cache as cache_module
from lit_prune.prune.cache import SpillCache


def tensors(n: int, size: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(size, generator=g) for _ in range(n)]  # 64 bytes each


def test_entries_beyond_the_budget_go_to_disk_and_come_back_equal(tmp_path):
    values = tensors(5)
    with SpillCache(memory_bytes=150, folder=tmp_path) as cache:
        for i, value in enumerate(values):
            cache[i] = value
        assert cache.bytes_in_memory == 128 and cache.peak_memory_bytes == 128  # two fit, three spill
        assert cache.spilled_bytes == 3 * 64 and len(cache) == 5 and 4 in cache and 5 not in cache
        spill = [p for p in tmp_path.iterdir() if p.name.startswith(f"{cache_module._prefix()}{os.getpid()}_")]
        assert len(spill) == 1 and len(list(spill[0].glob("*.pt"))) == 3
        for i, value in enumerate(values):
            assert torch.equal(cache.get(i), value)
        # replacing keeps an entry's place: same-shaped tensors layer after layer
        cache[0], cache[4] = values[4] * 2, values[0] * 2
        assert torch.equal(cache.get(0), values[4] * 2) and torch.equal(cache.get(4), values[0] * 2)
        assert cache.bytes_in_memory == 128 and cache.spilled_bytes == 3 * 64
        assert cache.get("missing", "default") == "default"
    assert list(tmp_path.iterdir()) == [] and len(cache) == 0  # the folder is gone


def test_no_limit_keeps_everything_in_memory_and_zero_spills_everything(tmp_path):
    with SpillCache(folder=tmp_path) as cache:
        for i, value in enumerate(tensors(4)):
            cache[i] = value
        assert cache.bytes_in_memory == 4 * 64 and cache.spilled_bytes == 0 and list(tmp_path.iterdir()) == []
    with SpillCache(memory_bytes=0, folder=tmp_path) as cache:
        for i, value in enumerate(tensors(4)):
            cache[i] = value
        assert cache.bytes_in_memory == 0 and cache.spilled_bytes == 4 * 64
    assert list(tmp_path.iterdir()) == []


def test_the_folder_is_removed_when_an_error_interrupts(tmp_path):
    with pytest.raises(RuntimeError, match="interrupted"):
        with SpillCache(memory_bytes=0, folder=tmp_path) as cache:
            cache["a"] = torch.ones(3)
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", [-1, 1.5, True, "256"])
def test_a_bad_budget_is_refused(value):
    with pytest.raises(ValueError, match=rf"memory_bytes={value!r}: expected an integer >= 0 or None"):
        SpillCache(memory_bytes=value)


def test_folders_left_by_killed_processes_are_removed_by_the_next_spill(tmp_path):
    """A process killed outright leaves its folder; the next cache that spills on this host removes it."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    stale = tmp_path / f"{cache_module._prefix()}{dead.stdout.strip()}_abc"
    alive = tmp_path / f"{cache_module._prefix()}{os.getppid()}_def"  # the process that runs pytest: still running
    other = tmp_path / "lit_prune_cache_another-host_1_ghi"
    for folder in (stale, alive, other):
        folder.mkdir()
        (folder / "0.pt").write_bytes(b"x")
    with SpillCache(memory_bytes=0, folder=tmp_path) as cache:
        cache["a"] = torch.ones(2)
        assert not stale.exists() and alive.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, other.name])
