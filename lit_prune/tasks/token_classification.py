"""Named-entity recognition (CoNLL-2003) around ``AutoModelForTokenClassification``: a tag per word, predicted on
the word's first sub-token, scored at entity level with seqeval (strict IOB2)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from lit_prune.core.io import is_pruned_folder
from lit_prune.prune.batches import model_batch
from lit_prune.tasks.base import MetricEvaluation, TaskModule
from lit_prune.tasks.ner_metrics import IGNORE_INDEX, EntityF1, check_iob2

#: CoNLL-2003's IOB2 tags, "O" first and the others sorted: the order of label ids of the CoNLL-2003 data module,
#: which must match the model's (``setup`` checks it)
CONLL2003_LABELS = ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER"]

#: tasks whose label names have a default
DEFAULT_LABELS = {"conll2003": CONLL2003_LABELS}

_GENERIC_LABEL = re.compile(r"LABEL_\d+")


def has_token_classification_head(config: Any) -> bool:
    """Whether a checkpoint was saved with a token-classification head (its ``architectures``)."""
    return any(name.endswith("ForTokenClassification") for name in getattr(config, "architectures", None) or [])


def head_label_names(config: Any) -> list[str] | None:
    """The tag of each label id of a checkpoint's token-classification head; ``None`` when it has no such head or
    only transformers' placeholder names (``LABEL_0``, ...)."""
    if not has_token_classification_head(config):
        return None
    id2label = getattr(config, "id2label", None) or {}
    names = [str(name) for _, name in sorted(id2label.items(), key=lambda item: int(item[0]))]
    if not names or all(_GENERIC_LABEL.fullmatch(name) for name in names):
        return None
    return names


def first_subtokens(word_ids: torch.Tensor) -> torch.Tensor:
    """``[batch, seq]`` booleans: the positions that start a word (a word id >= 0 that differs from the previous
    position's)."""
    previous = torch.nn.functional.pad(word_ids[:, :-1], (1, 0), value=-1)
    return (word_ids >= 0) & (word_ids != previous)


def word_labels(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``labels`` of the words' first sub-tokens only (-100 on later sub-tokens, which ``label_all_tokens`` data
    labels too): the positions that are scored. Without ``word_ids``, ``labels`` as they are."""
    labels = batch["labels"]
    if "word_ids" not in batch:
        return labels
    return labels.masked_fill(~first_subtokens(batch["word_ids"]), IGNORE_INDEX)


class TokenClassificationModule(MetricEvaluation, TaskModule):
    """Fine-tune or evaluate a Hugging Face encoder for named-entity recognition (CoNLL-2003).

    Batches hold ``input_ids``, ``attention_mask`` (maybe ``token_type_ids``), ``labels`` ``[batch, seq]`` (the tag
    id on each word's first sub-token, -100 elsewhere) and ``word_ids`` ``[batch, seq]`` (-1 for special tokens and
    padding; never given to the model). Logs ``train/loss``, ``val/loss`` and ``val/precision``, ``val/recall``,
    ``val/f1``, ``val/accuracy`` (entity level, seqeval strict IOB2, micro; accuracy over the words), in 0..1;
    the same under ``test/``. The scores are the words': the predictions on their first sub-tokens (from
    ``word_ids``), even when the data labels later sub-tokens too (``label_all_tokens``; the loss uses them all).

    The label ids must mean the same tags in the model and in the data: ``setup`` compares the data module's
    ``label_names`` with the model's and stops with both lists when they differ.

    Args:
        name_or_path: the model: a folder, a name under ``$LIT_PRUNE_ASSETS/models/``, or a hub id. Its type must
            be one ``AutoModelForTokenClassification`` supports; a checkpoint without a token-classification head
            gets a freshly initialised one.
        task: the task (train.py sets it from ``data.task``).
        label_names: the IOB2 tag of each label id; ``None``: the checkpoint's own tags when it is fine-tuned for
            token classification on ``task``, else the task's default (``CONLL2003_LABELS``).
        classifier_dropout: dropout before the classification head; ``None`` keeps the model's setting.
        **kwargs: ``learning_rate``, ``weight_decay``, ``warmup_ratio``, ``trust_remote_code``,
            ``save_final_model``: as :class:`~lit_prune.tasks.base.TaskModule` takes them.
    """

    main_metric = "f1"

    def __init__(self, name_or_path: str, task: str = "conll2003", label_names: list[str] | None = None,
                 classifier_dropout: float | None = None, **kwargs: Any) -> None:
        super().__init__(name_or_path, task=task, **kwargs)
        if label_names is not None:
            check_iob2(label_names, setting="model.label_names")
        self.save_hyperparameters()
        self.label_names: list[str] = []  # set while loading: the checkpoint decides when none are given
        self.model = self._load_model(label_names, classifier_dropout)
        self.val_metric = EntityF1(self.label_names)
        self.test_metric = EntityF1(self.label_names)

    def _load_model(self, label_names: Sequence[str] | None, classifier_dropout: float | None) -> torch.nn.Module:
        from transformers import AutoModelForTokenClassification
        from transformers.models.auto.modeling_auto import MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES

        task = self.task
        fixed_head = is_pruned_folder(self.resolved.location)

        def configure(config) -> None:
            trained_for = getattr(config, "finetuning_task", None)
            head = head_label_names(config)
            if label_names is not None:
                labels = list(label_names)
            elif head is not None and trained_for == task:
                labels = head
            elif task in DEFAULT_LABELS:
                labels = list(DEFAULT_LABELS[task])
            else:
                raise ValueError(f"{type(self).__name__}: task={task!r} has no default label names; pass "
                                 "model.label_names (the data module's label_names)")
            labels = check_iob2(labels, setting=f"the label names of model.name_or_path={self.name_or_path!r}")
            if (trained_for and trained_for != task or fixed_head) and config.num_labels != len(labels):
                raise ValueError(f"model.name_or_path={self.name_or_path!r} was fine-tuned for {trained_for!r} with "
                                 f"{config.num_labels} labels; task {task!r} needs {len(labels)}.")
            if has_token_classification_head(config) and config.num_labels != len(labels):
                raise ValueError(f"model.name_or_path={self.name_or_path!r} has a token-classification head with "
                                 f"{config.num_labels} labels ({head or 'unnamed'}); the labels {labels} need "
                                 f"{len(labels)}.")
            if head is not None and head != labels:
                # the head's weights are kept: its rows would stand for other tags
                raise ValueError(f"model.name_or_path={self.name_or_path!r} has a token-classification head for the "
                                 f"labels {head}, not {labels}; pass model.label_names={head} and data whose label "
                                 "ids follow that order")
            self.label_names = labels
            if fixed_head:
                return
            config.num_labels = len(labels)
            config.id2label = dict(enumerate(labels))
            config.label2id = {name: i for i, name in enumerate(labels)}
            config.finetuning_task = task
            if classifier_dropout is not None:
                config.classifier_dropout = classifier_dropout

        model = self.load_hf_model(AutoModelForTokenClassification, MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
                                   "token_classification", configure)
        if fixed_head:  # the weights are fixed, the names only recorded (saved with the model)
            model.config.id2label = dict(enumerate(self.label_names))
            model.config.label2id = {name: i for i, name in enumerate(self.label_names)}
            model.config.finetuning_task = task
        return model

    # ------------------------------------------------------------------------------------------------ data
    def setup(self, stage: str) -> None:
        """Check that the data module's ``label_names`` (when it has them) are the model's, id for id."""
        datamodule = getattr(self.trainer, "datamodule", None)
        data_labels = getattr(datamodule, "label_names", None)
        if data_labels is not None:
            self.check_label_names(data_labels, source=f"the data module {type(datamodule).__name__}")

    def check_label_names(self, label_names: Sequence[str], source: str = "the data") -> None:
        """Raise ValueError, naming both lists, when ``label_names`` differ from the model's (in names or order)."""
        if list(label_names) != self.label_names:
            raise ValueError(f"{type(self).__name__}: {source} has label_names {list(label_names)}, but the model's "
                             f"labels are {self.label_names}; label ids must mean the same tags in both (pass "
                             "model.label_names, or a model fine-tuned with the data's labels)")

    def _inputs(self, batch: dict[str, torch.Tensor], labels: bool = True) -> dict[str, torch.Tensor]:
        """The batch entries the model's forward names (``word_ids`` never; ``labels`` when asked). Read per call, as
        pruning may replace the model."""
        return {name: value for name, value in model_batch(self.model, batch).items() if labels or name != "labels"}

    # ------------------------------------------------------------------------------------------------ steps
    def forward(self, **batch: torch.Tensor):
        return self.model(**self._inputs(batch))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model(**self._inputs(batch)).loss
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def _evaluation_step(self, batch: dict[str, torch.Tensor], metric: EntityF1, prefix: str) -> None:
        output = self.model(**self._inputs(batch))
        metric.update(output.logits.argmax(-1), word_labels(batch))
        scored = int((batch["labels"] != IGNORE_INDEX).sum())
        if scored:  # the loss is a mean over the labelled positions: none gives NaN
            self.log(f"{prefix}/loss", output.loss, batch_size=scored, sync_dist=True)

    def _log_scores(self, metric: EntityF1, prefix: str) -> None:
        # compute() has gathered every process's ids, so each process logs the same numbers.
        for name, value in metric.compute().items():
            self.log(f"{prefix}/{name}", value, prog_bar=name == self.main_metric, sync_dist=True)
        metric.reset()

    def _evaluate(self, loaders: list, progress) -> dict[str, float]:
        if len(loaders) != 1:
            raise ValueError(f"{type(self).__name__}.evaluate: expected one evaluation dataloader, got {len(loaders)}")
        metric = self.val_metric
        metric.reset()
        for batch in loaders[0]:
            batch = self._to_device(batch)
            logits = self.model(**self._inputs(batch, labels=False)).logits
            metric.update(logits.argmax(-1), word_labels(batch))
            progress()
        scores = {name: float(value) for name, value in metric.compute().items()}
        metric.reset()
        return scores

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> list[list[str]]:
        """Per sentence, the predicted tag of each word: of its first sub-token (from ``word_ids``, else from the
        positions whose ``labels`` are not -100)."""
        if "word_ids" in batch:
            starts = first_subtokens(batch["word_ids"])
        elif "labels" in batch:
            starts = batch["labels"] != IGNORE_INDEX
        else:
            raise ValueError(f"{type(self).__name__}.predict_step: the batch needs word_ids (or labels) to find the "
                             "words' first sub-tokens")
        predicted = self.model(**self._inputs(batch, labels=False)).logits.argmax(-1)
        return [[self.label_names[i] for i in ids[keep].tolist()] for ids, keep in zip(predicted, starts)]
