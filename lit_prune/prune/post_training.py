"""Kwon et al.'s post-training pruning framework, composed: Fisher → search → rearrangement → tuning.

Kwon et al. 2022, "A Fast Post-Training Pruning Framework for Transformers" (NeurIPS 2022); reference code:
WoosukKwon/retraining-free-pruning. Retraining-free: weights frozen, model in eval mode, a labelled calibration
sample; the model's weights are never changed, every stage reads or writes
:class:`~lit_prune.core.masks.PruningMasks`. :func:`kwon_prune` runs the four stages in order:

1. :mod:`~lit_prune.prune.fisher`: per-batch mask gradients and the Fisher importances (one pass over the data);
2. :mod:`~lit_prune.prune.search`: the budgeted global search over heads and neurons (no data);
3. :mod:`~lit_prune.prune.rearrange`: the per-layer greedy rearrangement (no data);
4. :mod:`~lit_prune.prune.mask_tuning`: least-squares scales, sublayer by sublayer (2L − 1 truncated passes).

Each stage module opens with its part of the paper and our departures from it. Two hooks let a method swap stages
without copying the pipeline: ``refine`` replaces the binary masks between the search (and rearrangement) and the
tuning, and ``solver`` replaces the tuning's least-squares solve. :class:`~lit_prune.methods.kwon.KwonCallback`
uses neither; :class:`~lit_prune.methods.gpruner.GPrunerCallback` passes its PPO search as ``refine`` and its
conjugate gradient squared solver as ``solver``. :func:`check_tuning_settings` validates the tuning settings both
callbacks take, and :meth:`KwonResult.report_details` gives the report entries they share.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from lit_prune.core.flops import FlopsBudget
from lit_prune.core.masks import PruningMasks
from lit_prune.prune.cache import SpillCache
from lit_prune.prune.fisher import BatchLoss, FisherStatistics, fisher_pass
from lit_prune.prune.mask_tuning import Solver, TuningStep, tune_masks
from lit_prune.prune.rearrange import rearrange_masks, total_objective
from lit_prune.prune.search import search_masks, teacher_budget
from lit_prune.prune.types import Progress, Reduce

#: Replaces the binary masks before tuning: ``refine(masks, fisher) -> (masks, details)`` (G-Pruner's PPO search).
Refine = Callable[[PruningMasks, FisherStatistics], "tuple[PruningMasks, dict[str, Any]]"]


def check_tuning_settings(tuning_reference: Any, damping: Any, tuning_cache_mb: Any) -> list[str]:
    """The problems of the tuning settings a callback takes (one message per invalid setting; empty when valid).

    Args:
        tuning_reference: ``"intermediate"`` or ``"dense"`` (see :func:`kwon_prune`).
        damping: the tuning solver's damping, a number > 0.
        tuning_cache_mb: MiB of hidden states kept in memory, a number >= 0, or ``None`` (no limit).
    """
    problems = []
    if tuning_reference not in ("intermediate", "dense"):
        problems.append(f"tuning_reference={tuning_reference!r}: expected 'intermediate' or 'dense'")
    if isinstance(damping, bool) or not isinstance(damping, (int, float)) or not damping > 0:
        problems.append(f"damping={damping!r}: expected a number > 0")
    if tuning_cache_mb is not None and (isinstance(tuning_cache_mb, bool)
                                        or not isinstance(tuning_cache_mb, (int, float))
                                        or not math.isfinite(tuning_cache_mb) or tuning_cache_mb < 0):
        problems.append(f"tuning_cache_mb={tuning_cache_mb!r}: expected a number of MiB >= 0, or null (no limit)")
    return problems


def tuning_cache_limit(tuning_cache_mb: float | None) -> int | None:
    """``tuning_cache_mb`` in bytes, as :func:`kwon_prune`'s ``tuning_cache_bytes`` (``None``: no limit)."""
    return None if tuning_cache_mb is None else int(tuning_cache_mb * 2**20)


@dataclass
class KwonResult:
    """What :func:`kwon_prune` found.

    Attributes:
        masks: the final masks: binary after search (and rearrangement), real-valued where tuning scaled them.
        searched: the binary masks of the budgeted search.
        rearranged: the binary masks after rearrangement (``None`` when it was off).
        objective: the rearrangement objective (summed over layers) of the searched and the rearranged masks.
        tuning: one :class:`TuningStep` per sublayer visited (empty when tuning was off).
        fisher: the Fisher statistics of all the calibration batches (every process's).
        refined: the refine step's details (``None`` without one).
        tuning_cache: the tuning's hidden-state cache: its memory limit, the most it held in memory and on disk
            (MiB; ``None`` when tuning was off).
    """

    masks: PruningMasks
    searched: PruningMasks
    rearranged: PruningMasks | None
    objective: dict[str, float]
    tuning: list[TuningStep]
    fisher: FisherStatistics
    refined: dict[str, Any] | None = None
    tuning_cache: dict[str, float | None] | None = None


    def report_details(self) -> dict[str, Any]:
        """The report entries of the pipeline: the rearrangement objectives, the tuning steps, the tuning cache's
        sizes, and a warning per failed tuning step (a list the caller may extend)."""
        warnings_ = [f"layer {step.layer} {step.sublayer}: tuning stopped: {step.reason}"
                     for step in self.tuning if step.status == "failed"]
        return {"rearrangement": self.objective, "steps": [dataclasses.asdict(step) for step in self.tuning],
                "tuning_cache": self.tuning_cache, "warnings": warnings_}


def kwon_prune(model: nn.Module, batches: Sequence[Mapping[str, torch.Tensor]], budget: FlopsBudget, *,
               batch_ids: Sequence[int] | None = None, num_batches: int | None = None, rearrange: bool = True,
               tune: bool = True, tuning_reference: Literal["intermediate", "dense"] = "intermediate",
               damping: float = 1.0, cls_only_last_ffn: bool = False, reduce: Reduce | None = None,
               progress: Progress | None = None, refine: Refine | None = None,
               solver: Solver | None = None, tuning_cache_bytes: int | None = None,
               fisher_loss: BatchLoss | None = None) -> KwonResult:
    """Kwon et al.'s whole pipeline on ``model`` (its weights are not changed): Fisher → search → rearrangement →
    tuning. Every stage after the search can be switched off for ablations.

    Args:
        model: a fine-tuned dense task model whose output has ``.loss`` given labels.
        batches: this process's labelled calibration batches.
        budget: the FLOPs budget.
        batch_ids: the positions of ``batches`` in the whole calibration sample (DDP: the batches of every process
            together); default ``0..len(batches)-1``.
        num_batches: how many batches the whole sample has (default ``len(batches)``).
        rearrange: run the mask rearrangement.
        tune: run the least-squares mask tuning.
        tuning_reference: ``"intermediate"`` (the reference code: the binary mask searched at
            :func:`teacher_budget`) or ``"dense"``.
        damping: the tuning solver's damping.
        cls_only_last_ffn: fit the last FFN on the first token only (the code does for classification).
        reduce: sums a dict of tensors over processes; ``None`` in a single process.
        progress: called as ``progress(description, done, total)`` after each batch.
        refine: replaces the binary masks after the search (and rearrangement) before tuning:
            ``refine(masks, fisher) -> (masks, details)`` (G-Pruner's PPO search); its details go to
            ``result.refined``.
        solver: the tuning's least-squares solver (see :func:`tune_masks`).
        tuning_cache_bytes: the tuning's hidden states kept in memory at most (the rest is spilled to a temporary
            folder); ``None``: no limit.
        fisher_loss: the Fisher pass's loss (see :func:`~lit_prune.prune.fisher.fisher_pass`); ``None``: the task
            loss given labels.

    Returns:
        :class:`KwonResult`; compact the model with ``result.masks``.
    """
    stats = fisher_pass(model, batches, batch_ids=batch_ids, num_batches=num_batches, reduce=reduce,
                        progress=progress, loss_fn=fisher_loss)
    device = next(model.parameters()).device
    searched = search_masks(stats.head_importance(), stats.ffn_importance(), budget)
    masks, rearranged = searched, None
    objective = {"searched": total_objective(searched, stats)}
    if rearrange:
        rearranged = rearrange_masks(searched, stats)
        objective["rearranged"] = total_objective(rearranged, stats)
        masks = rearranged
    refined: dict[str, Any] | None = None
    if refine is not None:
        masks, refined = refine(masks, stats)
        if not budget.fits(masks):
            raise RuntimeError("Kwon: the refined masks exceed the FLOPs budget (a bug in the refine step)")
    steps: list[TuningStep] = []
    tuning_cache = None
    if tune:
        reference: PruningMasks | Literal["dense"] = "dense"
        if tuning_reference == "intermediate":
            reference = search_masks(stats.head_importance(), stats.ffn_importance(), teacher_budget(budget)).to(device)
        elif tuning_reference != "dense":
            raise ValueError(f"tuning_reference={tuning_reference!r}: expected 'intermediate' or 'dense'")
        cache = SpillCache(tuning_cache_bytes)
        masks, steps = tune_masks(model, masks.to(device), batches, reference=reference, damping=damping,
                                  cls_only_last_ffn=cls_only_last_ffn, reduce=reduce, progress=progress,
                                  solver=solver, cache=cache)
        tuning_cache = {"memory_limit_mb": None if tuning_cache_bytes is None else tuning_cache_bytes / 2**20,
                        "memory_mb": cache.peak_memory_bytes / 2**20, "spilled_mb": cache.spilled_bytes / 2**20}
    return KwonResult(masks=masks, searched=searched, rearranged=rearranged, objective=objective, tuning=steps,
                      fisher=stats, refined=refined, tuning_cache=tuning_cache)


__all__ = ["KwonResult", "Refine", "check_tuning_settings", "kwon_prune", "tuning_cache_limit"]
