"""Named-entity scores as seqeval computes them (entity-level precision, recall and F1, micro-averaged, strict IOB2:
an ``I-PER`` that follows no ``B-PER`` / ``I-PER`` starts no entity; in 0..1) with token accuracy, and a
``torchmetrics`` metric that collects predicted and gold tag ids across devices."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

#: the label of the positions that carry no tag (a word's later sub-tokens, special tokens, padding)
IGNORE_INDEX = -100

NER_METRICS = ("precision", "recall", "f1", "accuracy")

_IOB2_TAG = re.compile(r"[BI]-\S.*")


def check_iob2(label_names: Sequence[str], setting: str = "label_names") -> list[str]:
    """The label names as a list, checked to be IOB2 tags: ``"O"`` and ``B-<type>`` / ``I-<type>``, each once.

    Raises:
        ValueError: a name is no IOB2 tag, appears twice, or ``"O"`` is missing.
    """
    names = list(label_names)
    problems = []
    bad = [name for name in names if not (isinstance(name, str) and (name == "O" or _IOB2_TAG.fullmatch(name)))]
    if bad:
        problems.append(f"not IOB2 tags: {bad!r} (expected 'O', 'B-<type>' or 'I-<type>')")
    twice = sorted({name for name in names if names.count(name) > 1}, key=str)
    if twice:
        problems.append(f"repeated: {twice!r}")
    if "O" not in names:
        problems.append("no 'O' tag")
    if problems:
        raise ValueError(f"{setting}={names!r}: " + "; ".join(problems))
    return names


def entity_scores(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity ``precision``, ``recall`` and ``f1`` (seqeval, micro, strict IOB2) and token ``accuracy``, in 0..1.

    Args:
        y_true: per sentence, the gold tags of its words.
        y_pred: per sentence, the predicted tags of its words (as many as ``y_true``'s).

    Returns:
        The four scores; a score whose denominator is 0 (no predicted or no gold entity, no word) is 0.0.
    """
    # what seqeval.metrics.precision_score / recall_score / f1_score(mode="strict", scheme=IOB2) each call: once here
    from seqeval.metrics.v1 import precision_recall_fscore_support
    from seqeval.scheme import IOB2

    y_true, y_pred = [list(tags) for tags in y_true], [list(tags) for tags in y_pred]
    if len(y_true) != len(y_pred) or any(len(t) != len(p) for t, p in zip(y_true, y_pred)):
        raise ValueError("entity_scores: y_true and y_pred need the same sentences with the same number of tags")
    words = sum(len(tags) for tags in y_true)
    if words == 0:  # seqeval refuses an empty list of sentences
        return dict.fromkeys(NER_METRICS, 0.0)
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, average="micro", scheme=IOB2,
                                                               zero_division=0)
    correct = sum(t == p for true, pred in zip(y_true, y_pred) for t, p in zip(true, pred))
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1), "accuracy": correct / words}


class EntityF1(Metric):
    """Entity-level precision, recall, F1 (seqeval, strict IOB2) and token accuracy of tag ids, correct under DDP.

    ``update`` keeps the positions whose gold label is not -100 (a word's first sub-token) and stores, flat, their
    predicted and gold ids and each sentence's count of them; ``compute`` gathers these from every process
    (concatenated in the same order), cuts them back into sentences and scores all of them in one seqeval call.
    A sentence without labelled positions counts for nothing; an empty batch adds nothing.

    Args:
        label_names: the tag of each label id (IOB2).
        kwargs: passed to ``torchmetrics.Metric``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, label_names: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.label_names = check_iob2(label_names)
        self.add_state("preds", default=[], dist_reduce_fx="cat")  # per labelled position
        self.add_state("target", default=[], dist_reduce_fx="cat")  # per labelled position
        self.add_state("lengths", default=[], dist_reduce_fx="cat")  # per sentence: its labelled positions

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Store a batch: predicted ids and gold ids ``[batch, seq]``, -100 in ``target`` where no tag is scored."""
        if preds.shape != target.shape or target.ndim != 2:
            raise ValueError(f"EntityF1.update: expected preds and target of one shape [batch, seq], got "
                             f"{tuple(preds.shape)} and {tuple(target.shape)}")
        scored = target != IGNORE_INDEX
        # boolean indexing reads row by row: each sentence's positions stay together and in order
        self.preds.append(preds.detach()[scored].long())
        self.target.append(target.detach()[scored].long())
        self.lengths.append(scored.sum(dim=1).long())

    def _sync_dist(self, dist_sync_fn: Callable = gather_all_tensors, process_group: Any | None = None) -> None:
        # torchmetrics sends an empty float tensor for a process that saw no batch, but all_gather needs the same
        # dtype on every process: send an empty int64 one instead. (sync() has cached the states; unsync restores.)
        for name in self._reductions:
            if isinstance(getattr(self, name), list) and not getattr(self, name):
                setattr(self, name, [torch.zeros(0, dtype=torch.long, device=self.device)])
        super()._sync_dist(dist_sync_fn, process_group=process_group)

    def compute(self) -> dict[str, torch.Tensor]:
        """``precision``, ``recall``, ``f1`` and ``accuracy`` (0..1) of the sentences seen by every process."""
        if isinstance(self.lengths, list) and not self.lengths:
            raise ValueError("EntityF1.compute: no batch was added with update()")
        lengths = dim_zero_cat(self.lengths).long().tolist()
        if not lengths:
            raise ValueError("EntityF1.compute: no sentence was added with update()")
        preds = dim_zero_cat(self.preds).long().tolist()
        target = dim_zero_cat(self.target).long().tolist()
        if not (len(preds) == len(target) == sum(lengths)):
            raise RuntimeError(f"EntityF1: {len(preds)} predictions and {len(target)} labels for "
                               f"{sum(lengths)} labelled positions")
        out_of_range = sorted({i for i in preds + target if not 0 <= i < len(self.label_names)})
        if out_of_range:
            raise ValueError(f"EntityF1: label ids {out_of_range} are outside the {len(self.label_names)} labels")
        names = self.label_names
        y_true, y_pred, start = [], [], 0
        for length in lengths:
            y_true.append([names[i] for i in target[start:start + length]])
            y_pred.append([names[i] for i in preds[start:start + length]])
            start += length
        scores = entity_scores(y_true, y_pred)
        return {name: torch.tensor(value, dtype=torch.float32) for name, value in scores.items()}


__all__ = ["IGNORE_INDEX", "NER_METRICS", "EntityF1", "check_iob2", "entity_scores"]
