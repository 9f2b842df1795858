"""SMP's pure parts: SMP-L and SMP-S counts on hand-made scores, the top-k mask and its straight-through gradient,
the cubic schedule and the score regulariser."""

from __future__ import annotations

import math

import pytest
import torch

from lit_prune.methods.smp import (cubic_keep, global_counts, local_count, score_regularizer,
                                   straight_through_mask, topk_mask)


def test_local_counts_keep_the_top_fraction_of_each_matrix():
    assert local_count(100, 0.1) == 10
    assert local_count(100, 0.035) == 4  # 3.5 rounds up
    assert local_count(100, 1.0) == 100
    assert local_count(10, 0.01) == 1  # never an empty matrix
    scores = torch.tensor([[0.3, -1.0, 2.0], [0.1, 0.9, -0.2]])
    mask = topk_mask(scores, local_count(scores.numel(), 0.5))
    assert mask.tolist() == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    with pytest.raises(ValueError, match="keep=0"):
        local_count(10, 0)


def test_global_counts_follow_relevance_and_sum_exactly():
    # relevance 1 : 2 : 3 : 2 at keep 0.25 of 4 matrices of 100: 100 weights shared 12.5 / 25 / 37.5 / 25
    counts = global_counts([1.0, 2.0, 3.0, 2.0], 100, 0.25)
    assert sum(counts) == 100
    assert counts == [13, 25, 37, 25]  # equal remainders: the earlier layer gets the extra weight
    # a ratio above 1 is capped and the excess shared among the others
    capped = global_counts([10.0, 1.0, 1.0], 100, 0.6)  # 180 weights; uncapped layer 0 would want 150
    assert capped[0] == 100 and sum(capped) == 180 and capped[1] == capped[2] == 40
    # equal relevance: SMP-S is SMP-L
    assert global_counts([5.0] * 4, 50, 0.2) == [10] * 4
    with pytest.raises(ValueError, match="relevance"):
        global_counts([1.0, 0.0], 10, 0.5)


def test_the_mask_passes_gradients_straight_through():
    weight = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    scores = torch.tensor([[0.2, 0.1], [-0.3, 0.4]], requires_grad=True)
    mask = straight_through_mask(scores, 2)
    assert mask.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    x = torch.tensor([1.0, 2.0])
    out = (weight * mask) @ x
    out.sum().backward()
    # d out / d mask_ij = W_ij · x_j, passed to the scores unchanged (pruned entries included)
    assert scores.grad.tolist() == [[1.0, -4.0], [3.0, 1.0]]


def test_cubic_schedule():
    assert cubic_keep(0, 100, 0.1) == 1.0
    assert cubic_keep(50, 100, 0.1) == pytest.approx(0.1 + 0.9 * 0.125)
    assert cubic_keep(100, 100, 0.1) == pytest.approx(0.1)
    assert cubic_keep(150, 100, 0.1) == pytest.approx(0.1)
    values = [cubic_keep(t, 40, 0.03) for t in range(41)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_regularizer_is_the_mean_sigmoid():
    scores = [torch.zeros(2, 3), torch.full((4,), math.log(3.0))]  # σ = 0.5 and 0.75
    assert score_regularizer(scores).item() == pytest.approx(0.625)
