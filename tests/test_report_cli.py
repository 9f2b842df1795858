"""python -m lit_prune.report: text summary and structure PNG of a run folder, a pruned folder or a report file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, tiny_model
from core_cases import make_masks
from lit_prune.core.compact import compact
from lit_prune.core.flops import count_parameters, masks_flops
from lit_prune.core.io import save_pruned
from lit_prune.report import (MASKS_FILE, PRUNED_MODEL_DIR, REPORT_FILE, ReportInputError, main, summarize,
                              write_report)

SEQ_LEN = 24.0


def _by_head(layers):
    """Per layer, {head id: (q, v)} and the FFN width (compaction may store a layer's heads in another order)."""
    return [({h: tuple(qv) for h, qv in zip(layer["head_ids"], layer["heads"])}, layer["ffn"]) for layer in layers]


def _run_folder(root, masks, save_model=True):
    """What a pruning run leaves: the pruned folder, the masks file and the report (numbers made up where a tiny
    model has none to give: metrics, seconds, latency)."""
    dense = tiny_model("bert")
    dense_params = count_parameters(dense)
    model = compact(dense, masks)
    root.mkdir(parents=True, exist_ok=True)
    if save_model:
        save_pruned(model, root / PRUNED_MODEL_DIR)
    masks.binary().save(root / MASKS_FILE)
    flops_dense, flops_pruned = masks_flops(make_masks("ones"), SEQ_LEN), masks_flops(masks, SEQ_LEN)
    write_report(root / REPORT_FILE, {
        "method": "kprune", "model": "teachers/mrpc", "task": "mrpc", "seed": 0, "world_size": 1,
        "flops": {"dense": flops_dense, "pruned": flops_pruned, "kept": flops_pruned / flops_dense,
                  "seq_len": SEQ_LEN, "target": 0.5},
        "params": {"dense": dense_params, "pruned": count_parameters(model)},
        "metrics": {"dense": {"accuracy": 0.85, "f1": 0.9}, "pruned": {"accuracy": 0.8, "f1": 0.875}, "main": "f1"},
        "seconds": {"prune": 3.5, "total": 10.25},
        "latency": {"dense_ms": 12.0, "pruned_ms": 6.0, "speedup": 2.0},
        "structure": masks.structure(),
        "hardware": {"device": "cpu", "cpu_model": "Test CPU", "threads": 2, "torch": "2.13.0"},
        "warnings": ["layer 1 FFN: rank-deficient system"],
    })
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    masks = make_masks("intra_head")
    return _run_folder(tmp_path_factory.mktemp("report") / "run", masks), masks


def test_summary_of_a_run_folder(run_dir):
    folder, masks = run_dir
    summary = summarize(folder)
    assert summary["report"]["method"] == "kprune"
    assert summary["sources"] == [str(folder / REPORT_FILE), str(folder / PRUNED_MODEL_DIR)]
    assert summary["seq_len"] == SEQ_LEN  # the report's
    assert summary["flops"]["pruned"] == pytest.approx(masks_flops(masks, SEQ_LEN))
    assert _by_head(summary["layers"]) == _by_head(masks.structure())
    # the pruned folder inside the run finds the report beside it; the report file alone too
    assert summarize(folder / PRUNED_MODEL_DIR)["report"] == summary["report"]
    assert summarize(folder / REPORT_FILE)["layers"] == summary["layers"]


def test_report_without_the_pruned_folder_uses_the_masks(tmp_path):
    masks = make_masks("heads_ffn")
    folder = _run_folder(tmp_path / "run", masks, save_model=False)
    summary = summarize(folder)
    assert summary["dense_shape"] == {"num_layers": 2, "num_heads": 4, "head_dim": 8, "ffn_dim": 48}
    assert summary["flops"]["kept"] == pytest.approx(masks_flops(masks, SEQ_LEN) / masks_flops(make_masks("ones"),
                                                                                              SEQ_LEN))
    (folder / MASKS_FILE).unlink()
    with pytest.raises(ReportInputError, match="dense shape is unknown"):
        summarize(folder)


def test_main_prints_the_summary_and_writes_the_plot(run_dir, capsys, tmp_path):
    from PIL import Image

    folder, masks = run_dir
    out = tmp_path / "plots" / "kept.png"
    out.parent.mkdir()
    assert main([str(folder), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "kprune on mrpc (seed 0, world size 1), from teachers/mrpc" in text
    assert "f1: dense 0.9000 -> pruned 0.8750 (-0.0250)" in text
    assert "accuracy 0.8500 -> 0.8000" in text
    assert "latency: 12.00 ms dense, 6.00 ms pruned: 2.00x faster" in text
    assert "warning: layer 1 FFN: rank-deficient system" in text
    first = masks.structure()[0]
    assert f"FFN neurons {first['ffn']}/48" in text
    assert f"structure plot: {out}" in text
    with Image.open(out) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width > 600 and 200 < height < width
    assert not list(out.parent.glob(".*"))  # nothing temporary left beside it


def test_default_plot_goes_into_the_folder(tmp_path, capsys):
    folder = _run_folder(tmp_path / "run", make_masks("empty_attention"))
    assert main([str(folder / PRUNED_MODEL_DIR), "--seq-len", "16"]) == 0
    assert (folder / PRUNED_MODEL_DIR / "structure.png").is_file()
    assert "layer  0: heads   0/4 [none]" in capsys.readouterr().out
    assert main([str(folder), "--no-plot"]) == 0
    assert not (folder / "structure.png").exists()


@pytest.mark.parametrize("case", ["missing", "dense", "not_json", "not_a_report"])
def test_bad_paths_are_clear_errors(tmp_path, capsys, case):
    path = tmp_path / case
    if case == "dense":
        tiny_model("bert").save_pretrained(path)
        expected = "neither a pruning_report.json nor a pruned model"
    elif case == "not_json":
        path.write_text("{ not json")
        expected = "not_json"
    elif case == "not_a_report":
        path.write_text(json.dumps({"method": "kwon"}))
        expected = "is not a lit_prune pruning report"
    else:
        expected = "does not exist"
    assert main([str(path)]) == 2
    assert expected in capsys.readouterr().err


def test_runs_as_a_module(run_dir):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "lit_prune.report",
                             str(run_dir[0]), "--no-plot"], capture_output=True, text=True, env=env, cwd=REPO,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "kprune on mrpc" in result.stdout and "layer  1:" in result.stdout


def test_a_parameter_budget_is_shown_as_such(tmp_path, capsys):
    folder = _run_folder(tmp_path / "run", make_masks("heads_ffn"))
    report = json.loads((folder / REPORT_FILE).read_text())
    report["flops"]["target"] = None
    report["params"].update(kept=0.18, target=0.2)
    report["latency"]["csr"] = {"pruned_ms": 8.0, "speedup": 1.5}
    write_report(folder / REPORT_FILE, report)
    assert main([str(folder), "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "params_kept 0.1800 (asked 0.20); flops_kept" in out
    assert "latency with CSR sparse weights: 8.00 ms: 1.50x faster" in out
