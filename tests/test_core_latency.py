"""Latency measurement (threads restored, interleaved comparison) and the latency benchmark's budgeted mask."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from benchmarks.latency import magnitude_masks, main
from conftest import tiny_inputs, tiny_model
from lit_prune.core.compact import compact
from lit_prune.core.flops import FlopsBudget, flops_kept
from lit_prune.core.latency import compare, measure_latency


def test_measure_latency_restores_threads_and_mode():
    model = tiny_model("bert").train()
    threads = torch.get_num_threads()
    result = measure_latency(model, tiny_inputs(), warmup=1, repeats=5, threads=1)
    assert torch.get_num_threads() == threads and model.training
    assert result["threads"] == 1 and result["repeats"] == 5 and len(result["times_ms"]) == 5
    assert 0 < result["min_ms"] <= result["median_ms"] <= result["max_ms"]
    assert result["median_ms"] == sorted(result["times_ms"])[2]


def test_compare_interleaves_and_reports_the_speedup():
    dense = tiny_model("distilbert")
    pruned = compact(copy.deepcopy(dense), magnitude_masks(dense, 10, 0.5))
    result = compare(dense, pruned, tiny_inputs(), warmup=1, repeats=4, threads=1)
    assert result["dense"]["repeats"] == result["pruned"]["repeats"] == 4
    assert result["speedup"] == result["dense"]["median_ms"] / result["pruned"]["median_ms"]
    ratios = sorted(d / p for d, p in zip(result["dense"]["times_ms"], result["pruned"]["times_ms"]))
    assert result["speedup_paired"] == pytest.approx((ratios[1] + ratios[2]) / 2)
    assert result["threads"] == 1


def test_invalid_settings_are_reported_together():
    with pytest.raises(ValueError, match=r"warmup=-1: expected an integer >= 0; repeats=0: expected an integer >= 1"):
        measure_latency(tiny_model("bert"), tiny_inputs(), warmup=-1, repeats=0)
    with pytest.raises(ValueError, match=r"threads=0: expected a positive integer"):
        measure_latency(tiny_model("bert"), tiny_inputs(), threads=0)


@pytest.mark.parametrize("kept", [0.5, 0.3, 1.0])
def test_benchmark_mask_is_uniform_and_meets_the_budget_from_below(kept):
    model = tiny_model("bert")
    masks = magnitude_masks(model, 16, kept)
    counts = masks.num_kept()["per_layer"]
    assert len({(layer["heads"], layer["neurons"]) for layer in counts}) == 1  # the same in every layer
    assert counts[0]["heads"] == int(kept * 4)
    budget = FlopsBudget.for_model(model, 16, kept)
    assert budget.fits(masks) and flops_kept(masks, 16) <= kept
    assert counts[0]["neurons"] == min(48, budget.max_neurons(2 * counts[0]["heads"]) // 2)


def test_benchmark_script_writes_json_and_markdown(tmp_path):
    folder = tmp_path / "tiny"
    tiny_model("bert", "base").save_pretrained(folder)
    report = main(["--model", str(folder), "--batch-size", "2", "--seq-len", "8", "--threads", "1", "--warmup", "0",
                   "--repeats", "2", "--out", str(tmp_path / "results")])
    stem = "latency_tiny_flops0.5_b2_s8_t1"
    saved = json.loads((tmp_path / "results" / f"{stem}.json").read_text())
    assert saved["speedup"] == report["speedup"] and saved["flops_kept"] <= 0.5
    assert saved["ideal_speedup"] == 1 / saved["flops_kept"]
    assert "| compacted |" in (tmp_path / "results" / f"{stem}.md").read_text()
