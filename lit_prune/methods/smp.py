"""SMP: static model pruning. Mask scores are trained, the pretrained weights stay frozen.

Paper: Li, Luo, Jiang, Huang, Zhang, Zhou, Xie, Liu, "Pruning Pre-trained Language Models Without Fine-Tuning",
ACL 2023. Reference code: kongds/SMP (movement-pruning lineage: ``emmental/modules/masked_nn.py``,
``binarizer.py``, ``smp_trainer.py``). What this module implements:

* **Scores**: one per weight of every encoder Linear (Q, K, V, O, FFN up, FFN down), starting at 0; the weights
  are frozen (and so is the classifier, unless a trainable head is asked for). The forward pass uses W ⊙ M(S) with a
  binary mask M; the straight-through estimator passes ∂L/∂(W ⊙ M) ⊙ W to the scores.
* **SMP-L** (``masking="local"``): each matrix keeps its top v of scores.
* **SMP-S** (``masking="global"``): per matrix type, layer l keeps v_l = v · L · R(S_l) / Σ_l' R(S_l') with
  R(S) = Σ σ(S_ij), the matrices of one type being the same size; a ratio above 1 is capped and the excess shared
  among the others in proportion to R (so the type as a whole keeps exactly v of its weights).
* **Schedule**: cubic, v_t = v_f + (1 − v_f)(1 − t/N)³ over the N training steps, no warm-up.
* **Regulariser**: λ_R · (v_t / v_f) · R̄(S), with R̄ the mean over matrices of the mean σ(S) (the reference code's
  "l1" regularisation), λ_R = 400.

Pure functions first (:func:`local_counts`, :func:`global_counts`, :func:`topk_mask`, :func:`cubic_keep`,
:func:`score_regularizer`); the Lightning module and the export follow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

MATRIX_TYPES = ("query", "key", "value", "attn_out", "ffn_up", "ffn_down")


# ------------------------------------------------------------------------------------------------ counts
def _check_keep(keep: float, setting: str = "keep") -> float:
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not math.isfinite(keep) or not 0 < keep <= 1:
        raise ValueError(f"{setting}={keep!r}: expected a fraction of the weights in (0, 1]")
    return float(keep)


def local_count(numel: int, keep: float) -> int:
    """Weights a matrix of ``numel`` keeps at ratio ``keep`` (SMP-L): round(keep · numel), at least 1."""
    _check_keep(keep)
    return max(1, min(numel, int(math.floor(keep * numel + 0.5))))


def global_counts(relevance: Sequence[float], numel: int, keep: float) -> list[int]:
    """Weights each of L same-sized matrices of one type keeps under SMP-S.

    Ratios v_l ∝ ``relevance[l]`` (R(S_l) = Σ σ(S)), scaled so that their mean is ``keep``; a ratio above 1 is capped
    at 1 and the rest re-shared in proportion to relevance (water filling). Counts are rounded by largest remainder,
    so they sum to exactly round(keep · L · numel).

    Raises:
        ValueError: ``keep`` outside (0, 1], or a relevance that is not positive and finite.
    """
    _check_keep(keep)
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
    """A 0/1 mask of ``scores``' shape with ones at its ``count`` largest entries (ties by position)."""
    flat = scores.detach().reshape(-1)
    if not 0 <= count <= flat.numel():
        raise ValueError(f"count={count}: expected 0..{flat.numel()}")
    mask = torch.zeros_like(flat)
    if count:
        order = torch.argsort(flat, descending=True, stable=True)
        mask[order[:count]] = 1.0
    return mask.view_as(scores)


class _StraightThroughTopK(torch.autograd.Function):
    """M = top-k(S) in the forward pass; ∂L/∂S = ∂L/∂M in the backward pass (straight-through)."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, count: int) -> torch.Tensor:  # noqa: D102
        return topk_mask(scores, count)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        return grad, None


def straight_through_mask(scores: torch.Tensor, count: int) -> torch.Tensor:
    """The top-``count`` mask of ``scores``, through which gradients pass unchanged to the scores."""
    return _StraightThroughTopK.apply(scores, count)


# ------------------------------------------------------------------------------------------------ schedule
def cubic_keep(step: int, total_steps: int, final: float) -> float:
    """SMP's cubic schedule: v_t = v_f + (1 − v_f)(1 − t/N)³, from 1 at step 0 to ``final`` at step N."""
    _check_keep(final, "final")
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps}: expected at least 1")
    progress = min(max(step / total_steps, 0.0), 1.0)
    return final + (1 - final) * (1 - progress) ** 3


def score_regularizer(scores: Sequence[torch.Tensor]) -> torch.Tensor:
    """R̄(S): the mean over matrices of the mean σ(S) (differentiable)."""
    if not scores:
        raise ValueError("score_regularizer: no score matrices")
    return torch.stack([torch.sigmoid(s).mean() for s in scores]).mean()


__all__ = ["MATRIX_TYPES", "cubic_keep", "global_counts", "local_count", "score_regularizer",
           "straight_through_mask", "topk_mask"]
