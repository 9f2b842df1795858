"""Mask rearrangement: stage 3 of Kwon et al.'s framework (used by Kwon and G-Pruner).

Kwon et al. 2022, "A Fast Post-Training Pruning Framework for Transformers" (NeurIPS 2022); reference code:
WoosukKwon/retraining-free-pruning (``prune/rearrange.py``). No data: it reads the per-batch mask gradients of
:class:`~lit_prune.prune.fisher.FisherStatistics`.

Per layer, with the number of kept units fixed, a greedy swap that minimises ``||Σ_{u pruned} g_u||²`` where
``g_u`` is unit u's vector of per-batch gradients (the loss increase under a block-diagonal, per-layer Fisher
approximation: the pruned units' gradients may cancel) (:func:`rearrange_masks`).

Departures from the paper and the reference code: the code's greedy, in float64 on the CPU as the code does; in
addition, a layer whose greedy result has a higher objective than the input mask keeps the input mask (the code
takes the greedy result).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lit_prune.core.masks import PruningMasks
from lit_prune.prune.fisher import FisherStatistics


def rearrangement_objective(pruned_indices: torch.Tensor | Sequence[int], grads: torch.Tensor) -> float:
    """``||Σ_{u pruned} g_u||²``: the squared norm of the summed per-batch gradient vectors of the pruned units.

    Args:
        pruned_indices: indices of one layer's pruned units.
        grads: (N, U) per-batch mask gradients of the layer's U units.
    """
    index = torch.as_tensor(pruned_indices, dtype=torch.long, device=grads.device).reshape(-1)
    return float(grads.double()[:, index].sum(1).pow(2).sum())  # (N, P) → (N,) → scalar


def rearrange_layer(kept: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Kwon's greedy rearrangement of one layer's mask, the number of kept units fixed.

    Starts from the ``P`` units with the smallest Fisher importance pruned; then, for every other unit in
    increasing importance, adds it to the pruned set and drops the pruned unit whose removal leaves the smallest
    :func:`rearrangement_objective`. If the result's objective is higher than the input's, the input is kept.

    Args:
        kept: (U,) bool, the layer's kept units.
        grads: (N, U) per-batch mask gradients.

    Returns:
        (U,) bool on ``kept``'s device, with as many kept units as ``kept``.
    """
    num_units = kept.shape[0]
    num_pruned = int((~kept).sum())
    if num_pruned in (0, num_units):
        return kept.clone()
    # Low arithmetic intensity: the CPU is faster (as the reference code notes), float64 avoids drift.
    g = grads.detach().to("cpu", torch.float64).t().contiguous()  # (U, N)
    order = torch.sort(g.pow(2).sum(1), stable=True).indices.tolist()  # least important first
    pruned = order[:num_pruned]
    total = g[pruned].sum(0)  # (N,)
    for candidate in order[num_pruned:]:
        pruned.append(candidate)
        total = total + g[candidate]
        left = (total[None] - g[pruned]).pow(2).sum(1)  # (P + 1,): objective after dropping each
        drop = int(left.argmin())  # first minimum: deterministic
        total = total - g[pruned[drop]]
        del pruned[drop]
    input_pruned = torch.nonzero(~kept.cpu()).flatten()
    if rearrangement_objective(pruned, g.t()) > rearrangement_objective(input_pruned, g.t()):
        return kept.clone()
    result = torch.ones(num_units, dtype=torch.bool)
    result[pruned] = False
    return result.to(kept.device)


def rearrange_masks(masks: PruningMasks, stats: FisherStatistics) -> PruningMasks:
    """Rearrange every layer's head mask and FFN mask with :func:`rearrange_layer`.

    A unit counts as kept when its ``head`` / ``ffn`` entry is nonzero. Layers with nothing pruned or nothing kept
    are unchanged; no layer's objective rises.

    Args:
        masks: Kwon's searched masks (binary ``head`` and ``ffn``).
        stats: the per-batch gradients (at least one batch).

    Returns:
        New masks: binary ``head`` and ``ffn`` with the same per-layer counts, ``qk`` / ``vo`` copied.

    Raises:
        ValueError: statistics of zero batches, or shapes that disagree.
    """
    expected = (stats.head_grads.shape[1], stats.head_grads.shape[2], masks.head_dim, stats.ffn_grads.shape[2])
    masks.check_shape(*expected, what="the Fisher statistics")
    if stats.num_batches == 0:
        raise ValueError("rearrange_masks: the Fisher statistics hold no batch")
    head = torch.stack([rearrange_layer(masks.head[i] != 0, stats.head_grads[:, i])
                        for i in range(masks.num_layers)])  # (L, H)
    ffn = torch.stack([rearrange_layer(masks.ffn[i] != 0, stats.ffn_grads[:, i])
                       for i in range(masks.num_layers)])  # (L, F)
    return PruningMasks(head=head.to(masks.head.dtype), qk=masks.qk.detach().clone(), vo=masks.vo.detach().clone(),
                        ffn=ffn.to(masks.ffn.dtype))



def total_objective(masks: PruningMasks, stats: FisherStatistics) -> float:
    """:func:`rearrangement_objective` of every layer's pruned heads and pruned neurons, summed."""
    total = 0.0
    for layer in range(masks.num_layers):
        for field_name, grads in (("head", stats.head_grads), ("ffn", stats.ffn_grads)):
            pruned = torch.nonzero(getattr(masks, field_name)[layer] == 0).flatten()
            total += rearrangement_objective(pruned, grads[:, layer])  # grads (N, U)
    return total


__all__ = ["rearrange_layer", "rearrange_masks", "rearrangement_objective", "total_objective"]
