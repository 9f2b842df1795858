"""Budgeted mask search over whole heads and FFN neurons: stage 2 of Kwon et al.'s framework (Kwon and G-Pruner).

Kwon et al. 2022, "A Fast Post-Training Pruning Framework for Transformers" (NeurIPS 2022); reference code:
WoosukKwon/retraining-free-pruning (``prune/search.py``). No data: the search reads the Fisher importances
(:mod:`~lit_prune.prune.fisher`).

Heads and neurons are ranked globally; for every number k of kept heads, the top-k heads plus as many of the best
neurons as the FLOPs budget leaves room for; the k with the largest total importance wins (:func:`search_masks`).

Departures from the paper and the reference code (each deliberate):

* k runs over 0..L·H (the code starts at 1, so it can never keep zero heads); the budget is exact
  (:class:`~lit_prune.core.flops.FlopsBudget`, rational arithmetic) where the code truncates floats; a budget of 1
  is allowed (the code asserts < 1). Ties: stable sorts (lower index first) and the smallest k among equal totals
  (the code's strict ``>`` while k ascends).
* The mask tuning's reference (:mod:`~lit_prune.prune.mask_tuning`): the code's teacher is the model under the mask
  searched at the intermediate budget ``flops_kept ** 0.5`` (its ``get_pruning_schedule(target, 2)[0]``);
  :func:`teacher_budget` gives that budget, so ``search_masks(..., teacher_budget(budget))`` reproduces it.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from lit_prune.core.flops import FlopsBudget
from lit_prune.core.masks import PruningMasks


def teacher_budget(budget: FlopsBudget) -> FlopsBudget:
    """The reference code's tuning-teacher budget: ``flops_kept ** 0.5`` (``get_pruning_schedule(target, 2)[0]``)."""
    return dataclasses.replace(budget, flops_kept=math.sqrt(budget.flops_kept))


def search_masks(head_importance: torch.Tensor, ffn_importance: torch.Tensor, budget: FlopsBudget) -> PruningMasks:
    """Kwon's budgeted mask search over whole heads and FFN neurons.

    Heads and neurons are each sorted globally by importance (descending, stable: lower index first among
    equals). For every k in 0..L·H, the top-k heads and the best ``budget.max_neurons(k)`` neurons; the k with the
    largest total importance (heads' sum + neurons' sum) wins, the smallest k among equal totals.

    Args:
        head_importance: (L, H), e.g. :meth:`~lit_prune.prune.fisher.FisherStatistics.head_importance`.
        ffn_importance: (L, F).
        budget: the FLOPs budget (its shape must match the importances).

    Returns:
        Binary masks (float32, on ``head_importance``'s device): kept units 1, pruned 0, ``qk`` and ``vo`` all ones.
        They always satisfy ``budget.fits(masks)``, and no further neuron would fit (unless all are kept).

    Raises:
        ValueError: importances of the wrong shape or with non-finite values.
    """
    expected = {"head_importance": (budget.num_layers, budget.num_heads),
                "ffn_importance": (budget.num_layers, budget.ffn_dim)}
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
    best = None  # (total, heads, neurons)
    for heads in range(budget.total_heads + 1):
        neurons = budget.max_neurons(heads)
        if neurons is None:  # heads alone exceed the budget, and so will every larger k
            break
        total = head_prefix[heads] + ffn_prefix[neurons]
        if best is None or total > best[0]:
            best = (total, heads, neurons)
    assert best is not None  # max_neurons(0) is never None: the budget is positive
    _, heads, neurons = best
    head = torch.zeros(budget.total_heads, device=device)
    head[head_order[:heads]] = 1
    ffn = torch.zeros(budget.total_neurons, device=device)
    ffn[ffn_order[:neurons]] = 1
    masks = PruningMasks(head=head.view(budget.num_layers, budget.num_heads),
                         qk=torch.ones(budget.num_layers, budget.num_heads, budget.head_dim, device=device),
                         vo=torch.ones(budget.num_layers, budget.num_heads, budget.head_dim, device=device),
                         ffn=ffn.view(budget.num_layers, budget.ffn_dim))
    assert budget.fits(masks)
    return masks


__all__ = ["search_masks", "teacher_budget"]
