"""KPrune as a Lightning callback: the calibration loop of :func:`~lit_prune.methods.kprune.process.kprune` run
inside a ``fit`` (see :mod:`lit_prune.methods.base` for when it runs and how every run ends)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lit_prune.core.latency_model import Budget
from lit_prune.core.masks import PruningMasks
from lit_prune.methods.base import RetrainingFreePruning
from lit_prune.methods.kprune.process import kprune
from lit_prune.prune.types import Progress, Reduce


class KPruneCallback(RetrainingFreePruning):
    """KPrune as a Lightning callback: for each sublayer in turn, knowledge measurement, knowledge-preserving mask
    search and knowledge-preserving weight tuning; the model is compacted at the end.

    Runs once per ``fit`` (see :mod:`lit_prune.methods.base`): at the start of a fit that trains nothing, else at
    the end of training. Passes: one forward and backward pass per sublayer (2L), each from the sublayer's layer
    up (the first forward only), and one single-layer step per layer for the pruned and the dense model, on
    batches run in groups of similar length (see :mod:`lit_prune.methods.kprune.process`). Under DDP each process
    takes every world-size-th batch; the knowledge sums and the least-squares normal equations are summed over the
    processes. No labels are used.

    Args:
        flops_kept: the fraction of the dense FLOPs to keep, in (0, 1] (the paper's constraint is 1 − flops_kept;
            ``None``: 0.5, unless ``speedup`` is given: a latency budget, see
            :class:`~lit_prune.methods.base.RetrainingFreePruning`).
        num_tokens: draw calibration examples until they hold this many tokens (the paper: about 100,000).
        num_samples: draw this many examples instead (``num_tokens`` must then be ``None``).
        temperature: T of the predictive-knowledge distillation loss (the paper: 2).
        mu: weight of the heads' scores (the paper: 64).
        lam_pred, lam_rep: weights of predictive and representational knowledge (the paper: 1 and 2.5e-4).
        weight_tuning: refit each pruned sublayer's output projection (off: ablation).
        ridge: the least squares' relative ridge, λ = ridge × mean(diag(XᵀX)), raised until the system solves
            (see :meth:`~lit_prune.prune.lstsq.ProjectionSystem.solve`; not Kwon's absolute ``damping``).
        length_groups: run each calibration batch as at most this many groups of rows of similar length, each
            padded to its own longest row (less padding computed; the same results up to float rounding; see
            :mod:`lit_prune.methods.kprune.process`); 1: whole batches; ``None``: 4 on a CPU, 1 on an accelerator.
        cache_mb: MiB of per-batch hidden states (pruned and dense model, at the current layer) kept in memory (per
            process); the rest is spilled to a temporary folder (``$TMPDIR``) and read back, so memory stays
            bounded whatever the calibration size; ``None``: keep everything in memory. The results do not depend
            on it; the report's ``cache`` gives its peak use.
        **kwargs: the settings all retraining-free callbacks share:
            :class:`~lit_prune.methods.base.RetrainingFreePruning`.

    Example::

        trainer = L.Trainer(max_epochs=3, callbacks=[KPruneCallback(flops_kept=0.4)])
        trainer.fit(my_module, train_loader, val_loader)  # fine-tunes, then prunes at the end of training
    """

    method = "kprune"

    def __init__(
        self,
        flops_kept: float | None = None,
        num_tokens: int | None = 100_000,
        num_samples: int | None = None,
        temperature: float = 2.0,
        mu: float = 64.0,
        lam_pred: float = 1.0,
        lam_rep: float = 2.5e-4,
        weight_tuning: bool = True,
        ridge: float = 1e-6,
        length_groups: int | None = None,
        cache_mb: float | None = 256,
        **kwargs: Any,
    ) -> None:
        super().__init__(flops_kept=flops_kept, num_samples=num_samples, num_tokens=num_tokens, replacement=False,
                         **kwargs)
        for name, value, strict in (("temperature", temperature, True), ("mu", mu, True),
                                    ("lam_pred", lam_pred, False), ("lam_rep", lam_rep, False),
                                    ("ridge", ridge, True)):
            ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and (
                value > 0 if strict else value >= 0)
            if not ok:
                self.problems.append(f"{name}={value!r}: expected a number {'>' if strict else '>='} 0")
        if lam_pred == 0 and lam_rep == 0:
            self.problems.append("lam_pred=0 and lam_rep=0: at least one kind of knowledge must count")
        if length_groups is not None and (isinstance(length_groups, bool) or not isinstance(length_groups, int)
                                          or length_groups < 1):
            self.problems.append(f"length_groups={length_groups!r}: expected an integer >= 1, or null (automatic)")
        if cache_mb is not None and (isinstance(cache_mb, bool) or not isinstance(cache_mb, (int, float))
                                     or not math.isfinite(cache_mb) or cache_mb < 0):
            self.problems.append(f"cache_mb={cache_mb!r}: expected a number of MiB >= 0, or null (no limit)")
        self.raise_problems(self.problems)
        self.temperature = temperature
        self.mu = mu
        self.lam_pred = lam_pred
        self.lam_rep = lam_rep
        self.weight_tuning = weight_tuning
        self.ridge = ridge
        self.length_groups = length_groups
        self.cache_mb = cache_mb

    def method_settings(self) -> dict[str, Any]:
        return {"num_tokens": self.num_tokens, "num_samples": self.num_samples, "temperature": self.temperature,
                "mu": self.mu, "lam_pred": self.lam_pred, "lam_rep": self.lam_rep,
                "weight_tuning": self.weight_tuning, "ridge": self.ridge}

    def cache_bytes(self) -> int | None:
        """``cache_mb`` in bytes (``None``: no limit)."""
        return None if self.cache_mb is None else int(self.cache_mb * 2**20)

    def run_method(self, model: nn.Module, dense: nn.Module, batches: list[dict[str, torch.Tensor]],
                   batch_ids: list[int], num_batches: int, budget: Budget, reduce: Reduce,
                   progress: Progress) -> tuple[PruningMasks, dict[str, Any]]:
        result = kprune(model, batches, budget, dense=dense, temperature=self.temperature, mu=self.mu,
                        lam_pred=self.lam_pred, lam_rep=self.lam_rep, weight_tuning=self.weight_tuning,
                        ridge=self.ridge, length_groups=self.length_groups, cache_bytes=self.cache_bytes(),
                        reduce=reduce, progress=progress)
        warnings_ = [f"layer {step.layer} {step.sublayer}: {step.warning}" for step in result.steps if step.warning]
        return result.masks, {"steps": [step.as_dict() for step in result.steps], "cache": result.cache,
                              "length_groups": result.length_groups, "warnings": warnings_}


__all__ = ["KPruneCallback"]
