"""KPrune, stage 1: knowledge measurement (Park et al., ICLR 2024, Sec. 4.2; the code's ``compute_scores``).

For the units of the target sublayer and of every sublayer above it, over the calibration sample (no labels: the
dense model is the teacher):

* predictive knowledge: the distillation loss between the dense model's predictions and the current model's
  (:func:`~lit_prune.prune.distill.distillation_loss`: KL divergence of the softmax at temperature T, times T², for
  classification; the mean of the start and end KL divergences for question answering; the MSE for regression),
  back-propagated to mask variables on the inputs of the output projections (W_O per head dim, W_down per neuron).
  A unit's predictive knowledge is ½·grad², summed over batches and divided by the number of samples (per head:
  averaged over its d_h dims);
* representational knowledge: Σ over non-padding tokens of x² × the mean over rows of W_out², x being the unit's
  input to the output projection (per head: averaged over its dims), divided by the number of tokens;
* scores (:meth:`KnowledgeAccumulator.scores`): head = μ·(λ_rep·rep + λ_pred·pred) / FLOPs(head);
  neuron = (λ_rep·rep + λ_pred·pred) / FLOPs(neuron).

The same forward-and-backward pass also records what the target's weight tuning needs
(:func:`~lit_prune.methods.kprune.tuning.add_tuning_batch`), so each sublayer costs one pass over the data.

Departures from the paper and the reference code (see :mod:`~lit_prune.methods.kprune.process` for why):

* The pass starts at the target's layer, from the hidden states the process cached for it (``start``): the layers
  below are final, so their output is the same on every pass, and the backward pass stops there too. The knowledge
  of the units below the target is then not measured (it is never used: those units are decided already); the
  code runs the whole model each time.
* On the dense model itself (``targets=None``: the first pass) the step runs forward only: the distillation loss
  is at its minimum there, so its gradient, and the predictive knowledge, are zero (the code's are float rounding).
* A batch may run in parts (length groups): each part's loss is weighted by its share of the batch's rows and the
  parts' gradients are summed (:class:`BatchGradients`) before ½·grad² is taken, as for the batch whole.
* Regression: the code squeezes the logits for the MSE; the same loss here (the mean over samples).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lit_prune.core.arch import get_adapter
from lit_prune.core.masking import apply_masks
from lit_prune.core.masks import PruningMasks
from lit_prune.methods.kprune.tuning import add_tuning_batch
from lit_prune.prune.batches import model_inputs
from lit_prune.prune.capture import ProjectionInputs, run_to_norm, start_forward_at, sublayer_of
from lit_prune.prune.distill import distillation_loss, teacher_targets
from lit_prune.prune.importance import mask_gradients
from lit_prune.prune.lstsq import ProjectionSystem

FIELDS = ("head_pred", "head_rep", "ffn_pred", "ffn_rep", "samples", "tokens")


@dataclass(eq=False)
class KnowledgeAccumulator:
    """Sums of predictive and representational knowledge over calibration batches (float64, so that sums over
    ranks and batches do not depend on their order beyond rounding of float64).

    Attributes:
        head_pred, head_rep: (L, H).
        ffn_pred, ffn_rep: (L, F).
        samples, tokens: () the numbers of samples and non-padding tokens seen.
    """

    head_pred: torch.Tensor
    head_rep: torch.Tensor
    ffn_pred: torch.Tensor
    ffn_rep: torch.Tensor
    samples: torch.Tensor
    tokens: torch.Tensor

    @classmethod
    def zeros(cls, num_layers: int, num_heads: int, ffn_dim: int,
              device: torch.device | str | None = None) -> KnowledgeAccumulator:
        """Empty sums for a model of ``num_layers`` layers of ``num_heads`` heads and ``ffn_dim`` neurons."""
        def z(*shape: int) -> torch.Tensor:
            return torch.zeros(shape, dtype=torch.float64, device=device)

        return cls(z(num_layers, num_heads), z(num_layers, num_heads), z(num_layers, ffn_dim),
                   z(num_layers, ffn_dim), z(), z())

    def to_dict(self) -> dict[str, torch.Tensor]:
        """The tensors to all-reduce (sum) across processes."""
        return {name: getattr(self, name) for name in FIELDS}

    @classmethod
    def from_dict(cls, tensors: Mapping[str, torch.Tensor]) -> KnowledgeAccumulator:
        """An accumulator from :meth:`to_dict`'s output."""
        return cls(**{name: tensors[name] for name in FIELDS})

    def scores(self, mu: float, lam_pred: float, lam_rep: float, head_cost: float,
               neuron_cost: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(head_scores (L, H), neuron_scores (L, F))``: knowledge per FLOP, heads weighted by μ.

        Raises:
            ValueError: no samples or tokens were accumulated.
        """
        if float(self.samples) <= 0 or float(self.tokens) <= 0:
            raise ValueError("KPrune: the calibration pass saw no samples or no (non-padding) tokens")
        head = mu * (lam_rep * self.head_rep / self.tokens + lam_pred * self.head_pred / self.samples) / head_cost
        neuron = (lam_rep * self.ffn_rep / self.tokens + lam_pred * self.ffn_pred / self.samples) / neuron_cost
        return head, neuron


@dataclass(eq=False)
class BatchGradients:
    """The mask gradients of one calibration batch, summed over the parts it is run in (length groups, see
    :mod:`lit_prune.prune.lengths`): a unit's predictive knowledge is ½·grad² of the whole batch's gradient, so it
    is taken once the batch is done (:meth:`add_to`).

    Attributes:
        vo: (L, H, d_h) the gradient of the masks on the attention output projections' inputs (``None``: zero).
        ffn: (L, F) the gradient of the neuron masks.
    """

    vo: torch.Tensor | None = None
    ffn: torch.Tensor | None = None

    def add(self, vo: torch.Tensor, ffn: torch.Tensor) -> None:
        """Add one part's gradients."""
        self.vo = vo if self.vo is None else self.vo + vo
        self.ffn = ffn if self.ffn is None else self.ffn + ffn

    def add_to(self, knowledge: KnowledgeAccumulator) -> None:
        """Add the batch's predictive knowledge, ½·grad² (per head: averaged over its dims), to ``knowledge``."""
        if self.vo is None or self.ffn is None:  # the batch ran on the dense model itself: a zero gradient
            return
        knowledge.head_pred += 0.5 * self.vo.double().pow(2).mean(-1)
        knowledge.ffn_pred += 0.5 * self.ffn.double().pow(2)


def knowledge_step(model: nn.Module, dense: nn.Module, masks: PruningMasks, batch: Mapping[str, Any],
                   targets: Mapping[str, torch.Tensor] | None, target: int, temperature: float,
                   knowledge: KnowledgeAccumulator, system: ProjectionSystem | None, *,
                   start: torch.Tensor | None = None, dense_pre_norm: torch.Tensor | None = None,
                   share: float = 1.0, gradients: BatchGradients | None = None) -> Mapping[str, torch.Tensor]:
    """One calibration batch (or part of one) of the measurement pass for sublayer ``target``: add to
    ``knowledge`` and ``system``.

    Args:
        model: the model being pruned (sublayers below ``target`` masked by ``masks`` and tuned), eval mode.
        dense: the untouched dense model (the teacher of the predictions and of the tuning targets).
        masks: the current binary masks (units of ``target`` and above all kept).
        batch: the batch (labels are not needed; token classification's loss counts the tokens they label, or the
            non-padding tokens without them).
        targets: :func:`~lit_prune.prune.distill.dense_predictions` of this batch. ``None`` when ``model`` is still
            the dense model (all masks one, weights untouched): its outputs are then the dense predictions, the
            distillation loss is at its minimum and its gradient zero, so the step runs forward only, makes the
            predictions and adds no predictive knowledge.
        target: the target sublayer, 0..2L-1.
        temperature: T of the distillation loss.
        knowledge: accumulates the predictive and representational knowledge of every unit ≥ ``target``.
        system: accumulates the target's refit (``None``: no tuning).
        start: (B, s, d) the model's hidden states entering the target's layer for this batch: the pass starts
            there (forward and backward); ``None`` runs from the embeddings (the same numbers, more work).
        dense_pre_norm: (B, s, d) the dense model's pre-LayerNorm sum of the target sublayer for this batch (the
            tuning target); ``None`` runs ``dense`` from the embeddings to get it. Unused without ``system``.
        share: this part's rows / its whole batch's rows (the weight of its mean loss in the batch's mean loss).
        gradients: where a part's mask gradients are summed with its batch's other parts (the caller then calls
            :meth:`BatchGradients.add_to` once per batch); ``None``: ``batch`` is a whole batch and its predictive
            knowledge is added at once.

    Returns:
        The dense predictions used (``targets``, or those made from the model's outputs when it was ``None``).
    """
    adapter = get_adapter(model)
    inputs = model_inputs(model, batch)
    device = next(model.parameters()).device
    mask = inputs.get("attention_mask")
    first = next(iter(inputs.values()))
    token_mask = (mask.bool() if mask is not None else torch.ones(first.shape[:2], dtype=torch.bool, device=device))
    layer, sublayer = sublayer_of(target)
    if system is not None and dense_pre_norm is None:
        with torch.no_grad():
            dense_pre_norm = run_to_norm(dense, None, inputs, layer, sublayer)["pre_norm"]
    own = BatchGradients() if gradients is None else gradients
    with ProjectionInputs(model, target) as capture, start_forward_at(model, layer, start):
        if targets is None:
            with torch.no_grad(), apply_masks(model, masks):
                targets = teacher_targets(model(**inputs), model, temperature, batch)
        else:
            def loss(outputs: Any) -> torch.Tensor:
                return share * distillation_loss(outputs, targets, temperature)

            own.add(*mask_gradients(model, masks, inputs, loss, fields=("vo", "ffn")))  # (L, H, d_h), (L, F)

    with torch.no_grad():
        if gradients is None:
            own.add_to(knowledge)
        knowledge.samples += token_mask.shape[0]
        knowledge.tokens += token_mask.sum()
        for index, unit_inputs in capture.inputs.items():
            i, kind = sublayer_of(index)
            modules = adapter.layer(i)
            weight = (modules.attn_out if kind == "attention" else modules.ffn_down).weight  # (d, C)
            x = unit_inputs[token_mask].double()  # (N, C): non-padding tokens
            per_input = x.pow(2).sum(0) * weight.double().pow(2).mean(0)  # (C,)
            if kind == "attention":
                knowledge.head_rep[i] += per_input.view(adapter.num_heads, adapter.head_dim).mean(-1)
            else:
                knowledge.ffn_rep[i] += per_input
        if system is not None:
            add_tuning_batch(system, model, target, capture, dense_pre_norm, token_mask)
    return targets


__all__ = ["BatchGradients", "KnowledgeAccumulator", "knowledge_step"]
