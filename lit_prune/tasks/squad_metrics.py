"""SQuAD scoring as the official v1.1 / v2.0 evaluation scripts do it (normalised exact match and token F1, best
over the gold answers, in 0..100), and a ``torchmetrics`` metric that collects start/end logits across devices."""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lit_prune.data.squad import postprocess_predictions

#: logit given to the positions a batch was padded with, so rows of different batches concatenate
PAD_LOGIT = -1e4

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, and collapse whitespace (official scripts)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match_score(prediction: str, gold: str) -> float:
    """1.0 when the normalised texts are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Token-overlap F1 of the normalised texts (0..1); when either is empty, 1.0 only if both are."""
    predicted = normalize_answer(prediction).split()
    expected = normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((collections.Counter(predicted) & collections.Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def gold_answers(texts: Sequence[str]) -> list[str]:
    """The gold answers that count: those not empty after normalisation, or ``[""]`` for an unanswerable
    question (SQuAD v2.0 script)."""
    return [text for text in texts if normalize_answer(text)] or [""]


def squad_scores(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
                 version_2_with_negative: bool = False) -> dict[str, float]:
    """Exact match and F1 (0..100) of the predicted questions, each the best over that question's gold answers.

    Args:
        predictions: ``{question id: predicted text}``; only these questions are scored.
        references: ``{question id: gold answer texts}``; ``[]`` or ``[""]`` marks an unanswerable question.
        version_2_with_negative: also report ``HasAns_exact`` / ``HasAns_f1`` (answerable questions) and
            ``NoAns_exact`` / ``NoAns_f1`` (unanswerable ones), each when such questions were scored.

    Returns:
        ``exact_match`` and ``f1``, plus the v2.0 keys.
    """
    if not predictions:
        raise ValueError("squad_scores: no predictions to score")
    missing = [qid for qid in predictions if qid not in references]
    if missing:
        raise ValueError(f"squad_scores: {len(missing)} predicted question ids have no reference "
                         f"(first: {missing[0]!r})")
    exact: dict[bool, list[float]] = {True: [], False: []}  # has an answer -> per-question scores
    f1: dict[bool, list[float]] = {True: [], False: []}
    for qid, prediction in predictions.items():
        golds = gold_answers(references[qid])
        has_answer = golds != [""]
        exact[has_answer].append(max(exact_match_score(prediction, gold) for gold in golds))
        f1[has_answer].append(max(f1_score(prediction, gold) for gold in golds))

    def mean(values: list[float]) -> float:
        return 100.0 * sum(values) / len(values)

    scores = {"exact_match": mean(exact[True] + exact[False]), "f1": mean(f1[True] + f1[False])}
    if version_2_with_negative:
        for has_answer, prefix in ((True, "HasAns"), (False, "NoAns")):
            if exact[has_answer]:
                scores[f"{prefix}_exact"] = mean(exact[has_answer])
                scores[f"{prefix}_f1"] = mean(f1[has_answer])
    return scores


class SquadMetric(Metric):
    """SQuAD exact match and F1 from start/end logits of evaluation windows, correct under DDP.

    ``update`` stores each batch's logits with the windows' ``feature_index`` (their rows in ``features``);
    ``compute`` gathers them from every process, drops duplicates (a ``DistributedSampler`` pads its last batch
    with repeated windows), turns the logits into answer texts and scores the questions that had windows.

    Args:
        examples: the evaluation questions: dicts with ``id``, ``context`` and ``answers`` (``{"text": [...]}``).
        features: the evaluation windows (a ``datasets.Dataset`` or a list of dicts) with ``example_id`` and
            ``offset_mapping`` (``[-1, -1]`` outside the context).
        max_seq_length: the longest window; logits are padded to this width.
        version_2_with_negative: SQuAD v2.0 (questions may have no answer).
        n_best_size: start and end candidates per window.
        max_answer_length: longest predicted answer, in tokens.
        null_score_diff_threshold: margin the no-answer score needs over the best span (v2.0).
        kwargs: passed to ``torchmetrics.Metric``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        examples: Sequence[Mapping[str, Any]],
        features: Any,
        max_seq_length: int,
        version_2_with_negative: bool = False,
        n_best_size: int = 20,
        max_answer_length: int = 30,
        null_score_diff_threshold: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.examples = examples
        self.references = {str(example["id"]): list(example["answers"]["text"]) for example in examples}
        self.max_seq_length = max_seq_length
        self.version_2_with_negative = version_2_with_negative
        self.n_best_size = n_best_size
        self.max_answer_length = max_answer_length
        self.null_score_diff_threshold = null_score_diff_threshold
        self._example_ids, self._token_starts, self._offsets = _feature_table(features)
        self.add_state("feature_index", default=[], dist_reduce_fx="cat")
        self.add_state("start_logits", default=[], dist_reduce_fx="cat")
        self.add_state("end_logits", default=[], dist_reduce_fx="cat")

    def update(self, start_logits: torch.Tensor, end_logits: torch.Tensor, feature_index: torch.Tensor) -> None:
        """Store a batch: ``start_logits`` / ``end_logits`` ``[batch, seq]``, ``feature_index`` ``[batch]``."""
        width = start_logits.shape[-1]
        if width > self.max_seq_length:
            raise ValueError(f"SquadMetric: logits are {width} tokens wide, more than max_seq_length="
                             f"{self.max_seq_length}")
        # [batch, seq] -> [batch, max_seq_length]: every batch is padded to its own longest window, and the states
        # are concatenated along the batch dimension, so all rows need one width.
        pad = (0, self.max_seq_length - width)
        self.start_logits.append(F.pad(start_logits.detach().float(), pad, value=PAD_LOGIT))
        self.end_logits.append(F.pad(end_logits.detach().float(), pad, value=PAD_LOGIT))
        self.feature_index.append(feature_index.detach().long())

    def compute(self) -> dict[str, torch.Tensor]:
        """``exact_match`` and ``f1`` (0..100), and for v2.0 ``HasAns_*`` / ``NoAns_*``, of the questions seen."""
        if isinstance(self.feature_index, list) and not self.feature_index:
            raise ValueError("SquadMetric.compute: no batch was added with update()")
        # .long(): torchmetrics stands a float placeholder in for a process that saw no batch.
        index = dim_zero_cat(self.feature_index).long().cpu().numpy()
        start = dim_zero_cat(self.start_logits).cpu().numpy()
        end = dim_zero_cat(self.end_logits).cpu().numpy()
        if index.max() >= len(self._example_ids) or index.min() < 0:
            raise ValueError(f"SquadMetric: feature_index {int(index.max())} is outside the "
                             f"{len(self._example_ids)} evaluation features")
        # A window can arrive more than once (DistributedSampler padding); keep its first copy.
        unique, first = np.unique(index, return_index=True)
        features = [{"example_id": self._example_ids[i],
                     "offset_mapping": self._offsets[self._token_starts[i]:self._token_starts[i + 1]]}
                    for i in unique]
        predictions = postprocess_predictions(
            self.examples, features, start[first], end[first], n_best_size=self.n_best_size,
            max_answer_length=self.max_answer_length, version_2_with_negative=self.version_2_with_negative,
            null_score_diff_threshold=self.null_score_diff_threshold)
        scores = squad_scores(predictions, self.references, self.version_2_with_negative)
        return {name: torch.tensor(value, dtype=torch.float32) for name, value in scores.items()}


def _feature_table(features: Any) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Example ids, token start per feature (``[n_features + 1]``) and all offsets stacked (``[n_tokens, 2]``).

    Reading a ``datasets.Dataset`` row by row costs seconds per thousand windows; its Arrow columns are read
    whole instead.
    """
    if hasattr(features, "with_format"):
        table = features.select_columns(["example_id", "offset_mapping"]).with_format("arrow")[:]
        column = table.column("offset_mapping").combine_chunks()
        token_starts = column.offsets.to_numpy()
        offsets = column.flatten().flatten().to_numpy().reshape(-1, 2)
        return [str(i) for i in table.column("example_id").to_pylist()], token_starts - token_starts[0], offsets
    rows = [np.asarray(feature["offset_mapping"], dtype=np.int64).reshape(-1, 2) for feature in features]
    token_starts = np.cumsum([0] + [len(row) for row in rows])
    offsets = np.concatenate(rows) if rows else np.zeros((0, 2), dtype=np.int64)
    return [str(feature["example_id"]) for feature in features], token_starts, offsets
