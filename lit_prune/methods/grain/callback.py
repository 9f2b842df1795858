"""GRAIN as a Lightning callback: units ranked and removed while the model trains, then the run's common end.

Paper: Yang, Cui, Wang, ACL 2023: the pruning schedule, the distillation set-up, embedding factorisation.
Reference code: airaria/GRAIN (``pruners_and_distiller/utils.py``: ``schedule_threshold``; ``distiller.py``).

* **Schedule**: cubic (:func:`~lit_prune.prune.schedules.cubic_schedule`), density 1 until 20% of the training
  steps, the target from 40% on, pruning every step. The steps are the ``fit``'s
  (``trainer.estimated_stepping_batches``).
* **Distillation**: GRAIN trains the student on soft cross-entropy against the fine-tuned teacher (T = 8) plus
  hidden-state MSE, and ranks units by the gradient of the first only. lit_prune's distilled task modules
  (:mod:`lit_prune.tasks.distilled`) train so and leave the prediction loss in ``module.prediction_loss``; the
  callback reads its mask gradients (``importance_from="prediction_loss"``).
* **Departure, any other LightningModule** (``importance_from="teacher"``): a callback cannot change the module's
  loss, so the weights train on the user's own loss while the importance still comes from distillation from a
  frozen copy of the model as the ``fit`` starts (or a given ``teacher``) on each step's inputs: soft cross-entropy
  at ``temperature`` (MSE for regression); the report says so (``importance_from``, ``distillation``).
  ``importance_from="loss"`` ranks by the whole training loss instead (not GRAIN's).
* **Embedding factorisation** (optional, ``embedding_rank``): the word embeddings become a rank-r SVD product before
  training and train as such; the pruned folder keeps them factorised.

The run ends as every lit_prune run does (:func:`lit_prune.methods.run.finish_run`): compaction (heads of different
sizes), evaluation, latency, ``pruned_model/``, ``pruning_report.json`` and ``pruning_masks.safetensors``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from lit_prune.core.embeddings import FactorizedEmbedding, factorize_embeddings
from lit_prune.core.io import SaveDtype
from lit_prune.core.latency_model import LatencyBudget
from lit_prune.core.masking import apply_masks
from lit_prune.core.masks import PruningMasks
from lit_prune.methods.contract import BatchToInputs, PruningTarget
from lit_prune.methods.grain.distillation import StepCapture, broadcast_teacher, distillation_summary, prepare_teacher
from lit_prune.methods.grain.importance import GrainImportance, mask_gradients_of
from lit_prune.methods.grain.layout import GrainLayout, Units
from lit_prune.methods.grain.selection import select_units, select_units_by
from lit_prune.methods.grain.settings import ImportanceFrom, settings_problems
from lit_prune.methods.latency_budget import LatencySettings, budget_report, latency_table
from lit_prune.methods.run import finish_run, resolve_seq_len, timed_evaluation, training_seconds, training_summary
from lit_prune.prune.batches import LABEL_KEYS
from lit_prune.prune.schedules import cubic_schedule
from lit_prune.prune.search import align_neurons

log = logging.getLogger(__name__)


class GrainCallback(Callback):
    """GRAIN as a Lightning callback: prunes the LightningModule's Hugging Face model while it trains.

    Add it to a ``fit`` that trains the model. Each training step folds the gradient of the prediction loss (see
    ``importance_from``) with respect to the unit masks into the importance EMA, then, after the optimiser step,
    removes units down to the schedule's density. At the end of training the model is compacted (heads of different
    sizes), evaluated, timed and written as ``pruned_model/`` with its report, like every lit_prune method.

    Works on any LightningModule holding one Hugging Face task model (:mod:`lit_prune.methods.contract`, checked in
    ``setup`` before any training): ``GrainCallback(params_kept=0.2)`` is enough. Masks, importance and the schedule
    position are the callback's state, so a resumed ``fit`` goes on with them. Under DDP the mask gradients are
    averaged over processes, so every process removes the same units (checked at the end).

    Args:
        params_kept: the fraction of the encoder's attention and FFN Linear weights (biases excluded) to keep at
            the end, in (0, 1] (GRAIN's "density": 0.2, 0.1, 0.05; ``None``: 0.2, unless ``speedup`` is given).
        speedup: a latency budget instead: the schedule's density is the latency model's predicted time over the
            dense time, ending at 1 / speedup (measured on this machine at ``latency_batch_size`` ×
            ``latency_seq_len`` with ``latency_threads`` when the fit starts; see
            :mod:`lit_prune.core.latency_model`). Give ``params_kept`` or ``speedup``, not both.
        latency_seq_len, latency_threads, latency_cache: the latency budget's sequence length (``None``: the data's
            average), threads (``None``: the run's) and tables' folder (see
            :class:`~lit_prune.methods.base.RetrainingFreePruning`).
        units: ``"intra"`` (query units, value units, FFN neurons: GRAIN) or ``"heads_ffn"`` (whole heads and FFN
            neurons: the paper's ablation).
        start: fraction of the training steps after which pruning starts (GRAIN: 0.2).
        end: fraction of the training steps at which the target density is reached (GRAIN: 0.4).
        ema_beta: β of the importance EMA (GRAIN: 0.998).
        alpha: α of the structure regulariser tanh(head value density / α) (GRAIN: 0.3); ``None`` switches it off.
        prune_every: prune every this many optimiser steps (GRAIN: 1).
        output_dir: where ``pruned_model/`` and the report go (default: the Trainer's ``default_root_dir``).
        save_model: write the pruned model folder.
        save_dtype: the dtype the pruned folder's weights are written in, ``"float32"``, ``"bfloat16"`` or
            ``"float16"`` (recorded in its config, loaded back at it); the model in the module stays as it is.
        evaluate: evaluate the model before training (``metrics.dense``) and after pruning, under the fit's
            precision: with the module's
            ``evaluate(dataloaders, progress)`` (lit_prune's task modules), else with the ``fit``'s own validation
            loop (the metrics its ``validation_step`` logs).
        latency_batch_size: evaluation examples in the batch timed for the latency comparison (0 skips it); without
            validation data, the first training batch is timed (the report's ``latency.inputs`` says so).
        latency_repeats: timed passes of each model.
        model_attribute: the LightningModule attribute that holds the Hugging Face model (``None``: the only one).
        seq_len: the ``s`` of the FLOPs accounting; ``None``: the data module's ``average_sequence_length()``
            where it has one, else the average number of non-padding tokens per example of the training batches
            (the report's ``flops.seq_len_from`` says which).
        seed: recorded in the report (the run's randomness comes from ``seed_everything``).
        embedding_rank: factorise the word embeddings to this rank by SVD before training (GRAIN's option: 192
            for BERT-base); they train factorised and the pruned folder keeps them so. ``None``: leave them.
        importance_from: the loss whose mask gradients rank the units. ``"prediction_loss"``: the module's
            ``prediction_loss``, set by its ``training_step`` (lit_prune's distilled task modules: GRAIN's gradient
            separation); ``"teacher"``: distillation from ``teacher`` on each step's inputs (soft cross-entropy at
            ``temperature``, MSE for regression), the weights training on the module's own loss (a departure:
            GRAIN trains them on the distillation loss too); ``"loss"``: the whole training loss (not GRAIN's);
            ``"auto"``: ``"prediction_loss"`` if the module has that attribute and no ``teacher`` is given, else
            ``"teacher"``.
        teacher: the teacher of ``importance_from="teacher"``: a model folder or name (loaded with the Auto class
            of the model's head); ``None``: a frozen copy of the model as the ``fit`` starts (before a resumed fit
            loads its checkpoint, so it distils from the same model).
        temperature: T of the distillation from ``teacher`` (GRAIN: 8).
        batch_to_inputs: turns one batch of the ``fit``'s dataloaders into a dict of model inputs (and labels);
            ``None``: the batches are such dicts (see :mod:`lit_prune.methods.contract`).
        tokenizer: saved beside the pruned model (a tokenizer, or a name or folder to load one from); ``None``:
            found on the module, the data module or in the model's folder.
    """

    method = "grain"

    def __init__(
        self,
        params_kept: float | None = None,
        units: Units = "intra",
        start: float = 0.2,
        end: float = 0.4,
        ema_beta: float = 0.998,
        alpha: float | None = 0.3,
        prune_every: int = 1,
        output_dir: str | None = None,
        save_model: bool = True,
        evaluate: bool = True,
        latency_batch_size: int = 32,
        latency_repeats: int = 10,
        model_attribute: str | None = None,
        seq_len: float | None = None,
        seed: int = 0,
        embedding_rank: int | None = None,
        importance_from: ImportanceFrom = "auto",
        teacher: str | None = None,
        temperature: float = 8.0,
        batch_to_inputs: BatchToInputs | None = None,
        tokenizer: Any = None,
        speedup: float | None = None,
        latency_seq_len: int | None = None,
        latency_threads: int | None = None,
        latency_cache: str | None = None,
        save_dtype: SaveDtype = "float32",
    ) -> None:
        super().__init__()
        self.latency = LatencySettings(speedup, latency_batch_size, latency_seq_len, latency_threads, latency_cache)
        problems = self.latency.problems("params_kept", params_kept)
        if params_kept is None and speedup is None:
            params_kept = 0.2
        problems += settings_problems(
            params_kept=1.0 if params_kept is None else params_kept, units=units, start=start, end=end,
            ema_beta=ema_beta, alpha=alpha,
            prune_every=prune_every, latency_batch_size=latency_batch_size, latency_repeats=latency_repeats,
            seq_len=seq_len, embedding_rank=embedding_rank, importance_from=importance_from, teacher=teacher,
            temperature=temperature, batch_to_inputs=batch_to_inputs, save_dtype=save_dtype, seed=seed,
            save_model=save_model, evaluate=evaluate)
        if problems:
            raise ValueError(f"{type(self).__name__}: " + "; ".join(problems))
        self.params_kept = None if params_kept is None else float(params_kept)
        self.units, self.start, self.end = units, start, end
        # the schedule's final density: of the weights, or of the latency model's predicted time
        self.final = self.params_kept if speedup is None else 1 / float(speedup)
        self.budget: LatencyBudget | None = None  # the latency budget, from the table measured at fit start
        self.ema_beta, self.alpha, self.prune_every = ema_beta, alpha, prune_every
        self.output_dir, self.save_model, self.evaluate = output_dir, save_model, evaluate
        self.save_dtype = save_dtype
        self.latency_batch_size, self.latency_repeats = latency_batch_size, latency_repeats
        self.model_attribute, self.seq_len, self.seed = model_attribute, seq_len, seed
        self.embedding_rank = embedding_rank
        self.importance_from, self.teacher, self.temperature = importance_from, teacher, float(temperature)
        self.batch_to_inputs, self.tokenizer = batch_to_inputs, tokenizer
        self.embedding_info: dict[str, Any] | None = None
        self.masks: PruningMasks | None = None
        self.importance: GrainImportance | None = None
        self.layout: GrainLayout | None = None
        self.density = 1.0  # the schedule density last applied
        self.last_step = -1  # the optimiser step last pruned at
        self.history: list[dict[str, Any]] = []
        self.importance_source: str | None = None  # what importance_from resolved to for this fit
        self.report: dict[str, Any] | None = None
        self.dense_metrics: dict[str, float] | None = None
        self._pending: dict[str, Any] | None = None
        self._seconds_before_resume = 0.0  # training seconds of the run a checkpoint came from
        self._started: float | None = None
        self._hooks: contextlib.ExitStack | None = None
        self._target: PruningTarget | None = None
        self._teacher = None  # a FrozenTeacher, during a fit distilling from it
        self._capture: StepCapture | None = None
        self._tokens: torch.Tensor | float = 0.0  # non-padding tokens of the training batches seen (this process)
        self._examples = 0  # and their examples
        self._first_batch: dict[str, torch.Tensor] | None = None  # timed when there is no validation data

    # ------------------------------------------------------------------------------------------------ settings
    def settings(self) -> dict[str, Any]:
        return {"params_kept": self.params_kept, **self.latency.as_dict(), "units": self.units, "start": self.start,
                "end": self.end,
                "ema_beta": self.ema_beta, "alpha": self.alpha, "prune_every": self.prune_every, "seed": self.seed,
                "embedding_rank": self.embedding_rank, "importance_from": self.importance_from,
                "teacher": self.teacher, "temperature": self.temperature, "save_dtype": self.save_dtype}

    def _fields(self) -> tuple[str, ...]:
        return self.layout.unit_fields(self.units)

    def target(self, trainer: L.Trainer, pl_module: L.LightningModule) -> PruningTarget:
        """The user's project as this callback sees it (see :mod:`lit_prune.methods.contract`)."""
        return PruningTarget(trainer, pl_module, self.model_attribute, self.batch_to_inputs, self.tokenizer)

    def resolve_importance_from(self, pl_module: L.LightningModule) -> str:
        """What ``importance_from`` means for this module: ``"prediction_loss"``, ``"teacher"`` or ``"loss"``."""
        if self.importance_from != "auto":
            return self.importance_from
        return "prediction_loss" if self.teacher is None and hasattr(pl_module, "prediction_loss") else "teacher"

    # ------------------------------------------------------------------------------------------------ hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        target = self.target(trainer, pl_module)
        # a sentence-embedding module trains only by distillation (DistilledSentenceEmbeddingModule)
        trains = None if getattr(pl_module, "has_training_objective", True) else "GRAIN"
        problems = target.problems(evaluate=self.evaluate, dense_hint="GRAIN prunes a dense model", trains=trains)
        if trainer.max_epochs == 0 or trainer.max_steps == 0 or trainer.limit_train_batches == 0:
            problems.append("the Trainer trains nothing (max_epochs, max_steps or limit_train_batches is 0): GRAIN "
                            "prunes during training; give the fit training steps")
        try:
            model = target.model
        except ValueError:  # said by problems()
            model = None
        source = self.resolve_importance_from(pl_module)
        if source == "prediction_loss" and not hasattr(pl_module, "prediction_loss"):
            problems.append(f"importance_from='prediction_loss', but {type(pl_module).__name__} has no "
                            "prediction_loss attribute: set self.prediction_loss in training_step (the loss whose "
                            "gradient ranks the units), or use importance_from='teacher'")
        if model is not None:
            self.layout = GrainLayout.from_model(model)
            hidden = self.layout.hidden_size
            if self.embedding_rank is not None and self.embedding_rank >= hidden:
                problems.append(f"embedding_rank={self.embedding_rank}: expected less than the hidden size {hidden}")
        if source == "teacher" and model is not None and not problems:
            # frozen now: before a resumed fit loads its checkpoint, before masks and factorisation
            self._teacher, found = prepare_teacher(model, self.teacher,
                                                   lambda: target.inputs(next(target.train_batches())))
            problems += found
        if problems:
            self._teacher = None
            raise ValueError(f"{type(self).__name__}: " + "; ".join(problems))
        self.importance_source = source
        self._target = target
        if self.embedding_rank is not None and not isinstance(model.base_model.get_input_embeddings(),
                                                              FactorizedEmbedding):
            # before the optimiser is built, so the factors train; a resumed fit loads them from the checkpoint
            self.embedding_info = factorize_embeddings(model, self.embedding_rank)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = self._target.model
        device = next(model.parameters()).device
        self.masks = self.layout.masks(device).requires_grad_(True, fields=self._fields())
        self.importance = GrainImportance(self.layout, self.units, self.ema_beta, self.alpha, device=device)
        self._tokens, self._examples, self._first_batch = torch.zeros((), dtype=torch.float64, device=device), 0, None
        if self._pending is not None:
            self._restore(self._pending)
            self._pending = None
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total) or total < 1:
            raise ValueError(f"{type(self).__name__}: the Trainer cannot tell how many steps it will train "
                             f"(estimated_stepping_batches={total}); set trainer.max_steps")
        self.total_steps = int(total)
        if self.latency.speedup is not None and self.budget is None:  # before training: an impossible speedup stops
            self.budget = LatencyBudget(latency_table(self._target, self.latency), self.latency.speedup)
        self._started = time.perf_counter()
        self._seconds: dict[str, float] = {}
        if self.evaluate and self.last_step < 0:
            self.dense_metrics = timed_evaluation(self._target, "dense", self._seconds)
        self._hooks = contextlib.ExitStack()
        self._hooks.enter_context(apply_masks(model, self.masks))
        if self.importance_source == "teacher":
            broadcast_teacher(self._teacher.to(device).model)  # the same teacher everywhere under DDP
            self._capture = self._hooks.enter_context(StepCapture(self._teacher, self.temperature).attached(model))
        elif self.importance_source == "loss":
            log.warning("GRAIN: importance_from='loss': the units are ranked by the whole training loss of %s",
                        type(pl_module).__name__)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        inputs = self._target.inputs(batch)
        ids = inputs.get("input_ids", inputs.get("inputs_embeds"))
        mask = inputs.get("attention_mask")
        self._tokens += mask.sum() if mask is not None else ids.shape[0] * ids.shape[1]
        self._examples += int(ids.shape[0])
        if self._first_batch is None and self.latency_batch_size:
            self._first_batch = {k: v[:self.latency_batch_size].detach().cpu() for k, v in inputs.items()
                                 if k not in LABEL_KEYS}
        if self._capture is not None:
            self._capture.start()

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        """Fold the prediction loss's mask gradients into the importance (gradient separation)."""
        source = self.importance_source
        if source == "prediction_loss":
            target = getattr(pl_module, "prediction_loss", None)
            if not (isinstance(target, torch.Tensor) and target.requires_grad):
                raise RuntimeError(f"GrainCallback: {type(pl_module).__name__}.prediction_loss holds no loss with "
                                   f"gradients at step {trainer.global_step}: set it in every training_step before "
                                   "returning the loss, or use importance_from='teacher'")
        elif source == "teacher":
            target = self._capture.loss()
            self._capture.stop()
        else:
            target = loss
        average = (lambda flat: trainer.strategy.reduce(flat, reduce_op="mean")) if trainer.world_size > 1 else None
        grads = mask_gradients_of(target, self.masks, self._fields(), average)
        self.importance.update(grads, self.masks.binary())
        if source == "prediction_loss":
            pl_module.prediction_loss = None  # never reuse a step's graph

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for name in self._fields():  # the total loss's backward also reached the masks: not used
            getattr(self.masks, name).grad = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._capture is not None:
            self._capture.stop()
        step = trainer.global_step  # optimiser steps taken so far
        if step == self.last_step:  # gradient accumulation: no new optimiser step
            return
        self.last_step = step
        density = cubic_schedule(step, self.total_steps, self.final, self.start, self.end)
        if density < self.density and (step % self.prune_every == 0 or density == self.final):
            self._prune_to(density, step)
        pl_module.log("grain/params_kept", self.layout.kept_parameters(self.masks) / self.layout.dense_parameters,
                      on_step=True, on_epoch=False, batch_size=1)
        if self.budget is not None:
            pl_module.log("grain/latency_kept", self._latency_kept(self.masks), on_step=True, on_epoch=False,
                          batch_size=1)

    def _latency_kept(self, masks: PruningMasks) -> float:
        """The latency model's predicted time of ``masks`` over the dense time."""
        return self.budget.table.predict(masks.structure()) / self.budget.table.dense_ms

    def _prune_to(self, density: float, step: int) -> None:
        if self.budget is not None:
            new = select_units_by(self.importance.scores, self.masks, self.layout, density, self._latency_kept,
                                  self.units)
            # multiples of 16 neurons per layer, as the table is measured (rounded down: never over the density)
            new = align_neurons(new, self.importance.scores["ffn"], self.budget, grow=False)
        else:
            new = select_units(self.importance.scores, self.masks, self.layout, density, self.units)
        with torch.no_grad():
            for name in ("head", "qk", "vo", "ffn"):
                getattr(self.masks, name).copy_(getattr(new, name))
        self.density = density
        kept = self.layout.kept_parameters(self.masks) / self.layout.dense_parameters
        every = max(1, self.total_steps // 100)
        if not self.history or step - self.history[-1]["step"] >= every or density == self.final:
            binary = self.masks.binary()
            self.history.append({"step": step, "density": density, "params_kept": kept,
                                 "heads": int(binary.heads_alive().sum()), "ffn": int(binary.ffn.sum())})
            if self.budget is not None:
                self.history[-1]["latency_kept"] = self._latency_kept(binary)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.finish(trainer, pl_module)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._hooks is not None:  # a fit that stopped with an error: leave the model unhooked
            self._hooks.close()
            self._hooks = None
        self._teacher, self._capture, self._target = None, None, None

    # ------------------------------------------------------------------------------------------------ the end
    def finish(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """Prune to the target (when training stopped before the schedule's end), compact the model in place,
        evaluate and time it, write the pruned folder and the report; return the report."""
        warnings_: list[str] = []
        if self.density > self.final:
            budget = f"params_kept={self.params_kept}" if self.budget is None else f"speedup={self.latency.speedup}"
            warnings_.append(f"training stopped at step {self.last_step} of {self.total_steps}, before the schedule "
                             f"reached {budget} (density {self.density:.4f}): the remaining units were removed at "
                             "the end, without training after")
            self._prune_to(self.final, self.last_step)
        self._hooks.close()  # masks and the teacher's capture off: the model is copied below
        self._hooks = None
        distillation = (distillation_summary(self.teacher, self.temperature, self._capture)
                        if self.importance_source == "teacher" else None)
        self._teacher, self._capture = None, None
        seconds = self._seconds  # GRAIN prunes while it trains: the training is its ``prune`` phase
        seconds["prune"] = round(training_seconds(self._started, self._seconds_before_resume, self._seconds), 3)
        if self._seconds_before_resume:
            seconds["prune_before_resume"] = round(self._seconds_before_resume, 3)
        target = self._target
        model = target.model
        masks = self.masks.binary()  # comparisons: no autograd history
        self.masks = masks.to("cpu")
        modes = [(module, module.training) for module in model.modules()]
        model.eval()
        dense = copy.deepcopy(model).eval()  # the trained model under no mask: dense shape
        for module, training in modes:
            module.training = training
        seq_len, seq_len_from = resolve_seq_len(trainer, self.seq_len, float(self._tokens), self._examples,
                                                "training batches")
        report = {"settings": self.settings(), "importance_from": self.importance_source,
                  "distillation": distillation, "embeddings": self.embedding_info,
                  "training": training_summary(trainer),
                  "schedule": {"total_steps": self.total_steps, "start_step": int(self.start * self.total_steps),
                               "end_step": int(self.end * self.total_steps), "history": self.history},
                  "warnings": warnings_}
        self.report = finish_run(target, model, dense, masks, method=self.method, seed=self.seed, seq_len=seq_len,
                                 seconds=seconds, started=self._started, dense_metrics=self.dense_metrics,
                                 evaluate=self.evaluate, latency_batch_size=self.latency_batch_size,
                                 latency_repeats=self.latency_repeats, output_dir=self.output_dir,
                                 save_model=self.save_model, method_report=report, fallback_batch=self._first_batch,
                                 params_report={"target": self.params_kept},
                                 flops_report={"seq_len_from": seq_len_from}, extra_latency=self._budget_report(),
                                 save_dtype=self.save_dtype)
        return self.report

    def _budget_report(self) -> Callable[[nn.Module, nn.Module], dict[str, Any]] | None:
        """The latency budget's entry of the report (``None`` without one)."""
        if self.budget is None:
            return None
        budget, structure = self.budget, self.masks.structure()
        return lambda dense, pruned: {"budget": budget_report(budget, dense, pruned, structure, self.latency_repeats)}

    # ------------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        if self.masks is None:
            return {}
        return {"masks": {name: t.detach().cpu().clone() for name, t in self.masks.to_dict().items()},
                "importance": self.importance.state_dict() if self.importance is not None else None,
                "density": self.density, "last_step": self.last_step, "history": list(self.history),
                "importance_source": self.importance_source, "dense_metrics": self.dense_metrics,
                "settings": self.settings(),
                "training_seconds": training_seconds(self._started, self._seconds_before_resume, self._seconds),
                "lengths": {"tokens": float(self._tokens), "examples": self._examples}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.masks is None:  # restored before fit starts: applied in on_fit_start
            self._pending = state_dict
        else:
            self._restore(state_dict)

    def _restore(self, state: dict[str, Any]) -> None:
        saved = state.get("settings", {})
        changed = [f"{k}: {saved[k]!r} -> {v!r}" for k, v in self.settings().items()
                   if k in ("params_kept", "speedup", "units", "start", "end") and k in saved and saved[k] != v]
        if changed:
            raise ValueError(f"{type(self).__name__}: the checkpoint was written with other pruning settings "
                             f"({'; '.join(changed)}); resume with the same settings")
        with torch.no_grad():
            for name, value in state["masks"].items():
                getattr(self.masks, name).copy_(value.to(getattr(self.masks, name).device))
        if state.get("importance") is not None:
            self.importance.load_state_dict(state["importance"])
        self.density, self.last_step = float(state["density"]), int(state["last_step"])
        self.history = list(state.get("history", []))
        self.dense_metrics = state.get("dense_metrics")
        self._seconds_before_resume = float(state.get("training_seconds", 0.0))
        lengths = state.get("lengths")
        if lengths:  # the batches the checkpointed run saw count towards the average sequence length
            self._tokens = self._tokens + lengths["tokens"]
            self._examples += int(lengths["examples"])


__all__ = ["GrainCallback"]
