"""benchmarks/memory.py: peak RSS of a child process and the table it writes (with stand-in commands)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import memory


def test_peak_rss_is_the_childs_own(tmp_path):
    scripts = {name: tmp_path / f"{name}.py" for name in ("small", "big", "fail")}
    scripts["small"].write_text("pass\n")
    scripts["big"].write_text("x = bytearray(200 * 2**20)\nx[::4096] = b'1' * len(x[::4096])\n")
    scripts["fail"].write_text("raise SystemExit(3)\n")
    small, _ = memory.peak_rss([str(scripts["small"])], tmp_path / "small.log")
    big, _ = memory.peak_rss([str(scripts["big"])], tmp_path / "big.log")
    assert small < 100 and big - small > 150  # MiB: the child's own peak, not this process's
    with pytest.raises(RuntimeError, match="failed with status 3"):
        memory.peak_rss([str(scripts["fail"])], tmp_path / "fail.log")


def test_measure_writes_growth_per_method(tmp_path, monkeypatch):
    sizes_mib = {("kwon", 16): 100, ("kwon", 64): 110, ("kprune", 16): 200, ("kprune", 64): 260}

    def fake_command(method, task, teacher, samples, folder):
        script = folder / "fake.py"
        script.write_text(f"x = bytearray({sizes_mib[(method, samples)]} * 2**20)\nx[::4096] = b'1' * len(x[::4096])\n")
        return [str(script)]

    monkeypatch.setattr(memory, "command", fake_command)
    results = memory.measure(["kwon", "kprune"], "sst2", "teacher", [16, 64], tmp_path)
    growth = {(r["method"], r["samples"]): r["growth"] for r in results["rows"]}
    assert growth[("kwon", 16)] == 0 and growth[("kprune", 16)] == 0
    assert 0 < growth[("kwon", 64)] < growth[("kprune", 64)]
    assert json.loads((tmp_path / "memory.json").read_text())["sizes"] == [16, 64]
    assert "| kprune | 64 |" in (tmp_path / "memory.md").read_text()


def test_command_turns_evaluation_latency_and_saving_off():
    args = memory.command("kprune", "sst2", "teacher", 2048, Path("/tmp/x"))
    joined = " ".join(args)
    for part in ("num_samples 2048", "evaluate false", "latency_batch_size 0", "save_model false", "num_tokens null"):
        assert part in joined
    assert args[0].endswith("train.py") and "/tmp/x" in joined
