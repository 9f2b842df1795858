"""Distillation losses, written once for every method that learns from a frozen teacher.

**One meaning of ``temperature``, everywhere in lit_prune**: T divides the logits of both the teacher and the student
before the softmax. What differs between methods is only the loss built on the tempered distributions, and each
method's paper fixes it:

* :func:`distillation_loss`: KL(teacher ‖ student) at temperature T, multiplied by T² (Hinton et al.; the gradient
  scale then does not depend on T), averaged over the batch. Question answering: the mean of the start and end
  losses. Regression (one output): the MSE of the raw outputs (T does not apply). Sentence embeddings: the squared
  Euclidean distance between the two embeddings, averaged over the batch (T does not apply; for unit-length
  embeddings it is 2·(1 − cosine)). KPrune's predictive knowledge (T = 2), G-Pruner's reward (T = 1) and SMP's
  distillation (T = 2) use it.
* :func:`soft_cross_entropy`: −Σ softmax(t/T)·log softmax(s/T), averaged over the rows, **without** the T² factor, as
  GRAIN's reference code (TextBrewer) has it (T = 8).
* :func:`hidden_mse` / :class:`HiddenStateMatcher`: hidden-state MSE through trainable projections initialised to the
  identity, over the non-padding tokens (GRAIN).

The teacher's side of :func:`distillation_loss` is computed once per batch (:func:`teacher_targets`,
:func:`dense_predictions`), so a calibration loop can keep it while the student changes.

**Precision**: every loss here, and the teacher's targets, are computed in float32 from the outputs whatever their
dtype (bf16 under a ``bf16-mixed`` fit's autocast, where a softmax of bf16 logits would stay bf16); on float32
outputs the upcasts are no-ops.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from lit_prune.core.hf_modeling.modeling_lit_pruned import SENTENCE_EMBEDDING_KEY
from lit_prune.prune.batches import model_inputs

PredictionKind = Literal["classification", "token_classification", "regression", "question_answering", "embedding"]


def predicts_embeddings(model: nn.Module) -> bool:
    """Whether ``model`` is a sentence-embedding model (its outputs carry ``embeddings``, and no labels exist)."""
    return getattr(getattr(model, "config", None), SENTENCE_EMBEDDING_KEY, None) is not None


def reads_first_token_only(model: nn.Module) -> bool:
    """Whether the model's prediction reads only the first token of the last layer: a sequence classifier (unless
    its head pools every token, as ModernBERT's with ``classifier_pooling="mean"``), or a sentence-embedding model
    with CLS pooling (question answering, token classification and mean or max pooling read every token)."""
    if predicts_embeddings(model):
        return getattr(model.config, SENTENCE_EMBEDDING_KEY).get("pooling") == "cls"
    if getattr(model.config, "classifier_pooling", "cls") != "cls":
        return False
    return any(cls.__name__.endswith(("ForSequenceClassification", "ForLabelWordClassification"))
               for cls in type(model).__mro__)


def prediction_kind(outputs: Any, model: nn.Module) -> PredictionKind:
    """What the model predicts, from its output and config (used to pick the distillation loss)."""
    if getattr(outputs, "start_logits", None) is not None:
        return "question_answering"
    if getattr(outputs, "embeddings", None) is not None:
        return "embedding"
    logits = getattr(outputs, "logits", None)
    if logits is None:
        raise ValueError(f"{type(model).__name__} returns neither `logits`, `start_logits`/`end_logits` nor "
                         "`embeddings`: distillation needs a sequence-classification, regression, question-answering "
                         "or sentence-embedding model")
    if logits.dim() == 3:
        return "token_classification"
    if getattr(model.config, "problem_type", None) == "regression" or logits.shape[-1] == 1:
        return "regression"
    return "classification"


def teacher_targets(outputs: Any, model: nn.Module, temperature: float,
                    batch: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """The teacher's side of :func:`distillation_loss` from its ``outputs``: softmax(logits / T) (start and end for
    question answering), the raw values for regression, the embeddings of a sentence-embedding model.

    Token classification ((B, S, C) logits) also records which tokens count (``token_mask``): those the task loss
    counts (``labels`` != -100) when ``batch`` has labels, else its non-padding tokens, else all.
    """
    kind = prediction_kind(outputs, model)
    if kind == "embedding":
        return {"embeddings": outputs.embeddings.detach().float()}
    if kind == "question_answering":
        return {"start": F.softmax(outputs.start_logits.detach().float() / temperature, dim=-1),
                "end": F.softmax(outputs.end_logits.detach().float() / temperature, dim=-1)}
    if kind == "regression":
        return {"values": outputs.logits.detach().float()}
    probs = F.softmax(outputs.logits.detach().float() / temperature, dim=-1)
    if kind == "token_classification":
        return {"probs": probs, "token_mask": token_mask(batch, probs.shape[:2]).to(probs.device)}
    return {"probs": probs}


def token_mask(batch: Mapping[str, Any] | None, shape: torch.Size) -> torch.Tensor:
    """(B, S) bool: the tokens a token-classification loss counts (see :func:`teacher_targets`)."""
    batch = batch or {}
    if isinstance(batch.get("labels"), torch.Tensor) and batch["labels"].shape == shape:
        return batch["labels"] != -100
    if isinstance(batch.get("attention_mask"), torch.Tensor):
        return batch["attention_mask"].bool()
    return torch.ones(shape, dtype=torch.bool)


@torch.no_grad()
def dense_predictions(dense: nn.Module, batch: Mapping[str, Any], temperature: float) -> dict[str, torch.Tensor]:
    """The dense model's :func:`teacher_targets` for one batch (a forward pass without gradients)."""
    return teacher_targets(dense(**model_inputs(dense, batch)), dense, temperature, batch)


def distillation_loss(outputs: Any, targets: Mapping[str, torch.Tensor], temperature: float) -> torch.Tensor:
    """The predictive-knowledge loss between the current model's ``outputs`` and the dense ``targets``.

    KL(dense ‖ current) at temperature T times T², averaged over the batch (``batchmean``); the mean of the start
    and end losses for question answering; the MSE for regression; the mean squared distance between the
    embeddings for a sentence-embedding model; for token classification, KL times T² averaged over the tokens the
    task loss counts.
    """
    def kl(logits: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        return F.kl_div(F.log_softmax(logits.float() / temperature, dim=-1), probs.float(),
                        reduction="batchmean") * temperature ** 2

    if "start" in targets:
        return (kl(outputs.start_logits, targets["start"]) + kl(outputs.end_logits, targets["end"])) / 2
    if "values" in targets:
        return F.mse_loss(outputs.logits.float(), targets["values"])
    if "embeddings" in targets:
        return (outputs.embeddings.float() - targets["embeddings"]).pow(2).sum(-1).mean()
    if "token_mask" in targets:  # token classification: the mean over the counted tokens
        keep = targets["token_mask"]
        return kl(outputs.logits[keep], targets["probs"][keep])
    return kl(outputs.logits, targets["probs"])


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 8.0,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """Soft cross-entropy of the student's tempered distribution against the teacher's.

    Args:
        student_logits: (..., C) logits; the softmax runs over the last dim.
        teacher_logits: the same shape.
        temperature: T; both logits are divided by it.
        mask: optional (..., C) bool, False where a class is not a candidate (QA padding): left out of both softmaxes.

    Returns:
        The mean over all leading positions of −Σ_c p_T(c)·log p_S(c), in float32 (the logits are upcast first).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    student, teacher = student_logits.float() / temperature, teacher_logits.float() / temperature
    if mask is not None:
        floor = torch.finfo(student.dtype).min
        student, teacher = student.masked_fill(~mask, floor), teacher.masked_fill(~mask, floor)
    p_teacher = F.softmax(teacher, dim=-1)
    log_student = F.log_softmax(student, dim=-1)
    terms = p_teacher * log_student
    if mask is not None:  # p_T is 0 there, but 0 · (−huge) must not become NaN
        terms = terms.masked_fill(~mask, 0.0)
    return -terms.sum(-1).mean()


def hidden_mse(student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor | None = None
               ) -> torch.Tensor:
    """Mean squared error between (B, s, d) hidden states over the tokens ``attention_mask`` (B, s) keeps (float32)."""
    student, teacher = student.float(), teacher.float()
    if attention_mask is None:
        return F.mse_loss(student, teacher)
    weights = attention_mask.to(student.dtype).unsqueeze(-1)  # (B, s, 1)
    count = weights.sum() * student.shape[-1]
    return ((student - teacher) ** 2 * weights).sum() / count.clamp_min(1.0)


class HiddenStateMatcher(nn.Module):
    """Trainable projections (identity at start) from student to teacher hidden states, and their summed MSE.

    Args:
        student_size: the student's hidden size.
        teacher_size: the teacher's hidden size (equal to the student's for the identity start).
        layers: the hidden-state indices matched (0 is the embedding output; student layer i against teacher
            layer i).
    """

    def __init__(self, student_size: int, teacher_size: int, layers: Sequence[int]) -> None:
        super().__init__()
        self.layers = list(layers)
        self.projections = nn.ModuleList()
        for _ in self.layers:
            projection = nn.Linear(student_size, teacher_size)
            nn.init.eye_(projection.weight)
            nn.init.zeros_(projection.bias)
            self.projections.append(projection)

    def forward(self, student_states: Sequence[torch.Tensor], teacher_states: Sequence[torch.Tensor],
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        total = student_states[0].new_zeros((), dtype=torch.float32)
        for layer, projection in zip(self.layers, self.projections):
            total = total + hidden_mse(projection(student_states[layer]), teacher_states[layer], attention_mask)
        return total


__all__ = ["HiddenStateMatcher", "PredictionKind", "dense_predictions", "distillation_loss", "hidden_mse",
           "prediction_kind", "predicts_embeddings", "reads_first_token_only", "soft_cross_entropy", "teacher_targets",
           "token_mask"]
