"""KPrune's iterative process (Park et al., ICLR 2024, Algorithm 1; the code's ``kprune``): for each of the 2L
sublayers in order (MHA₀, FFN₀, MHA₁, ..., FFN_{L-1}), with every sublayer below it already pruned and tuned, one
pass over the calibration sample measures the knowledge of the target's units and of those above it and
accumulates the target's refit (:mod:`~lit_prune.methods.kprune.knowledge`); the mask search picks the target's
units (:mod:`~lit_prune.methods.kprune.search`); the weight tuning refits its output projection
(:mod:`~lit_prune.methods.kprune.tuning`).

Departures from the code, which runs the whole model for every sublayer and keeps every dense sublayer output in
memory; each computes the same numbers along the paper's schedule, up to float rounding:

* Cached layer inputs: per calibration batch, the process keeps the hidden states entering the current layer, for
  the pruned model and for the dense one, in a :class:`~lit_prune.prune.cache.SpillCache` (in memory up to a
  budget, on disk beyond it, so its peak memory does not grow with the sample). Both sublayer passes of layer l
  start there (:func:`~lit_prune.prune.capture.start_forward_at`): the layers below are final, so their output is
  the cached input, and the backward pass stops at layer l too. When layer l is done, the pruned model's layer l
  runs once more on its cached input, under its final masks and weights, to give the input of layer l + 1.
* The dense model advances one layer per layer (:func:`~lit_prune.prune.capture.run_layer`, during the attention
  pass): one run of a dense layer gives the tuning targets of both its sublayers (the FFN's is cached for the FFN
  pass) and the next layer's input, so the dense encoder runs once in all.
* The first pass runs forward only: the pruned model is still the dense one there (all masks one, weights
  untouched), so its outputs are the dense predictions (the teacher of every later pass, with no pass of their
  own) and its predictive knowledge is zero (the distillation loss is at its minimum; the code back-propagates a
  gradient that is float rounding). With a ``dense`` model that differs from ``model``, the dense predictions take
  a forward pass of their own and the first pass back-propagates as the others do.
* Length groups (:mod:`lit_prune.prune.lengths`): each batch runs as a few groups of rows of similar length, each
  padded to its own longest row, where a randomly drawn batch is padded to its longest example (on SST-2, three
  positions per token). Every measured quantity is a sum over the batch's rows or tokens, or (the predictive
  knowledge) a function of the batch's gradient, which is the sum of its groups' gradients: only float rounding
  changes. Used only where the model's predictions for a row do not depend on the split (checked on the first
  split batch: per-position outputs, such as question answering's, keep whole batches).

Work over the calibration data, in forward-and-backward passes of the whole model: the knowledge passes of layer l
run (L − l) layers, 2L passes in all: about L + 1 passes (the first forward only); the pruned model's layer steps
and the dense model's add two forward passes. The code's schedule costs 2L whole-model passes and about L dense
forward passes more. Length groups then cut the positions computed (on SST-2, about 2× less work).

Pruning is kept as masks (:func:`~lit_prune.core.masking.apply_masks`) while the process runs and the model is
compacted once at the end; the code removes each sublayer's units as it goes. The two compute the same function.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from lit_prune.core.arch import get_adapter
from lit_prune.core.latency_model import Budget
from lit_prune.core.masks import PruningMasks
from lit_prune.methods.kprune.knowledge import BatchGradients, KnowledgeAccumulator, knowledge_step
from lit_prune.methods.kprune.search import decided_counts, search_sublayer
from lit_prune.methods.kprune.tuning import tune_sublayer
from lit_prune.prune.batches import model_inputs
from lit_prune.prune.cache import SpillCache
from lit_prune.prune.capture import Sublayer, layer_output, run_layer, sublayer_projection, sublayer_of
from lit_prune.prune.distill import dense_predictions, teacher_targets
from lit_prune.prune.lengths import Part, rows_agree, split_batch
from lit_prune.prune.lstsq import ProjectionSystem
from lit_prune.prune.types import Progress, Reduce, identity


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
    """What :func:`kprune` found and how.

    Attributes:
        masks: the binary masks (the model's weights were tuned in place).
        steps: one :class:`SublayerStep` per sublayer.
        cache: the hidden-state cache's use: ``memory_limit_mb``, ``memory_mb`` (peak in memory), ``spilled_mb``
            (peak on disk).
        length_groups: ``max_groups`` (the setting used), ``groups`` (parts run, over all batches), ``batches``,
            and ``positions`` / ``batch_positions``: the padded positions per pass in groups and as whole batches.
    """

    masks: PruningMasks
    steps: list[SublayerStep] = field(default_factory=list)
    cache: dict[str, float | None] = field(default_factory=dict)
    length_groups: dict[str, int] = field(default_factory=dict)


def same_model(model: nn.Module, dense: nn.Module) -> bool:
    """Whether ``dense`` computes what ``model`` computes: the same class, config, parameters and buffers."""
    if type(model) is not type(dense) or model.config.to_dict() != dense.config.to_dict():
        return False
    mine, theirs = model.state_dict(), dense.state_dict()
    return mine.keys() == theirs.keys() and all(
        a.shape == theirs[name].shape and a.dtype == theirs[name].dtype and torch.equal(a, theirs[name].to(a.device))
        for name, a in mine.items())


def split_batches(batches: Sequence[Mapping[str, Any]], max_groups: int, models: Sequence[nn.Module],
                  temperature: float) -> list[list[Part]]:
    """Each batch's length groups (:func:`~lit_prune.prune.lengths.split_batch`), or each batch whole when one of
    ``models`` predicts otherwise on the parts of the first split batch than on it whole (per-position outputs such
    as question answering's, or a head that reads padding): the split must not change what is measured."""
    split = [split_batch(batch, max_groups) for batch in batches]
    first = next((i for i, parts in enumerate(split) if any(part.cut for part in parts)), None)
    if first is not None:
        for net in models:
            def predict(batch: Mapping[str, Any], net: nn.Module = net) -> dict[str, torch.Tensor]:
                return teacher_targets(net(**model_inputs(net, batch)), net, temperature, batch)

            if not rows_agree(predict(batches[first]), split[first], [predict(part.batch) for part in split[first]]):
                return [split_batch(batch, 1) for batch in batches]
    return split


def _advance(model: nn.Module, masks: PruningMasks, parts: Sequence[Sequence[Part]], layer: int, hidden: SpillCache,
             progress: Progress | None) -> None:
    """Replace each part's cached input of ``layer`` by the pruned model's (final) output of that layer."""
    for i, batch_parts in enumerate(parts):
        for k, part in enumerate(batch_parts):
            inputs = model_inputs(model, part.batch)
            hidden["student", i, k] = layer_output(model, masks, inputs, layer, hidden.get(("student", i, k)))
        if progress:
            progress(f"KPrune layer {layer} outputs", i + 1, len(parts))


def _dense_target(dense: nn.Module, part: Part, layer: int, sublayer: Sublayer, key: tuple[int, int],
                  hidden: SpillCache, num_layers: int) -> torch.Tensor:
    """The dense model's pre-LayerNorm sum of the sublayer on a part (n, s, d). At the attention, one run of the
    dense layer from its cached input also caches the FFN's target and the next layer's input."""
    if sublayer == "ffn":
        return hidden.get(("dense_ffn", *key))
    sums = run_layer(dense, None, model_inputs(dense, part.batch), layer, hidden.get(("dense", *key)))
    hidden[("dense_ffn", *key)] = sums["ffn"]
    if layer + 1 < num_layers:
        hidden[("dense", *key)] = sums["output"]
    return sums["attention"]


@torch.no_grad()
def kprune(model: nn.Module, batches: Sequence[Mapping[str, Any]], budget: Budget, *,
           dense: nn.Module | None = None, temperature: float = 2.0, mu: float = 64.0, lam_pred: float = 1.0,
           lam_rep: float = 2.5e-4, weight_tuning: bool = True, ridge: float = 1e-6,
           length_groups: int | None = None, cache_bytes: int | None = None, reduce: Reduce | None = None,
           progress: Progress | None = None) -> KPruneResult:
    """Run KPrune on ``model`` (weights of the tuned output projections change in place; nothing is removed yet).

    Args:
        model: a fine-tuned dense task model of a supported encoder (classification, regression or QA).
        batches: the calibration batches of this process (labels are not needed).
        budget: the FLOPs budget (its ``seq_len`` is the ``s`` of the accounting) or a latency budget.
        dense: the dense teacher; ``None`` copies ``model`` first.
        temperature, mu, lam_pred, lam_rep: the paper's T, μ, λ_pred, λ_rep.
        weight_tuning: refit each pruned sublayer's output projection (off: masks only, for ablations).
        ridge: the least squares' relative ridge (see :meth:`ProjectionSystem.solve`).
        length_groups: run each batch as at most this many groups of similar length (see the module docstring;
            1: whole batches); ``None``: 4 on a CPU, 1 on an accelerator (where a pass of a calibration batch costs
            by the call more than by the token). The results are the same up to float rounding.
        cache_bytes: bytes of per-batch hidden states kept in memory at most (the rest is spilled to a temporary
            folder and read back); ``None``: no limit. The results do not depend on it.
        reduce: sums a dict of tensors over processes (DDP all-reduce); ``None`` in a single process.
        progress: called as ``progress(description, done, total)`` after each batch.

    Returns:
        :class:`KPruneResult`: the binary masks (compact the model with them), the per-sublayer steps and the
        cache's use.
    """
    adapter = get_adapter(model)
    adapter.require_dense("run KPrune")
    if not batches:
        raise ValueError("KPrune: no calibration batches")
    if length_groups is not None and (isinstance(length_groups, bool) or not isinstance(length_groups, int)
                                      or length_groups < 1):
        raise ValueError(f"length_groups={length_groups!r}: expected an integer >= 1 or None")
    reduce = reduce or identity
    model.eval()
    same = dense is None or same_model(model, dense)
    if dense is None:
        dense = copy.deepcopy(model)
    dense.eval()
    device = next(model.parameters()).device
    num_layers = adapter.num_layers
    masks = PruningMasks.ones(num_layers, adapter.num_heads, adapter.head_dim, adapter.ffn_dim, device=device)
    if length_groups is None:
        length_groups = 4 if device.type == "cpu" else 1
    parts = split_batches(batches, length_groups, [model] if same else [model, dense], temperature)

    # The teacher's predictions, per part: made by the first pass when the model is still the dense one (see the
    # module docstring), else by a forward pass of the dense model.
    predictions: list[list[Mapping[str, torch.Tensor] | None]] = [[None] * len(p) for p in parts]
    if not same:
        for i, batch_parts in enumerate(parts):
            predictions[i] = [dense_predictions(dense, part.batch, temperature) for part in batch_parts]
            if progress:
                progress("KPrune dense predictions", i + 1, len(parts))

    result = KPruneResult(masks, length_groups={
        "max_groups": length_groups, "groups": sum(len(p) for p in parts), "batches": len(parts),
        "positions": sum(part.rows.numel() * part.length for p in parts for part in p),
        "batch_positions": sum(part.rows.numel() * part.length for b in batches for part in split_batch(b, 1))})
    # per part (i, k) of batch i: ("student", i, k) and ("dense", i, k) the hidden states entering the current layer
    # (absent at layer 0: the pass starts at the embeddings), ("dense_ffn", i, k) the dense FFN's pre-LayerNorm sum
    hidden = SpillCache(cache_bytes)
    with hidden:
        for target in range(2 * num_layers):
            started = time.perf_counter()
            layer, sublayer = sublayer_of(target)
            if sublayer == "attention" and layer > 0:
                _advance(model, masks, parts, layer - 1, hidden, progress)
            projection = sublayer_projection(model, layer, sublayer)
            knowledge = KnowledgeAccumulator.zeros(num_layers, adapter.num_heads, adapter.ffn_dim, device=device)
            system = ProjectionSystem.zeros(projection.in_features, projection.out_features, device=device) \
                if weight_tuning else None
            description = f"KPrune {target + 1}/{2 * num_layers} layer {layer} " \
                          f"{'MHA' if sublayer == 'attention' else 'FFN'}"
            for i, batch_parts in enumerate(parts):
                gradients = BatchGradients()  # the batch's gradient is the sum of its parts'
                for k, part in enumerate(batch_parts):
                    dense_pre_norm = None
                    if system is not None:
                        dense_pre_norm = _dense_target(dense, part, layer, sublayer, (i, k), hidden, num_layers)
                    predictions[i][k] = knowledge_step(
                        model, dense, masks, part.batch, predictions[i][k], target, temperature, knowledge, system,
                        start=hidden.get(("student", i, k)), dense_pre_norm=dense_pre_norm, share=part.share,
                        gradients=gradients)
                gradients.add_to(knowledge)
                if progress:
                    progress(description, i + 1, len(parts))
            step = _decide(model, masks, target, knowledge, system, budget, mu, lam_pred, lam_rep, ridge, reduce)
            step.seconds = time.perf_counter() - started
            result.steps.append(step)
    result.cache = {"memory_limit_mb": None if cache_bytes is None else cache_bytes / 2**20,
                    "memory_mb": hidden.peak_memory_bytes / 2**20, "spilled_mb": hidden.spilled_bytes / 2**20}
    return result


def _decide(model: nn.Module, masks: PruningMasks, target: int, knowledge: KnowledgeAccumulator,
            system: ProjectionSystem | None, budget: Budget, mu: float, lam_pred: float, lam_rep: float,
            ridge: float, reduce: Reduce) -> SublayerStep:
    """After the target's pass: sum over processes, search its mask, set it in ``masks`` and tune its weights."""
    layer, sublayer = sublayer_of(target)
    knowledge = KnowledgeAccumulator.from_dict(reduce(knowledge.to_dict()))
    head_cost, neuron_cost = budget.unit_costs  # knowledge per multiply-add, or per millisecond
    head_scores, neuron_scores = knowledge.scores(mu, lam_pred, lam_rep, float(head_cost), float(neuron_cost))
    kept = search_sublayer(head_scores, neuron_scores, target, budget.fits_counts, decided_counts(masks, target),
                           budget.neuron_multiple).to(masks.head.device)
    step = SublayerStep(layer, sublayer, int(kept.sum()), kept.numel(), "empty" if not kept.any() else "untuned")
    field_ = masks.head if sublayer == "attention" else masks.ffn
    field_[layer] = kept.to(field_.dtype)
    if system is not None and kept.any():
        tuning = tune_sublayer(model, target, kept, system, ridge, reduce)
        step.status, step.warning = tuning.status, tuning.warning
        step.error_before, step.error_after, step.condition = tuning.error_before, tuning.error_after, \
            tuning.condition
    return step


__all__ = ["KPruneResult", "SublayerStep", "kprune", "same_model", "split_batches"]
