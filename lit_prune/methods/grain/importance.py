"""GRAIN's importance: which loss ranks the units, its gradients with respect to the unit masks, the EMA and the
structure regulariser.

Paper: Yang, Cui, Wang, ACL 2023: importance, gradient separation, structure regularisation.
Reference code: airaria/GRAIN (``pruners_and_distiller/pruners.py``: ``FineISPruner.gather_IS`` / ``update_IS``).

* **Importance** of a unit: |Σ grad ⊙ weight| over the weights whose zeroing removes the unit exactly: the W_Q row
  and bias of a query unit, the W_O column of a value unit, the W_2 column of a neuron (the reference code's
  choice), a head's W_O block in the ablation. These sums are exactly the gradients of the loss with respect to
  lit_prune's multiplicative masks at 1, so they are read as ``∂L/∂mask`` through the masking hooks
  (:func:`mask_gradients_of`, ``torch.autograd.grad`` with the graph kept for the training backward). Under DDP
  the mask gradients are averaged over processes before the absolute value, as the reference's all-reduced weight
  gradients are.
* **Gradient separation**: L is the *prediction* loss only, the distillation loss on the outputs (soft
  cross-entropy against the teacher at temperature T = 8, no T² factor; MSE for regression): the hidden-state
  loss trains the weights but never moves the importance. Where that loss comes from in a ``fit``: see
  :mod:`lit_prune.methods.grain.distillation`.
* **EMA**: ``ema ← β·ema + (1 − β)·|∂L/∂m|``, β = 0.998.
* **Structure regularisation**: a value unit's update is multiplied by tanh(density of its head's value units / α),
  α = 0.3, so a head that starts losing value units keeps losing them and empties out. Departure: the reference
  code has the same factor per layer for attention and FFN with a tiny α that only matters for empty layers; it is
  left out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from lit_prune.core.masks import PruningMasks
from lit_prune.methods.grain.layout import UNITS, GrainLayout, Units


class GrainImportance:
    """EMA-smoothed importance of every unit, with the structure regulariser.

    Args:
        layout: the encoder's shape.
        units: ``"intra"`` (query units, value units, neurons) or ``"heads_ffn"`` (heads, neurons).
        beta: EMA coefficient β.
        alpha: the structure regulariser's α (value units only); ``None`` switches it off.
        device: where the scores live (the model's device).
    """

    def __init__(self, layout: GrainLayout, units: Units = "intra", beta: float = 0.998, alpha: float | None = 0.3,
                 device: torch.device | str | None = None) -> None:
        if units not in UNITS:
            raise ValueError(f"units={units!r}: expected one of {list(UNITS)}")
        self.layout, self.units, self.beta, self.alpha = layout, units, beta, alpha
        template = layout.masks(device)
        self.scores: dict[str, torch.Tensor] = {name: torch.zeros_like(getattr(template, name))
                                                for name in layout.unit_fields(units)}
        self.updates = 0

    @property
    def fields(self) -> tuple[str, ...]:
        return self.layout.unit_fields(self.units)

    def update(self, mask_grads: dict[str, torch.Tensor], masks: PruningMasks) -> dict[str, torch.Tensor]:
        """Fold one step's mask gradients into the EMA.

        Args:
            mask_grads: ∂(prediction loss)/∂mask for each field in :attr:`fields` (already averaged over processes).
            masks: the current binary masks (the regulariser reads each head's value-unit density).

        Returns:
            The step's regularised importance (before the EMA), by field.
        """
        step = {}
        for name in self.fields:
            grad = mask_grads[name].detach()
            if not torch.isfinite(grad).all():
                raise FloatingPointError(f"GRAIN: the gradient of the {name} masks is not finite at update "
                                         f"{self.updates}; lower the learning rate or check the loss")
            value = grad.abs().to(self.scores[name].dtype)
            if name == "vo" and self.alpha is not None:
                density = (masks.vo != 0).to(value.dtype).mean(-1, keepdim=True)  # (L, H, 1)
                value = value * torch.tanh(density / self.alpha)
            step[name] = value
            self.scores[name].mul_(self.beta).add_(value, alpha=1 - self.beta)
        self.updates += 1
        return step

    def state_dict(self) -> dict[str, Any]:
        return {"scores": {name: value.detach().cpu().clone() for name, value in self.scores.items()},
                "updates": self.updates, "units": self.units}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("units") != self.units:
            raise ValueError(f"GRAIN state for units={state.get('units')!r} cannot resume units={self.units!r}")
        for name, value in state["scores"].items():
            if value.shape != self.scores[name].shape:
                raise ValueError(f"GRAIN state: {name} scores have shape {tuple(value.shape)}, the model needs "
                                 f"{tuple(self.scores[name].shape)}")
            self.scores[name] = value.to(self.scores[name].device, self.scores[name].dtype)
        self.updates = int(state["updates"])


def mask_gradients_of(loss: torch.Tensor, masks: PruningMasks, fields: Sequence[str],
                      average: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """∂``loss``/∂mask for each of ``fields`` (zeros where the loss does not reach a mask), keeping the graph for
    the training backward that follows.

    Args:
        loss: a scalar computed under :func:`~lit_prune.core.masking.apply_masks` with ``masks``.
        masks: masks whose ``fields`` require gradients.
        fields: the unit fields.
        average: averages one flat tensor over processes (``None``: a single process); called once per step.
    """
    tensors = [getattr(masks, name) for name in fields]
    grads = torch.autograd.grad(loss, tensors, retain_graph=True, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)]
    if average is not None:  # one all-reduce of every mask gradient, averaged like DDP averages gradients
        flat = average(torch.cat([g.reshape(-1) for g in grads]))
        grads = [g.reshape(t.shape) for g, t in zip(torch.split(flat, [g.numel() for g in grads]), tensors)]
    return dict(zip(fields, grads))


__all__ = ["GrainImportance", "mask_gradients_of"]
