"""Distilled task modules: lit_prune's task modules (same data, metrics, evaluation and final-model saving) whose
student learns from a frozen fine-tuned teacher, for methods that train while they prune (GRAIN).

:class:`DistilledSequenceClassificationModule`, :class:`DistilledQuestionAnsweringModule`,
:class:`DistilledTokenClassificationModule` and :class:`DistilledSentenceEmbeddingModule` train the student,
initialised from ``name_or_path``, on ``kd_weight``·prediction loss + ``hidden_weight``·hidden loss (+ an optional
``hard_label_weight``·task loss); the losses are :mod:`lit_prune.prune.distill`'s (GRAIN's soft cross-entropy at
temperature 8, no T² factor, and the hidden-state MSE through identity-initialised projections). The teacher is
held by a :class:`~lit_prune.prune.teacher.FrozenTeacher`: frozen, kept in eval mode, and kept out of the optimiser
and of checkpoints (it is rebuilt from ``teacher`` or ``name_or_path``). Each training step leaves the prediction
loss (distillation + hard labels) in ``self.prediction_loss``: GRAIN's importance is its gradient only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lit_prune.data.glue import GlueTaskName
from lit_prune.data.squad import SquadTask
from lit_prune.prune.batches import LABEL_KEYS, model_batch
from lit_prune.prune.distill import HiddenStateMatcher, soft_cross_entropy, token_mask
from lit_prune.prune.teacher import FrozenTeacher
from lit_prune.tasks.classification import SequenceClassificationModule
from lit_prune.tasks.embedding import SentenceEmbeddingModule
from lit_prune.tasks.qa import QuestionAnsweringModule
from lit_prune.tasks.token_classification import TokenClassificationModule


# ------------------------------------------------------------------------------------------------ task modules
class _Distillation:
    """What both distilled task modules add to their task module (a mixin; the task module comes second)."""

    model: nn.Module

    def _setup_distillation(self, task_class: type, teacher: str | None, temperature: float, kd_weight: float,
                            hidden_weight: float, hidden_layers: list[int] | None, hard_label_weight: float) -> None:
        problems = []
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            problems.append(f"temperature={temperature!r}: expected a number > 0")
        for name, value in (("kd_weight", kd_weight), ("hidden_weight", hidden_weight),
                            ("hard_label_weight", hard_label_weight)):
            if not (isinstance(value, (int, float)) and value >= 0):
                problems.append(f"{name}={value!r}: expected a number >= 0")
        if kd_weight == 0 and hard_label_weight == 0:
            problems.append("kd_weight=0 and hard_label_weight=0: the prediction loss would be empty")
        num_states = self.model.config.num_hidden_layers + 1
        layers = list(range(num_states)) if hidden_layers is None else list(hidden_layers)
        bad = [layer for layer in layers if not (isinstance(layer, int) and 0 <= layer < num_states)]
        if bad:
            problems.append(f"hidden_layers={hidden_layers!r}: {bad} outside 0..{num_states - 1} (0 is the "
                            f"embedding output, {num_states - 1} the last layer)")
        if problems:
            raise ValueError(f"{type(self).__name__}: " + "; ".join(problems))
        self.temperature, self.kd_weight, self.hidden_weight = float(temperature), float(kd_weight), float(hidden_weight)
        self.hard_label_weight = float(hard_label_weight)
        if teacher is None:  # the student starts as the teacher: a frozen copy of the same checkpoint
            frozen = FrozenTeacher.copy_of(self.model)
        else:
            frozen = FrozenTeacher(task_class(name_or_path=teacher, task=self.task, save_final_model=False).model)
        # not a module: out of the optimiser, of checkpoints and of DDP's parameter sync
        self._teacher = frozen
        size = self.model.config.hidden_size
        teacher_size = frozen.model.config.hidden_size
        if hidden_weight > 0 and size != teacher_size:
            raise ValueError(f"{type(self).__name__}: student hidden size {size} and teacher hidden size "
                             f"{teacher_size} differ; identity-initialised projections need them equal")
        self.hidden_matcher = HiddenStateMatcher(size, teacher_size, layers if hidden_weight > 0 else [])
        self.prediction_loss: torch.Tensor | None = None

    @property
    def teacher(self) -> nn.Module:
        """The frozen teacher model (on the student's device once ``fit`` starts)."""
        return self._teacher.model

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._teacher.to(self.device)

    def _prediction_terms(self, student: Any, teacher: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs = self._model_inputs(batch)
        hard = self.hard_label_weight > 0
        needs_hidden = self.hidden_weight > 0
        student_inputs = {**inputs, **{k: v for k, v in batch.items() if k in LABEL_KEYS}} if hard else inputs
        student = self.model(**student_inputs, output_hidden_states=needs_hidden)
        teacher = self._teacher(inputs, output_hidden_states=needs_hidden)  # without gradients
        kd = self._prediction_terms(student, teacher, batch)
        prediction = self.kd_weight * kd
        if hard:
            prediction = prediction + self.hard_label_weight * student.loss
        size = batch["input_ids"].shape[0]
        loss = prediction
        if needs_hidden:
            hidden = self.hidden_matcher(student.hidden_states, teacher.hidden_states, batch.get("attention_mask"))
            loss = loss + self.hidden_weight * hidden
            self.log("train/hidden_loss", hidden, batch_size=size)
        self.prediction_loss = prediction
        self.log("train/kd_loss", kd, batch_size=size)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        return loss


class DistilledSequenceClassificationModule(_Distillation, SequenceClassificationModule):
    """A GLUE task module trained by distillation from a frozen fine-tuned teacher.

    Args:
        name_or_path: the student's starting point (for GRAIN: the fine-tuned teacher itself).
        task: the GLUE task (train.py sets it from ``data.task``).
        teacher: the teacher model; ``None``: a frozen copy of ``name_or_path``.
        temperature: T of the soft cross-entropy (GRAIN: 8).
        kd_weight: weight of the distillation loss on the predictions.
        hidden_weight: weight of the hidden-state MSE (0 switches it off).
        hidden_layers: hidden-state indices matched (0: embeddings); ``None``: all of them.
        hard_label_weight: weight of the task loss on the labels (GRAIN: 0).
        learning_rate: peak AdamW learning rate (GRAIN: 3e-5).
        weight_decay: AdamW weight decay.
        warmup_ratio: fraction of the steps spent warming up (GRAIN: 0.1).
        **kwargs: ``classifier_dropout``, ``trust_remote_code``, ``save_final_model`` (the student, to
            ``<trainer.default_root_dir>/final_model/``): see :class:`~lit_prune.tasks.SequenceClassificationModule`.
    """

    def __init__(
        self,
        name_or_path: str,
        task: GlueTaskName = "sst2",
        teacher: str | None = None,
        temperature: float = 8.0,
        kd_weight: float = 1.0,
        hidden_weight: float = 1.0,
        hidden_layers: list[int] | None = None,
        hard_label_weight: float = 0.0,
        learning_rate: float = 3e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(name_or_path, task=task, learning_rate=learning_rate, weight_decay=weight_decay,
                         warmup_ratio=warmup_ratio, **kwargs)
        self._setup_distillation(SequenceClassificationModule, teacher, temperature, kd_weight, hidden_weight,
                                 hidden_layers, hard_label_weight)

    def _model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: value for name, value in batch.items() if name not in LABEL_KEYS}

    def _prediction_terms(self, student: Any, teacher: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.spec.is_regression:  # in float32, from bf16 outputs under bf16-mixed too
            return F.mse_loss(student.logits.float(), teacher.logits.float())
        return soft_cross_entropy(student.logits, teacher.logits, self.temperature)


class DistilledQuestionAnsweringModule(_Distillation, QuestionAnsweringModule):
    """A SQuAD task module trained by distillation from a frozen fine-tuned teacher.

    Args:
        name_or_path: the student's starting point (for GRAIN: the fine-tuned teacher itself).
        task: ``"squad_v1"`` or ``"squad_v2"``; ``None`` takes the data module's.
        teacher: the teacher model; ``None``: a frozen copy of ``name_or_path``.
        temperature: T of the soft cross-entropy over start and end positions (GRAIN: 8).
        kd_weight: weight of the distillation loss on the predictions.
        hidden_weight: weight of the hidden-state MSE (0 switches it off).
        hidden_layers: hidden-state indices matched (0: embeddings); ``None``: all of them.
        hard_label_weight: weight of the task loss on the answer positions (GRAIN: 0).
        learning_rate: peak AdamW learning rate (GRAIN: 3e-5).
        weight_decay: AdamW weight decay.
        warmup_ratio: fraction of the steps spent warming up (GRAIN: 0.1).
        **kwargs: ``trust_remote_code``, ``save_final_model`` (the student, to
            ``<trainer.default_root_dir>/final_model/``): see :class:`~lit_prune.tasks.QuestionAnsweringModule`.
    """

    def __init__(
        self,
        name_or_path: str,
        task: SquadTask | None = None,
        teacher: str | None = None,
        temperature: float = 8.0,
        kd_weight: float = 1.0,
        hidden_weight: float = 1.0,
        hidden_layers: list[int] | None = None,
        hard_label_weight: float = 0.0,
        learning_rate: float = 3e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(name_or_path, task=task, learning_rate=learning_rate, weight_decay=weight_decay,
                         warmup_ratio=warmup_ratio, **kwargs)
        self._setup_distillation(QuestionAnsweringModule, teacher, temperature, kd_weight, hidden_weight,
                                 hidden_layers, hard_label_weight)

    def _model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: value for name, value in self._inputs(batch).items() if name not in LABEL_KEYS}

    def _prediction_terms(self, student: Any, teacher: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = batch["attention_mask"].bool() if "attention_mask" in batch else None
        return sum(soft_cross_entropy(getattr(student, name), getattr(teacher, name), self.temperature, mask)
                   for name in ("start_logits", "end_logits"))


class DistilledTokenClassificationModule(_Distillation, TokenClassificationModule):
    """A named-entity task module trained by distillation from a frozen fine-tuned teacher.

    The prediction loss is the soft cross-entropy over the classes of the tokens the task loss counts (each word's
    first sub-token), as GRAIN's over a sentence's classes.

    Args:
        name_or_path: the student's starting point (for GRAIN: the fine-tuned teacher itself).
        task: ``"conll2003"`` (train.py sets it from ``data.task``).
        teacher, temperature, kd_weight, hidden_weight, hidden_layers, hard_label_weight, learning_rate,
            weight_decay, warmup_ratio: see :class:`DistilledSequenceClassificationModule`.
        **kwargs: ``label_names``, ``classifier_dropout``, ``trust_remote_code``, ``save_final_model``: see
            :class:`~lit_prune.tasks.TokenClassificationModule`.
    """

    def __init__(
        self,
        name_or_path: str,
        task: str = "conll2003",
        teacher: str | None = None,
        temperature: float = 8.0,
        kd_weight: float = 1.0,
        hidden_weight: float = 1.0,
        hidden_layers: list[int] | None = None,
        hard_label_weight: float = 0.0,
        learning_rate: float = 3e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(name_or_path, task=task, learning_rate=learning_rate, weight_decay=weight_decay,
                         warmup_ratio=warmup_ratio, **kwargs)
        self._setup_distillation(TokenClassificationModule, teacher, temperature, kd_weight, hidden_weight,
                                 hidden_layers, hard_label_weight)

    def _model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self._inputs(batch, labels=False)

    def _prediction_terms(self, student: Any, teacher: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        keep = token_mask(batch, student.logits.shape[:2]).to(student.logits.device)
        return soft_cross_entropy(student.logits[keep], teacher.logits[keep], self.temperature)


class DistilledSentenceEmbeddingModule(_Distillation, SentenceEmbeddingModule):
    """A sentence-embedding module trained by distillation from a frozen copy of itself (no labels): the prediction
    loss is the squared distance between the student's and the teacher's embeddings, averaged over the sentences
    (:func:`~lit_prune.prune.distill.distillation_loss`'s for embeddings; ``temperature`` does not apply), plus the
    hidden-state MSE. With it, GRAIN prunes a sentence-embedding model while it trains on unlabeled sentences.

    Args:
        name_or_path: see :class:`~lit_prune.tasks.SentenceEmbeddingModule`.
        teacher, kd_weight, hidden_weight, hidden_layers, learning_rate, weight_decay, warmup_ratio: see
            :class:`DistilledSequenceClassificationModule` (there are no labels, so no ``hard_label_weight``).
        **kwargs: ``pooling``, ``normalize``, ``trust_remote_code``, ``save_final_model``: see
            :class:`~lit_prune.tasks.SentenceEmbeddingModule`.
    """

    has_training_objective = True

    def __init__(
        self,
        name_or_path: str,
        task: str = "embedding",
        teacher: str | None = None,
        kd_weight: float = 1.0,
        hidden_weight: float = 1.0,
        hidden_layers: list[int] | None = None,
        learning_rate: float = 3e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(name_or_path, task=task, **kwargs)
        self.learning_rate, self.weight_decay, self.warmup_ratio = learning_rate, weight_decay, warmup_ratio
        self._setup_distillation(SentenceEmbeddingModule, teacher, 1.0, kd_weight, hidden_weight, hidden_layers, 0.0)

    def _model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: value for name, value in model_batch(self.model, batch).items() if name not in LABEL_KEYS}

    def _prediction_terms(self, student: Any, teacher: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return (student.embeddings.float() - teacher.embeddings.float()).pow(2).sum(-1).mean()


__all__ = ["DistilledQuestionAnsweringModule", "DistilledSentenceEmbeddingModule",
           "DistilledSequenceClassificationModule", "DistilledTokenClassificationModule"]
