"""Extractive question answering (SQuAD v1.1 / v2.0): a Hugging Face ``AutoModelForQuestionAnswering`` trained on
start/end positions and evaluated with the official exact match and F1."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from lit_prune.data.squad import SQUAD_TASKS, SquadTask
from lit_prune.tasks.base import MetricEvaluation, TaskModule
from lit_prune.tasks.squad_metrics import SquadMetric

#: the data module attributes the metric is built from
_DATAMODULE_NEEDS = ("task", "eval_examples", "eval_features", "max_seq_length", "n_best_size", "max_answer_length")


class QuestionAnsweringModule(MetricEvaluation, TaskModule):
    """A question answering model for SQuAD, trained and evaluated with a ``SquadDataModule``.

    Evaluation batches carry ``feature_index``; the logits are collected by a ``SquadMetric`` built from the data
    module's ``eval_examples`` and ``eval_features`` at ``setup``, and turned into answers at the end of the epoch.
    Logged: ``train/loss``; ``val/exact_match``, ``val/f1`` and, for squad_v2, ``val/HasAns_exact``,
    ``val/HasAns_f1``, ``val/NoAns_exact``, ``val/NoAns_f1`` (the same under ``test/``), all in 0..100.

    Args:
        name_or_path: the model: a folder, a name under ``$LIT_PRUNE_ASSETS/models/``, or a hub id. Its type must
            be one ``AutoModelForQuestionAnswering`` supports (BERT, RoBERTa, DistilBERT, ...); a checkpoint
            without a QA head gets a freshly initialised one.
        task: ``"squad_v1"`` or ``"squad_v2"``; ``None`` takes the data module's task at ``setup``.
        **kwargs: ``learning_rate``, ``weight_decay``, ``warmup_ratio``, ``trust_remote_code``,
            ``save_final_model``: as :class:`~lit_prune.tasks.base.TaskModule` takes them.
    """

    def __init__(self, name_or_path: str, task: SquadTask | None = None, **kwargs: Any) -> None:
        from transformers import AutoModelForQuestionAnswering
        from transformers.models.auto.modeling_auto import MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES

        task_problem = None
        if task is not None and task not in SQUAD_TASKS:
            task_problem = f"task={task!r}: expected one of {', '.join(SQUAD_TASKS)}, or None"
        try:
            super().__init__(name_or_path=name_or_path, task=task, **kwargs)
        except ValueError as error:
            if task_problem is None:
                raise
            raise ValueError(f"{error}; {task_problem}") from None
        if task_problem is not None:
            raise ValueError(f"{type(self).__name__}: {task_problem}")
        self.save_hyperparameters()
        self.model = self.load_hf_model(AutoModelForQuestionAnswering, MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES,
                                        "question_answering")
        self.val_metric: SquadMetric | None = None
        self.test_metric: SquadMetric | None = None

    # ------------------------------------------------------------------------------------------------ data
    def setup(self, stage: str) -> None:
        """Build the metrics from the trainer's data module (it is set up before the module)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None and stage == "predict":  # predictions are logits; no metric needed
            return
        if datamodule is None:
            raise ValueError(f"{type(self).__name__} needs a SquadDataModule (pass it as `datamodule=`): "
                             "its eval_examples and eval_features turn logits into answers")
        self.attach_data(datamodule)

    def attach_data(self, datamodule: Any) -> None:
        """Take the task and the evaluation examples and windows from a set-up ``SquadDataModule``.

        Called by ``setup``; call it directly to evaluate outside a ``Trainer``.
        """
        missing = [name for name in _DATAMODULE_NEEDS if getattr(datamodule, name, None) is None]
        if missing:
            raise ValueError(f"{type(self).__name__}: the data module {type(datamodule).__name__} lacks "
                             f"{', '.join(missing)}; use a SquadDataModule and call its setup() first")
        if self.task is None:
            self.task = datamodule.task
        elif datamodule.task != self.task:
            raise ValueError(f"{type(self).__name__}: task={self.task!r}, but the data module's task is "
                             f"{datamodule.task!r}; they must match")
        settings = dict(examples=datamodule.eval_examples, features=datamodule.eval_features,
                        max_seq_length=datamodule.max_seq_length,
                        version_2_with_negative=self.task == "squad_v2", n_best_size=datamodule.n_best_size,
                        max_answer_length=datamodule.max_answer_length)
        self.val_metric = SquadMetric(**settings).to(self.device)
        self.test_metric = SquadMetric(**settings).to(self.device)

    # ------------------------------------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model(**self._inputs(batch)).loss
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def _inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch entries the model's forward names: drops ``feature_index``, and ``token_type_ids`` for models
        without them (DistilBERT paired with a BERT tokenizer). Read per call, as pruning may replace the model."""
        parameters = inspect.signature(self.model.forward).parameters
        return {name: value for name, value in batch.items() if name in parameters}

    def _evaluation_step(self, batch: dict[str, torch.Tensor], metric: SquadMetric | None, prefix: str) -> None:
        if metric is None:
            raise RuntimeError(f"{type(self).__name__}: no metric; call attach_data(datamodule) before evaluating "
                               "outside a Trainer")
        output = self.model(**self._inputs(batch))
        if output.loss is not None:  # evaluation windows carry no positions unless a caller adds them
            self.log(f"{prefix}/loss", output.loss, batch_size=batch["input_ids"].shape[0], sync_dist=True)
        metric.update(output.start_logits, output.end_logits, batch["feature_index"])

    def _log_scores(self, metric: SquadMetric, prefix: str) -> None:
        # compute() has gathered every process's logits, so each process logs the same numbers.
        scores = metric.compute()
        for name, value in scores.items():
            self.log(f"{prefix}/{name}", value, prog_bar=name == "f1", sync_dist=True)
        metric.reset()

    main_metric = "f1"

    def _evaluate(self, loaders: list, progress) -> dict[str, float]:
        if len(loaders) != 1:
            raise ValueError(f"{type(self).__name__}.evaluate: expected one evaluation dataloader, got {len(loaders)}")
        metric = self.val_metric
        if metric is None:
            raise RuntimeError(f"{type(self).__name__}: no metric; call attach_data(datamodule) before evaluating")
        metric.reset()
        for batch in loaders[0]:
            batch = self._to_device(batch)
            output = self.model(**self._inputs(batch))
            metric.update(output.start_logits, output.end_logits, batch["feature_index"])
            progress()
        scores = {name: float(value) for name, value in metric.compute().items()}
        metric.reset()
        return scores

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """``start_logits`` / ``end_logits`` ``[batch, seq]`` and ``feature_index`` ``[batch]``."""
        output = self.model(**self._inputs(batch))
        return {"start_logits": output.start_logits, "end_logits": output.end_logits,
                "feature_index": batch["feature_index"]}
