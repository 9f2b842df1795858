"""KPrune, stage 2: knowledge-preserving mask search (Park et al., ICLR 2024, Sec. 4.3; the code's ``find_mask``).

The remaining units (the target sublayer's and those of every sublayer above it) are ranked together by their
knowledge per FLOP (:meth:`~lit_prune.methods.kprune.knowledge.KnowledgeAccumulator.scores`), the best are kept
while they fit the FLOPs left in the budget, and the resulting mask is applied to the target only: the units above
compete for the budget but are decided on their own turn, after the target has been pruned and tuned.

Departure from the reference code: the code scans thresholds of the sorted scores and keeps units strictly above
the first one that fits; here the best units are kept in order while they fit, with exact arithmetic (ties: heads
before neurons, lower layer and index first), so the budget is met exactly or from below.
"""

from __future__ import annotations

from fractions import Fraction

import torch

from lit_prune.core.flops import FlopsBudget
from lit_prune.prune.capture import sublayer_of


def unit_costs(budget: FlopsBudget) -> tuple[Fraction, Fraction]:
    """Multiply-adds of one head and one neuron (exact)."""
    return budget.head_macs, budget.neuron_macs


def search_sublayer(head_scores: torch.Tensor, neuron_scores: torch.Tensor, target: int, remaining: Fraction,
                    head_cost: Fraction, neuron_cost: Fraction) -> torch.Tensor:
    """Knowledge-preserving mask search: the kept units of sublayer ``target``.

    The units of the target and of every sublayer above it are ranked together by score (descending; ties: heads
    before neurons, lower layer and index first); the longest prefix whose cost fits ``remaining`` is kept.

    Args:
        head_scores: (L, H); neuron_scores: (L, F).
        target: the target sublayer, 0..2L-1.
        remaining: multiply-adds left for the target and everything above it.
        head_cost, neuron_cost: multiply-adds of one head and one neuron.

    Returns:
        (H,) or (F,) bool: the target's kept units.
    """
    layer, sublayer = sublayer_of(target)
    num_heads = head_scores.shape[1]
    first_head_layer = layer if sublayer == "attention" else layer + 1
    heads = head_scores[first_head_layer:].reshape(-1)
    neurons = neuron_scores[layer:].reshape(-1)
    scores = torch.cat([heads, neurons]).double().cpu()
    is_head = torch.cat([torch.ones(heads.numel(), dtype=torch.long), torch.zeros(neurons.numel(), dtype=torch.long)])
    order = torch.sort(-scores, stable=True).indices
    heads_prefix = torch.cumsum(is_head[order], 0).tolist()  # heads among the first i+1 units

    def fits(count: int) -> bool:
        if count == 0:
            return remaining >= 0
        h = heads_prefix[count - 1]
        return h * head_cost + (count - h) * neuron_cost <= remaining

    low, high = 0, scores.numel()  # the largest count that fits (costs are positive: fits() is monotone)
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    kept_positions = order[:low]
    if sublayer == "attention":
        size = num_heads
        chosen = kept_positions[kept_positions < size]  # the target's heads come first among the candidates
    else:
        size = neuron_scores.shape[1]
        offset = heads.numel()
        chosen = kept_positions[(kept_positions >= offset) & (kept_positions < offset + size)] - offset
    kept = torch.zeros(size, dtype=torch.bool)
    kept[chosen] = True
    return kept


__all__ = ["search_sublayer", "unit_costs"]
