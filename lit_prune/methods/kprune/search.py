"""KPrune, stage 2: knowledge-preserving mask search (Park et al., ICLR 2024, Sec. 4.3; the code's ``find_mask``).

The remaining units (the target sublayer's and those of every sublayer above it) are ranked together by their
knowledge per FLOP (:meth:`~lit_prune.methods.kprune.knowledge.KnowledgeAccumulator.scores`), the best are kept
while they fit what the budget leaves (FLOPs, or the latency model's time: the searches take either budget), and
the resulting mask is applied to the target only: the units above
compete for the budget but are decided on their own turn, after the target has been pruned and tuned.

Departure from the reference code: the code scans thresholds of the sorted scores and keeps units strictly above
the first one that fits; here the best units are kept in order while they fit, with exact arithmetic (ties: heads
before neurons, lower layer and index first), so the budget is met exactly or from below.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lit_prune.core.masks import PruningMasks
from lit_prune.prune.capture import sublayer_of
from lit_prune.prune.search import aligned_down, longest_prefix

#: ``fits(head_counts (L,), neuron_counts (L,))``: whether keeping that many heads and neurons per layer (the
#: decided sublayers' and the candidates') fits the budget
Fits = Callable[[torch.Tensor, torch.Tensor], bool]


def decided_counts(masks: PruningMasks, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per layer, the heads and neurons kept by the sublayers already decided (those below ``target``, in the
    order attention 0, FFN 0, attention 1, ...); 0 for the undecided ones."""
    sublayers = torch.arange(masks.num_layers) * 2
    heads = (masks.head != 0).sum(1).cpu() * (sublayers < target)
    neurons = (masks.ffn != 0).sum(1).cpu() * (sublayers + 1 < target)
    return heads.long(), neurons.long()


def search_sublayer(head_scores: torch.Tensor, neuron_scores: torch.Tensor, target: int, fits: Fits,
                    decided: tuple[torch.Tensor, torch.Tensor], multiple: int = 1) -> torch.Tensor:
    """Knowledge-preserving mask search: the kept units of sublayer ``target``.

    The units of the target and of every sublayer above it are ranked together by score (descending; ties: heads
    before neurons, lower layer and index first); the longest prefix that fits beside the decided sublayers is kept
    (costs never decrease along the ranking, so the prefix is found by bisection).

    Args:
        head_scores: (L, H); neuron_scores: (L, F).
        target: the target sublayer, 0..2L-1.
        fits: the budget's ``fits_counts``.
        decided: :func:`decided_counts`.
        multiple: an FFN target keeps a multiple of this many neurons (or all), its best ones: the budget's
            ``neuron_multiple`` (what rounding leaves goes to the sublayers above, searched after it).

    Returns:
        (H,) or (F,) bool: the target's kept units.
    """
    layer, sublayer = sublayer_of(target)
    num_layers, num_heads = head_scores.shape
    ffn_dim = neuron_scores.shape[1]
    first_head_layer = layer if sublayer == "attention" else layer + 1
    heads = head_scores[first_head_layer:].reshape(-1)
    neurons = neuron_scores[layer:].reshape(-1)
    scores = torch.cat([heads, neurons]).double().cpu()
    # each candidate's column among (heads of layer 0..L-1, neurons of layer 0..L-1)
    columns = torch.cat([first_head_layer + torch.arange(heads.numel()) // num_heads,
                         num_layers + layer + torch.arange(neurons.numel()) // ffn_dim])
    order = torch.sort(-scores, stable=True).indices
    one_hot = torch.zeros(order.numel() + 1, 2 * num_layers, dtype=torch.long)
    one_hot[torch.arange(1, order.numel() + 1), columns[order]] = 1
    counts = one_hot.cumsum(0)  # [p]: per-layer heads and neurons among the first p candidates
    decided_heads, decided_neurons = decided
    kept_count = longest_prefix(scores.numel(), lambda p: fits(decided_heads + counts[p, :num_layers],
                                                               decided_neurons + counts[p, num_layers:]))
    kept_count = kept_count or 0  # the decided sublayers alone never exceed the budget: they fit earlier
    kept_positions = order[:kept_count]
    if sublayer == "attention":
        size = num_heads
        chosen = kept_positions[kept_positions < size]  # the target's heads come first among the candidates
    else:
        size = ffn_dim
        offset = heads.numel()
        chosen = kept_positions[(kept_positions >= offset) & (kept_positions < offset + size)] - offset
    if sublayer == "ffn":  # a latency budget keeps multiples of its neuron_multiple: the target's best ones
        chosen = chosen[:aligned_down(chosen.numel(), size, multiple)]
    kept = torch.zeros(size, dtype=torch.bool)
    kept[chosen] = True
    return kept


__all__ = ["Fits", "decided_counts", "search_sublayer"]
