"""Where GRAIN's prediction loss comes from when the LightningModule's own loss is something else.

Paper: Yang, Cui, Wang, ACL 2023: the student learns from the fine-tuned teacher by soft cross-entropy
at temperature T = 8 (no hard labels; MSE for regression) plus hidden-state MSE, and the units are ranked by the
gradient of the soft cross-entropy alone. Reference code: airaria/GRAIN (``pruners_and_distiller/distiller.py``,
TextBrewer's ``kd_ce_loss``).

lit_prune's distilled task modules compute that loss themselves (``module.prediction_loss``). For any other
LightningModule, :class:`StepCapture` hooks the Hugging Face model, records the outputs of each training step's
forward passes, runs the frozen teacher (:class:`~lit_prune.prune.teacher.FrozenTeacher`) on the same inputs, and
:func:`distillation_importance_loss` gives the loss whose mask gradients rank the units. Departure: the weights
train on the module's own loss, not on the distillation loss (a callback cannot change a module's loss).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lit_prune.prune.batches import LABEL_KEYS
from lit_prune.prune.distill import PredictionKind, prediction_kind, soft_cross_entropy
from lit_prune.prune.teacher import FrozenTeacher

#: output fields compared between the student and a given teacher
OUTPUT_FIELDS = ("logits", "start_logits", "end_logits", "embeddings")


def distillation_importance_loss(student: Any, teacher: Any, model: nn.Module, temperature: float,
                                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """GRAIN's prediction loss between a student's and a teacher's outputs on the same inputs.

    Soft cross-entropy at temperature T (:func:`~lit_prune.prune.distill.soft_cross_entropy`, no T² factor):
    over the classes (sequence classification); over the non-padding tokens' classes (token classification, with
    ``attention_mask``); the sum over start and end positions with padding left out (question answering); the MSE
    of the outputs for regression, the squared distance between the embeddings of a sentence-embedding model (T does
    not apply to either).
    """
    kind = prediction_kind(student, model)
    if kind == "embedding":  # a sentence-embedding model: the squared distance between the embeddings
        return (student.embeddings.float() - teacher.embeddings.float()).pow(2).sum(-1).mean()
    if kind == "question_answering":
        mask = attention_mask.bool() if attention_mask is not None else None
        return sum(soft_cross_entropy(getattr(student, name).float(), getattr(teacher, name).float(), temperature,
                                      mask) for name in ("start_logits", "end_logits"))
    logits, targets = student.logits.float(), teacher.logits.float()
    if kind == "regression":
        return F.mse_loss(logits, targets)
    if logits.dim() == 3 and attention_mask is not None:  # (B, s, C) token classes: the real tokens only
        keep = attention_mask.bool()
        logits, targets = logits[keep], targets[keep]  # (N, C)
    return soft_cross_entropy(logits, targets, temperature)


class StepCapture:
    """The student's and the teacher's outputs of one training step, for :func:`distillation_importance_loss`.

    A forward hook on the student (``with_kwargs=True``) records every forward pass made with gradients while the
    capture is armed (:meth:`start` ... :meth:`stop`: one training step), and runs the frozen teacher on the same
    inputs at once (inside the step's autocast, if any). Passes without gradients (a validation loop, a
    ``no_grad`` block of the step) are ignored.

    Args:
        teacher: the frozen teacher.
        temperature: T of the soft cross-entropy.
    """

    def __init__(self, teacher: FrozenTeacher, temperature: float) -> None:
        self.teacher, self.temperature = teacher, temperature
        self.records: list[tuple[Any, Any, torch.Tensor | None]] = []
        self.kind: PredictionKind | None = None
        self.armed = False
        self._model: nn.Module | None = None
        self._positional: list[str] = []

    @contextmanager
    def attached(self, model: nn.Module) -> Iterator[StepCapture]:
        """Hook ``model`` (the student) for the block."""
        self._model = model
        self._positional = [p.name for p in inspect.signature(model.forward).parameters.values()
                            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        handle = model.register_forward_hook(self._hook, with_kwargs=True)
        try:
            yield self
        finally:
            handle.remove()
            self.stop()

    def start(self) -> None:
        self.records = []
        self.armed = True

    def stop(self) -> None:
        self.records = []  # the step's outputs hold its graph: let it go with the step
        self.armed = False

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        if not self.armed or not torch.is_grad_enabled():
            return
        inputs = {**dict(zip(self._positional, args)), **kwargs}  # (B, s) tensors by name
        self.records.append((output, self.teacher(inputs), inputs.get("attention_mask")))

    def loss(self) -> torch.Tensor:
        """The mean over the step's recorded passes of :func:`distillation_importance_loss`.

        Raises:
            RuntimeError: the step made no forward pass of the model with gradients.
        """
        if not self.records:
            raise RuntimeError("GrainCallback: the training step made no forward pass of the Hugging Face model with "
                               "gradients, so there is nothing to distil the importance from: call the model in "
                               "training_step, or set importance_from='loss'")
        losses = []
        for student, teacher, attention_mask in self.records:
            if self.kind is None:
                self.kind = prediction_kind(student, self._model)
            losses.append(distillation_importance_loss(student, teacher, self._model, self.temperature,
                                                       attention_mask))
        return torch.stack(losses).mean()


def load_teacher(model: nn.Module, teacher: str | None) -> FrozenTeacher:
    """The frozen teacher: a copy of ``model`` as it is now (``teacher=None``), or the model saved at ``teacher``
    (a folder or a hub name), loaded with the Auto class of ``model``'s head."""
    if teacher is None:
        return FrozenTeacher.copy_of(model)
    import transformers

    name = type(model).__name__
    auto = next((getattr(transformers, f"AutoModel{suffix}") for suffix in ("ForSequenceClassification",
                                                                            "ForTokenClassification",
                                                                            "ForQuestionAnswering")
                 if name.endswith(suffix)), type(model))
    return FrozenTeacher(auto.from_pretrained(str(teacher)))


def teacher_problems(teacher: FrozenTeacher, model: nn.Module, inputs: Mapping[str, torch.Tensor],
                     given: str) -> list[str]:
    """Whether the teacher's outputs on ``inputs`` (a few examples of the first batch) have the student's fields
    and shapes."""
    modes = [(module, module.training) for module in model.modules()]
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.no_grad():
            student = model(**{k: v.to(device) for k, v in inputs.items()})
        taught = teacher(inputs)
    except Exception as error:
        return [(f"teacher={given!r} failed on the first batch's inputs ({sorted(inputs)}): "
                 f"{type(error).__name__}: {error}")]
    finally:
        for module, training in modes:
            module.training = training
    problems = []
    for name in OUTPUT_FIELDS:
        ours = getattr(student, name, None)
        if ours is None:
            continue
        theirs = getattr(taught, name, None)
        if theirs is None or theirs.shape != ours.shape:
            shape = "none" if theirs is None else tuple(theirs.shape)
            problems.append(f"teacher={given!r}: its {name} have shape {shape}, the model's {tuple(ours.shape)}: "
                            "give a teacher fine-tuned for the same task and labels, or teacher=None to distil "
                            "from a frozen copy of the model as the fit starts")
    return problems


def prepare_teacher(model: nn.Module, teacher: str | None, first_inputs: Callable[[], Mapping[str, torch.Tensor]]
                    ) -> tuple[FrozenTeacher | None, list[str]]:
    """:func:`load_teacher`, and when ``teacher`` is given, :func:`teacher_problems` on two examples of
    ``first_inputs()`` (the first training batch's model inputs). Returns the teacher (``None`` on failure) and
    the problems found."""
    try:
        frozen = load_teacher(model, teacher)
    except Exception as error:
        return None, [f"teacher={teacher!r} could not be loaded: {type(error).__name__}: {error}"]
    if teacher is None:
        return frozen, []
    inputs = {k: v[:2] for k, v in first_inputs().items() if k not in LABEL_KEYS}
    return frozen, teacher_problems(frozen, model, inputs, teacher)


def broadcast_teacher(model: nn.Module) -> None:
    """Give every process process 0's weights of ``model`` (a teacher copied before DDP synchronised the student:
    a model initialised at random without a common seed would differ between processes)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    with torch.no_grad():
        for tensor in model.state_dict().values():
            torch.distributed.broadcast(tensor, src=0)


def distillation_summary(teacher: str | None, temperature: float, capture: StepCapture | None) -> dict[str, Any]:
    """The report's ``distillation`` entry: the teacher, the loss, and the departure from GRAIN."""
    kind = capture.kind if capture is not None else None
    return {"teacher": teacher if teacher is not None else "a frozen copy of the model as the fit started",
            "temperature": temperature, "loss": "mse" if kind == "regression" else "soft_cross_entropy",
            "weights_trained_on": "the LightningModule's own training loss",
            "departure": "GRAIN trains the weights on the distillation loss too; a callback cannot change the "
                         "module's loss, so only the importance comes from the teacher"}


__all__ = ["OUTPUT_FIELDS", "StepCapture", "broadcast_teacher", "distillation_importance_loss", "distillation_summary",
           "load_teacher", "prepare_teacher", "teacher_problems"]
