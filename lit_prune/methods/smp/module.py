"""SMP's ready-made task modules: GLUE and SQuAD LightningModules that load the pretrained encoder, hold the scores
and train them (the recipes in ``configs/smp/`` run these).

Paper: Li et al., "Pruning Pre-trained Language Models Without Fine-Tuning", ACL 2023 (reference code kongds/SMP);
the scores, masking, schedule and regulariser are :mod:`.scores`', the export :mod:`.export`'s. Here, and where
lit_prune departs from the paper:

* **Classifier**: ``head="mlm"`` is the paper's (:mod:`.label_words`); ``"trainable"`` (a new head that trains with
  the scores) and ``"teacher"`` (the fine-tuned teacher's head, frozen) serve checkpoints without an MLM head, such
  as the bundled ones.
* **Distillation** (optional): KL at T = 2, weights 0.5 / 0.5, from a fine-tuned ``teacher``
  (:func:`lit_prune.prune.distill.distillation_loss`; MSE for STS-B, the mean of start and end for SQuAD), held by
  :class:`~lit_prune.prune.teacher.FrozenTeacher`. The teacher is also the report's dense reference.
* ``final_hold`` (0 by default, the paper's) spends the last fraction of the steps at the final ratio, as SMP's code
  does; ``head_warmup_steps`` (0 by default, the paper's) first trains a new classifier alone for that many steps,
  with every weight kept and the scores still; the cubic schedule then runs over the steps after them.
* The recipes train for 1 to 5 epochs, where the reference code trains 60 on STS-B and MRPC and 12 on SST-2, and
  report the model at the end of training, where the reference code keeps the best dev checkpoint at the final
  ratio (README, SMP).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from lit_prune.assets import AssetNotFoundError, resolve_model
from lit_prune.core.io import SaveDtype, save_dtype_problem
from lit_prune.data.glue import GlueTaskName
from lit_prune.data.squad import SquadTask
from lit_prune.methods.contract import PruningTarget
from lit_prune.methods.run import phase, progress_bar, training_summary
from lit_prune.methods.smp.export import export_scores, run_seed
from lit_prune.methods.smp.label_words import LABEL_WORDS, label_word_classifier
from lit_prune.methods.smp.scores import (Masking, Ramp, binary_masks, install_scores, keep_at, kept_fraction,
                                          regularizer_term, schedule_steps, score_tensors, set_counts,
                                          settings_problems, step_times)
from lit_prune.prune.batches import LABEL_KEYS
from lit_prune.prune.distill import distillation_loss, teacher_targets
from lit_prune.prune.teacher import FrozenTeacher
from lit_prune.tasks.classification import SequenceClassificationModule, configure_for_task
from lit_prune.tasks.qa import QuestionAnsweringModule

Head = Literal["trainable", "teacher", "mlm"]


def _check_teacher(teacher: str | None) -> None:
    """Fail on a ``teacher`` that names no model before the student loads (a recipe's teacher folder that the
    fine-tuning recipe has not left yet, a typo), naming the setting."""
    if teacher is None:
        return
    try:
        resolve_model(teacher, setting="teacher")
    except AssetNotFoundError as error:
        raise AssetNotFoundError(f"{error} The teacher is a fine-tuned checkpoint of the task, such as the folder "
                                 "`python train.py fit --config configs/finetune/<task>.yaml` leaves in "
                                 "runs/finetune/<task>/final_model; without one, use head='trainable', "
                                 "distill=false, teacher=null.") from None


class _StaticModelPruning:
    """What both SMP task modules add to their task module (a mixin; the task module comes second)."""

    model: nn.Module
    _smp_started: float | None = None  # when this fit's score training started
    _seconds_before_resume: float = 0.0  # training seconds of the run a checkpoint came from

    def _setup_smp(self, task_class: type, params_kept: float, masking: Masking, regularization: float,
                   scores_learning_rate: float, head: Head, teacher: str | None, distill: bool, temperature: float,
                   distill_alpha: float, latency_batch_size: int, latency_repeats: int, time_steps: int,
                   label_words: Sequence[str] | None = None, regularization_ramp: Ramp = "falling",
                   final_hold: float = 0.0, head_warmup_steps: int = 0, output_dir: str | None = None,
                   seed: int | None = None, save_dtype: SaveDtype = "float32") -> None:
        problems = settings_problems(params_kept, masking, regularization, regularization_ramp, scores_learning_rate,
                                     final_hold)
        problem = save_dtype_problem(save_dtype)
        if problem is not None:
            problems.append(problem)
        if head not in ("trainable", "teacher", "mlm"):
            problems.append(f"head={head!r}: expected 'trainable', 'teacher' or 'mlm' (the checkpoint's frozen MLM "
                            "head through label words, the paper's classifier)")
        elif head == "mlm" and task_class is not SequenceClassificationModule:
            problems.append("head='mlm': offered for GLUE tasks only (SMP's code reads SQuAD's start and end scores "
                            "from two label words at every token; lit_prune does not); use 'trainable' or 'teacher'")
        words = None
        if label_words is not None:
            expected = getattr(getattr(self, "spec", None), "num_labels", None)
            if head != "mlm":
                problems.append(f"label_words={label_words!r}: used by head='mlm' only (head={head!r})")
            elif (isinstance(label_words, str) or not all(isinstance(w, str) and w.strip() for w in label_words)
                  or len(label_words) != expected):
                problems.append(f"label_words={label_words!r}: expected {expected} word(s), one per label of "
                                f"{self.task} in label order")
            else:
                words = list(label_words)
        elif head == "mlm" and task_class is SequenceClassificationModule:
            words = list(LABEL_WORDS[self.task])
        if (head == "teacher" or distill) and teacher is None:
            problems.append(f"head={head!r}, distill={distill}: both need teacher, a fine-tuned checkpoint of the "
                            "task")
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            problems.append(f"temperature={temperature!r}: expected a number > 0")
        if not (isinstance(distill_alpha, (int, float)) and 0 <= distill_alpha <= 1):
            problems.append(f"distill_alpha={distill_alpha!r}: expected a weight in [0, 1]")
        if isinstance(head_warmup_steps, bool) or not isinstance(head_warmup_steps, int) or head_warmup_steps < 0:
            problems.append(f"head_warmup_steps={head_warmup_steps!r}: expected an integer >= 0 (0: none, the "
                            "paper's)")
        elif head_warmup_steps and head != "trainable":
            problems.append(f"head_warmup_steps={head_warmup_steps}: trains a new classifier alone before the scores, "
                            f"so it needs head='trainable' (head={head!r} is frozen)")
        if isinstance(time_steps, bool) or not isinstance(time_steps, int) or time_steps < 0:
            problems.append(f"time_steps={time_steps!r}: expected an integer >= 0 (0 skips the step timing)")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            problems.append(f"seed={seed!r}: expected an integer or None (None: the run's seed_everything seed)")
        if problems:
            raise ValueError(f"{type(self).__name__}: " + "; ".join(problems))
        self.params_kept, self.masking, self.regularization = float(params_kept), masking, float(regularization)
        self.regularization_ramp = regularization_ramp
        self.scores_learning_rate, self.head, self.distill = float(scores_learning_rate), head, distill
        self.temperature, self.distill_alpha = float(temperature), float(distill_alpha)
        self.latency_batch_size, self.latency_repeats = latency_batch_size, latency_repeats
        self.time_steps = time_steps
        self.final_hold = float(final_hold)
        self.head_warmup_steps = head_warmup_steps
        self.output_dir, self.seed, self.save_dtype = output_dir, seed, save_dtype
        self.step_time: dict[str, float] | None = None
        # a FrozenTeacher is no nn.Module: out of the optimiser, checkpoints and DDP; also scored at the end as the
        # dense reference
        self._teacher = None
        if teacher is not None:
            self._teacher = FrozenTeacher(task_class(name_or_path=teacher, task=self.task,
                                                     save_final_model=False).model)
        self._distill_from = self._teacher if distill else None
        self.label_words = words
        if head == "mlm":  # the checkpoint's own MLM head, frozen, scoring one word per label
            from lit_prune.data.base import load_tokenizer

            self.model = label_word_classifier(self.resolved.location, self.name_or_path, words,
                                               load_tokenizer(self.resolved.location, setting="model.name_or_path"))
            configure_for_task(self.model.config, self.spec)
        if head == "teacher":  # the fine-tuned classifier (and pooler) on top of the pretrained encoder
            teacher_state = self._teacher.model.state_dict()
            encoder_keys = {name for name, _ in self.model.base_model.named_parameters()}
            prefix = self.model.base_model_prefix
            head_state = {k: v for k, v in teacher_state.items()
                          if not (k.startswith(prefix + ".") and k[len(prefix) + 1:] in encoder_keys)}
            head_state.update({k: v for k, v in teacher_state.items() if ".pooler." in k})
            missing = [k for k in head_state if k not in self.model.state_dict()]
            if missing:
                raise ValueError(f"{type(self).__name__}: head='teacher', but the teacher's head weights {missing[:3]} "
                                 "do not fit the student")
            self.model.load_state_dict(head_state, strict=False)
        # head="trainable": everything outside the encoder (and the pooler) trains with the scores
        self.score_masks = install_scores(self.model, train_head=head == "trainable")
        self.teacher_path = teacher
        self.keep = 1.0
        self.counts: dict[str, list[int]] = {}

    # ---------------------------------------------------------------------------------------------- training
    def _scores(self) -> list[torch.Tensor]:
        return score_tensors(self.score_masks)

    def configure_optimizers(self) -> Any:
        others = [p for n, p in self.named_parameters() if p.requires_grad and "parametrizations" not in n]
        groups = [{"params": self._scores(), "lr": self.scores_learning_rate, "weight_decay": 0.0}]
        if others:
            groups.append({"params": others, "lr": self.learning_rate, "weight_decay": self.weight_decay})
        optimizer = torch.optim.AdamW(groups)
        # the scores' linear schedule starts after the head's warm-up (the head's spans every step)
        starts = [self.head_warmup_steps] + [0] * (len(groups) - 1)
        return {"optimizer": optimizer, "lr_scheduler": self.linear_schedule(optimizer, starts=starts)}

    def in_head_warmup(self) -> bool:
        """Whether the current step trains the classifier alone (scores still, every weight kept)."""
        return self.global_step < self.head_warmup_steps

    def on_fit_start(self) -> None:
        if self.head_warmup_steps >= self._schedule_steps():
            raise ValueError(f"{type(self).__name__}: head_warmup_steps={self.head_warmup_steps}: expected fewer than "
                             f"the {self._schedule_steps()} steps of the sparsity schedule (the training steps less "
                             "final_hold's), which starts after the warm-up")
        super().on_fit_start()
        if self._teacher is not None:
            self._teacher.to(self.device)
        self._smp_started = time.perf_counter()

    def _training_seconds(self) -> float:
        """Seconds of score training so far: this fit's plus, after a resume, those of the run up to its checkpoint."""
        elapsed = 0.0 if self._smp_started is None else time.perf_counter() - self._smp_started
        return self._seconds_before_resume + elapsed

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["smp_training_seconds"] = self._training_seconds()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._seconds_before_resume = float(checkpoint.get("smp_training_seconds", 0.0))

    def step_times(self, batch: dict[str, torch.Tensor], repeats: int) -> dict[str, float]:
        """SMP's training step against plain fine-tuning's on ``batch`` (see
        :func:`~lit_prune.methods.smp.scores.step_times`)."""
        inputs = {k: v.to(self.device) for k, v in batch.items()
                  if k in set(self._model_inputs(batch)) | set(LABEL_KEYS)}
        self.set_counts_for(0)
        return step_times(self.model, self.score_masks, inputs, repeats)

    def _schedule_steps(self) -> int:
        """N of the cubic schedule: the training steps but the last ``final_hold`` of them, spent at the final ratio."""
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1
        return schedule_steps(total, self.final_hold)

    def set_counts_for(self, step: int) -> None:
        self.keep = keep_at(step, self._schedule_steps(), self.params_kept, start=self.head_warmup_steps)
        self.counts = set_counts(self.score_masks, self.keep, self.masking)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # single process only: a backward outside DDP's forward would wait for the other processes' gradients
        if self.time_steps and self.step_time is None and self.trainer.world_size == 1:
            with self.trainer.precision_plugin.forward_context():  # timed as the fit trains (bf16-mixed: autocast)
                self.step_time = self.step_times(batch, self.time_steps)
        self.set_counts_for(self.global_step)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # the head's warm-up: AdamW skips a parameter without a gradient (no update, no moment, no step count), so
        # the scores start their training after it as from step 0; dropped after backward, so that DDP still
        # reduces every parameter's gradient each step
        if self.in_head_warmup():
            for scores in self._scores():
                scores.grad = None

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs = self._model_inputs(batch)
        labels = {k: v for k, v in batch.items() if k in LABEL_KEYS}
        student = self.model(**inputs, **labels)
        loss = student.loss
        size = batch["input_ids"].shape[0]
        self.log("train/task_loss", loss, batch_size=size)
        if self._distill_from is not None:
            targets = teacher_targets(self._distill_from(inputs), self._distill_from.model, self.temperature, batch)
            kd = distillation_loss(student, targets, self.temperature)
            self.log("train/kd_loss", kd, batch_size=size)
            loss = self.distill_alpha * kd + (1 - self.distill_alpha) * loss
        if self.regularization > 0 and not self.in_head_warmup():
            term, regularizer = regularizer_term(self.score_masks, self.keep, self.params_kept, self.regularization,
                                                 self.regularization_ramp)
            loss = loss + term
            self.log("train/regularizer", regularizer, batch_size=size)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("smp/keep", self.keep, batch_size=size)
        if self.head_warmup_steps:
            self.log("smp/head_warmup", float(self.in_head_warmup()), batch_size=size)
        for kind, counts in self.counts.items():
            numel = self.score_masks[kind][0].scores.numel()
            self.log(f"smp/kept/{kind}", sum(counts) / (numel * len(counts)), batch_size=size)
        return loss

    # ---------------------------------------------------------------------------------------------- export
    def kept_fraction(self) -> float:
        """The fraction of the encoder Linear weights the current masks keep."""
        return kept_fraction(self.score_masks)

    def binary_masks(self) -> dict[str, torch.Tensor]:
        """``{"layer.<i>.<type>": mask}``: the binary weight masks, for the export."""
        return binary_masks(self.score_masks)

    def on_fit_end(self) -> None:
        self.export_pruned(self.trainer)

    def export_pruned(self, trainer: Any) -> dict[str, Any]:
        """Fix the final masks into the weights, remove the rows and columns they empty (with exact bias folds),
        evaluate, time (dense, compacted, and compacted with CSR weights) and write the pruned folder, the weight
        masks and the report (:func:`~lit_prune.methods.smp.export.export_scores`). Returns the report."""
        training = self._training_seconds()
        started = time.perf_counter() - training
        seconds = {"prune": round(training, 3)}
        if self._seconds_before_resume:
            seconds["prune_before_resume"] = round(self._seconds_before_resume, 3)
        target = PruningTarget(trainer, self, "model")
        dense_metrics = None
        if self._teacher is not None:  # the fine-tuned dense model, on the same split, for comparison
            student, self.model = self.model, self._teacher.model.to(self.device)
            try:
                with progress_bar(trainer) as progress, phase(seconds, "evaluate_dense"):
                    dense_metrics = target.evaluate("teacher", progress)
            finally:
                self.model = student
        report = {
            "teacher": self.teacher_path, "step_time": self.step_time,
            "training": {**training_summary(trainer), "schedule_steps": self._schedule_steps()},
            "settings": {"params_kept": self.params_kept, "masking": self.masking,
                         "regularization": self.regularization, "regularization_ramp": self.regularization_ramp,
                         "final_hold": self.final_hold, "head_warmup_steps": self.head_warmup_steps,
                         "head": self.head, "distill": self.distill, "label_words": self.label_words,
                         "save_dtype": self.save_dtype},
        }
        self.report = export_scores(target, self.score_masks, params_kept=self.params_kept, masking=self.masking,
                                    seed=run_seed(self.seed), seq_len=trainer.datamodule.average_sequence_length(),
                                    seconds=seconds, started=started, dense_metrics=dense_metrics, evaluate=True,
                                    latency_batch_size=self.latency_batch_size, latency_repeats=self.latency_repeats,
                                    output_dir=self.output_dir, save_model=True, method_report=report,
                                    seq_len_from="data module (evaluation split)", save_dtype=self.save_dtype)
        return self.report


class SMPSequenceClassificationModule(_StaticModelPruning, SequenceClassificationModule):
    """SMP on a GLUE task: frozen pretrained encoder, trained mask scores.

    Args:
        name_or_path: the pretrained (not fine-tuned) encoder whose weights stay frozen.
        task: the GLUE task.
        params_kept: the final fraction of the encoder Linear weights kept (the paper's "remaining weights").
        masking: ``"global"`` (SMP-S) or ``"local"`` (SMP-L).
        regularization: λ_R of the score regulariser (SMP: 400; 0 switches it off).
        regularization_ramp: how the regulariser's weight moves with the schedule: ``"falling"``, λ_R · v_t / v_f
            (the paper's formula); ``"rising"``, λ_R · (1 − v_t) / (1 − v_f), from 0 up to λ_R (SMP's code).
        final_hold: the fraction of the training steps, at the end, spent at ``params_kept`` (the cubic schedule
            runs over the others; SMP's code holds the final ratio for its last 30,000 steps; 0: none, the paper's).
        head_warmup_steps: train a new classifier (``head="trainable"``) alone for this many steps first, every weight
            kept and the scores still, without the regulariser; the cubic schedule and the scores' learning-rate
            schedule then run over the steps after them (0: none, the paper's; lit_prune's addition).
        scores_learning_rate: Adam learning rate of the scores (SMP: 2e-2).
        head: ``"trainable"`` (a new classifier trained with the scores), ``"teacher"`` (the fine-tuned
            ``teacher``'s classifier and pooler, frozen) or ``"mlm"`` (the paper's: the checkpoint's own masked-LM
            head, frozen, scoring one label word per class; needs a checkpoint saved with its MLM head).
        label_words: ``head="mlm"``'s words, one per label in label order (one for STS-B); ``None`` takes
            :data:`~lit_prune.methods.smp.label_words.LABEL_WORDS` (SMP's), e.g. SST-2 "terrible", "great". Each
            must be one token.
        teacher: a fine-tuned checkpoint of the task (for ``head="teacher"`` and for ``distill``).
        distill: add distillation from ``teacher`` (KL at ``temperature``, weight ``distill_alpha``; the task loss
            gets 1 − ``distill_alpha``).
        temperature: distillation temperature (SMP: 2).
        distill_alpha: weight of the distillation loss (SMP: 0.5).
        latency_batch_size: evaluation examples in the timed batch (0 skips timing).
        latency_repeats: timed passes.
        time_steps: before the first step, time this many SMP steps against as many plain fine-tuning steps of the
            same model on the first batch (the report's ``step_time``; 0 skips it).
        learning_rate: learning rate of a trainable head.
        weight_decay: weight decay of a trainable head.
        warmup_ratio: warm-up fraction of the linear learning-rate schedule (SMP: none).
        trust_remote_code: let transformers run modelling code stored with the model.
        save_final_model: kept for the task-module interface; SMP always writes ``pruned_model/``.
        output_dir: where ``pruned_model/``, ``weight_masks.safetensors`` and ``pruning_report.json`` go (default:
            the Trainer's ``default_root_dir``).
        seed: the seed recorded in the report (``None``: the run's ``seed_everything`` seed, if any).
        save_dtype: the dtype the pruned folder's weights are written in, ``"float32"``, ``"bfloat16"`` or
            ``"float16"`` (recorded in its config, loaded back at it); the module's model stays as it is.
    """

    def __init__(
        self,
        name_or_path: str,
        task: GlueTaskName = "sst2",
        params_kept: float = 0.1,
        masking: Masking = "global",
        regularization: float = 400.0,
        regularization_ramp: Ramp = "falling",
        final_hold: float = 0.0,
        head_warmup_steps: int = 0,
        scores_learning_rate: float = 2e-2,
        head: Head = "trainable",
        label_words: list[str] | None = None,
        teacher: str | None = None,
        distill: bool = False,
        temperature: float = 2.0,
        distill_alpha: float = 0.5,
        latency_batch_size: int = 32,
        latency_repeats: int = 10,
        time_steps: int = 5,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.0,
        trust_remote_code: bool = False,
        save_final_model: bool = False,
        output_dir: str | None = None,
        seed: int | None = None,
        save_dtype: SaveDtype = "float32",
    ) -> None:
        _check_teacher(teacher)
        self._mlm_head = head == "mlm"  # read by _load_model, which the task module calls in its __init__
        super().__init__(name_or_path, task=task, learning_rate=learning_rate, weight_decay=weight_decay,
                         warmup_ratio=warmup_ratio, trust_remote_code=trust_remote_code,
                         save_final_model=save_final_model)
        self._setup_smp(SequenceClassificationModule, params_kept, masking, regularization, scores_learning_rate,
                        head, teacher, distill, temperature, distill_alpha, latency_batch_size, latency_repeats,
                        time_steps, label_words, regularization_ramp, final_hold, head_warmup_steps, output_dir, seed,
                        save_dtype)

    def _load_model(self, classifier_dropout: float | None) -> nn.Module | None:
        # head="mlm": the masked-LM checkpoint is loaded once, by _setup_smp, after the settings are checked
        return None if self._mlm_head else super()._load_model(classifier_dropout)

    def _model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: value for name, value in batch.items() if name not in LABEL_KEYS}


class SMPQuestionAnsweringModule(_StaticModelPruning, QuestionAnsweringModule):
    """SMP on SQuAD: frozen pretrained encoder, trained mask scores. Arguments as
    :class:`SMPSequenceClassificationModule` (``task``: ``"squad_v1"`` or ``"squad_v2"``)."""

    def __init__(
        self,
        name_or_path: str,
        task: SquadTask | None = None,
        params_kept: float = 0.1,
        masking: Masking = "global",
        regularization: float = 400.0,
        regularization_ramp: Ramp = "falling",
        final_hold: float = 0.0,
        head_warmup_steps: int = 0,
        scores_learning_rate: float = 2e-2,
        head: Head = "trainable",
        teacher: str | None = None,
        distill: bool = False,
        temperature: float = 2.0,
        distill_alpha: float = 0.5,
        latency_batch_size: int = 32,
        latency_repeats: int = 10,
        time_steps: int = 5,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.0,
        trust_remote_code: bool = False,
        save_final_model: bool = False,
        output_dir: str | None = None,
        seed: int | None = None,
        save_dtype: SaveDtype = "float32",
    ) -> None:
        _check_teacher(teacher)
        super().__init__(name_or_path, task=task, learning_rate=learning_rate, weight_decay=weight_decay,
                         warmup_ratio=warmup_ratio, trust_remote_code=trust_remote_code,
                         save_final_model=save_final_model)
        self._setup_smp(QuestionAnsweringModule, params_kept, masking, regularization, scores_learning_rate,
                        head, teacher, distill, temperature, distill_alpha, latency_batch_size, latency_repeats,
                        time_steps, regularization_ramp=regularization_ramp, final_hold=final_hold,
                        head_warmup_steps=head_warmup_steps, output_dir=output_dir, seed=seed, save_dtype=save_dtype)

    def _model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: value for name, value in self._inputs(batch).items() if name not in LABEL_KEYS}


__all__ = ["Head", "SMPQuestionAnsweringModule", "SMPSequenceClassificationModule"]
