"""Masking hooks: what each mask does to the computation, gradients to the masks, and no trace left behind."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import tiny_inputs, tiny_model
from core_cases import make_masks
from lit_prune.core.arch import get_adapter
from lit_prune.core.compact import compact
from lit_prune.core.masking import apply_masks
from lit_prune.core.masks import PruningMasks

D_H = 8


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def all_hooks(model):
    return [(name, hooks) for name, module in model.named_modules()
            for hooks in (module._forward_hooks, module._forward_pre_hooks) if hooks]


def test_all_ones_changes_nothing_and_hooks_leave_no_trace(tiny_model_type):
    model, inputs = tiny_model(tiny_model_type), tiny_inputs()
    before = logits(model, inputs)
    with apply_masks(model, PruningMasks.from_model(model)) as masks:
        assert isinstance(masks, PruningMasks) and all_hooks(model)
        torch.testing.assert_close(logits(model, inputs), before, atol=0, rtol=0)
        with apply_masks(model, make_masks("heads_ffn")):
            pass
    assert all_hooks(model) == []
    torch.testing.assert_close(logits(model, inputs), before, atol=0, rtol=0)


def test_hooks_removed_when_the_block_raises(tiny_model_type):
    model, inputs = tiny_model(tiny_model_type), tiny_inputs()
    before = logits(model, inputs)
    with pytest.raises(RuntimeError, match="boom"), apply_masks(model, make_masks("intra_head", model=model)):
        raise RuntimeError("boom")
    assert all_hooks(model) == []
    torch.testing.assert_close(logits(model, inputs), before, atol=0, rtol=0)


def test_each_mask_equals_editing_the_weights(tiny_model_type):
    """Masks act as documented: independent of compaction, against hand-edited weights."""
    model, inputs = tiny_model(tiny_model_type), tiny_inputs()
    masks = PruningMasks.from_model(model)
    masks.head[0, 1] = 0.5   # scale head 1 of layer 0
    rotary = not get_adapter(model).qk_dims_prunable
    if rotary:  # rotary embeddings: a head's query/key dims scale together
        masks.qk[1, 2] = 0.5
    else:
        masks.qk[1, 2, :5] = 0   # drop 5 query/key dims of head 2 of layer 1
    masks.vo[1, 3, 2] = 0    # drop 1 value dim of head 3 of layer 1
    masks.ffn[0, 7] = 0      # drop neuron 7 of layer 0
    masks.ffn[1, 3] = -2.0   # scale neuron 3 of layer 1
    with apply_masks(model, masks):
        masked = logits(model, inputs)

    edited = copy.deepcopy(model)
    adapter = get_adapter(edited)
    with torch.no_grad():
        first, second = adapter.layer(0), adapter.layer(1)
        first.attn_out.weight[:, D_H:2 * D_H] *= 0.5
        if rotary:
            second.query.weight[2 * D_H:3 * D_H] *= 0.5
        else:
            rows = slice(2 * D_H, 2 * D_H + 5)
            for linear in (second.query, second.key):
                linear.weight[rows] = 0
                linear.bias[rows] = 0
        second.attn_out.weight[:, 3 * D_H + 2] = 0
        first.ffn_down.weight[:, 7] = 0
        second.ffn_down.weight[:, 3] *= -2.0
    torch.testing.assert_close(masked, logits(edited, inputs), atol=1e-6, rtol=1e-5)


def test_head_without_query_dims_is_pruned_as_a_whole(tiny_model_type):
    model, inputs = tiny_model(tiny_model_type), tiny_inputs()
    no_qk, no_head = PruningMasks.from_model(model), PruningMasks.from_model(model)
    no_qk.qk[1, 2] = 0
    no_head.head[1, 2] = 0
    with apply_masks(model, no_qk):
        via_qk = logits(model, inputs)
    with apply_masks(model, no_head):
        via_head = logits(model, inputs)
    torch.testing.assert_close(via_qk, via_head, atol=0, rtol=0)


def test_gradients_reach_every_mask_and_match_finite_differences(tiny_model_type):
    model = tiny_model(tiny_model_type).double()
    inputs = tiny_inputs()
    labels = torch.tensor([0, 1, 1])
    masks = make_masks("scales", model=model).to(dtype=torch.float64).requires_grad_(True)
    def loss(model_inputs):  # from the logits: DeBERTa computes its own loss in float32
        return torch.nn.functional.cross_entropy(model(**model_inputs).logits, labels)

    with apply_masks(model, masks):
        loss(inputs).backward()
    for name in ("head", "qk", "vo", "ffn"):
        grad = getattr(masks, name).grad
        assert grad is not None and grad.abs().sum() > 0, name

    def loss_at(head_value: float) -> float:
        probe = masks.clone()
        probe.head[1, 0] = head_value
        with torch.no_grad(), apply_masks(model, probe):
            return loss(inputs).item()

    eps, h = 1e-6, masks.head[1, 0].item()
    assert h != 0
    numeric = (loss_at(h + eps) - loss_at(h - eps)) / (2 * eps)
    assert masks.head.grad[1, 0].item() == pytest.approx(numeric, rel=1e-5, abs=1e-9)


def test_masks_edited_in_place_take_effect_inside_the_block():
    model, inputs = tiny_model("bert"), tiny_inputs()
    masks = PruningMasks.from_model(model)
    with apply_masks(model, masks):
        dense = logits(model, inputs)
        masks.ffn[0].zero_()
        pruned = logits(model, inputs)
    assert not torch.allclose(dense, pruned)


def test_wrong_shape_and_compacted_model_are_refused():
    model = tiny_model("roberta")
    with pytest.raises(ValueError, match=r"masks do not fit RobertaForSequenceClassification \(L=2, H=4, d_h=8, "
                                         r"F=48\): head has shape \(2, 3\), expected \(2, 4\)"):
        with apply_masks(model, PruningMasks.ones(2, 3, 8, 48)):
            pass
    compact(model, make_masks("heads_ffn"))
    with pytest.raises(ValueError, match="cannot apply masks: this RobertaForSequenceClassification is already "
                                         "compacted"):
        with apply_masks(model, PruningMasks.ones(2, 4, 8, 48)):
            pass
    assert all_hooks(model) == []


def test_rotary_heads_refuse_masks_that_split_their_query_key_dims():
    """ModernBERT's rotary embeddings rotate query/key dim i with dim i + d_h/2: masks keep a head's dims whole."""
    model = tiny_model("modernbert")
    partial = PruningMasks.from_model(model)
    partial.qk[1, 2, :4] = 0  # a whole first half: the pairs are split
    with pytest.raises(ValueError, match=r"layer 1 head 2 scales query dim i and its rotary partner i \+ 4 "
                                         r"differently: modernbert's rotary position embeddings"):
        apply_masks(model, partial).__enter__()
    paired = PruningMasks.from_model(model)
    paired.qk[0, 1, [0, 4]] = 0  # one rotation pair: still not the whole head
    with pytest.raises(ValueError, match=r"keeps 6 of the 8 query/key dims of layer 0 head 1 .* keep all or none"):
        compact(copy.deepcopy(model), paired)
    conformed = get_adapter(model).conform_masks(paired)
    assert conformed.qk[0, 1].sum() == 8 and conformed.qk.sum() == paired.qk.numel()
