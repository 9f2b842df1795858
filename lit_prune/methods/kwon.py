"""Kwon et al. 2022, "A Fast Post-Training Pruning Framework for Transformers" (NeurIPS 2022): the pure stages.

Reference code: WoosukKwon/retraining-free-pruning (``prune/fisher.py``, ``prune/search.py``,
``prune/rearrange.py``, ``prune/rescale.py``, ``utils/linalg.py``). Everything here is plain PyTorch, usable from
any loop; the Lightning callback that drives it batch by batch (and reduces the statistics across ranks) lives
elsewhere. The model's weights are never changed: every stage reads or writes :class:`PruningMasks`.

Pipeline (retraining-free, weights frozen, model in eval mode, a labelled calibration sample):

1. **Fisher statistics** (:func:`mask_gradients`, :class:`FisherStatistics`): per calibration batch, the gradient
   of the task loss w.r.t. the (L, H) head mask and the (L, F) FFN-neuron mask, at the all-ones mask. A unit's
   importance is the diagonal of the empirical Fisher: the sum over batches of its squared mask gradient.
2. **Budgeted mask search** (:func:`search_masks`): heads and neurons ranked globally; for every number k of kept
   heads, the top-k heads plus as many of the best neurons as the FLOPs budget leaves room for; the k with the
   largest total importance wins.
3. **Mask rearrangement** (:func:`rearrange_masks`): per layer, with the number of kept units fixed, a greedy swap
   that minimises ``||Σ_{u pruned} g_u||²`` where ``g_u`` is unit u's vector of per-batch gradients (the loss
   increase under a block-diagonal, per-layer Fisher approximation: the pruned units' gradients may cancel).
4. **Mask tuning** (:class:`LeastSquaresAccumulator`, :func:`collect_sublayer`, :func:`tune_masks`): sublayer by
   sublayer, in order (MHA₀, FFN₀, MHA₁, ...), real-valued scales for the kept units so that the sublayer's
   pre-LayerNorm output matches a reference model's, by damped linear least squares. The scales multiply the
   head / neuron masks (compaction later folds them into W_O's and W_down's columns).

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

* Fisher: gradients come from ``torch.autograd.grad`` on copies of the masks (no ``.grad`` accumulation anywhere),
  the masks act through :func:`~lit_prune.core.masking.apply_masks` hooks (transformers 5 has no ``head_mask``).
* Search: k runs over 0..L·H (the code starts at 1, so it can never keep zero heads); the budget is exact
  (:class:`~lit_prune.core.flops.FlopsBudget`, rational arithmetic) where the code truncates floats; a budget of 1
  is allowed (the code asserts < 1). Ties: stable sorts (lower index first) and the smallest k among equal totals
  (the code's strict ``>`` while k ascends).
* Rearrangement: the code's greedy, in float64 on the CPU as the code does; in addition, a layer whose greedy
  result has a higher objective than the input mask keeps the input mask (the code takes the greedy result).
* Tuning solver: as explained above, the exact minimiser of the code's LSMR problem. The code's LSMR also reports
  failure when its condition estimate exceeds 1e8 or its iteration limit is reached (``istop >= 3``); here the
  solve fails only on an exception, a non-finite result, or a scale outside [-10, 10] (as in the code). The code
  solves a single-unit system without damping (``B / A[0, 0]``); here every system is damped alike.
* Tuning system: the code adds an all-ones column (a free scalar offset, then discarded) to the attention
  system; we do not, so the scales are fitted for the model that is actually used.
* Tuning reference: :func:`tune_masks` takes ``reference="dense"`` (the unmasked model) or any masks. The code's
  teacher is the model under the mask searched at the intermediate budget ``flops_kept ** 0.5`` (its
  ``get_pruning_schedule(target, 2)[0]``), binary, run along its own trajectory; :func:`teacher_budget` gives that
  budget, so passing ``search_masks(..., teacher_budget(budget))`` reproduces the code. The student runs with the
  masks tuned so far (earlier sublayers scaled, the current one binary), as in the code.
* Tuning schedule: like the code, the attention of layer 0 is not tuned (``skip_first_attention``), the last
  FFN may be fitted on the first token only for classification (``cls_only_last_ffn``; the code's
  ``cls_only``), and tuning stops at the first failed sublayer, keeping the scales found so far.
* Tuning data flow: like the code, :func:`tune_masks` keeps each calibration batch's hidden states at the input of
  the current layer, for the student and the reference (2 × samples × padded length × d floats), so each
  sublayer's pass runs one layer, not the model up to it. Unlike the code, which holds them all in memory, they go
  to a :class:`~lit_prune.methods.cache.SpillCache`: in memory up to a budget (the callbacks' ``tuning_cache_mb``),
  on disk beyond it, so the peak memory does not grow with the calibration sample. The forward pass starts there
  by replacing the embeddings' output and running the encoder's later layers only (:func:`collect_sublayer`'s
  ``*_start``), and stops at the sublayer's LayerNorm.

Driving these from a calibration loop (e.g. a Lightning callback; every statistic is a plain tensor):

* Fisher: one pass over the calibration data (forward + backward per batch): ``stats.add(*mask_gradients(...))``.
  Under DDP, all-gather ``head_grads`` and ``ffn_grads`` (equal batch counts per rank) and rebuild with
  :meth:`FisherStatistics.from_gathered`; importances and the rearrangement objective do not depend on the order
  of the batches.
* Search and rearrangement: no data (they read the statistics).
* Tuning: one pass per tuned sublayer (2L − 1 with ``skip_first_attention``), each batch run twice (reference and
  student) up to that sublayer: ``acc.add_factored(...)`` on :func:`collect_sublayer`'s output; then all-reduce
  (sum) the accumulator's tensors, solve, and :func:`apply_scales` identically on every rank (or solve on rank 0
  and broadcast the scales) before the next sublayer's pass.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from lit_prune.core.arch import get_adapter
from lit_prune.core.flops import FlopsBudget
from lit_prune.core.masks import PruningMasks
from lit_prune.methods.base import RetrainingFreePruning
from lit_prune.prune.batches import LABEL_KEYS
from lit_prune.prune.cache import SpillCache
from lit_prune.prune.capture import Sublayer, layer_output, run_to_norm, sublayer_modules
from lit_prune.prune.importance import mask_gradients
from lit_prune.prune.lstsq import LeastSquaresAccumulator, token_mask_or_all
from lit_prune.prune.types import Progress, Reduce

Solver = Callable[["LeastSquaresAccumulator"], "tuple[torch.Tensor | None, str | None]"]
Refine = Callable[[PruningMasks, "FisherStatistics"], "tuple[PruningMasks, dict[str, Any]]"]


# ================================================================================================ 1. Fisher


@dataclass(eq=False)
class FisherStatistics:
    """Per-batch mask gradients of the calibration data (Kwon's ``collect_mask_grads``).

    Plain tensors, so a DDP loop can all-gather them; the batch order does not matter to any stage.

    Attributes:
        head_grads: (N, L, H) head-mask gradient of each of N batches.
        ffn_grads: (N, L, F) FFN-mask gradient of each batch.

    Raises:
        ValueError: on construction, for tensors of the wrong rank or mismatched N or L.
    """

    head_grads: torch.Tensor
    ffn_grads: torch.Tensor

    def __post_init__(self) -> None:
        problems = []
        if self.head_grads.dim() != 3:
            problems.append(f"head_grads has shape {tuple(self.head_grads.shape)}, expected (N, L, H)")
        if self.ffn_grads.dim() != 3:
            problems.append(f"ffn_grads has shape {tuple(self.ffn_grads.shape)}, expected (N, L, F)")
        if not problems and self.head_grads.shape[:2] != self.ffn_grads.shape[:2]:
            problems.append(f"head_grads {tuple(self.head_grads.shape)} and ffn_grads {tuple(self.ffn_grads.shape)} "
                            "disagree on (N, L)")
        if problems:
            raise ValueError("invalid FisherStatistics: " + "; ".join(problems))

    @classmethod
    def empty(cls, num_layers: int, num_heads: int, ffn_dim: int,
              device: torch.device | str | None = None) -> FisherStatistics:
        """Statistics of zero batches, shaped for an (L, H, F) model."""
        return cls(torch.zeros(0, num_layers, num_heads, device=device),
                   torch.zeros(0, num_layers, ffn_dim, device=device))

    @property
    def num_batches(self) -> int:
        """N."""
        return self.head_grads.shape[0]

    def add(self, head_grad: torch.Tensor, ffn_grad: torch.Tensor) -> None:
        """Append one batch's gradients: ``head_grad`` (L, H) and ``ffn_grad`` (L, F)."""
        expected = (tuple(self.head_grads.shape[1:]), tuple(self.ffn_grads.shape[1:]))
        if (tuple(head_grad.shape), tuple(ffn_grad.shape)) != expected:
            raise ValueError(f"FisherStatistics.add: got head_grad {tuple(head_grad.shape)} and ffn_grad "
                             f"{tuple(ffn_grad.shape)}, expected {expected[0]} and {expected[1]}")
        device, dtype = self.head_grads.device, self.head_grads.dtype
        self.head_grads = torch.cat([self.head_grads, head_grad.detach().to(device, dtype)[None]])  # (N+1, L, H)
        self.ffn_grads = torch.cat([self.ffn_grads, ffn_grad.detach().to(device, dtype)[None]])  # (N+1, L, F)

    def head_importance(self) -> torch.Tensor:
        """(L, H) float64: Σ over batches of grad² (the empirical Fisher diagonal)."""
        return self.head_grads.double().pow(2).sum(0)

    def ffn_importance(self) -> torch.Tensor:
        """(L, F) float64: Σ over batches of grad²."""
        return self.ffn_grads.double().pow(2).sum(0)

    @classmethod
    def merge(cls, stats: Sequence[FisherStatistics]) -> FisherStatistics:
        """The statistics of all the batches of ``stats``, concatenated in order (on the first one's device)."""
        if not stats:
            raise ValueError("FisherStatistics.merge: nothing to merge")
        device = stats[0].head_grads.device
        return cls(torch.cat([s.head_grads.to(device) for s in stats]),
                   torch.cat([s.ffn_grads.to(device) for s in stats]))

    @classmethod
    def from_gathered(cls, head_grads: torch.Tensor, ffn_grads: torch.Tensor) -> FisherStatistics:
        """Statistics from all-gathered tensors: ``head_grads`` (W, N, L, H) and ``ffn_grads`` (W, N, L, F)."""
        if head_grads.dim() != 4 or ffn_grads.dim() != 4:
            raise ValueError(f"FisherStatistics.from_gathered: got {tuple(head_grads.shape)} and "
                             f"{tuple(ffn_grads.shape)}, expected (W, N, L, H) and (W, N, L, F)")
        return cls(head_grads.flatten(0, 1), ffn_grads.flatten(0, 1))  # (W·N, L, H), (W·N, L, F)

    def to_dict(self) -> dict[str, torch.Tensor]:
        """``{"head_grads", "ffn_grads"}`` (for a ``state_dict``)."""
        return {"head_grads": self.head_grads, "ffn_grads": self.ffn_grads}

    @classmethod
    def from_dict(cls, tensors: Mapping[str, torch.Tensor]) -> FisherStatistics:
        """Statistics from :meth:`to_dict`'s output."""
        if set(tensors) != {"head_grads", "ffn_grads"}:
            raise ValueError(f"FisherStatistics.from_dict: expected keys ['ffn_grads', 'head_grads'], got "
                             f"{sorted(tensors)}")
        return cls(tensors["head_grads"], tensors["ffn_grads"])


# ================================================================================================ 2. search
def teacher_budget(budget: FlopsBudget) -> FlopsBudget:
    """The reference code's tuning-teacher budget: ``flops_kept ** 0.5`` (``get_pruning_schedule(target, 2)[0]``)."""
    return dataclasses.replace(budget, flops_kept=math.sqrt(budget.flops_kept))


def search_masks(head_importance: torch.Tensor, ffn_importance: torch.Tensor, budget: FlopsBudget) -> PruningMasks:
    """Kwon's budgeted mask search over whole heads and FFN neurons.

    Heads and neurons are each sorted globally by importance (descending, stable: lower index first among
    equals). For every k in 0..L·H, the top-k heads and the best ``budget.max_neurons(k)`` neurons; the k with the
    largest total importance (heads' sum + neurons' sum) wins, the smallest k among equal totals.

    Args:
        head_importance: (L, H), e.g. :meth:`FisherStatistics.head_importance`.
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


# ================================================================================================ 3. rearrange
def rearrangement_objective(pruned_indices: torch.Tensor | Sequence[int], grads: torch.Tensor) -> float:
    """``||Σ_{u pruned} g_u||²``: the squared norm of the summed per-batch gradient vectors of the pruned units.

    Args:
        pruned_indices: indices of one layer's pruned units.
        grads: (N, U) per-batch mask gradients of the layer's U units.
    """
    index = torch.as_tensor(pruned_indices, dtype=torch.long, device=grads.device).reshape(-1)
    return float(grads.double()[:, index].sum(1).pow(2).sum())  # (N, P) → (N,) → scalar


def rearrange_layer(kept: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Kwon's greedy rearrangement of one layer's mask, the number of kept units fixed.

    Starts from the ``P`` units with the smallest Fisher importance pruned; then, for every other unit in
    increasing importance, adds it to the pruned set and drops the pruned unit whose removal leaves the smallest
    :func:`rearrangement_objective`. If the result's objective is higher than the input's, the input is kept.

    Args:
        kept: (U,) bool, the layer's kept units.
        grads: (N, U) per-batch mask gradients.

    Returns:
        (U,) bool on ``kept``'s device, with as many kept units as ``kept``.
    """
    num_units = kept.shape[0]
    num_pruned = int((~kept).sum())
    if num_pruned in (0, num_units):
        return kept.clone()
    # Low arithmetic intensity: the CPU is faster (as the reference code notes), float64 avoids drift.
    g = grads.detach().to("cpu", torch.float64).t().contiguous()  # (U, N)
    order = torch.sort(g.pow(2).sum(1), stable=True).indices.tolist()  # least important first
    pruned = order[:num_pruned]
    total = g[pruned].sum(0)  # (N,)
    for candidate in order[num_pruned:]:
        pruned.append(candidate)
        total = total + g[candidate]
        left = (total[None] - g[pruned]).pow(2).sum(1)  # (P + 1,): objective after dropping each
        drop = int(left.argmin())  # first minimum: deterministic
        total = total - g[pruned[drop]]
        del pruned[drop]
    input_pruned = torch.nonzero(~kept.cpu()).flatten()
    if rearrangement_objective(pruned, g.t()) > rearrangement_objective(input_pruned, g.t()):
        return kept.clone()
    result = torch.ones(num_units, dtype=torch.bool)
    result[pruned] = False
    return result.to(kept.device)


def rearrange_masks(masks: PruningMasks, stats: FisherStatistics) -> PruningMasks:
    """Rearrange every layer's head mask and FFN mask with :func:`rearrange_layer`.

    A unit counts as kept when its ``head`` / ``ffn`` entry is nonzero. Layers with nothing pruned or nothing kept
    are unchanged; no layer's objective rises.

    Args:
        masks: Kwon's searched masks (binary ``head`` and ``ffn``).
        stats: the per-batch gradients (at least one batch).

    Returns:
        New masks: binary ``head`` and ``ffn`` with the same per-layer counts, ``qk`` / ``vo`` copied.

    Raises:
        ValueError: statistics of zero batches, or shapes that disagree.
    """
    expected = (stats.head_grads.shape[1], stats.head_grads.shape[2], masks.head_dim, stats.ffn_grads.shape[2])
    masks.check_shape(*expected, what="the Fisher statistics")
    if stats.num_batches == 0:
        raise ValueError("rearrange_masks: the Fisher statistics hold no batch")
    head = torch.stack([rearrange_layer(masks.head[i] != 0, stats.head_grads[:, i])
                        for i in range(masks.num_layers)])  # (L, H)
    ffn = torch.stack([rearrange_layer(masks.ffn[i] != 0, stats.ffn_grads[:, i])
                       for i in range(masks.num_layers)])  # (L, F)
    return PruningMasks(head=head.to(masks.head.dtype), qk=masks.qk.detach().clone(), vo=masks.vo.detach().clone(),
                        ffn=ffn.to(masks.ffn.dtype))


# ================================================================================================ 4. tuning


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
            :func:`teacher_budget`).
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
    projection, _ = sublayer_modules(model, layer, sublayer)
    bias = projection.bias if projection.bias is not None else torch.zeros(projection.out_features, device=device)
    # b = reference (projection + residual) − student residual − bias = ref_pre_norm − pre_norm + (projection − bias)
    target = teacher["pre_norm"] - student["pre_norm"] + student["projection"] - bias  # (B, s, d)
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
        reference: ``"dense"`` or reference masks (the code: :func:`search_masks` at :func:`teacher_budget`).
        damping: see :meth:`LeastSquaresAccumulator.solve`.
        skip_first_attention: leave layer 0's attention untuned (the code does).
        cls_only_last_ffn: fit the last FFN on the first token only (the code, for classification tasks).
        reduce: sums a dict of tensors over processes (a DDP all-reduce), applied to each sublayer's system before
            it is solved; ``None`` in a single process.
        progress: called as ``progress(description, done, total)`` after each batch.
        solver: solves a sublayer's system, ``solver(acc) -> (scales or None, reason)``; default
            ``acc.solve(damping)`` (G-Pruner passes its conjugate gradient squared solver).
        cache: where the per-batch hidden states live (:class:`~lit_prune.methods.cache.SpillCache`: a memory budget,
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


# ================================================================================================ the pipeline
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


def _total_objective(masks: PruningMasks, stats: FisherStatistics) -> float:
    total = 0.0
    for layer in range(masks.num_layers):
        for field_name, grads in (("head", stats.head_grads), ("ffn", stats.ffn_grads)):
            pruned = torch.nonzero(getattr(masks, field_name)[layer] == 0).flatten()
            total += rearrangement_objective(pruned, grads[:, layer])  # grads (N, U)
    return total


def kwon_prune(model: nn.Module, batches: Sequence[Mapping[str, torch.Tensor]], budget: FlopsBudget, *,
               batch_ids: Sequence[int] | None = None, num_batches: int | None = None, rearrange: bool = True,
               tune: bool = True, tuning_reference: Literal["intermediate", "dense"] = "intermediate",
               damping: float = 1.0, cls_only_last_ffn: bool = False, reduce: Reduce | None = None,
               progress: Progress | None = None, refine: Refine | None = None,
               solver: Solver | None = None, tuning_cache_bytes: int | None = None) -> KwonResult:
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

    Returns:
        :class:`KwonResult`; compact the model with ``result.masks``.
    """
    adapter = get_adapter(model)
    if not batches:
        raise ValueError("Kwon: no calibration batches")
    batch_ids = list(range(len(batches))) if batch_ids is None else list(batch_ids)
    num_batches = len(batches) if num_batches is None else num_batches
    if len(batch_ids) != len(batches) or any(not 0 <= i < num_batches for i in batch_ids):
        raise ValueError(f"batch_ids must give each of the {len(batches)} batches a position in [0, {num_batches})")
    device = next(model.parameters()).device
    ones = PruningMasks.ones(adapter.num_layers, adapter.num_heads, adapter.head_dim, adapter.ffn_dim, device=device)
    # Fisher: each batch's gradients go to its row of the whole sample's table; summing the tables over processes
    # (zeros elsewhere) gathers every process's rows exactly, in the same order as a single process would have them.
    head_grads = torch.zeros(num_batches, adapter.num_layers, adapter.num_heads, device=device)
    ffn_grads = torch.zeros(num_batches, adapter.num_layers, adapter.ffn_dim, device=device)
    for i, (position, batch) in enumerate(zip(batch_ids, batches)):
        head_grads[position], ffn_grads[position] = mask_gradients(model, ones, batch)
        if progress is not None:
            progress("Kwon Fisher", i + 1, len(batches))
    if reduce is not None:
        gathered = reduce({"head_grads": head_grads, "ffn_grads": ffn_grads})
        head_grads, ffn_grads = gathered["head_grads"], gathered["ffn_grads"]
    stats = FisherStatistics(head_grads.cpu(), ffn_grads.cpu())
    searched = search_masks(stats.head_importance(), stats.ffn_importance(), budget)
    masks, rearranged = searched, None
    objective = {"searched": _total_objective(searched, stats)}
    if rearrange:
        rearranged = rearrange_masks(searched, stats)
        objective["rearranged"] = _total_objective(rearranged, stats)
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


# ================================================================================================ Lightning
class KwonCallback(RetrainingFreePruning):
    """Kwon et al. 2022 as a Lightning callback: Fisher → budgeted search → rearrangement → mask tuning.

    Runs once per ``fit`` (see :mod:`lit_prune.methods.base`): at the start of a fit that trains nothing, else at
    the end of training. Passes: one forward and backward pass over the calibration sample for the Fisher
    statistics, then 2L − 1 truncated passes for the mask tuning. Under DDP each process takes every
    world-size-th batch; the per-batch gradients and the least-squares systems are summed over the processes.

    Args:
        flops_kept: the fraction of the dense FLOPs to keep, in (0, 1].
        num_samples: calibration examples (the paper: 2,048, drawn with replacement).
        replacement: draw them with replacement.
        calibration_batch_size: batch size of the calibration passes.
        seed: seed of the calibration draw.
        rearrange: run the mask rearrangement (off: ablation).
        tune: run the least-squares mask tuning (off: ablation).
        tuning_reference: the tuning target: ``"intermediate"`` (the reference code: the model under the mask
            searched at ``flops_kept ** 0.5``) or ``"dense"``.
        damping: the tuning solver's damping (the code's LSMR ``damp``).
        tuning_cache_mb: MiB of the tuning's per-batch hidden states kept in memory (per process); the rest is
            spilled to a temporary folder (``$TMPDIR``) and read back, so memory stays bounded whatever
            ``num_samples``; ``None``: keep everything in memory. The masks do not depend on it.
        output_dir, save_model, evaluate, dense_metrics, latency_batch_size, latency_repeats, model_attribute, seq_len,
            time_reference_pass: see
            :class:`~lit_prune.methods.base.RetrainingFreePruning`.

    Example::

        trainer = L.Trainer(max_epochs=0, callbacks=[KwonCallback(flops_kept=0.6)])
        trainer.fit(SequenceClassificationModule("runs/finetune/sst2/final_model", task="sst2"),
                    GlueDataModule(task="sst2", tokenizer="runs/finetune/sst2/final_model"))
    """

    method = "kwon"

    def __init__(
        self,
        flops_kept: float = 0.5,
        num_samples: int = 2048,
        replacement: bool = True,
        calibration_batch_size: int = 32,
        seed: int = 0,
        rearrange: bool = True,
        tune: bool = True,
        tuning_reference: Literal["intermediate", "dense"] = "intermediate",
        damping: float = 1.0,
        tuning_cache_mb: float | None = 256,
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
        super().__init__(flops_kept=flops_kept, num_samples=num_samples, num_tokens=None, replacement=replacement,
                         calibration_batch_size=calibration_batch_size, seed=seed, output_dir=output_dir,
                         save_model=save_model, evaluate=evaluate, dense_metrics=dense_metrics,
                         latency_batch_size=latency_batch_size,
                         latency_repeats=latency_repeats, model_attribute=model_attribute,
                         seq_len=seq_len, time_reference_pass=time_reference_pass)
        if tuning_reference not in ("intermediate", "dense"):
            self.problems.append(f"tuning_reference={tuning_reference!r}: expected 'intermediate' or 'dense'")
        if isinstance(damping, bool) or not isinstance(damping, (int, float)) or not damping > 0:
            self.problems.append(f"damping={damping!r}: expected a number > 0")
        if tuning_cache_mb is not None and (isinstance(tuning_cache_mb, bool)
                                            or not isinstance(tuning_cache_mb, (int, float))
                                            or not math.isfinite(tuning_cache_mb) or tuning_cache_mb < 0):
            self.problems.append(f"tuning_cache_mb={tuning_cache_mb!r}: expected a number of MiB >= 0, or null "
                                 "(no limit)")
        self.raise_problems(self.problems)
        self.tuning_cache_mb = tuning_cache_mb
        self.rearrange = rearrange
        self.tune = tune
        self.tuning_reference = tuning_reference
        self.damping = damping

    def needs_labels(self) -> bool:
        return True

    def method_settings(self) -> dict[str, Any]:
        return {"num_samples": self.num_samples, "replacement": self.replacement, "rearrange": self.rearrange,
                "tune": self.tune, "tuning_reference": self.tuning_reference, "damping": self.damping}

    def run_method(self, model, dense, batches, batch_ids, num_batches, budget, reduce, progress):
        is_qa = getattr(model, "qa_outputs", None) is not None
        result = kwon_prune(model, batches, budget, batch_ids=batch_ids, num_batches=num_batches,
                            rearrange=self.rearrange, tune=self.tune, tuning_reference=self.tuning_reference,
                            damping=self.damping, cls_only_last_ffn=not is_qa, reduce=reduce, progress=progress,
                            tuning_cache_bytes=self.tuning_cache_bytes())
        warnings_ = [f"layer {step.layer} {step.sublayer}: tuning stopped: {step.reason}"
                     for step in result.tuning if step.status == "failed"]
        details = {
            "rearrangement": result.objective,
            "steps": [dataclasses.asdict(step) for step in result.tuning],
            "tuning_cache": result.tuning_cache,
            "warnings": warnings_,
        }
        return result.masks, details

    def tuning_cache_bytes(self) -> int | None:
        """``tuning_cache_mb`` in bytes (``None``: no limit)."""
        return None if self.tuning_cache_mb is None else int(self.tuning_cache_mb * 2**20)


__all__ = ["KwonCallback", "FisherStatistics", "KwonResult", "kwon_prune", "SublayerBatch", "TuningStep",
           "apply_scales", "collect_sublayer", "rearrange_layer", "rearrange_masks", "rearrangement_objective",
           "search_masks", "teacher_budget", "tune_masks"]
