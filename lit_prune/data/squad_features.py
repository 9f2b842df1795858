"""SQuAD features: sliding-window tokenisation of questions and contexts into model inputs with answer positions,
and the way back, from start/end logits over the windows to answer text.

Plain functions on a Hugging Face fast tokenizer and numpy arrays; :class:`~lit_prune.data.squad.SquadDataModule`
runs them on the official files.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: offsets stored for tokens outside the context (question, special tokens); Arrow cannot store ``None`` pairs
#: inside an integer list column, and ``-1`` is never a real character offset
NON_CONTEXT_OFFSET = (-1, -1)
#: the tokenizer outputs the models take
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _question_budget(tokenizer, max_seq_length: int, doc_stride: int) -> int:
    """Most question tokens a window can hold while leaving more than ``doc_stride`` context tokens.

    The fast tokenizers panic (a ``PanicException``, not an ``Exception``) when the stride does not fit beside the
    question, so over-long questions are shortened before tokenisation instead.
    """
    return max_seq_length - doc_stride - tokenizer.num_special_tokens_to_add(pair=True) - 1


def _fit_questions(tokenizer, questions: list[str], budget: int) -> tuple[list[str], int]:
    """Cut questions longer than ``budget`` tokens at a token boundary; returns the questions and how many were cut."""
    encoded = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    fitted, cut = [], 0
    for question, original in zip(questions, encoded["offset_mapping"]):
        offsets, keep = original, budget
        while len(offsets) > budget:
            # Keep the first `keep` tokens. Re-tokenising a cut string can (BPE) give more tokens than the prefix
            # had, so cut one token earlier until it fits; `keep` = 0 leaves an empty question, which always fits.
            question = question[:original[keep][0]].rstrip()
            offsets = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            keep -= 1
        cut += offsets is not original
        fitted.append(question)
    return fitted, cut


def tokenize_examples(tokenizer, examples: Sequence[Mapping[str, Any]], max_seq_length: int, doc_stride: int,
                      labels: bool, offsets: bool, chunk_size: int = 1000) -> dict[str, list]:
    """Sliding-window tokenisation of SQuAD examples (question first, then as much context as fits).

    A context longer than a window is cut into overlapping windows (``doc_stride`` tokens shared by neighbours);
    every window is one feature.

    Args:
        tokenizer: a fast tokenizer (offset mappings are needed).
        examples: dicts with ``id``, ``question``, ``context`` and (for ``labels``) ``answers``.
        max_seq_length: tokens per window, special tokens included.
        doc_stride: context tokens shared by consecutive windows.
        labels: add ``start_positions`` / ``end_positions``: the answer's first and last token when the (first)
            answer lies inside the window, else the CLS index (also for unanswerable questions).
        offsets: add ``offset_mapping``: per token the ``[start, end)`` characters in the context, and
            ``[-1, -1]`` for tokens outside the context.
        chunk_size: examples tokenised per call (bounds memory on the full training set).

    Returns:
        Columns of equal length: ``input_ids``, ``attention_mask``, ``token_type_ids`` (when the tokenizer makes
        them), ``example_id``, and the optional label and offset columns.
    """
    budget = _question_budget(tokenizer, max_seq_length, doc_stride)
    if budget < 1:
        raise ValueError(f"max_seq_length={max_seq_length} and doc_stride={doc_stride} leave no room for the "
                         "question: max_seq_length must exceed doc_stride plus the special tokens by at least 2")
    columns: dict[str, list] = {}
    cut_total = 0
    for begin in range(0, len(examples), chunk_size):
        chunk = examples[begin:begin + chunk_size]
        # Leading whitespace only wastes tokens (some SQuAD questions start with many spaces).
        questions, cut = _fit_questions(tokenizer, [example["question"].lstrip() for example in chunk], budget)
        cut_total += cut
        encoded = tokenizer(questions, [example["context"] for example in chunk], truncation="only_second",
                            max_length=max_seq_length, stride=doc_stride, return_overflowing_tokens=True,
                            return_offsets_mapping=True, padding=False)
        for name in MODEL_INPUTS:
            if name in encoded:
                columns.setdefault(name, []).extend(encoded[name])
        for feature, example_index in enumerate(encoded["overflow_to_sample_mapping"]):
            example = chunk[example_index]
            # sequence_ids: None for special tokens, 0 for the question, 1 for the context.
            sequence_ids = encoded.sequence_ids(feature)
            feature_offsets = encoded["offset_mapping"][feature]
            columns.setdefault("example_id", []).append(example["id"])
            if labels:
                start, end = _answer_tokens(example["answers"], feature_offsets, sequence_ids,
                                            encoded["input_ids"][feature], tokenizer.cls_token_id)
                columns.setdefault("start_positions", []).append(start)
                columns.setdefault("end_positions", []).append(end)
            if offsets:
                columns.setdefault("offset_mapping", []).append(
                    [list(offset) if sequence_id == 1 else list(NON_CONTEXT_OFFSET)
                     for offset, sequence_id in zip(feature_offsets, sequence_ids)])
    if cut_total:
        warnings.warn(f"SQuAD: {cut_total} questions were longer than the {budget} tokens that fit beside "
                      f"doc_stride={doc_stride} in max_seq_length={max_seq_length}; they were shortened")
    if labels:
        misaligned = [example["id"] for example in examples if not _answer_matches(example)]
        if misaligned:
            warnings.warn(f"SQuAD: {len(misaligned)} questions (first: {misaligned[0]!r}) have an answer text that "
                          "differs from the context at answer_start; their labels follow answer_start")
    return columns


def _answer_matches(example: Mapping[str, Any]) -> bool:
    """Whether the first answer's text is what the context holds at its ``answer_start`` (no answer: True)."""
    answers = example["answers"]
    if not answers["text"]:
        return True
    start = answers["answer_start"][0]
    return example["context"][start:start + len(answers["text"][0])] == answers["text"][0]


def _answer_tokens(answers: Mapping[str, list], offsets: Sequence[Sequence[int]],
                   sequence_ids: Sequence[int | None], input_ids: Sequence[int],
                   cls_token_id: int | None) -> tuple[int, int]:
    """Start and end token of the first answer in one window, or the CLS index twice when the question has no
    answer or its answer is not wholly inside the window."""
    cls_index = input_ids.index(cls_token_id) if cls_token_id in input_ids else 0
    if not answers["text"]:
        return cls_index, cls_index
    start_char = answers["answer_start"][0]
    end_char = start_char + len(answers["text"][0])
    first = sequence_ids.index(1)
    last = len(sequence_ids) - 1 - sequence_ids[::-1].index(1)
    if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
        return cls_index, cls_index
    start = first
    while start <= last and offsets[start][0] <= start_char:
        start += 1
    end = last
    while end >= first and offsets[end][1] >= end_char:
        end -= 1
    return start - 1, end + 1


def postprocess_predictions(
    examples: Sequence[Mapping[str, Any]],
    features: Sequence[Mapping[str, Any]],
    start_logits: Sequence[Sequence[float]] | np.ndarray,
    end_logits: Sequence[Sequence[float]] | np.ndarray,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    version_2_with_negative: bool = False,
    null_score_diff_threshold: float = 0.0,
) -> dict[str, str]:
    """Turn per-window start/end logits into one answer text per example.

    For every window, the ``n_best_size`` best start and end tokens *inside the context* are paired; a pair is
    valid when the end is not before the start and the span has at most ``max_answer_length`` tokens. The answer
    is the valid span with the highest ``start + end`` logit over all windows of the example. With
    ``version_2_with_negative``, the answer is ``""`` when the lowest null score (CLS start + CLS end logit, over
    the windows) exceeds the best span's score by more than ``null_score_diff_threshold``.

    Args:
        examples: dicts with ``id`` and ``context``.
        features: windows, dicts with ``example_id`` and ``offset_mapping`` (``[-1, -1]`` outside the context).
        start_logits: one row per feature, at least as long as its offset mapping (longer rows are padding).
        end_logits: like ``start_logits``.
        n_best_size: start and end candidates per window.
        max_answer_length: longest answer, in tokens.
        version_2_with_negative: allow "no answer" (SQuAD v2.0).
        null_score_diff_threshold: margin the null score needs over the best span to predict "no answer".

    Returns:
        ``{example id: answer text}`` for every example with at least one feature, in order of first feature.
        Without a valid span (v1.1), the answer is ``""``.
    """
    contexts = {str(example["id"]): example["context"] for example in examples}
    best: dict[str, tuple[float, int, int]] = {}  # example id -> (score, start char, end char)
    null: dict[str, float] = {}
    for i, feature in enumerate(features):
        example_id = str(feature["example_id"])
        if example_id not in contexts:
            raise ValueError(f"feature {i} belongs to example {example_id!r}, which is not among the examples")
        offsets = np.asarray(feature["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        start = np.asarray(start_logits[i], dtype=np.float64)
        end = np.asarray(end_logits[i], dtype=np.float64)
        if len(start) < len(offsets) or len(end) < len(offsets):
            raise ValueError(f"feature {i}: {len(start)} start / {len(end)} end logits for {len(offsets)} tokens")
        start, end = start[:len(offsets)], end[:len(offsets)]
        null[example_id] = min(null.get(example_id, math.inf), start[0] + end[0])
        context_tokens = np.flatnonzero(offsets[:, 0] >= 0)
        if context_tokens.size == 0:
            continue
        starts = context_tokens[np.argsort(-start[context_tokens], kind="stable")[:n_best_size]]
        ends = context_tokens[np.argsort(-end[context_tokens], kind="stable")[:n_best_size]]
        # [n_starts, n_ends]: every start candidate paired with every end candidate.
        scores = start[starts][:, None] + end[ends][None, :]
        span = ends[None, :] - starts[:, None] + 1
        scores = np.where((span >= 1) & (span <= max_answer_length), scores, -np.inf)
        flat = int(np.argmax(scores))
        score = float(scores.flat[flat])
        if score == -math.inf:
            continue
        s, e = divmod(flat, len(ends))
        if example_id not in best or score > best[example_id][0]:
            best[example_id] = (score, int(offsets[starts[s], 0]), int(offsets[ends[e], 1]))
    predictions = {}
    for example_id, null_score in null.items():
        span = best.get(example_id)
        if span is None or (version_2_with_negative and null_score > span[0] + null_score_diff_threshold):
            predictions[example_id] = ""
        else:
            predictions[example_id] = contexts[example_id][span[1]:span[2]]
    return predictions


__all__ = ["MODEL_INPUTS", "NON_CONTEXT_OFFSET", "postprocess_predictions", "tokenize_examples"]
