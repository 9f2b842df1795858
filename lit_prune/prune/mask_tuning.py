"""Least-squares mask tuning: stage 4 of Kwon et al.'s framework (used by Kwon and, with its CGS solver, G-Pruner).

Kwon et al. 2022, "A Fast Post-Training Pruning Framework for Transformers" (NeurIPS 2022); reference code:
WoosukKwon/retraining-free-pruning (``prune/rescale.py``, ``utils/linalg.py``). Plain PyTorch; the model's weights
are never changed: the stage reads and writes :class:`~lit_prune.core.masks.PruningMasks`.

Sublayer by sublayer, in order (MHA₀, FFN₀, MHA₁, ...), real-valued scales for the kept units so that the
sublayer's pre-LayerNorm output matches a reference model's, by damped linear least squares
(:class:`~lit_prune.prune.lstsq.LeastSquaresAccumulator`, :func:`collect_sublayer`, :func:`tune_masks`). The scales
multiply the head / neuron masks (compaction later folds them into W_O's and W_down's columns).

Least squares in streaming form. A sublayer's output before the residual and the LayerNorm is
``Σ_u m_u·c_u + bias``, where ``c_u`` is unit u's contribution (a head: its context vector times its slice of
W_O; a neuron: its activation times its column of W_down), a (tokens, d) matrix. Flattening over the non-padding
tokens gives ``A`` (tokens·d, U) with one column per kept unit, and the scales x solve ``min ||A x − b||²`` with
``b`` = reference pre-LayerNorm sum − the student's own residual − bias (the code's target: the residual of the
student differs from the reference's, so the scales also correct for it). Only ``AᵀA`` (U, U), ``Aᵀb`` (U,) and
``bᵀb`` are accumulated, summable across batches and ranks; :meth:`LeastSquaresAccumulator.add_factored` builds
them without ever materialising ``A`` (``AᵀA = Σ_{blocks}(XᵀX ∘ WWᵀ)``), since for a BERT-base FFN ``A`` would hold
tokens·768 × 3072 entries per batch.

The solver, precisely. The reference code's ``lsmr_cupy_solver(ATA, ATB)`` hands the *normal equations* to
LSMR (not the original system A): with ``G = AᵀA``, ``h = Aᵀb`` it runs ``lsmr(G, h − G·1, damp=1)`` and returns
``x = 1 + y``, i.e. it minimises ``||G y − (h − G·1)||² + damp²·||y||²``: a Tikhonov-damped solve of the normal
equations whose prior is the binary mask (x = 1), not zero. :meth:`LeastSquaresAccumulator.solve` computes that
same minimiser directly, as the full-rank stacked least-squares problem ``[G; damp·I] y = [h − G·1; 0]`` (QR, in
float64): the point LSMR converges to, without its iteration limit or tolerances. Two consequences worth knowing:
a unit whose column is zero gets scale exactly 1 (the system is never singular), and the solution never raises
the sublayer's reconstruction error above the binary mask's (in G's eigenbasis each component of the error
change is ``σ r²/(σ²+damp²)·(σ²/(σ²+damp²) − 2) ≤ 0``), which a ridge solve ``(G + damp·I) x = h`` (shrinking
scales towards 0, i.e. towards pruning) does not guarantee.

Departures from the paper and the reference code (each deliberate):

* Solver: as explained above, the exact minimiser of the code's LSMR problem. The code's LSMR also reports
  failure when its condition estimate exceeds 1e8 or its iteration limit is reached (``istop >= 3``); here the
  solve fails only on an exception, a non-finite result, or a scale outside [-10, 10] (as in the code). The code
  solves a single-unit system without damping (``B / A[0, 0]``); here every system is damped alike.
* System: the code adds an all-ones column (a free scalar offset, then discarded) to the attention system; we do
  not, so the scales are fitted for the model that is actually used.
* Reference: :func:`tune_masks` takes ``reference="dense"`` (the unmasked model) or any masks. The code's teacher
  is the model under the mask searched at the intermediate budget ``flops_kept ** 0.5`` (its
  ``get_pruning_schedule(target, 2)[0]``), binary, run along its own trajectory;
  :func:`~lit_prune.prune.search.teacher_budget` gives that budget, so passing
  ``search_masks(..., teacher_budget(budget))`` reproduces the code. The student runs with the masks tuned so far
  (earlier sublayers scaled, the current one binary), as in the code.
* Schedule: like the code, the attention of layer 0 is not tuned (``skip_first_attention``), the last FFN may be
  fitted on the first token only for classification (``cls_only_last_ffn``; the code's ``cls_only``), and tuning
  stops at the first failed sublayer, keeping the scales found so far.
* Data flow: like the code, :func:`tune_masks` keeps each calibration batch's hidden states at the input of the
  current layer, for the student and the reference (2 × samples × padded length × d floats), so each sublayer's
  pass runs one layer, not the model up to it. Unlike the code, which holds them all in memory, they go to a
  :class:`~lit_prune.prune.cache.SpillCache`: in memory up to a budget (the callbacks' ``tuning_cache_mb``), on
  disk beyond it, so the peak memory does not grow with the calibration sample. The forward pass starts there by
  replacing the embeddings' output and running the encoder's later layers only (:func:`collect_sublayer`'s
  ``*_start``), and stops at the sublayer's LayerNorm.

Driving this from a calibration loop (e.g. a Lightning callback; every statistic is a plain tensor): one pass per
tuned sublayer (2L − 1 with ``skip_first_attention``), each batch run twice (reference and student) up to that
sublayer: ``acc.add_factored(...)`` on :func:`collect_sublayer`'s output; then all-reduce (sum) the accumulator's
tensors, solve, and :func:`apply_scales` identically on every rank (or solve on rank 0 and broadcast the scales)
before the next sublayer's pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from lit_prune.core.arch import get_adapter
from lit_prune.core.masks import PruningMasks
from lit_prune.prune.batches import LABEL_KEYS
from lit_prune.prune.cache import SpillCache
from lit_prune.prune.capture import Sublayer, layer_output, run_to_norm, sublayer_projection
from lit_prune.prune.lstsq import LeastSquaresAccumulator, token_mask_or_all
from lit_prune.prune.types import Progress, Reduce

#: Solves one sublayer's system: ``solver(acc) -> (scales or None, reason)`` (G-Pruner's CGS solver is one).
Solver = Callable[[LeastSquaresAccumulator], "tuple[torch.Tensor | None, str | None]"]


@dataclass(eq=False)
class SublayerBatch:
    """One batch of one sublayer's least-squares system, from :func:`collect_sublayer`.

    Attributes:
        units: (U,) long, the kept units (head or neuron indices within the layer) the columns stand for.
        unit_inputs: (B, s, U, k) the kept units' inputs to the output projection, masks applied.
        unit_weights: (U, k, d) their slices of the output projection.
        target: (B, s, d) b = reference pre-LayerNorm sum − the student's residual − the projection's bias.
        token_mask: (B, s) bool, the tokens the system uses.
    """

    units: torch.Tensor
    unit_inputs: torch.Tensor
    unit_weights: torch.Tensor
    target: torch.Tensor
    token_mask: torch.Tensor


def _kept_units(masks: PruningMasks, layer: int, sublayer: Sublayer) -> torch.Tensor:
    kept = masks.heads_alive()[layer] if sublayer == "attention" else masks.ffn[layer] != 0
    return torch.nonzero(kept).flatten()


@torch.no_grad()
def collect_sublayer(model: nn.Module, masks: PruningMasks, batch: Mapping[str, torch.Tensor], layer: int,
                     sublayer: Sublayer, reference: PruningMasks | Literal["dense"] = "dense",
                     first_token_only: bool = False, student_start: torch.Tensor | None = None,
                     teacher_start: torch.Tensor | None = None) -> SublayerBatch:
    """One batch of the least-squares system of ``sublayer`` of ``layer`` (two forward passes, cut short).

    The student runs under ``masks`` (earlier sublayers already tuned, this one still binary for the kept units);
    the reference under ``reference`` along its own trajectory. Both stop at the sublayer's LayerNorm.

    Args:
        model: the dense model, in eval mode.
        masks: the student's masks.
        batch: model inputs (labels are ignored); its ``attention_mask`` selects the tokens.
        layer, sublayer: which sublayer.
        reference: ``"dense"`` (the unmasked model) or the reference masks (the code: the binary mask searched at
            :func:`~lit_prune.prune.search.teacher_budget`).
        first_token_only: fit the first token only (the code's ``cls_only`` for the last FFN of classifiers).
        student_start, teacher_start: the hidden states entering ``layer`` for the student and the reference (as
            :func:`tune_masks` keeps them); ``None`` runs the model from its embeddings.

    Returns:
        The kept units' inputs and weights and the target (see :class:`SublayerBatch`).

    Raises:
        ValueError: masks that do not fit the model, or a ``sublayer`` / ``layer`` out of range.
    """
    adapter = get_adapter(model)
    if isinstance(reference, str) and reference != "dense":
        raise ValueError(f"reference={reference!r}: expected 'dense' or PruningMasks")
    teacher_masks = None if isinstance(reference, str) else reference
    for name, value in (("masks", masks), ("reference", teacher_masks)):
        if value is not None:
            value.check_shape(adapter.num_layers, adapter.num_heads, adapter.head_dim, adapter.ffn_dim,
                              what=f"{type(model).__name__} ({name})")
    if sublayer not in ("attention", "ffn"):
        raise ValueError(f"sublayer={sublayer!r}: expected 'attention' or 'ffn'")
    if not 0 <= layer < adapter.num_layers:
        raise ValueError(f"layer={layer!r}: expected an index in [0, {adapter.num_layers})")
    device = next(model.parameters()).device
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items() if k not in LABEL_KEYS}
    student = run_to_norm(model, masks, inputs, layer, sublayer, student_start)
    teacher = run_to_norm(model, teacher_masks, inputs, layer, sublayer, teacher_start)
    projection = sublayer_projection(model, layer, sublayer)
    bias = projection.bias if projection.bias is not None else torch.zeros(projection.out_features, device=device)
    # b = reference (projection + residual) − student residual − bias = ref_pre_norm − pre_norm + (projection − bias),
    # in float32 whatever the activations' dtype (bf16 under autocast); the accumulator sums it in float64
    target = (teacher["pre_norm"].float() - student["pre_norm"].float() + student["projection"].float()
              - bias.float())  # (B, s, d)
    units = _kept_units(masks, layer, sublayer).to(device)
    k = adapter.head_dim if sublayer == "attention" else 1
    num_units = adapter.num_heads if sublayer == "attention" else adapter.ffn_dim
    per_unit = student["unit_inputs"].reshape(*student["unit_inputs"].shape[:2], num_units, k)  # (B, s, U_all, k)
    weights = projection.weight.t().reshape(num_units, k, -1)  # (U_all, k, d)
    shape = per_unit.shape[:2]
    token_mask = batch.get("attention_mask")
    token_mask = token_mask_or_all(token_mask, shape, device)
    if first_token_only:
        token_mask = token_mask & (torch.arange(shape[1], device=device) == 0)[None]
    return SublayerBatch(units=units, unit_inputs=per_unit.index_select(2, units),
                         unit_weights=weights.index_select(0, units), target=target, token_mask=token_mask)


def apply_scales(masks: PruningMasks, layer: int, sublayer: Sublayer, units: torch.Tensor,
                 scales: torch.Tensor) -> None:
    """Multiply the masks of ``units`` of ``sublayer`` of ``layer`` by ``scales``, in place (the code's ``*=``)."""
    field = masks.head if sublayer == "attention" else masks.ffn
    units = units.to(field.device)
    with torch.no_grad():
        field[layer, units] = field[layer, units] * scales.to(field.device, field.dtype)


@dataclass(frozen=True)
class TuningStep:
    """What :func:`tune_masks` did to one sublayer.

    Attributes:
        layer, sublayer: which sublayer.
        status: "tuned", "skipped" (no kept units, or layer 0's attention) or "failed" (tuning stopped there).
        reason: why it was skipped or failed; ``None`` when tuned.
        error_before, error_after: the sublayer's summed squared reconstruction error over the calibration tokens
            with the binary and the tuned scales (``None`` unless a system was solved).
    """

    layer: int
    sublayer: Sublayer
    status: Literal["tuned", "skipped", "failed"]
    reason: str | None = None
    error_before: float | None = None
    error_after: float | None = None


@torch.no_grad()
def tune_masks(model: nn.Module, masks: PruningMasks, batches: Sequence[Mapping[str, torch.Tensor]],
               reference: PruningMasks | Literal["dense"] = "dense", damping: float = 1.0,
               skip_first_attention: bool = True, cls_only_last_ffn: bool = False,
               reduce: Reduce | None = None, progress: Progress | None = None,
               solver: Solver | None = None, cache: SpillCache | None = None) -> tuple[PruningMasks, list[TuningStep]]:
    """Kwon's layer-by-layer mask tuning, in one call (the reference implementation; for tiny models and tests).

    For each sublayer in order (MHA₀, FFN₀, MHA₁, ...): one pass over ``batches`` with :func:`collect_sublayer`
    into a :class:`LeastSquaresAccumulator`, :meth:`~LeastSquaresAccumulator.solve`, then :func:`apply_scales`, so
    that the next sublayer's student runs with this one tuned. Stops at the first failed solve (as the code does),
    keeping the scales found so far. Pruned units stay 0.

    Args:
        model: the dense model, in eval mode.
        masks: the binary masks to tune (not modified).
        batches: the calibration batches (iterated once per sublayer).
        reference: ``"dense"`` or reference masks (the code: :func:`~lit_prune.prune.search.search_masks` at
            :func:`~lit_prune.prune.search.teacher_budget`).
        damping: see :meth:`LeastSquaresAccumulator.solve`.
        skip_first_attention: leave layer 0's attention untuned (the code does).
        cls_only_last_ffn: fit the last FFN on the first token only (the code, for classification tasks).
        reduce: sums a dict of tensors over processes (a DDP all-reduce), applied to each sublayer's system before
            it is solved; ``None`` in a single process.
        progress: called as ``progress(description, done, total)`` after each batch.
        solver: solves a sublayer's system, ``solver(acc) -> (scales or None, reason)``; default
            ``acc.solve(damping)`` (G-Pruner passes its conjugate gradient squared solver).
        cache: where the per-batch hidden states live (:class:`~lit_prune.prune.cache.SpillCache`: a memory budget,
            the rest on disk); default: all in memory. Emptied on return.

    Returns:
        ``(tuned_masks, steps)``: the tuned masks and one :class:`TuningStep` per sublayer visited.

    Raises:
        ValueError: masks that do not fit the model, or an invalid ``damping``.
    """
    adapter = get_adapter(model)
    masks.check_shape(adapter.num_layers, adapter.num_heads, adapter.head_dim, adapter.ffn_dim,
                      what=type(model).__name__)
    device = next(model.parameters()).device
    tuned = masks.clone().to(device)
    teacher_masks = None if isinstance(reference, str) else reference
    steps: list[TuningStep] = []
    # the hidden states entering the current layer, per batch, for the student and the reference
    with (SpillCache() if cache is None else cache) as hidden:
        for layer in range(adapter.num_layers):
            if layer > 0:  # advance both trajectories through the layer tuned last
                for i, batch in enumerate(batches):
                    inputs = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)
                              and k not in LABEL_KEYS}
                    hidden["student", i] = layer_output(model, tuned, inputs, layer - 1,
                                                         hidden.get(("student", i)))
                    hidden["teacher", i] = layer_output(model, teacher_masks, inputs, layer - 1,
                                                         hidden.get(("teacher", i)))
                    if progress is not None:
                        progress(f"Kwon tuning layer {layer - 1} outputs", i + 1, len(batches))
            for sublayer in ("attention", "ffn"):
                units = _kept_units(tuned, layer, sublayer)
                if sublayer == "attention" and layer == 0 and skip_first_attention:
                    steps.append(TuningStep(layer, sublayer, "skipped", "layer 0's attention is not tuned"))
                    continue
                if units.numel() == 0:
                    steps.append(TuningStep(layer, sublayer, "skipped", "no kept units"))
                    continue
                first_token_only = cls_only_last_ffn and sublayer == "ffn" and layer == adapter.num_layers - 1
                acc = LeastSquaresAccumulator.zeros(units.numel(), device=device)
                description = f"Kwon tuning layer {layer} {'MHA' if sublayer == 'attention' else 'FFN'}"
                for i, batch in enumerate(batches):
                    data = collect_sublayer(model, tuned, batch, layer, sublayer, reference, first_token_only,
                                            student_start=hidden.get(("student", i)),
                                            teacher_start=hidden.get(("teacher", i)))
                    acc.add_factored(data.unit_inputs, data.unit_weights, data.target, data.token_mask)
                    if progress is not None:
                        progress(description, i + 1, len(batches))
                if reduce is not None:
                    acc = LeastSquaresAccumulator.from_dict(reduce(acc.to_dict()))
                scales, reason = acc.solve(damping) if solver is None else solver(acc)
                before = acc.objective(torch.ones(units.numel()))
                if scales is None:
                    steps.append(TuningStep(layer, sublayer, "failed", reason, error_before=before))
                    return tuned, steps
                apply_scales(tuned, layer, sublayer, units, scales)
                steps.append(TuningStep(layer, sublayer, "tuned", error_before=before,
                                        error_after=acc.objective(scales)))
        return tuned, steps



__all__ = ["Solver", "SublayerBatch", "TuningStep", "apply_scales", "collect_sublayer", "tune_masks"]
