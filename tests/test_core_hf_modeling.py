"""The pruned attention of the modelling file: heads of mixed sizes, batched by size class, against a per-head loop."""

from __future__ import annotations

import pytest
import torch

from lit_prune.core.hf_modeling.modeling_lit_pruned import HeadGroup, HeadLayout, PrunedBertSelfAttention, head_layout

SIZES = [(32, 32), (20, 24), (17, 3), (8, 8), (5, 2), (2, 5), (1, 1)]


def test_head_layout_batches_by_power_of_two_class():
    layout = head_layout(SIZES)
    assert layout.padded
    assert layout.groups == (HeadGroup(3, 32, 0, 96), HeadGroup(3, 8, 96, 120), HeadGroup(1, 1, 120, 121))
    q, v = 85, 75  # Σq and Σv: the index of the appended zero row
    # Second group: heads (8, 8), (5, 2), (2, 5) padded to 8 from query rows 69.. and value rows 59..
    assert layout.q_index[96:120] == (*range(69, 77), *range(77, 82), *[q] * 3, 82, 83, *[q] * 6)
    assert layout.v_index[96:120] == (*range(59, 67), 67, 68, *[v] * 6, *range(69, 74), *[v] * 3)
    assert layout.q_index[:32] == tuple(range(32)) and layout.q_index[32:64] == (*range(32, 52), *[q] * 12)
    assert layout.out_index[:59] == (*range(32), *range(32, 56), 64, 65, 66)
    assert layout.out_index[59:] == (*range(96, 104), 104, 105, *range(112, 117), 120)
    assert head_layout([(16, 16)] * 3) == HeadLayout((HeadGroup(3, 16, 0, 48),), padded=False)
    assert head_layout([]) == HeadLayout((), padded=False)


def reference_attention(query, key, value, sizes, mask, scaling):
    """One head at a time, eagerly: softmax(q kᵀ · scaling + mask) v."""
    outputs, q0, v0 = [], 0, 0
    for q, v in sizes:
        qh, kh = query[..., q0:q0 + q], key[..., q0:q0 + q]  # (B, s, q)
        scores = qh @ kh.transpose(1, 2) * scaling  # (B, s, s)
        scores = scores.masked_fill(~mask[:, 0], float("-inf"))
        outputs.append(scores.softmax(-1) @ value[..., v0:v0 + v])  # (B, s, v)
        q0, v0 = q0 + q, v0 + v
    return torch.cat(outputs, -1)


@pytest.mark.parametrize("sizes", [SIZES, [(32, 32)] * 4, [(7, 7)] * 2 + [(3, 6)]])
def test_mixed_size_attention_equals_per_head_reference(sizes):
    torch.manual_seed(0)
    module = PrunedBertSelfAttention(48, sizes, scaling=32 ** -0.5, dropout=0.1).eval()
    hidden = torch.randn(3, 9, 48)
    mask = torch.ones(3, 1, 9, 9, dtype=torch.bool)
    mask[1, ..., -4:] = False  # padding of the second example
    context, weights = module(hidden, attention_mask=mask)
    assert weights is None and context.shape == (3, 9, sum(v for _, v in sizes))
    expected = reference_attention(module.query(hidden), module.key(hidden), module.value(hidden), sizes, mask,
                                   32 ** -0.5)
    torch.testing.assert_close(context, expected, atol=1e-5, rtol=1e-5)
    # The additive float mask of the eager implementation reads the same.
    additive = torch.zeros(3, 1, 9, 9).masked_fill(~mask, torch.finfo(torch.float32).min)
    torch.testing.assert_close(module(hidden, attention_mask=additive)[0], context, atol=1e-5, rtol=1e-5)
