"""python -m lit_prune.inspect: structure, FLOPs and parameters of a pruned folder against the dense model."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO, tiny_model
from core_cases import make_masks
from lit_prune.core.compact import compact
from lit_prune.core.flops import count_parameters, masks_flops, masks_parameters
from lit_prune.core.io import save_pruned
from lit_prune.inspect import describe, main


@pytest.fixture(scope="module")
def pruned_folder(tmp_path_factory):
    masks = make_masks("empty_attention")
    dense = tiny_model("roberta", "question_answering")
    dense_total = count_parameters(dense)["total"]
    model = compact(dense, masks)
    folder = save_pruned(model, tmp_path_factory.mktemp("inspect") / "pruned")
    return folder, masks, dense_total, count_parameters(model)["total"]


def test_describe_numbers(pruned_folder):
    folder, masks, dense_total, pruned_total = pruned_folder
    info = describe(folder, seq_len=12.5)
    assert info["model_type"] == "roberta" and info["kind"] == "question_answering"
    assert info["dense_shape"] == {"num_layers": 2, "num_heads": 4, "head_dim": 8, "hidden_size": 32, "ffn_dim": 48}
    assert info["flops"]["pruned"] == masks_flops(masks, 12.5)
    assert info["flops"]["dense"] == masks_flops(make_masks("ones"), 12.5)
    assert info["parameters"]["total"] == {"dense": dense_total, "pruned": pruned_total,
                                           "kept": pruned_total / dense_total}
    assert info["parameters"]["encoder_linear"]["pruned"] == masks_parameters(masks)["encoder_linear"]
    assert [layer["ffn"] for layer in info["layers"]] == [layer["ffn"] for layer in masks.structure()]


def test_main_prints_structure(pruned_folder, capsys):
    folder, masks, _, _ = pruned_folder
    assert main([str(folder), "--seq-len", "20"]) == 0
    out = capsys.readouterr().out
    first, second = (layer["ffn"] for layer in masks.structure())
    assert f"layer  0: heads   0/4 [none]; FFN neurons {first}/48" in out
    assert f"layer  1: heads   4/4 [4×(q8,v8)]; FFN neurons {second}/48" in out
    assert f"FLOPs at s=20: {masks_flops(masks, 20):.4g} of" in out


def test_not_a_pruned_folder_is_a_clear_error(tmp_path, capsys):
    tiny_model("bert").save_pretrained(tmp_path / "dense")
    assert main([str(tmp_path / "dense")]) == 2
    assert "has no lit_prune_structure" in capsys.readouterr().err


def test_runs_as_a_module(pruned_folder):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "lit_prune.inspect", str(pruned_folder[0])], capture_output=True,
                            text=True, env=env, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "FLOPs at s=128:" in result.stdout and "layer  1:" in result.stdout
