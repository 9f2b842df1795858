"""KPrune: "Accurate Retraining-free Pruning for Pretrained Encoder-based Language Models" (Park et al., ICLR 2024).

Reference code: snudm-starlab/K-prune (``src/prune.py``: ``kprune``, ``compute_scores``, ``find_mask``,
``knowledge_reconstruction``). Everything above the Lightning callback is plain PyTorch, usable from any loop.

KPrune visits the 2L sublayers in order (MHA₀, FFN₀, MHA₁, ..., FFN_{L-1}). For each *target* sublayer, with every
sublayer below it already pruned and tuned:

1. **Knowledge measurement** (:func:`knowledge_step`, :class:`KnowledgeAccumulator`), for the units of the target
   and of every sublayer above it, over the calibration sample (no labels: the dense model is the teacher):

   * predictive knowledge: the distillation loss between the dense model's predictions and the current model's
     (KL divergence of the softmax at temperature T, times T², for classification; the mean of the start and end
     KL divergences for question answering; the MSE for regression), back-propagated to mask variables on the
     inputs of the output projections (W_O per head dim, W_down per neuron). A unit's predictive knowledge is
     ½·grad², summed over batches and divided by the number of samples (per head: averaged over its d_h dims);
   * representational knowledge: Σ over non-padding tokens of x² × the mean over rows of W_out², x being the
     unit's input to the output projection (per head: averaged over its dims), divided by the number of tokens;
   * scores: head = μ·(λ_rep·rep + λ_pred·pred) / FLOPs(head); neuron = (λ_rep·rep + λ_pred·pred) / FLOPs(neuron).

2. **Knowledge-preserving mask search** (:func:`search_sublayer`): the remaining units (the target's and those
   above) are ranked together by score, the best are kept while they fit the FLOPs left in the budget, and the
   resulting mask is applied to the target only.

3. **Knowledge-preserving weight tuning** (:class:`ProjectionSystem`): the target's output projection is refitted
   by least squares, over its kept inputs, so that its output plus the residual matches the dense model's
   sublayer output (before the LayerNorm) on the calibration tokens. The kept units' FLOPs leave the budget.

The whole process (:func:`kprune`) needs one pass of the dense model for its predictions and one
forward-and-backward pass per sublayer; each pass also runs the dense model up to the target sublayer for the
tuning target.

Departures from the paper and the reference code (each deliberate):

* Pruning is kept as masks (:func:`~lit_prune.core.masking.apply_masks`) while the process runs and the model is
  compacted once at the end; the code removes each sublayer's units as it goes. The two compute the same function.
* Tuning targets: the code caches every sublayer's dense output for the whole calibration sample (memory grows with
  the sample and the depth); here each pass re-runs the dense model up to the target sublayer, and the least
  squares are accumulated in streaming form (XᵀX, XᵀY), so memory stays at one batch plus one (C, C) matrix.
* Solver: the code solves the normal equations with ``torch.linalg.lstsq`` and no damping, and leaves the weights
  untuned on an exception. Here the solve is a Cholesky factorisation in float64 with a small relative damping,
  raised ×100 until it succeeds; an ill-conditioned system, a non-finite solution, or a fit whose reconstruction
  error is higher than the untuned weights' keeps the untuned weights and records a warning. Weights are never
  NaN.
* Mask search: the code scans thresholds of the sorted scores and keeps units strictly above the first one that
  fits; here the best units are kept in order while they fit, with exact arithmetic (ties: heads before neurons,
  lower layer and index first), so the budget is met exactly or from below.
* Regression: the code squeezes the logits for the MSE; the same loss here (the mean over samples).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

import torch
from torch import nn

from lit_prune.core.arch import get_adapter
from lit_prune.core.flops import FlopsBudget
from lit_prune.core.masks import PruningMasks
from lit_prune.methods.base import RetrainingFreePruning
from lit_prune.prune.batches import model_inputs
from lit_prune.prune.capture import ProjectionInputs, Sublayer, run_to_norm, sublayer_of
from lit_prune.prune.distill import dense_predictions, distillation_loss
from lit_prune.prune.importance import mask_gradients
from lit_prune.prune.lstsq import ProjectionSystem
from lit_prune.prune.types import Progress, Reduce, identity

# ================================================================================================ helpers


# ================================================================================================ 1. knowledge
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
        def z(*shape: int) -> torch.Tensor:
            return torch.zeros(shape, dtype=torch.float64, device=device)

        return cls(z(num_layers, num_heads), z(num_layers, num_heads), z(num_layers, ffn_dim),
                   z(num_layers, ffn_dim), z(), z())

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in
                ("head_pred", "head_rep", "ffn_pred", "ffn_rep", "samples", "tokens")}

    @classmethod
    def from_dict(cls, tensors: Mapping[str, torch.Tensor]) -> KnowledgeAccumulator:
        return cls(**{name: tensors[name] for name in
                      ("head_pred", "head_rep", "ffn_pred", "ffn_rep", "samples", "tokens")})

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


def knowledge_step(model: nn.Module, dense: nn.Module, masks: PruningMasks, batch: Mapping[str, Any],
                   targets: Mapping[str, torch.Tensor], target: int, temperature: float,
                   knowledge: KnowledgeAccumulator, system: ProjectionSystem | None) -> None:
    """One calibration batch of the measurement pass for sublayer ``target``: add to ``knowledge`` and ``system``.

    Args:
        model: the model being pruned (sublayers below ``target`` masked by ``masks`` and tuned), eval mode.
        dense: the untouched dense model (the teacher of the predictions and of the tuning targets).
        masks: the current binary masks (units of ``target`` and above all kept).
        batch: the batch (labels are ignored).
        targets: :func:`dense_predictions` of this batch.
        target: the target sublayer, 0..2L-1.
        temperature: T of the distillation loss.
        knowledge: accumulates the predictive and representational knowledge of every unit ≥ ``target``.
        system: accumulates the target's refit (``None``: no tuning).
    """
    adapter = get_adapter(model)
    inputs = model_inputs(model, batch)
    device = next(model.parameters()).device
    mask = inputs.get("attention_mask")
    first = next(iter(inputs.values()))
    token_mask = (mask.bool() if mask is not None else torch.ones(first.shape[:2], dtype=torch.bool, device=device))
    layer, sublayer = sublayer_of(target)
    dense_pre_norm = None
    if system is not None:
        with torch.no_grad():
            dense_pre_norm = run_to_norm(dense, None, inputs, layer, sublayer)["pre_norm"]
    with ProjectionInputs(model, target) as capture:
        grad_vo, grad_ffn = mask_gradients(model, masks, inputs, lambda out: distillation_loss(out, targets, temperature),
                                           fields=("vo", "ffn"))  # (L, H, d_h), (L, F)

    with torch.no_grad():
        knowledge.head_pred += 0.5 * grad_vo.double().pow(2).mean(-1)  # per dim ½g², averaged over the head's dims
        knowledge.ffn_pred += 0.5 * grad_ffn.double().pow(2)
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
            assert capture.pre_norm is not None and capture.projection_output is not None
            modules = adapter.layer(layer)
            projection = modules.attn_out if sublayer == "attention" else modules.ffn_down
            bias = projection.bias if projection.bias is not None else torch.zeros_like(dense_pre_norm[0, 0])
            residual = capture.pre_norm - capture.projection_output
            y = dense_pre_norm - residual - bias  # (B, s, d): what x·Wᵀ should produce
            system.add(capture.inputs[target][token_mask], y[token_mask])


# ================================================================================================ 2. search
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
    num_layers, num_heads = head_scores.shape
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


# ================================================================================================ the process
@dataclass
class SublayerStep:
    """What :func:`kprune` did to one sublayer (one entry of the report)."""

    layer: int
    sublayer: Sublayer
    kept: int
    total: int
    status: Literal["tuned", "kept", "empty", "untuned"]
    warning: str | None = None
    error_before: float | None = None
    error_after: float | None = None
    condition: float | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass
class KPruneResult:
    """The binary masks found (the model's weights were tuned in place) and one step per sublayer."""

    masks: PruningMasks
    steps: list[SublayerStep] = field(default_factory=list)


@torch.no_grad()
def kprune(model: nn.Module, batches: Sequence[Mapping[str, Any]], budget: FlopsBudget, *,
           dense: nn.Module | None = None, temperature: float = 2.0, mu: float = 64.0, lam_pred: float = 1.0,
           lam_rep: float = 2.5e-4, weight_tuning: bool = True, damping: float = 1e-6,
           reduce: Reduce | None = None, progress: Progress | None = None) -> KPruneResult:
    """Run KPrune on ``model`` (weights of the tuned output projections change in place; nothing is removed yet).

    Args:
        model: a fine-tuned dense BERT / RoBERTa / DistilBERT task model (classification, regression or QA).
        batches: the calibration batches of this process (labels are not needed).
        budget: the FLOPs budget (its ``seq_len`` is the ``s`` of the accounting).
        dense: the dense teacher; ``None`` copies ``model`` first.
        temperature, mu, lam_pred, lam_rep: the paper's T, μ, λ_pred, λ_rep.
        weight_tuning: refit each pruned sublayer's output projection (off: masks only, for ablations).
        damping: relative damping of the least squares (see :meth:`ProjectionSystem.solve`).
        reduce: sums a dict of tensors over processes (DDP all-reduce); ``None`` in a single process.
        progress: called as ``progress(description, done, total)`` after each batch.

    Returns:
        :class:`KPruneResult`: the binary masks (compact the model with them) and the per-sublayer steps.
    """
    adapter = get_adapter(model)
    adapter.require_dense("run KPrune")
    if not batches:
        raise ValueError("KPrune: no calibration batches")
    reduce = reduce or identity
    model.eval()
    if dense is None:
        dense = copy.deepcopy(model)
    dense.eval()
    device = next(model.parameters()).device
    num_layers = adapter.num_layers
    masks = PruningMasks.ones(num_layers, adapter.num_heads, adapter.head_dim, adapter.ffn_dim, device=device)
    head_cost, neuron_cost = unit_costs(budget)
    remaining = budget.max_macs
    total_passes = 2 * num_layers + 1

    predictions = []
    for i, batch in enumerate(batches):
        predictions.append(dense_predictions(dense, batch, temperature))
        if progress:
            progress(f"KPrune 1/{total_passes} dense predictions", i + 1, len(batches))

    result = KPruneResult(masks)
    for target in range(2 * num_layers):
        started = time.perf_counter()
        layer, sublayer = sublayer_of(target)
        modules = adapter.layer(layer)
        projection = modules.attn_out if sublayer == "attention" else modules.ffn_down
        knowledge = KnowledgeAccumulator.zeros(num_layers, adapter.num_heads, adapter.ffn_dim, device=device)
        system = ProjectionSystem.zeros(projection.in_features, projection.out_features, device=device) \
            if weight_tuning else None
        description = f"KPrune {target + 2}/{total_passes} layer {layer} {'MHA' if sublayer == 'attention' else 'FFN'}"
        for i, batch in enumerate(batches):
            knowledge_step(model, dense, masks, batch, predictions[i], target, temperature, knowledge, system)
            if progress:
                progress(description, i + 1, len(batches))
        knowledge = KnowledgeAccumulator.from_dict(reduce(knowledge.to_dict()))
        head_scores, neuron_scores = knowledge.scores(mu, lam_pred, lam_rep, float(2 * head_cost),
                                                      float(2 * neuron_cost))
        kept = search_sublayer(head_scores, neuron_scores, target, remaining, head_cost, neuron_cost).to(device)
        unit_cost = head_cost if sublayer == "attention" else neuron_cost
        remaining -= int(kept.sum()) * unit_cost
        step = SublayerStep(layer, sublayer, int(kept.sum()), kept.numel(), "empty" if not kept.any() else "untuned")
        if sublayer == "attention":
            masks.head[layer] = kept.to(masks.head.dtype)
            columns = torch.nonzero(kept.repeat_interleave(adapter.head_dim)).flatten()
        else:
            masks.ffn[layer] = kept.to(masks.ffn.dtype)
            columns = torch.nonzero(kept).flatten()
        if system is not None and kept.any():
            system = ProjectionSystem.from_dict(reduce(system.to_dict()))
            current = projection.weight[:, columns].t()  # (K, d)
            tuning = system.solve(columns, current, damping=damping)
            projection.weight[:, columns] = tuning.weight.t().to(projection.weight.dtype)
            step.status, step.warning = tuning.status, tuning.warning
            step.error_before, step.error_after, step.condition = tuning.error_before, tuning.error_after, \
                tuning.condition
        step.seconds = time.perf_counter() - started
        result.steps.append(step)
    return result


# ================================================================================================ Lightning
class KPruneCallback(RetrainingFreePruning):
    """KPrune as a Lightning callback: for each sublayer in turn, knowledge measurement, knowledge-preserving mask
    search and knowledge-preserving weight tuning; the model is compacted at the end.

    Runs once per ``fit`` (see :mod:`lit_prune.methods.base`): at the start of a fit that trains nothing, else at
    the end of training. Passes: one forward pass of the dense model for its predictions, then one forward and
    backward pass per sublayer (2L). Under DDP each process takes every world-size-th batch; the knowledge sums
    and the least-squares normal equations are summed over the processes. No labels are used.

    Args:
        flops_kept: the fraction of the dense FLOPs to keep, in (0, 1] (the paper's constraint is 1 − flops_kept).
        num_tokens: draw calibration examples until they hold this many tokens (the paper: about 100,000).
        num_samples: draw this many examples instead (``num_tokens`` must then be ``None``).
        calibration_batch_size: batch size of the calibration passes.
        seed: seed of the calibration draw.
        temperature: T of the predictive-knowledge distillation loss (the paper: 2).
        mu: weight of the heads' scores (the paper: 64).
        lam_pred, lam_rep: weights of predictive and representational knowledge (the paper: 1 and 2.5e-4).
        weight_tuning: refit each pruned sublayer's output projection (off: ablation).
        damping: relative damping of the least squares (see :meth:`ProjectionSystem.solve`).
        output_dir, save_model, evaluate, dense_metrics, latency_batch_size, latency_repeats, model_attribute, seq_len,
            time_reference_pass: see
            :class:`~lit_prune.methods.base.RetrainingFreePruning`.

    Example::

        trainer = L.Trainer(max_epochs=0, callbacks=[KPruneCallback(flops_kept=0.4)])
        trainer.fit(SequenceClassificationModule("runs/finetune/sst2/final_model", task="sst2"),
                    GlueDataModule(task="sst2", tokenizer="runs/finetune/sst2/final_model"))
    """

    method = "kprune"

    def __init__(
        self,
        flops_kept: float = 0.5,
        num_tokens: int | None = 100_000,
        num_samples: int | None = None,
        calibration_batch_size: int = 32,
        seed: int = 0,
        temperature: float = 2.0,
        mu: float = 64.0,
        lam_pred: float = 1.0,
        lam_rep: float = 2.5e-4,
        weight_tuning: bool = True,
        damping: float = 1e-6,
        output_dir: str | None = None,
        save_model: bool = True,
        evaluate: bool = True,
        dense_metrics: dict[str, float] | None = None,
        latency_batch_size: int = 32,
        latency_repeats: int = 10,
        model_attribute: str | None = None,
        seq_len: float | None = None,
        time_reference_pass: bool = False,
    ) -> None:
        super().__init__(flops_kept=flops_kept, num_samples=num_samples, num_tokens=num_tokens, replacement=False,
                         calibration_batch_size=calibration_batch_size, seed=seed, output_dir=output_dir,
                         save_model=save_model, evaluate=evaluate, dense_metrics=dense_metrics,
                         latency_batch_size=latency_batch_size,
                         latency_repeats=latency_repeats, model_attribute=model_attribute,
                         seq_len=seq_len, time_reference_pass=time_reference_pass)
        for name, value, strict in (("temperature", temperature, True), ("mu", mu, True),
                                    ("lam_pred", lam_pred, False), ("lam_rep", lam_rep, False),
                                    ("damping", damping, True)):
            ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and (
                value > 0 if strict else value >= 0)
            if not ok:
                self.problems.append(f"{name}={value!r}: expected a number {'>' if strict else '>='} 0")
        if lam_pred == 0 and lam_rep == 0:
            self.problems.append("lam_pred=0 and lam_rep=0: at least one kind of knowledge must count")
        self.raise_problems(self.problems)
        self.temperature = temperature
        self.mu = mu
        self.lam_pred = lam_pred
        self.lam_rep = lam_rep
        self.weight_tuning = weight_tuning
        self.damping = damping

    def method_settings(self) -> dict[str, Any]:
        return {"num_tokens": self.num_tokens, "num_samples": self.num_samples, "temperature": self.temperature,
                "mu": self.mu, "lam_pred": self.lam_pred, "lam_rep": self.lam_rep,
                "weight_tuning": self.weight_tuning, "damping": self.damping}

    def run_method(self, model, dense, batches, batch_ids, num_batches, budget, reduce, progress):
        result = kprune(model, batches, budget, dense=dense, temperature=self.temperature, mu=self.mu,
                        lam_pred=self.lam_pred, lam_rep=self.lam_rep, weight_tuning=self.weight_tuning,
                        damping=self.damping, reduce=reduce, progress=progress)
        warnings_ = [f"layer {step.layer} {step.sublayer}: {step.warning}" for step in result.steps if step.warning]
        return result.masks, {"steps": [step.as_dict() for step in result.steps], "warnings": warnings_}


__all__ = ["KPruneCallback", "KPruneResult", "KnowledgeAccumulator", "SublayerStep", "knowledge_step", "kprune",
           "search_sublayer"]
