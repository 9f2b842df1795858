"""KPrune, stage 3: knowledge-preserving weight tuning (Park et al., ICLR 2024, Sec. 4.4; the code's
``knowledge_reconstruction``).

Once the target sublayer's mask is chosen, its output projection is refitted by least squares over its kept inputs,
so that its output plus the residual matches the dense model's sublayer output (before the LayerNorm) on the
calibration tokens: with x the kept units' inputs and r the residual (both from the pruned model), the new weight
W minimises Σ_tokens ||x·Wᵀ + b + r − dense_pre_norm||². The kept units' FLOPs then leave the budget; a sublayer
left with no units passes its input through (residual + LayerNorm only).

The system is accumulated batch by batch (:func:`add_tuning_batch`, from the measurement pass of the same sublayer,
so tuning costs no pass of its own) as the normal equations of :class:`~lit_prune.prune.lstsq.ProjectionSystem`,
summed over processes and solved once (:func:`tune_sublayer`).

Departures from the paper and the reference code:

* Tuning targets: the code caches every sublayer's dense output for the whole calibration sample (memory grows with
  the sample and the depth); here the dense model is advanced one layer at a time from cached hidden states (see
  :mod:`~lit_prune.methods.kprune.process`; at most a memory budget, the rest on disk), and the least squares are
  accumulated in streaming form (XᵀX, XᵀY), so memory stays at one batch plus one (C, C) matrix beyond the cache.
* Solver: the code solves the normal equations with ``torch.linalg.lstsq`` and no damping, and leaves the weights
  untuned on an exception. Here the solve is a Cholesky factorisation in float64 with a small relative damping,
  raised ×100 until it succeeds; an ill-conditioned system, a non-finite solution, or a fit whose reconstruction
  error is higher than the untuned weights' keeps the untuned weights and records a warning. Weights are never NaN.
"""

from __future__ import annotations

import torch
from torch import nn

from lit_prune.core.arch import get_adapter
from lit_prune.prune.capture import ProjectionInputs, sublayer_projection, sublayer_of
from lit_prune.prune.lstsq import ProjectionSystem, TuningResult
from lit_prune.prune.types import Reduce, identity


def add_tuning_batch(system: ProjectionSystem, model: nn.Module, target: int, capture: ProjectionInputs,
                     dense_pre_norm: torch.Tensor, token_mask: torch.Tensor) -> None:
    """Add one calibration batch to the target's refit.

    Args:
        system: the target projection's normal equations (C inputs, d outputs).
        model: the model being pruned.
        target: the target sublayer, 0..2L-1.
        capture: the hooks of this batch's forward pass (the target's projection inputs, output, pre-LayerNorm sum).
        dense_pre_norm: (B, s, d) the dense model's pre-LayerNorm sum of the target sublayer.
        token_mask: (B, s) bool, the non-padding tokens (the only rows of the system).
    """
    assert capture.pre_norm is not None and capture.projection_output is not None
    projection = sublayer_projection(model, *sublayer_of(target))
    bias = projection.bias if projection.bias is not None else torch.zeros_like(dense_pre_norm[0, 0])
    # in float32 whatever the activations' dtype (bf16 under autocast): the system sums its products in float64
    residual = capture.pre_norm.float() - capture.projection_output.float()  # (B, s, d)
    y = dense_pre_norm.float() - residual - bias.float()  # (B, s, d): what x·Wᵀ should produce
    system.add(capture.inputs[target][token_mask], y[token_mask])


def kept_columns(model: nn.Module, target: int, kept: torch.Tensor) -> torch.Tensor:
    """(K,) long: the input columns of the target's output projection that its kept units own (a head owns d_h)."""
    _, sublayer = sublayer_of(target)
    if sublayer == "attention":
        kept = kept.repeat_interleave(get_adapter(model).head_dim)
    return torch.nonzero(kept).flatten()


@torch.no_grad()
def tune_sublayer(model: nn.Module, target: int, kept: torch.Tensor, system: ProjectionSystem, ridge: float,
                  reduce: Reduce | None = None) -> TuningResult:
    """Refit the target's output projection on its kept columns, in place (the pruned columns are left as they are:
    masked now, removed at compaction).

    Args:
        model: the model being pruned.
        target: the target sublayer, 0..2L-1.
        kept: (H,) or (F,) bool, the target's kept units (at least one).
        system: this process's accumulated normal equations of the target.
        ridge: the least squares' relative ridge (see :meth:`ProjectionSystem.solve`).
        reduce: sums the system over processes (``None``: a single process).

    Returns:
        The :class:`~lit_prune.prune.lstsq.TuningResult` (its weight is already in the model).
    """
    projection = sublayer_projection(model, *sublayer_of(target))
    system = ProjectionSystem.from_dict((reduce or identity)(system.to_dict()))
    columns = kept_columns(model, target, kept.to(projection.weight.device))
    current = projection.weight[:, columns].t()  # (K, d)
    tuning = system.solve(columns, current, ridge=ridge)
    projection.weight[:, columns] = tuning.weight.t().to(projection.weight.dtype)
    return tuning


__all__ = ["add_tuning_batch", "kept_columns", "tune_sublayer"]
