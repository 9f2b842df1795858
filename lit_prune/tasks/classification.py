"""Sequence classification and regression (GLUE) around ``AutoModelForSequenceClassification``."""

from __future__ import annotations

from typing import Any

import torch
import torchmetrics
from torchmetrics.classification import BinaryF1Score, MatthewsCorrCoef, MulticlassAccuracy
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef

from lit_prune.data.glue import GlueTask, GlueTaskName, get_glue_task
from lit_prune.core.io import is_pruned_folder
from lit_prune.tasks.base import TaskModule


def glue_metrics(task: GlueTask) -> torchmetrics.MetricCollection:
    """The task's metrics by name (``accuracy``, ``f1``, ``mcc``, ``pearson``, ``spearman``)."""
    factories = {
        "accuracy": lambda: MulticlassAccuracy(num_classes=task.num_labels, average="micro"),
        "f1": lambda: BinaryF1Score(),
        "mcc": lambda: MatthewsCorrCoef(task="multiclass", num_classes=task.num_labels),
        "pearson": lambda: PearsonCorrCoef(),
        "spearman": lambda: SpearmanCorrCoef(),
    }
    return torchmetrics.MetricCollection({name: factories[name]() for name in task.metrics})


def configure_for_task(config: Any, task: GlueTask) -> None:
    """Give a model config the head of GLUE ``task``: its label count, problem type, task name and label names."""
    config.num_labels = task.num_labels
    config.problem_type = "regression" if task.is_regression else "single_label_classification"
    config.finetuning_task = task.name
    if not task.is_regression and task.label_names:
        config.id2label = dict(enumerate(task.label_names))
        config.label2id = {name: i for i, name in enumerate(task.label_names)}


def split_prefix(split: str) -> str:
    """Log prefix of an evaluation split: ``val/`` for the main one, ``val_mm/`` for MNLI mismatched."""
    return "val_mm/" if split == "validation_mismatched" else "val/"


class SequenceClassificationModule(TaskModule):
    """Fine-tune or evaluate a Hugging Face encoder on a GLUE task.

    Logs ``val/<metric>`` for each of the task's metrics (MNLI mismatched: ``val_mm/<metric>``) and ``val/loss``.

    Args:
        name_or_path: the model: a folder, a name under ``$LIT_PRUNE_ASSETS/models/``, or a hub id.
        task: the GLUE task (train.py sets it from ``data.task``).
        learning_rate: peak AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to biases and LayerNorm weights).
        warmup_ratio: fraction of the training steps spent warming the learning rate up from 0.
        classifier_dropout: dropout before the classification head; ``None`` keeps the model's setting.
        trust_remote_code: let transformers run modelling code stored with the model.
        save_final_model: at the end of ``fit``, save model and tokenizer to
            ``<trainer.default_root_dir>/final_model/``.
    """

    def __init__(
        self,
        name_or_path: str,
        task: GlueTaskName = "sst2",
        learning_rate: float = 5e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        classifier_dropout: float | None = None,
        trust_remote_code: bool = False,
        save_final_model: bool = True,
    ) -> None:
        spec = get_glue_task(task, setting="model.task")
        super().__init__(name_or_path, task=task, learning_rate=learning_rate, weight_decay=weight_decay,
                         warmup_ratio=warmup_ratio, trust_remote_code=trust_remote_code,
                         save_final_model=save_final_model)
        self.save_hyperparameters()
        self.spec = spec
        self.main_metric = spec.main_metric
        self.model = self._load_model(classifier_dropout)
        self.val_metrics = torch.nn.ModuleDict({split_prefix(split).strip("/"): glue_metrics(spec)
                                                for split in spec.eval_files})

    def _load_model(self, classifier_dropout: float | None) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification
        from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

        spec = self.spec

        def configure(config) -> None:
            trained_for = getattr(config, "finetuning_task", None)
            fixed_head = is_pruned_folder(self.resolved.location)
            if (trained_for and trained_for != spec.name or fixed_head) and config.num_labels != spec.num_labels:
                raise ValueError(f"model.name_or_path={self.name_or_path!r} was fine-tuned for {trained_for!r} with "
                                 f"{config.num_labels} labels; task {spec.name!r} needs {spec.num_labels}.")
            if fixed_head:
                return
            configure_for_task(config, spec)
            if classifier_dropout is not None:
                config.classifier_dropout = classifier_dropout

        return self.load_hf_model(AutoModelForSequenceClassification, MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
                                  "sequence_classification", configure)

    def forward(self, **batch: torch.Tensor):
        return self.model(**batch)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model(**batch).loss
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def _predictions(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.squeeze(-1) if self.spec.is_regression else logits.argmax(-1)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        split = list(self.spec.eval_files)[dataloader_idx]
        prefix = split_prefix(split)
        output = self.model(**batch)
        metrics = self.val_metrics[prefix.strip("/")]
        metrics.update(self._predictions(output.logits), batch["labels"])
        self.log(f"{prefix}loss", output.loss, batch_size=batch["input_ids"].shape[0], add_dataloader_idx=False)

    def on_validation_epoch_end(self) -> None:
        for key, metrics in self.val_metrics.items():
            values = metrics.compute()
            for name, value in values.items():
                is_main = key == "val" and name == self.spec.main_metric
                self.log(f"{key}/{name}", value, prog_bar=is_main)
            metrics.reset()

    def _evaluate(self, loaders: list, progress) -> dict[str, float]:
        splits = list(self.spec.eval_files)
        if len(loaders) != len(splits):
            raise ValueError(f"{type(self).__name__}.evaluate: {self.spec.name} has {len(splits)} evaluation "
                             f"split(s) ({', '.join(splits)}), got {len(loaders)} dataloader(s)")
        results: dict[str, float] = {}
        for split, loader in zip(splits, loaders):
            key = split_prefix(split).strip("/")
            metrics = self.val_metrics[key]
            metrics.reset()
            for batch in loader:
                batch = self._to_device(batch)
                labels = batch.pop("labels")
                metrics.update(self._predictions(self.model(**batch).logits), labels)
                progress()
            prefix = "" if key == "val" else "mismatched/"
            results.update({f"{prefix}{name}": float(value) for name, value in metrics.compute().items()})
            metrics.reset()
        return results

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        batch = {name: value for name, value in batch.items() if name != "labels"}
        return self._predictions(self.model(**batch).logits)
