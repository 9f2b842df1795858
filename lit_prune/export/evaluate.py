"""The task's own dev metric of any predictor (an ONNX Runtime session, a float32 or int8 torch model).

The data comes from lit_prune's data modules (the same tokenisation, padding and SQuAD windows as a fit's
validation) and the scores from the task modules' metric code: GLUE's torchmetrics collection
(:func:`~lit_prune.tasks.classification.glue_metrics`, predictions as :class:`SequenceClassificationModule` makes
them), SQuAD's :class:`~lit_prune.tasks.squad_metrics.SquadMetric` and CoNLL's
:class:`~lit_prune.tasks.ner_metrics.EntityF1` on the words' first sub-tokens. So a predictor that gives the torch
model's logits gets the numbers the task module's ``evaluate`` gives; a test checks it for every task family.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from lit_prune.data.base import TaskDataModule
from lit_prune.data.conll import CONLL_TASKS, TokenClassificationDataModule
from lit_prune.data.glue import GLUE_TASKS, GlueDataModule, get_glue_task
from lit_prune.data.squad import SQUAD_TASKS, SquadDataModule
from lit_prune.export.predictors import Predict
from lit_prune.tasks.classification import glue_metrics, split_prefix
from lit_prune.tasks.ner_metrics import EntityF1
from lit_prune.tasks.squad_metrics import SquadMetric
from lit_prune.tasks.token_classification import word_labels

#: every task the runner scores, and the head it needs
TASK_KINDS: dict[str, str] = {**dict.fromkeys(GLUE_TASKS, "sequence_classification"),
                              **dict.fromkeys(SQUAD_TASKS, "question_answering"),
                              **dict.fromkeys(CONLL_TASKS, "token_classification")}
#: the metric each task is reported by
MAIN_METRICS: dict[str, str] = {**{name: task.main_metric for name, task in GLUE_TASKS.items()},
                                **dict.fromkeys(SQUAD_TASKS, "f1"), **dict.fromkeys(CONLL_TASKS, "f1")}


def task_kind(task: str, setting: str = "task") -> str:
    """The head ``task`` needs ("sequence_classification", "question_answering", "token_classification").

    Raises:
        ValueError: an unknown task, naming the known ones.
    """
    if task not in TASK_KINDS:
        raise ValueError(f"{setting}={task!r} is not a task the evaluation runner knows; known: "
                         f"{', '.join(TASK_KINDS)}")
    return TASK_KINDS[task]


def dev_data(task: str, tokenizer: str, data_dir: str | None = None, max_seq_length: int | None = None,
             batch_size: int = 32, max_examples: int | None = None) -> TaskDataModule:
    """The task's data module, set up for evaluation.

    Args:
        task: a GLUE task name, ``squad_v1`` / ``squad_v2`` or ``conll2003``.
        tokenizer: the model's folder (its tokenizer files).
        data_dir: the data's folder; ``None``: ``$LIT_PRUNE_ASSETS``, then the hub (as the data modules look).
        max_seq_length: longest tokenised input; ``None``: the data module's default (GLUE and CoNLL 128, SQuAD
            384), which the recipes use.
        batch_size: evaluation batch size.
        max_examples: SQuAD: evaluate on this many questions (the data module draws them); the other tasks take
            :func:`evaluate`'s ``max_examples``.
    """
    settings: dict[str, Any] = {"tokenizer": str(tokenizer), "eval_batch_size": batch_size}
    if max_seq_length is not None:
        settings["max_seq_length"] = max_seq_length
    kind = task_kind(task)
    if kind == "sequence_classification":
        datamodule: TaskDataModule = GlueDataModule(task=task, data_dir=data_dir, **settings)
    elif kind == "question_answering":
        datamodule = SquadDataModule(task=task, data_dir=data_dir, max_eval_samples=max_examples, **settings)
    else:
        datamodule = TokenClassificationDataModule(task=task, data_dir=data_dir, **settings)
    datamodule.setup("validate")
    return datamodule


def dev_loaders(datamodule: TaskDataModule, max_examples: int | None = None) -> list[DataLoader]:
    """One dataloader per evaluation split (MNLI: matched, mismatched), in order, over its first ``max_examples``
    examples (``None``: all; SQuAD windows are never cut: the data module draws whole questions)."""
    loaders = []
    for split in datamodule.val_split_names:
        dataset = datamodule.split_dataset(split)
        if max_examples is not None and not isinstance(datamodule, SquadDataModule):
            dataset = Subset(dataset, range(min(max_examples, len(dataset))))
        loaders.append(DataLoader(dataset, batch_size=datamodule.eval_batch_size, shuffle=False,
                                  collate_fn=datamodule.collate))
    return loaders


def dev_batches(datamodule: TaskDataModule, count: int) -> list[dict[str, torch.Tensor]]:
    """The first ``count`` examples of the main evaluation split (SQuAD: windows), batched and padded as the data
    module batches them: inputs to compare two runtimes on."""
    batches: list[dict[str, torch.Tensor]] = []
    taken = 0
    for batch in dev_loaders(datamodule, count)[0]:
        keep = min(count - taken, int(batch["input_ids"].shape[0]))
        batches.append({name: value[:keep] for name, value in batch.items()})
        taken += keep
        if taken >= count:
            break
    return batches


def count_examples(datamodule: TaskDataModule, max_examples: int | None = None) -> int:
    """How many examples :func:`evaluate` scores: of every split, at most ``max_examples`` each (SQuAD: the
    questions the data module holds)."""
    if isinstance(datamodule, SquadDataModule):
        return len(datamodule.eval_examples)
    sizes = [len(datamodule.split_dataset(split)) for split in datamodule.val_split_names]
    return sum(size if max_examples is None else min(size, max_examples) for size in sizes)


def evaluate(task: str, datamodule: TaskDataModule, predict: Predict, max_examples: int | None = None,
             label_names: Sequence[str] | None = None, progress: Callable[[], None] | None = None) -> dict[str, float]:
    """The dev metrics of ``predict`` on ``task``, as the task module computes them.

    Args:
        task: the task (it must be ``datamodule``'s).
        datamodule: from :func:`dev_data` (or any data module of the task, set up for validation).
        predict: a batch → ``{"logits": ...}`` (``start_logits`` / ``end_logits`` for SQuAD) callable, e.g. an
            :class:`~lit_prune.export.predictors.OnnxPredictor`.
        max_examples: score the first examples of each split only (``None``: all).
        label_names: CoNLL: the model's tag of each label id, checked against the data's (ids must mean the same
            tags in both).
        progress: called after each batch.

    Returns:
        Metric name → value, named as the task module names them (GLUE ``accuracy`` / ``f1`` / ``pearson`` ...,
        MNLI mismatched ``mismatched/accuracy``; SQuAD ``exact_match`` and ``f1`` in 0..100; CoNLL ``precision``,
        ``recall``, ``f1``, ``accuracy`` in 0..1).

    Raises:
        ValueError: ``task`` is unknown or not the data module's, or the label names differ.
    """
    kind = task_kind(task)
    if datamodule.task != task:
        raise ValueError(f"evaluate: task={task!r}, but the data module's task is {datamodule.task!r}")
    step = progress or (lambda: None)
    loaders = dev_loaders(datamodule, max_examples)
    if kind == "sequence_classification":
        return _glue(task, loaders, predict, step)
    if kind == "question_answering":
        assert isinstance(datamodule, SquadDataModule)
        metric = SquadMetric(examples=datamodule.eval_examples, features=datamodule.eval_features,
                             max_seq_length=datamodule.max_seq_length,
                             version_2_with_negative=task == "squad_v2", n_best_size=datamodule.n_best_size,
                             max_answer_length=datamodule.max_answer_length)
        for batch in loaders[0]:
            outputs = predict(batch)
            metric.update(outputs["start_logits"], outputs["end_logits"], batch["feature_index"])
            step()
        return {name: float(value) for name, value in metric.compute().items()}
    data_labels = list(datamodule.label_names)  # type: ignore[attr-defined] (a token-classification data module)
    if label_names is not None and list(label_names) != data_labels:
        raise ValueError(f"evaluate: the model's labels are {list(label_names)}, the data's {data_labels}; label "
                         "ids must mean the same tags in both")
    entities = EntityF1(data_labels)
    for batch in loaders[0]:
        entities.update(predict(batch)["logits"].argmax(-1), word_labels(batch))
        step()
    return {name: float(value) for name, value in entities.compute().items()}


def _glue(task: str, loaders: list[DataLoader], predict: Predict, step: Callable[[], None]) -> dict[str, float]:
    """:meth:`SequenceClassificationModule._evaluate` with ``predict`` in place of the model."""
    spec = get_glue_task(task)
    results: dict[str, float] = {}
    for split, loader in zip(spec.eval_files, loaders):
        metrics = glue_metrics(spec)
        for batch in loader:
            logits = predict(batch)["logits"]
            metrics.update(logits.squeeze(-1) if spec.is_regression else logits.argmax(-1), batch["labels"])
            step()
        prefix = "" if split_prefix(split) == "val/" else "mismatched/"
        results.update({f"{prefix}{name}": float(value) for name, value in metrics.compute().items()})
    return results


def main_score(task: str, metrics: Mapping[str, float]) -> float:
    """The task's main metric in points (0..100): GLUE and CoNLL scores × 100, SQuAD's as they are."""
    value = metrics[MAIN_METRICS[task]]
    return value if task in SQUAD_TASKS else 100 * value


__all__ = ["MAIN_METRICS", "TASK_KINDS", "count_examples", "dev_batches", "dev_data", "dev_loaders", "evaluate",
           "main_score", "task_kind"]
