"""Budgeted mask search over whole heads and FFN neurons: stage 2 of Kwon et al.'s framework (Kwon and G-Pruner).

Kwon et al. 2022, "A Fast Post-Training Pruning Framework for Transformers" (NeurIPS 2022); reference code:
WoosukKwon/retraining-free-pruning (``prune/search.py``). No data: the search reads the Fisher importances
(:mod:`~lit_prune.prune.fisher`).

Heads and neurons are ranked globally; for every number k of kept heads, the top-k heads plus as many of the best
neurons as the budget leaves room for; the k with the largest total importance wins (:func:`search_masks`).

The budget is a FLOPs budget (:class:`~lit_prune.core.flops.FlopsBudget`: the code's ``search_mac``) or a latency
budget (:class:`~lit_prune.core.latency_model.LatencyBudget`: the code's ``search_latency``). With a latency budget
the cost of the top-k heads and of a prefix of the neuron ranking depends on how they fall into layers (a layer's
time is not linear in its units), so "as many neurons as fit" is the longest prefix of the ranking whose per-layer
counts fit, found by bisection (costs never decrease along a prefix).

Departures from the paper and the reference code (each deliberate):

* k runs over 0..L·H (the code starts at 1, so it can never keep zero heads); the FLOPs budget is exact (rational
  arithmetic) where the code truncates floats; a budget of 1 is allowed (the code asserts < 1). Ties: stable sorts
  (lower index first) and the smallest k among equal totals (the code's strict ``>`` while k ascends).
* Latency: every layer keeps a multiple of 16 neurons (:func:`align_neurons`: odd GEMM sizes run slower than
  their size says, so the table would under-predict them).
* Latency: the code's ``search_latency`` fits each sublayer as a constant up to a threshold and a line above it,
  keeps the threshold's best units of every layer and ranks the rest by a per-unit slope; here the measured,
  fitted per-count tables are used as they are (see :mod:`~lit_prune.core.latency_model`), and any layer may keep
  any number of units, none included.
* The mask tuning's reference (:mod:`~lit_prune.prune.mask_tuning`): the code's teacher is the model under the mask
  searched at the intermediate budget ``flops_kept ** 0.5`` (its ``get_pruning_schedule(target, 2)[0]``);
  :func:`teacher_budget` gives that budget (for a latency budget: ``speedup ** 0.5``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lit_prune.core.latency_model import Budget
from lit_prune.core.masks import PruningMasks


def teacher_budget(budget: Budget) -> Budget:
    """The reference code's tuning-teacher budget: ``flops_kept ** 0.5`` (``get_pruning_schedule(target, 2)[0]``),
    or ``speedup ** 0.5``."""
    return budget.halfway()


def layer_counts(order: torch.Tensor, units_per_layer: int, num_layers: int) -> torch.Tensor:
    """(N+1, L) int64: row p holds how many of the first p units of ``order`` (flat indices) fall in each layer."""
    one_hot = torch.zeros(order.numel() + 1, num_layers, dtype=torch.long)
    one_hot[torch.arange(1, order.numel() + 1), order.cpu() // units_per_layer] = 1
    return one_hot.cumsum(0)


def longest_prefix(length: int, fits: Callable[[int], bool]) -> int | None:
    """The largest p in 0..length with ``fits(p)``, for a ``fits`` true up to some p and false after it; ``None``
    when even ``fits(0)`` is false."""
    if not fits(0):
        return None
    low, high = 0, length
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def aligned_down(count: int, total: int, multiple: int) -> int:
    """``count`` rounded down to a multiple of ``multiple`` (all ``total`` units stay all)."""
    return count if count == total or multiple <= 1 else count - count % multiple


def align_neurons(masks: PruningMasks, ffn_importance: torch.Tensor, budget: Budget,
                  grow: bool = True) -> PruningMasks:
    """Keep a multiple of ``budget.neuron_multiple`` neurons in every layer (or all of them): each layer's count is
    rounded down, dropping its least important kept neurons; then, best gain first, layers are rounded up (adding
    their most important pruned neurons) while the budget allows. A no-op for FLOPs budgets (multiple 1).

    Args:
        masks: binary masks that fit ``budget``.
        ffn_importance: (L, F), what "least / most important" means.
        budget: the budget.
        grow: round layers up where the budget allows (its ``fits_counts`` counts whole heads: off for masks with
            uneven heads, which are only rounded down).

    Returns:
        Masks with aligned neuron counts that fit ``budget`` (``masks`` itself when there is nothing to do).
    """
    multiple = budget.neuron_multiple
    if multiple <= 1:
        return masks
    ffn = (masks.ffn != 0).clone()
    total = ffn.shape[1]
    importance = ffn_importance.detach().double().cpu()
    order = torch.sort(-importance, dim=1, stable=True).indices  # (L, F) most important first
    for layer in range(ffn.shape[0]):
        count = int(ffn[layer].sum())
        target = aligned_down(count, total, multiple)
        if target < count:  # keep the layer's best `target` among its kept neurons
            kept = order[layer][ffn[layer].cpu()[order[layer]]]
            ffn[layer, kept[target:].to(ffn.device)] = False
    heads = (masks.head != 0).sum(1).cpu()

    def grown(layer: int) -> tuple[float, torch.Tensor]:
        """The layer's next block of neurons (its best pruned ones, up to the next multiple) and their importance."""
        count = int(ffn[layer].sum())
        size = min(multiple - count % multiple, total - count)
        pruned = order[layer][~ffn[layer].cpu()[order[layer]]][:size]
        return float(importance[layer, pruned].sum()), pruned

    while grow:
        counts = ffn.sum(1).cpu()
        options = sorted(((gain, layer, block) for layer in range(ffn.shape[0]) if int(counts[layer]) < total
                          for gain, block in [grown(layer)]), key=lambda item: -item[0])
        for gain, layer, block in options:
            trial = counts.clone()
            trial[layer] += block.numel()
            if budget.fits_counts(heads, trial):
                ffn[layer, block.to(ffn.device)] = True
                break
        else:
            break
    return PruningMasks(head=masks.head, qk=masks.qk, vo=masks.vo, ffn=ffn.to(masks.ffn.dtype))


def search_masks(head_importance: torch.Tensor, ffn_importance: torch.Tensor, budget: Budget) -> PruningMasks:
    """Kwon's budgeted mask search over whole heads and FFN neurons.

    Heads and neurons are each sorted globally by importance (descending, stable: lower index first among
    equals). For every k in 0..L·H, the top-k heads and the longest prefix of the neuron ranking that fits beside
    them; the k with the largest total importance (heads' sum + neurons' sum) wins, the smallest k among equal
    totals.

    Args:
        head_importance: (L, H), e.g. :meth:`~lit_prune.prune.fisher.FisherStatistics.head_importance`.
        ffn_importance: (L, F).
        budget: a FLOPs or latency budget (its shape must match the importances).

    Returns:
        Binary masks (float32, on ``head_importance``'s device): kept units 1, pruned 0, ``qk`` and ``vo`` all ones.
        They always satisfy ``budget.fits(masks)``, and no further neuron of the ranking would fit.

    Raises:
        ValueError: importances of the wrong shape or with non-finite values.
    """
    L, H, F = budget.num_layers, budget.num_heads, budget.ffn_dim
    expected = {"head_importance": (L, H), "ffn_importance": (L, F)}
    given = {"head_importance": head_importance, "ffn_importance": ffn_importance}
    problems = [f"{name} has shape {tuple(given[name].shape)}, expected {shape}"
                for name, shape in expected.items() if tuple(given[name].shape) != shape]
    problems += [f"{name} has non-finite values" for name, value in given.items()
                 if tuple(value.shape) == expected[name] and not torch.isfinite(value).all()]
    if problems:
        raise ValueError("search_masks: " + "; ".join(problems))
    device = head_importance.device
    head_sorted, head_order = torch.sort(head_importance.detach().double().flatten(), descending=True, stable=True)
    ffn_sorted, ffn_order = torch.sort(ffn_importance.detach().double().flatten(), descending=True, stable=True)
    zero = torch.zeros(1, dtype=torch.float64, device=device)
    head_prefix = torch.cat([zero, head_sorted.cumsum(0)]).tolist()  # [k] = sum of the top-k heads
    ffn_prefix = torch.cat([zero, ffn_sorted.cumsum(0)]).tolist()
    head_counts = layer_counts(head_order, H, L)  # (L·H+1, L)
    ffn_counts = layer_counts(ffn_order, F, L)  # (L·F+1, L)
    best = None  # (total, heads, neurons)
    for heads in range(budget.total_heads + 1):
        neurons = longest_prefix(budget.total_neurons,
                                 lambda p: budget.fits_counts(head_counts[heads], ffn_counts[p]))
        if neurons is None:  # heads alone exceed the budget, and so will every larger k
            break
        total = head_prefix[heads] + ffn_prefix[neurons]
        if best is None or total > best[0]:
            best = (total, heads, neurons)
    if best is None:
        raise ValueError(f"search_masks: the budget {budget.describe()} leaves no room even with every unit removed")
    _, heads, neurons = best
    head = torch.zeros(budget.total_heads, device=device)
    head[head_order[:heads]] = 1
    ffn = torch.zeros(budget.total_neurons, device=device)
    ffn[ffn_order[:neurons]] = 1
    masks = PruningMasks(head=head.view(L, H), qk=torch.ones(L, H, budget.head_dim, device=device),
                         vo=torch.ones(L, H, budget.head_dim, device=device), ffn=ffn.view(L, F))
    masks = align_neurons(masks, ffn_importance, budget)
    assert budget.fits(masks)
    return masks


__all__ = ["align_neurons", "aligned_down", "layer_counts", "longest_prefix", "search_masks", "teacher_budget"]
