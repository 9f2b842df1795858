"""benchmarks/first_token.py: the spread across inputs of the first token's state, layer by layer."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import first_token
from test_glue import write_rte


def test_the_first_token_spread_per_layer_and_a_constant_classifier(minilm_l3, tmp_path, monkeypatch):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    constant = tmp_path / "constant"  # a classifier whose output cannot depend on the input
    model = AutoModelForSequenceClassification.from_pretrained(minilm_l3, num_labels=2)
    torch.nn.init.zeros_(model.classifier.weight)
    model.save_pretrained(constant)
    AutoTokenizer.from_pretrained(minilm_l3).save_pretrained(constant)
    data = write_rte(tmp_path / "RTE", n=16)
    out = tmp_path / "results"
    assert first_token.main(["--task", "rte", "--samples", "8", "--data-dir", str(data), "--out", str(out),
                             "--models", str(minilm_l3), str(constant)]) == 0
    results = json.loads((out / "first_token.json").read_text())
    base, classifier = results["models"]
    assert results["samples"] == 8 and len(base["first_token"]) == len(base["token_mean"]) == 4  # embeddings + 3
    assert base["first_token"][0] == 0.0  # [CLS] at position 0 embeds the same for every input
    assert base["token_mean"][0] > 0.01 and base["first_token"][-1] > 0  # the last layer mixes the input in
    assert "output_std" not in base
    assert classifier["output_std"] == pytest.approx([0.0, 0.0], abs=1e-7)
    assert classifier["first_token"] == pytest.approx(base["first_token"], abs=1e-3)  # the same encoder
    table = (out / "first_token.md").read_text()
    assert "| model | state | embeddings | layer 1 | layer 2 | layer 3 | output std |" in table
    assert "0.000, 0.000" in table
    assert first_token.main(["--task", "rte", "--samples", "4", "--data-dir", str(data), "--out", str(out),
                             "--name", "first_token_rte", "--models", str(constant)]) == 0
    assert json.loads((out / "first_token_rte.json").read_text())["samples"] == 4
    for assets, prefix in (("../shared/assets", "LIT_PRUNE_ASSETS=../shared/assets "), (None, "")):
        if assets:  # the command to reproduce names the assets folder the model names resolved under
            monkeypatch.setenv("LIT_PRUNE_ASSETS", assets)
        else:
            monkeypatch.delenv("LIT_PRUNE_ASSETS")
        assert first_token.main(["--task", "rte", "--samples", "2", "--data-dir", str(data), "--out", str(out),
                                 "--name", "command", "--models", str(constant)]) == 0
        assert json.loads((out / "command.json").read_text())["command"].startswith(
            prefix + "python -m benchmarks.first_token --task rte --samples 2")
    assert (out / "first_token_rte.md").is_file() and (out / "first_token.md").read_text() == table


def test_too_few_samples_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        first_token.main(["--samples", "1", "--models", "x", "--out", str(tmp_path)])
    assert "--samples 1: at least 2 examples" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        first_token.main(["--name", "a/b", "--models", "x", "--out", str(tmp_path)])
    assert "--name 'a/b': a file name without folders" in capsys.readouterr().err
