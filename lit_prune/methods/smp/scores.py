"""SMP's scores: one trainable score per encoder weight, the masks they select, and the schedule that sets their counts.

Paper: Li, Luo, Jiang, Huang, Zhang, Zhou, Xie, Liu, "Pruning Pre-trained Language Models Without Fine-Tuning",
ACL 2023. Reference code: kongds/SMP (movement-pruning lineage: ``emmental/modules/masked_nn.py``,
``binarizer.py``, ``smp_trainer.py``). What this module implements:

* **Scores**: one per weight of every encoder Linear (Q, K, V, O, FFN up, FFN down), starting at 0; the weights
  are frozen. A fused Q/K/V projection (ModernBERT's) carries one score matrix per part (:class:`FusedScoreMask`). The forward pass uses W ⊙ M(S) with a binary mask M (:class:`ScoreMask`, a parametrisation of the
  Linear's weight); the straight-through estimator passes ∂L/∂(W ⊙ M) ⊙ W to the scores.
* **SMP-L** (``masking="local"``): each matrix keeps its top v of scores (:func:`local_count`).
* **SMP-S** (``masking="global"``): per matrix type, layer l keeps v_l = v · L · R(S_l) / Σ_l' R(S_l') with
  R(S) = Σ σ(S_ij), the matrices of one type being the same size; a ratio above 1 is capped and the excess shared
  among the others in proportion to R (so the type as a whole keeps exactly v of its weights; :func:`global_counts`).
* **Schedule**: cubic, v_t = v_f + (1 − v_f)(1 − t/N)³ over the N training steps, no warm-up
  (:func:`keep_at`; departures of the task modules, ``final_hold`` and ``head_warmup_steps``, are lit_prune's).
* **Regulariser**: λ_R · (v_t / v_f) · R̄(S), with R̄ the mean over matrices of the mean σ(S) (the reference code's
  "l1" regularisation), λ_R = 400 (:func:`regularizer_term`). The weight is the paper's; the reference code ramps
  it instead from 0 to λ_R as λ_R · (1 − (1 − t/N)³) (``regularization_ramp="rising"``).

Plain PyTorch: the task modules (:mod:`.module`) and the callback (:mod:`.callback`) both drive these functions.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

from lit_prune.core.arch import LinearPart, get_adapter
from lit_prune.prune.schedules import cubic_schedule

MATRIX_TYPES = ("query", "key", "value", "attn_out", "ffn_up", "ffn_down")
Masking = Literal["global", "local"]
Ramp = Literal["rising", "falling"]
ScoreMasks = dict[str, list["ScoreMask"]]


# ------------------------------------------------------------------------------------------------ counts
def check_keep(keep: float, setting: str = "keep") -> float:
    """``keep`` as a float, or a ValueError naming ``setting`` when it is not a fraction in (0, 1]."""
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not math.isfinite(keep) or not 0 < keep <= 1:
        raise ValueError(f"{setting}={keep!r}: expected a fraction of the weights in (0, 1]")
    return float(keep)


def local_count(numel: int, keep: float) -> int:
    """Weights a matrix of ``numel`` keeps at ratio ``keep`` (SMP-L): round(keep · numel), at least 1."""
    check_keep(keep)
    return max(1, min(numel, int(math.floor(keep * numel + 0.5))))


def global_counts(relevance: Sequence[float], numel: int, keep: float) -> list[int]:
    """Weights each of L same-sized matrices of one type keeps under SMP-S.

    Ratios v_l ∝ ``relevance[l]`` (R(S_l) = Σ σ(S)), scaled so that their mean is ``keep``; a ratio above 1 is capped
    at 1 and the rest re-shared in proportion to relevance (water filling). Counts are rounded by largest remainder,
    so they sum to exactly round(keep · L · numel).

    Raises:
        ValueError: ``keep`` outside (0, 1], or a relevance that is not positive and finite.
    """
    check_keep(keep)
    if not relevance or any(not (math.isfinite(r) and r > 0) for r in relevance):
        raise ValueError(f"relevance={list(relevance)!r}: expected positive finite numbers, one per matrix")
    layers = len(relevance)
    total = max(1, int(math.floor(keep * layers * numel + 0.5)))
    ratios = [0.0] * layers
    free = list(range(layers))
    budget = total / numel  # in units of whole matrices
    while free:
        scale = budget / sum(relevance[i] for i in free)
        capped = [i for i in free if scale * relevance[i] >= 1.0]
        if not capped:
            for i in free:
                ratios[i] = scale * relevance[i]
            break
        for i in capped:
            ratios[i] = 1.0
            budget -= 1.0
        free = [i for i in free if i not in capped]
    exact = [ratio * numel for ratio in ratios]
    counts = [min(numel, int(math.floor(value))) for value in exact]
    order = sorted(range(layers), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def topk_mask(scores: torch.Tensor, count: int) -> torch.Tensor:
    """A 0/1 mask of ``scores``' shape with ones at its ``count`` largest entries (ties by position).

    It runs at every forward pass for every encoder matrix, so it avoids a sort: a partial selection (``topk`` of
    the smaller side) finds the count-th largest value t; every score above t is kept, and of the scores equal to t
    the first ones by position until ``count`` are kept. The result equals a stable descending argsort's first
    ``count`` (tested) at about a seventh of its cost on a CPU. The scores must be finite (:func:`set_counts` checks
    them before every step).
    """
    flat = scores.detach().reshape(-1)
    total = flat.numel()
    if not 0 <= count <= total:
        raise ValueError(f"count={count}: expected 0..{total}")
    if count in (0, total):
        return torch.full_like(scores, float(count == total))
    if count <= total - count:
        threshold = torch.topk(flat, count, sorted=False).values.min()
    else:  # select on the smaller side: the largest of the total - count + 1 smallest is the count-th largest
        threshold = torch.topk(flat, total - count + 1, largest=False, sorted=False).values.max()
    above = flat > threshold
    ties = flat == threshold
    take = ties & (torch.cumsum(ties, 0) <= count - above.sum())
    return (above | take).to(flat.dtype).view_as(scores)


class _StraightThroughTopK(torch.autograd.Function):
    """M = top-k(S) in the forward pass; ∂L/∂S = ∂L/∂M in the backward pass (straight-through)."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, count: int) -> torch.Tensor:
        return topk_mask(scores, count)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def straight_through_mask(scores: torch.Tensor, count: int) -> torch.Tensor:
    """The top-``count`` mask of ``scores``, through which gradients pass unchanged to the scores."""
    return _StraightThroughTopK.apply(scores, count)


# ------------------------------------------------------------------------------------------------ schedule
def schedule_steps(total_steps: int, final_hold: float = 0.0) -> int:
    """N of the cubic schedule: the ``total_steps`` of training but the last ``final_hold`` of them."""
    return max(1, round(max(1, int(total_steps)) * (1 - final_hold)))


def keep_at(step: int, steps: int, params_kept: float, start: int = 0) -> float:
    """The schedule's keep ratio v_t at optimiser ``step``: 1 until ``start``, then the cubic descent to
    ``params_kept`` over the ``steps`` − ``start`` steps after it, then ``params_kept``."""
    return cubic_schedule(step - start, max(1, steps - start), params_kept)


def regularization_weight(keep: float, final: float, ramp: Ramp) -> float:
    """The factor on λ_R at keep ratio ``keep`` (final ratio ``final``): ``"falling"``, the paper's v_t / v_f (1 / v_f
    at the start, 1 at the end); ``"rising"``, SMP's code, (1 − v_t) / (1 − v_f) (0 at the start, 1 at the end: the
    pruned fraction's share of its final value)."""
    if ramp == "falling":
        return keep / final
    if ramp == "rising":
        return 1.0 if final >= 1 else (1 - keep) / (1 - final)
    raise ValueError(f"regularization_ramp={ramp!r}: expected 'rising' or 'falling'")


def score_regularizer(scores: Sequence[torch.Tensor]) -> torch.Tensor:
    """R̄(S): the mean over matrices of the mean σ(S) (differentiable)."""
    if not scores:
        raise ValueError("score_regularizer: no score matrices")
    return torch.stack([torch.sigmoid(s).mean() for s in scores]).mean()


def regularizer_term(score_masks: ScoreMasks, keep: float, params_kept: float, regularization: float,
                     ramp: Ramp) -> tuple[torch.Tensor, torch.Tensor]:
    """λ_R · w(v_t) · R̄(S) (the term added to the objective) and R̄(S) itself (for logging)."""
    regularizer = score_regularizer(score_tensors(score_masks))
    return regularization * regularization_weight(keep, params_kept, ramp) * regularizer, regularizer


def settings_problems(params_kept: Any, masking: Any, regularization: Any, regularization_ramp: Any,
                      scores_learning_rate: Any, final_hold: Any) -> list[str]:
    """What is wrong with the settings the SMP modules and the callback share, each naming setting, value and
    what is allowed (empty when all are fine)."""
    problems = []
    try:
        check_keep(params_kept, "params_kept")
    except ValueError as error:
        problems.append(str(error))
    if masking not in ("global", "local"):
        problems.append(f"masking={masking!r}: expected 'global' (SMP-S) or 'local' (SMP-L)")
    if isinstance(regularization, bool) or not (isinstance(regularization, (int, float)) and regularization >= 0):
        problems.append(f"regularization={regularization!r}: expected a number >= 0 (0 switches it off)")
    if regularization_ramp not in ("rising", "falling"):
        problems.append(f"regularization_ramp={regularization_ramp!r}: expected 'rising' (SMP's code: from 0 up to "
                        "λ_R as the pruned fraction grows) or 'falling' (the paper's formula: λ_R · v_t / v_f)")
    if isinstance(scores_learning_rate, bool) or not (isinstance(scores_learning_rate, (int, float))
                                                      and scores_learning_rate > 0):
        problems.append(f"scores_learning_rate={scores_learning_rate!r}: expected a number > 0")
    if isinstance(final_hold, bool) or not (isinstance(final_hold, (int, float)) and 0 <= final_hold < 1):
        problems.append(f"final_hold={final_hold!r}: expected a fraction of the training steps in [0, 1)")
    return problems


# ------------------------------------------------------------------------------------------------ scores
class ScoreMask(nn.Module):
    """A parametrisation W → W ⊙ M(S) of one Linear weight: S are trainable scores (zeros at start), M keeps the
    ``count`` highest scores (set before each forward pass by whatever owns the schedule)."""

    def __init__(self, shape: torch.Size) -> None:
        super().__init__()
        self.scores = nn.Parameter(torch.zeros(shape))
        self.count = int(torch.Size(shape).numel())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * straight_through_mask(self.scores, self.count).to(weight.dtype)

    def mask(self) -> torch.Tensor:
        """The current binary mask (no gradient)."""
        return topk_mask(self.scores, self.count)


class FusedScoreMask(nn.Module):
    """The parametrisation of a Linear weight that holds several matrices side by side (ModernBERT's fused query,
    key and value projection): one :class:`ScoreMask` per matrix (``parts``, in row order), each with its own
    count, so that every matrix type keeps its own scores and counts as in an encoder with separate projections."""

    def __init__(self, part_shapes: Sequence[torch.Size]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(ScoreMask(shape) for shape in part_shapes)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        mask = torch.cat([straight_through_mask(part.scores, part.count) for part in self.parts])
        return weight * mask.to(weight.dtype)


def encoder_linears(model: nn.Module) -> dict[str, list[nn.Linear | LinearPart]]:
    """The encoder's Linear layers by matrix type (:data:`MATRIX_TYPES`), in layer order (a part of a fused Linear
    where the architecture fuses projections)."""
    adapter = get_adapter(model)
    layers = [adapter.layer(i) for i in range(adapter.num_layers)]
    return {kind: [getattr(layer, kind) for layer in layers] for kind in MATRIX_TYPES}


def weight_owners(model: nn.Module) -> list[tuple[nn.Linear, list[tuple[str, nn.Linear | LinearPart]]]]:
    """Each encoder Linear whose weight gets scores, with the matrices (type, Linear or part) its weight holds."""
    owners: dict[int, tuple[nn.Linear, list[tuple[str, nn.Linear | LinearPart]]]] = {}
    for kind, linears in encoder_linears(model).items():
        for linear in linears:
            owner = linear.linear if isinstance(linear, LinearPart) else linear
            owners.setdefault(id(owner), (owner, []))[1].append((kind, linear))
    return list(owners.values())


def head_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The task head's parameters: every parameter outside the base model, and the base model's pooler."""
    prefix = model.base_model_prefix + "."
    return [(name, parameter) for name, parameter in model.named_parameters()
            if not name.startswith(prefix) or ".pooler." in name]


def install_scores(model: nn.Module, train_head: bool = False) -> ScoreMasks:
    """Freeze every weight of ``model`` and put a :class:`ScoreMask` on each encoder Linear weight; with
    ``train_head``, the task head (:func:`head_parameters`) trains with the scores."""
    model.requires_grad_(False)
    masks: ScoreMasks = {kind: [] for kind in MATRIX_TYPES}
    for owner, matrices in weight_owners(model):  # in layer order within each matrix type
        fused = isinstance(matrices[0][1], LinearPart)
        if fused:
            matrices = sorted(matrices, key=lambda item: item[1].start)
            assert [m.start for _, m in matrices] == [0] + [m.stop for _, m in matrices[:-1]] and \
                matrices[-1][1].stop == owner.out_features, "the parts must tile the fused weight"
            parametrization = FusedScoreMask([m.weight.shape for _, m in matrices])
        else:
            parametrization = ScoreMask(owner.weight.shape)
        parametrize.register_parametrization(owner, "weight", parametrization.to(owner.weight.device))
        registered = owner.parametrizations.weight[0]
        for (kind, _), score_mask in zip(matrices, registered.parts if fused else [registered]):
            masks[kind].append(score_mask)
    if train_head:
        for _, parameter in head_parameters(model):
            parameter.requires_grad_(True)
    return masks


def has_scores(model: nn.Module) -> bool:
    """Whether ``model``'s encoder Linear weights already carry score masks."""
    return any(parametrize.is_parametrized(owner, "weight") and isinstance(owner.parametrizations.weight[0],
                                                                            (ScoreMask, FusedScoreMask))
               for owner, _ in weight_owners(model))


def score_tensors(score_masks: ScoreMasks) -> list[torch.Tensor]:
    """Every score matrix, type by type, layer by layer."""
    return [m.scores for masks in score_masks.values() for m in masks]


def set_counts(score_masks: ScoreMasks, keep: float, masking: Masking) -> dict[str, list[int]]:
    """Set every matrix's kept count for the ratio ``keep``: SMP-L (``local``) or SMP-S (``global``)."""
    counts: dict[str, list[int]] = {}
    for kind, masks in score_masks.items():
        for layer, mask in enumerate(masks):
            if not torch.isfinite(mask.scores).all():
                raise FloatingPointError(f"SMP: the scores of layer {layer}'s {kind} matrix are not finite; lower "
                                         "scores_learning_rate or the regularization")
        numel = masks[0].scores.numel()
        if masking == "local":
            counts[kind] = [local_count(numel, keep) for _ in masks]
        else:
            with torch.no_grad():
                relevance = [float(torch.sigmoid(m.scores).double().sum()) for m in masks]
            counts[kind] = global_counts(relevance, numel, keep)
        for mask, count in zip(masks, counts[kind]):
            mask.count = count
    return counts


def kept_fraction(score_masks: ScoreMasks) -> float:
    """The fraction of the encoder Linear weights the current counts keep."""
    kept = sum(m.count for masks in score_masks.values() for m in masks)
    return kept / sum(m.scores.numel() for masks in score_masks.values() for m in masks)


def binary_masks(score_masks: ScoreMasks) -> dict[str, torch.Tensor]:
    """``{"layer.<i>.<type>": mask}``: the current binary weight masks, on the CPU (the export's)."""
    return {f"layer.{i}.{kind}": m.mask().cpu() for kind, masks in score_masks.items() for i, m in enumerate(masks)}


def fix_masks(model: nn.Module) -> None:
    """Remove the score masks from ``model``, leaving each encoder Linear weight at W ⊙ M (plain, dense shape)."""
    for owner, _ in weight_owners(model):
        parametrize.remove_parametrizations(owner, "weight", leave_parametrized=True)


# ------------------------------------------------------------------------------------------------ cost
@contextlib.contextmanager
def plain_model(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` as plain fine-tuning would train it (no score masks, every weight trainable) inside the block; the
    same score masks (and trainable flags) are put back afterwards."""
    owners = [(owner, owner.parametrizations.weight[0]) for owner, _ in weight_owners(model)]
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    for owner, _ in owners:
        parametrize.remove_parametrizations(owner, "weight", leave_parametrized=False)
    model.requires_grad_(True)
    try:
        yield model
    finally:
        for owner, parametrization in owners:
            parametrize.register_parametrization(owner, "weight", parametrization)
        for name, p in model.named_parameters():
            p.requires_grad_(grads.get(name, "scores" in name))


def step_times(model: nn.Module, score_masks: ScoreMasks, inputs: dict[str, torch.Tensor],
               repeats: int) -> dict[str, float]:
    """Median wall time of one SMP training step (forward, backward to the scores, at the counts set now) against
    one plain fine-tuning step of the same model (forward, backward to every weight), in alternating blocks of one
    run, on ``inputs`` (with labels: the model's loss). Optimiser updates are left out of both (a small part of
    either)."""
    mode = model.training
    model.train()

    def steps(count: int) -> list[float]:
        out = []
        with torch.enable_grad():
            for _ in range(count):
                started = time.perf_counter()
                model(**inputs).loss.backward()
                out.append(time.perf_counter() - started)
        model.zero_grad(set_to_none=True)
        return out

    times: dict[str, list[float]] = {"smp": [], "finetune": []}
    first, second = (repeats + 1) // 2, repeats // 2
    try:
        for count in (first, second):  # two rounds of blocks, each block after one warm-up step
            steps(1)
            times["smp"] += steps(count)
            with plain_model(model):
                steps(1)
                times["finetune"] += steps(count)
    finally:
        model.train(mode)
    smp_ms, finetune_ms = (1000 * sorted(v)[len(v) // 2] for v in (times["smp"], times["finetune"]))
    return {"smp_ms": smp_ms, "finetune_ms": finetune_ms, "ratio": smp_ms / finetune_ms, "repeats": repeats,
            "batch_size": int(inputs["input_ids"].shape[0])}


__all__ = ["MATRIX_TYPES", "Masking", "Ramp", "ScoreMask", "ScoreMasks", "binary_masks", "check_keep",
           "encoder_linears", "fix_masks", "global_counts", "has_scores", "head_parameters", "install_scores",
           "keep_at", "kept_fraction", "local_count", "plain_model", "regularization_weight", "regularizer_term",
           "schedule_steps", "score_regularizer", "score_tensors", "set_counts", "settings_problems",
           "step_times", "straight_through_mask", "topk_mask"]
