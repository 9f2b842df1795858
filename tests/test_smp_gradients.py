"""benchmarks/smp_gradients.py: the task's and the regulariser's gradients on SMP's scores at step 0."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig

from benchmarks import smp_gradients
from test_glue import write_rte


def test_both_gradients_on_a_real_model(minilm_l3, tmp_path, monkeypatch):
    monkeypatch.delenv("LIT_PRUNE_ASSETS", raising=False)
    data = write_rte(tmp_path / "RTE", n=16)
    out = tmp_path / "results"
    assert smp_gradients.main(["--tasks", "rte", "--model", str(minilm_l3), "--data-dir", str(data), "--batch-size",
                               "4", "--batches", "2", "--params-kept", "0.2", "--head-steps", "0", "3",
                               "--out", str(out)]) == 0
    results = json.loads((out / "smp_gradients.json").read_text())
    row, trained = results["tasks"]
    assert trained["head_steps"] == 3 and trained["task_grad_mean"] != row["task_grad_mean"]
    assert trained["regulariser_grad_end"] == row["regulariser_grad_end"]  # the scores are still 0
    assert row["task"] == "rte" and row["batch_size"] == 4 and row["batches"] == 2
    assert 0 < row["task_grad_median"] and 0 < row["task_grad_mean"] and row["loss"] == pytest.approx(0.69, abs=0.1)
    # at S = 0, σ'(0) = 1/4 and R̄ averages each matrix's mean, so the gradients over all N scores sum to
    # λ_R · w / 4: their mean is λ_R · w / (4 N), with w = 1 / v_f at the start and 1 at the end
    config = AutoConfig.from_pretrained(minilm_l3)
    hidden, ffn = config.hidden_size, config.intermediate_size
    scores = config.num_hidden_layers * (4 * hidden * hidden + 2 * hidden * ffn)
    assert row["regulariser_grad_end"] == pytest.approx(400 / (4 * scores), rel=1e-4)
    assert row["regulariser_grad_start"] == pytest.approx(5 * row["regulariser_grad_end"], rel=1e-6)
    assert row["ratio_start"] == pytest.approx(row["regulariser_grad_start"] / row["task_grad_mean"])
    assert results["command"].startswith("python -m benchmarks.smp_gradients --tasks rte")
    table = (out / "smp_gradients.md").read_text()
    assert "| task | batch | head steps | task loss |" in table and "| rte | 4 | 0 |" in table and "| rte | 4 | 3 |" in table


@pytest.mark.parametrize("argv, message", [
    (["--batches", "0"], "--batches 0: at least 1"),
    (["--head-steps", "0", "-1"], "--head-steps 0 -1: each at least 0"),
    (["--params-kept", "1.0"], "--params-kept 1.0: a fraction in (0, 1)"),
    (["--regularization", "0"], "--regularization 0.0: above 0"),
    (["--tasks", "rte"], "--tasks rte: no SMP recipe (configs/smp/<task>.yaml) to take the batch size from"),
    (["--tasks", "rte", "mrpc", "--data-dir", "x", "--batch-size", "4"], "--data-dir goes with one task"),
    (["--name", "a/b"], "--name 'a/b': a file name without folders"),
])
def test_bad_arguments(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit):
        smp_gradients.main(argv + ["--out", str(tmp_path)])
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
