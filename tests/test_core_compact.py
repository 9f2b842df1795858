"""Compaction: the physically pruned model computes exactly what the masked model computes."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import tiny_inputs, tiny_model
from core_cases import MASK_CASES, make_masks
from lit_prune.core.arch import get_adapter
from lit_prune.core.compact import compact
from lit_prune.core.hf_modeling import modeling_lit_pruned as hf
from lit_prune.core.masking import apply_masks
from lit_prune.core.masks import PruningMasks

KINDS = ("sequence_classification", "question_answering", "base")


def outputs(model, inputs, **kwargs):
    with torch.no_grad():
        result = model(**inputs, **kwargs)
    return {key: value for key, value in result.items() if isinstance(value, torch.Tensor)}


def assert_masked_equals_compacted(model, masks, inputs, **kwargs):
    with apply_masks(model, masks):
        masked = outputs(model, inputs, **kwargs)
    pruned = compact(copy.deepcopy(model), masks)
    assert type(pruned) is type(model)
    compacted = outputs(pruned, inputs, **kwargs)
    assert masked.keys() == compacted.keys()
    for key in masked:
        torch.testing.assert_close(compacted[key], masked[key], atol=1e-5, rtol=1e-5, msg=key)
    return pruned


@pytest.mark.parametrize("case", MASK_CASES)
def test_masked_equals_compacted_sequence_classification(tiny_model_type, case):
    model = tiny_model(tiny_model_type)
    masks = make_masks(case, model=model)
    pruned = assert_masked_equals_compacted(model, masks, tiny_inputs(), labels=torch.tensor([0, 1, 1]))
    structure = pruned.config.lit_prune_structure
    assert [sorted(map(tuple, layer["heads"])) for layer in structure["layers"]] == [
        sorted(map(tuple, layer["heads"])) for layer in masks.structure()]
    assert [layer["ffn"] for layer in structure["layers"]] == [layer["ffn"] for layer in masks.structure()]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", ["intra_head", "scales", "empty_layer"])
def test_masked_equals_compacted_every_head(tiny_model_type, kind, case):
    model = tiny_model(tiny_model_type, kind)
    assert_masked_equals_compacted(model, make_masks(case, seed=3, model=model), tiny_inputs(seed=1))


def test_masked_equals_compacted_with_eager_attention_and_heavy_padding(tiny_model_type):
    model = tiny_model(tiny_model_type)
    model.set_attn_implementation("eager")  # the padding mask then arrives as an additive float mask
    inputs = tiny_inputs(batch=4, seq=12, pad_last=9)
    inputs["attention_mask"][1, -4:] = 0
    assert_masked_equals_compacted(model, make_masks("intra_head", seed=5, model=model), inputs)


@pytest.mark.parametrize("settings", [
    {"share_att_key": False},  # DeBERTa's own pos_key_proj / pos_query_proj: masked and compacted with the queries
    {"share_att_key": False, "pos_att_type": ["c2p"]},  # one relative term (the scaling counts two terms)
    {"position_buckets": -1, "max_relative_positions": 6},  # no log buckets: clamped relative distances
    {"relative_attention": False},  # content attention only
])
@pytest.mark.parametrize("case", ["intra_head", "scales", "empty_attention"])
def test_masked_equals_compacted_for_each_deberta_variant(settings, case):
    model = tiny_model("deberta-v2", **settings)
    pruned = assert_masked_equals_compacted(model, make_masks(case, seed=2), tiny_inputs(batch=4, seq=12, pad_last=5))
    attention = get_adapter(pruned).layer(1).self_attention
    unshared = settings.get("share_att_key") is False and settings.get("relative_attention", True)
    assert hasattr(attention, "pos_query_proj") == (unshared and "p2c" in settings.get("pos_att_type", ["p2c"]))
    assert hasattr(attention, "pos_key_proj") == unshared


def test_compacted_shapes_structure_and_scaling(tiny_model_type):
    model = tiny_model(tiny_model_type)
    masks = make_masks("intra_head", model=model)
    pruned = compact(copy.deepcopy(model), masks)
    adapter = get_adapter(pruned)
    assert adapter.is_compacted
    structure = pruned.config.lit_prune_structure
    assert {key: structure[key] for key in ("format_version", "model_type", "num_layers", "num_heads", "head_dim",
                                            "hidden_size", "ffn_dim")} == {
        "format_version": 1, "model_type": tiny_model_type, "num_layers": 2, "num_heads": 4, "head_dim": 8,
        "hidden_size": 32, "ffn_dim": 48}
    for index, layer in enumerate(structure["layers"]):
        m = adapter.layer(index)
        assert type(m.self_attention) is hf.ATTENTION_CLASSES[adapter.spec.attention_style]
        # the dense head size's scaling, whatever q is (DeBERTa's also counts its two relative terms)
        assert m.self_attention.scaling == pytest.approx((8 * (3 if tiny_model_type == "deberta-v2" else 1)) ** -0.5)
        q, v = sum(h[0] for h in layer["heads"]), sum(h[1] for h in layer["heads"])
        assert tuple(m.query.weight.shape) == tuple(m.key.weight.shape) == (q, 32)
        assert tuple(m.value.weight.shape) == (v, 32) and tuple(m.attn_out.weight.shape) == (32, v)
        assert tuple(m.ffn_up.weight.shape) == ((2 if tiny_model_type == "modernbert" else 1) * layer["ffn"], 32)
        assert tuple(m.ffn_down.weight.shape) == (32, layer["ffn"])
        sizes = [tuple(h) for h in layer["heads"]]
        assert sizes == sorted(sizes, key=lambda h: (-max(h), -h[0], -h[1]))  # largest first
        # One attention call per power-of-two size class.
        assert len(m.self_attention.layout.groups) == len({(max(h) - 1).bit_length() for h in sizes})


def test_uniform_heads_run_as_one_group_and_empty_attention_keeps_the_bias():
    model = tiny_model("bert")
    masks = PruningMasks.from_model(model)
    masks.head[0, :2] = 0
    masks.head[1] = 0
    pruned = compact(copy.deepcopy(model), masks)
    adapter = get_adapter(pruned)
    layout = adapter.layer(0).self_attention.layout
    assert not layout.padded and [(g.num_heads, g.width) for g in layout.groups] == [(2, 8)]
    empty = adapter.layer(1)
    assert empty.self_attention.head_sizes == [] and tuple(empty.attn_out.weight.shape) == (32, 0)
    torch.testing.assert_close(empty.attn_out.bias, get_adapter(model).layer(1).attn_out.bias, atol=0, rtol=0)


def test_compacted_model_trains():
    model = tiny_model("bert").train()
    pruned = compact(model, make_masks("intra_head"))
    assert pruned.training and get_adapter(pruned).layer(0).self_attention.training
    loss = pruned(**tiny_inputs(), labels=torch.tensor([0, 1, 0])).loss
    loss.backward()
    query = get_adapter(pruned).layer(0).query
    assert query.weight.grad is not None and query.weight.grad.abs().sum() > 0


def test_frozen_weights_stay_frozen():
    model = tiny_model("distilbert").requires_grad_(False)
    pruned = compact(model, make_masks("heads_ffn"))
    assert not any(p.requires_grad for p in pruned.parameters())


def test_errors_wrong_shape_and_already_compacted():
    model = tiny_model("bert")
    with pytest.raises(ValueError, match=r"masks do not fit BertForSequenceClassification .*ffn has shape \(2, 40\), "
                                         r"expected \(2, 48\)"):
        compact(model, PruningMasks.ones(2, 4, 8, 40))
    compact(model, make_masks("heads_ffn"))
    with pytest.raises(ValueError, match="cannot compact it: this BertForSequenceClassification is already compacted"):
        compact(model, make_masks("heads_ffn"))


@pytest.mark.assets
def test_real_minilm_masked_equals_compacted(minilm_l6):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(minilm_l6).eval()
    tokenizer = AutoTokenizer.from_pretrained(minilm_l6)
    inputs = tokenizer(["Pruning removes whole heads and neurons.", "A short one.",
                        "The compacted encoder must agree with the masked encoder on every padded batch."],
                       padding=True, return_tensors="pt")
    masks = make_masks("intra_head", num_layers=6, num_heads=12, head_dim=32, ffn_dim=1536, seed=7)
    masks.head[2] = 0
    masks.ffn[4] = 0
    masks.head[3] *= torch.linspace(0.5, 1.5, 12)
    assert_masked_equals_compacted(model, masks, dict(inputs))
