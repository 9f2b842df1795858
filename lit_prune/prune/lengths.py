"""Length groups: run a padded batch as a few sub-batches of similar length, each padded to its own longest row.

A calibration batch drawn at random is padded to its longest example: on SST-2, batches of 32 hold about three
times as many positions as tokens, and every layer pays for the padding. A pass whose result is a sum over the
batch's rows (gradients of a mean loss, sums over tokens) can run the rows in groups sorted by length instead, each
cut to its own longest row, and add the groups' results: the same numbers up to float rounding, for a fraction of
the work. :func:`length_groups` picks the groups (the fewest padded positions, with a cost per extra group);
:func:`split_batch` cuts a batch into its :class:`Part` s; :func:`rows_agree` checks that a model's per-row outputs
do not depend on the split.

Only right-padded batches are split (each row's tokens first, its padding after), and only a pass whose outputs
for a row do not depend on how far that row is padded should be split (true of sequence classifiers that read the
first token; not of per-token outputs such as question answering's, whose softmax runs over every position).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch


def is_right_padded(attention_mask: torch.Tensor) -> bool:
    """Whether every row of the (B, s) mask is its tokens (nonzero) followed by its padding (zero)."""
    keep = attention_mask.bool()
    lengths = keep.sum(1, keepdim=True)  # (B, 1)
    return bool(torch.equal(keep, torch.arange(keep.shape[1], device=keep.device)[None] < lengths))


def length_groups(attention_mask: torch.Tensor, max_groups: int,
                  group_cost: float = 0.05) -> list[tuple[torch.Tensor, int]]:
    """Split a right-padded batch's rows into at most ``max_groups`` groups of similar length.

    The rows are sorted by length (stable) and cut into contiguous groups so that the padded positions,
    Σ rows(group) × longest(group), plus ``group_cost`` × B·s per group, are fewest (exact, by dynamic
    programming): a group is added only where it saves more than that share of the batch's positions (per-call
    costs make many tiny groups slower than a few).

    Args:
        attention_mask: (B, s), nonzero for tokens.
        max_groups: the most groups (1: the batch whole).
        group_cost: the cost of one group, as a fraction of the batch's padded positions B·s.

    Returns:
        ``[(rows, length), ...]``: each group's row indices (long, on the mask's device, sorted by length) and its
        longest row. One group keeps the rows in their order: ``[(arange(B), s)]`` when the batch is not
        right-padded, ``max_groups`` is 1 or no split pays; the length cut to the longest row when that is shorter.
    """
    batch, seq = attention_mask.shape
    device = attention_mask.device
    if max_groups <= 1 or batch <= 1 or not is_right_padded(attention_mask):
        return [(torch.arange(batch, device=device), seq)]
    lengths = attention_mask.bool().sum(1)  # (B,)
    order = torch.sort(lengths, stable=True).indices
    sorted_lengths = lengths[order].tolist()
    penalty = group_cost * batch * seq
    # best[g][j]: the cost of the first j sorted rows in g groups; cut[g][j]: where the last of them starts
    best = [[float("inf")] * (batch + 1) for _ in range(max_groups + 1)]
    cut = [[0] * (batch + 1) for _ in range(max_groups + 1)]
    best[0][0] = 0.0
    for g in range(1, max_groups + 1):
        for j in range(g, batch + 1):
            for i in range(g - 1, j):
                cost = best[g - 1][i] + (j - i) * sorted_lengths[j - 1] + penalty
                if cost < best[g][j]:
                    best[g][j], cut[g][j] = cost, i
    groups = min(range(1, max_groups + 1), key=lambda g: (best[g][batch], g))
    if groups == 1:
        return [(torch.arange(batch, device=device), max(sorted_lengths[-1], 1))]
    bounds, j = [], batch
    for g in range(groups, 0, -1):
        bounds.append((cut[g][j], j))
        j = cut[g][j]
    return [(order[i:j], max(sorted_lengths[j - 1], 1)) for i, j in reversed(bounds)]


def take_rows(tensors: Mapping[str, torch.Tensor], rows: torch.Tensor, length: int,
              batch_shape: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The tensors of a batch cut to one group: ``rows`` of every tensor whose leading dim is the batch's, and the
    first ``length`` positions of every tensor whose leading dims are (B, s) (ids, masks, hidden states)."""
    batch, seq = batch_shape
    cut: dict[str, torch.Tensor] = {}
    for name, value in tensors.items():
        if value.dim() >= 2 and tuple(value.shape[:2]) == (batch, seq):
            cut[name] = value[rows.to(value.device), :length]
        elif value.dim() >= 1 and value.shape[0] == batch:
            cut[name] = value[rows.to(value.device)]
        else:
            cut[name] = value
    return cut


@dataclass(eq=False)
class Part:
    """One length group of a calibration batch.

    Attributes:
        batch: the batch's tensors cut to the group's rows and to its longest row.
        rows: (n,) long, which rows of the batch.
        length: the positions per row (its longest row's tokens).
        share: n / B, the weight of the group's mean loss in the batch's mean loss.
        cut: whether the part differs from the whole batch (fewer rows or positions).
    """

    batch: dict[str, torch.Tensor]
    rows: torch.Tensor
    length: int
    share: float
    cut: bool


def split_batch(batch: Mapping[str, Any], max_groups: int, group_cost: float = 0.05) -> list[Part]:
    """The :class:`Part` s of a batch (its tensors only) by :func:`length_groups` of its ``attention_mask``; the
    batch whole when it has none."""
    tensors = {name: value for name, value in batch.items() if isinstance(value, torch.Tensor)}
    mask = tensors.get("attention_mask")
    if mask is None or mask.dim() != 2:
        first = next(iter(tensors.values()))
        return [Part(tensors, torch.arange(first.shape[0]), first.shape[1] if first.dim() > 1 else 1, 1.0, False)]
    size, seq = mask.shape
    return [Part(take_rows(tensors, rows, length, (size, seq)), rows, length, rows.numel() / size,
                 rows.numel() < size or length < seq)
            for rows, length in length_groups(mask, max_groups, group_cost)]


def rows_agree(whole: Mapping[str, torch.Tensor], parts: Sequence[Part], outputs: Sequence[Mapping[str, torch.Tensor]],
               rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    """Whether per-row outputs computed on the parts of a batch are those computed on the whole batch.

    Args:
        whole: outputs of the whole batch, each (B, ...) with one row per example.
        parts: the batch's parts.
        outputs: the same outputs of each part, (n, ...).

    Returns:
        False when an output is not per row with the same trailing shape in every part (e.g. per-position outputs,
        whose length follows the part's) or when the values differ beyond the tolerance.
    """
    for name, value in whole.items():
        pieces = [output.get(name) for output in outputs]
        if value.dim() < 1 or any(piece is None or piece.shape[0] != part.rows.numel()
                                  or piece.shape[1:] != value.shape[1:] for piece, part in zip(pieces, parts)):
            return False
        joined = torch.empty_like(value)
        for piece, part in zip(pieces, parts):
            joined[part.rows.to(value.device)] = piece.to(value.device, value.dtype)
        if not torch.allclose(joined, value, rtol=rtol, atol=atol):
            return False
    return True


__all__ = ["Part", "is_right_padded", "length_groups", "rows_agree", "split_batch", "take_rows"]
