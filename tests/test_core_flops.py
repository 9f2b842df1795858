"""FLOPs and parameter accounting, and exact budgets."""

from __future__ import annotations

import copy
import math
from fractions import Fraction

import pytest

from conftest import tiny_model
from core_cases import MASK_CASES, make_masks
from lit_prune.core.arch import get_adapter
from lit_prune.core.compact import compact
from lit_prune.core.flops import (
    FlopsBudget,
    check_flops_kept,
    count_parameters,
    dense_flops,
    flops_kept,
    head_macs,
    masks_flops,
    masks_parameters,
    model_dense_flops,
    model_flops,
    neuron_macs,
    structure_flops,
)
from lit_prune.core.masks import PruningMasks


def test_dense_closed_form_bert_base():
    # BERT-base at s=128: per head 4·128·768·64 + 2·128²·64 = 27,262,976 MACs; per neuron 2·128·768 = 196,608.
    per_layer = 12 * 27_262_976 + 3072 * 196_608
    assert dense_flops(12, 12, 64, 3072, 128) == 2 * 12 * per_layer == 22_347_251_712
    assert masks_flops(PruningMasks.ones(12, 12, 64, 3072), 128) == 22_347_251_712


def test_all_ones_masks_equal_closed_form_tiny(tiny_model_type):
    model = tiny_model(tiny_model_type)
    if tiny_model_type == "modernbert":
        # GeGLU: a neuron spans the up row, its gate row and the down column: 3·10·32 = 960 MACs.
        expected = 2 * 2 * (4 * 11_840 + 48 * 960)
        assert model_dense_flops(model, 10) == model_flops(model, 10) == expected == 373_760
        assert masks_flops(PruningMasks.from_model(model), 10, ffn_matrices=3) == expected
        assert flops_kept(PruningMasks.from_model(model), 10, ffn_matrices=3) == 1.0
        return
    # L=2, H=4, d_h=8, F=48, d=32, s=10: head 4·10·32·8 + 2·100·8 = 11,840; neuron 640.
    expected = 2 * 2 * (4 * 11_840 + 48 * 640)
    assert model_dense_flops(model, 10) == model_flops(model, 10) == expected == 312_320
    assert masks_flops(PruningMasks.from_model(model), 10) == expected
    assert flops_kept(PruningMasks.from_model(model), 10) == 1.0


def test_modernbert_closed_form_by_hand():
    """ModernBERT-base's shape at s=128: per head 4·128·768·64 + 2·128²·64 = 27,262,976 MACs as BERT's; per GeGLU
    neuron 3·128·768 = 294,912; 22 layers, 12 heads, 1,152 neurons."""
    per_layer = 12 * 27_262_976 + 1152 * 294_912
    assert dense_flops(22, 12, 64, 1152, 128, 768, ffn_matrices=3) == 2 * 22 * per_layer == 29_343_350_784
    budget = FlopsBudget(22, 12, 64, 1152, 768, 128, 0.5, ffn_matrices=3)
    assert budget.neuron_macs == 294_912 and budget.dense_flops == 29_343_350_784


def test_intra_head_cost():
    masks = PruningMasks.ones(1, 2, 8, 4)
    masks.head[0, 1] = 0
    masks.qk[0, 0, 3:] = 0  # q = 3
    masks.vo[0, 0, 5:] = 0  # v = 5
    masks.ffn[0, :3] = 0    # 1 neuron
    s, d = 20, 16
    assert head_macs(s, d, 3, 5) == s * d * (2 * 3 + 2 * 5) + s * s * (3 + 5)
    assert masks_flops(masks, s) == 2 * (s * d * 16 + s * s * 8 + 2 * s * d)
    assert masks_flops(masks, 25.16) == pytest.approx(2 * (25.16 * 16 * 16 + 25.16 ** 2 * 8 + 2 * 25.16 * 16))


@pytest.mark.parametrize("case", MASK_CASES)
def test_compacted_model_flops_and_parameters_match_masks(case):
    model = tiny_model("bert")
    masks = make_masks(case)
    pruned = compact(copy.deepcopy(model), masks)
    assert model_flops(pruned, 17.5) == masks_flops(masks, 17.5)
    assert model_dense_flops(pruned, 17.5) == model_dense_flops(model, 17.5)
    assert structure_flops(pruned.config.lit_prune_structure["layers"], 17.5, 32) == masks_flops(masks, 17.5)
    counts = count_parameters(pruned)
    expected = masks_parameters(masks)
    assert counts["encoder_linear"] == expected["encoder_linear"]
    assert counts["encoder_linear_weights"] == expected["encoder_linear_weights"]
    removed = count_parameters(model)["encoder_linear"] - counts["encoder_linear"]
    assert counts["total"] == count_parameters(model)["total"] - removed


def test_parameter_counts_dense(tiny_model_type):
    model = tiny_model(tiny_model_type)
    d, f, layers = 32, 48, 2
    counts = count_parameters(model)
    if tiny_model_type == "modernbert":  # a gated FFN (3 matrices per neuron) and no biases
        assert counts["encoder_linear_weights"] == counts["encoder_linear"] == layers * (4 * d * d + 3 * d * f)
    else:
        assert counts["encoder_linear_weights"] == layers * (4 * d * d + 2 * d * f)
        assert counts["encoder_linear"] == layers * (4 * d * d + 4 * d + 2 * d * f + f + d)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert masks_parameters(PruningMasks.from_model(model), **get_adapter(model).accounting) == {
        "encoder_linear": counts["encoder_linear"], "encoder_linear_weights": counts["encoder_linear_weights"]}


@pytest.mark.parametrize("value", [0, -0.1, 1.5, float("nan"), float("inf"), "0.5", True, None])
def test_flops_kept_outside_range_is_refused(value):
    with pytest.raises(ValueError, match=r"flops_kept=.* is outside the allowed range \(0, 1\]"):
        check_flops_kept(value)


def test_flops_kept_error_names_the_setting_and_accepts_valid_values():
    with pytest.raises(ValueError, match=r"^pruner\.constraint=1\.2 is outside the allowed range \(0, 1\]"):
        check_flops_kept(1.2, setting="pruner.constraint")
    assert check_flops_kept(1) == 1.0 and check_flops_kept(0.5) == 0.5
    with pytest.raises(ValueError, match=r"flops_kept=0 is outside"):
        FlopsBudget(2, 4, 8, 48, 32, 10, 0)
    with pytest.raises(ValueError, match=r"seq_len=0: expected a positive number"):
        FlopsBudget(2, 4, 8, 48, 32, 0, 0.5)


def test_budget_counts_minilm_half_is_exact():
    budget = FlopsBudget(6, 12, 32, 1536, 384, 128, 0.5)
    # head 4·128·384·32 + 2·128²·32 = 7,340,032 MACs; neuron 2·128·384 = 98,304; half the dense: 717,225,984.
    assert (budget.head_macs, budget.neuron_macs, budget.max_macs) == (7_340_032, 98_304, 717_225_984)
    assert budget.max_flops == budget.dense_flops / 2 == 717_225_984 * 2
    # 6 heads per layer leave room for exactly 768 neurons per layer.
    assert budget.max_neurons(36) == 4608
    assert 36 * budget.head_macs + 4608 * budget.neuron_macs == budget.max_macs
    assert budget.max_neurons(72) == 1920 and budget.max_neurons(0) == 7296
    assert budget.max_heads() == 72


@pytest.mark.parametrize("seq_len,kept", [(25.16, 0.4), (128, 0.6), (53.24, 1.0), (11.67, 0.05)])
def test_budget_counts_are_the_largest_that_fit(seq_len, kept):
    budget = FlopsBudget(12, 12, 64, 3072, 768, seq_len, kept)
    limit = Fraction(kept) * budget.dense_macs
    head, neuron = head_macs(seq_len, 768, 64, 64), neuron_macs(seq_len, 768)
    assert budget.max_heads() == min(144, math.floor(limit / head))
    for heads in range(0, 145):
        neurons = budget.max_neurons(heads)
        if heads * head > limit:
            assert neurons is None
            continue
        assert heads * head + neurons * neuron <= limit
        assert neurons == budget.total_neurons or heads * head + (neurons + 1) * neuron > limit


def test_budget_fits_masks():
    # L=2, H=4, d_h=8, F=48, s=10: head 11,840 MACs, neuron 640; half the dense is 78,080 = 4 heads + 48 neurons.
    budget = FlopsBudget.for_masks(PruningMasks.ones(2, 4, 8, 48), 10, 0.5)
    assert budget.max_neurons(4) == 48 and budget.max_neurons(8) is None and budget.max_heads() == 6
    masks = PruningMasks.ones(2, 4, 8, 48)
    assert not budget.fits(masks)
    masks.head[:, 2:] = 0
    masks.ffn[:, 24:] = 0
    assert budget.fits(masks) and flops_kept(masks, 10) == 0.5
    masks.ffn[0, 24] = 1
    assert not budget.fits(masks)
    with pytest.raises(ValueError, match=r"num_heads_kept=9: expected an integer in \[0, 8\]"):
        budget.max_neurons(9)
    with pytest.raises(ValueError, match=r"masks do not fit the budget"):
        budget.fits(PruningMasks.ones(2, 4, 8, 40))
    model_budget = FlopsBudget.for_model(tiny_model("distilbert"), 10, 0.5)
    assert model_budget == budget
