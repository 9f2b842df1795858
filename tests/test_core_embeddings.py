"""Factorised word embeddings: the SVD factorisation, compaction and a pruned folder that loads with it."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from conftest import MODEL_TYPES, tiny_inputs, tiny_model
from core_cases import make_masks
from lit_prune.core.compact import compact
from lit_prune.core.embeddings import FactorizedEmbedding, factorize_embeddings
from lit_prune.core.flops import count_parameters
from lit_prune.core.io import load_pruned, read_pruned_config, save_pruned


def test_factorisation_is_the_truncated_svd(tiny_model_type):
    model = tiny_model(tiny_model_type)
    weight = model.base_model.get_input_embeddings().weight.detach().clone()
    info = factorize_embeddings(model, 8)
    embeddings = model.base_model.get_input_embeddings()
    assert isinstance(embeddings, FactorizedEmbedding) and embeddings.rank == 8
    singular = torch.linalg.svdvals(weight.double())
    expected = (singular[8:] ** 2).sum().sqrt() / (singular ** 2).sum().sqrt()  # Eckart-Young
    assert info["relative_error"] == pytest.approx(float(expected), rel=1e-6)
    width = weight.shape[1]  # the hidden size, except for ELECTRA (narrower embeddings, projected up)
    assert info["parameters"] == {"before": 120 * width, "after": 120 * 8 + 8 * width}
    ids = torch.tensor([[5, 7, 9]])
    approx = embeddings(ids)
    assert approx.shape == (1, 3, width)
    with pytest.raises(ValueError, match="already factorised"):
        factorize_embeddings(model, 4)


def test_bad_rank():
    with pytest.raises(ValueError, match=r"embedding_rank=32: expected an integer in \[1, 32\)"):
        factorize_embeddings(tiny_model("bert"), 32)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_compacted_factorised_model_round_trips(model_type, tmp_path):
    model = tiny_model(model_type)
    factorize_embeddings(model, 12)
    inputs = tiny_inputs()
    masks = make_masks("intra_head", model=model)
    compact(model, masks)
    expected = model(**inputs).logits
    structure = model.config.lit_prune_structure
    assert structure["embedding_rank"] == 12 and structure["format_version"] == 2
    folder = save_pruned(model, tmp_path / "pruned")
    assert read_pruned_config(folder).lit_prune_structure["embedding_rank"] == 12
    reloaded = load_pruned(folder).eval()
    torch.testing.assert_close(reloaded(**inputs).logits, expected)
    remote = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    torch.testing.assert_close(remote(**inputs).logits, expected)
    assert count_parameters(remote)["total"] == count_parameters(model)["total"]


def test_folders_without_factorisation_keep_format_1(tmp_path):
    model = compact(tiny_model("bert"), make_masks("heads_ffn"))
    assert model.config.lit_prune_structure["format_version"] == 1
    assert "embedding_rank" not in model.config.lit_prune_structure
