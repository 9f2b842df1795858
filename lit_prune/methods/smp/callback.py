"""SMP as a Lightning callback, for a user's own LightningModule that holds one Hugging Face task model.

Paper: Li et al., "Pruning Pre-trained Language Models Without Fine-Tuning", ACL 2023 (reference code kongds/SMP).
The scores, masking, schedule and regulariser are :mod:`.scores`', the export :mod:`.export`'s: the same code the
ready-made task modules (:mod:`.module`) run. Where the callback departs from the paper and from those modules:

* **The task head trains** (``train_head=True``, the default): the paper freezes every weight, its classifier being
  the frozen MLM head through label words; a user's model usually carries a new or fine-tuned head of its own, which
  must be able to learn beside the scores. ``train_head=False`` freezes it too (the paper's setting).
* **The regulariser is a gradient, not a loss term**: a callback cannot change the loss the user's
  ``training_step`` returns, so λ_R · w(v_t) · R̄(S) is differentiated with respect to the scores on its own and its
  gradient added to theirs once per optimiser step, after the user's backward (and gradient accumulation) and before
  gradient clipping and the step. The update is the one the loss term would give; the logged loss lacks the term
  (it is logged as ``smp/regularizer``).
* **No distillation**: it would need a teacher's forward pass and the distillation loss in the user's backward
  (or a second backward per step). Use the task modules (``distill=True``) for SMP with distillation.
* **The user's optimiser trains the scores**: at the start of ``fit`` the scores leave whichever parameter group of
  the user's optimiser holds them and get their own group (``scores_learning_rate``, no weight decay, the group's
  other settings kept). A learning-rate scheduler of that optimiser is extended to the new group where it keeps
  per-group lists (``base_lrs``, ``LambdaLR``'s functions, ``ReduceLROnPlateau``'s minima), so the scores follow the
  schedule's shape from ``scores_learning_rate``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from lit_prune.core.io import SaveDtype
from lit_prune.methods.contract import BatchToInputs, PruningTarget
from lit_prune.methods.run import (resolve_seq_len, timed_evaluation, training_seconds,
                                   training_summary)
from lit_prune.methods.settings import shared_settings_problems
from lit_prune.methods.smp.export import export_scores, run_seed
from lit_prune.methods.smp.scores import (Masking, Ramp, ScoreMasks, has_scores, install_scores, keep_at, kept_fraction,
                                          regularizer_term, schedule_steps, score_tensors, set_counts,
                                          settings_problems)


class SMPCallback(Callback):
    """SMP (static model pruning) on a user's LightningModule: the Hugging Face model's encoder weights stay frozen,
    one score per encoder Linear weight trains with the user's own training step and optimiser, and at the end of
    training the weights the scores drop are removed (see the module docstring for what differs from the paper).

    What happens, hook by hook:

    * construction: SMP's settings are checked (one error naming each invalid one);
    * ``setup``: every requirement of the project is checked
      (:meth:`~lit_prune.methods.contract.PruningTarget.problems`: one error naming each problem); then the scores
      are installed on the model and every weight of the model is frozen but the task head's (``train_head``). This
      runs before ``configure_optimizers``, so the user's optimiser, built over ``self.parameters()``, sees the
      scores.
    * ``on_fit_start``: the scores get their own parameter group; the model as the fit got it is evaluated with the
      fit's validation loop (``evaluate``; the report's ``metrics.dense``).
    * before each training batch: the cubic schedule's keep ratio at the current optimiser step, from 1 down to
      ``params_kept`` over the fit's ``trainer.estimated_stepping_batches`` (less ``final_hold``), sets every
      matrix's kept count (SMP-S or SMP-L).
    * before each optimiser step: the regulariser's gradient is added to the scores'.
    * ``on_train_end``: the final masks (exactly ``params_kept`` of the weights) are fixed into the weights; the rows
      and columns they empty are removed (exact bias folds); the model is evaluated, timed against its masked dense
      copy (also with CSR weights) and written as ``<output_dir>/pruned_model/`` (a Hugging Face folder),
      ``pruning_report.json``, ``pruning_masks.safetensors`` and ``weight_masks.safetensors``. The user's model is
      the compacted one afterwards. The trained scores stay readable in :attr:`score_masks`.

    The scores are parameters of the user's model, so the module's checkpoints hold them; the callback's state (the
    schedule's length, training seconds, token counts, dense metrics) is in the callback's: a ``fit`` resumed from a
    checkpoint goes on where it stopped. Under DDP every process holds the same scores and masks (checked at the
    end). A fit that stops with an error leaves the scores on the model.

    Args:
        params_kept: the fraction of the encoder's attention and FFN Linear weights (biases excluded) kept at the end,
            in (0, 1] (the paper's "remaining weights"; the task modules' ``params_kept``).
        masking: ``"global"`` (SMP-S: per matrix type, layers keep in proportion to Σ σ(S)) or ``"local"`` (SMP-L:
            every matrix keeps ``params_kept`` of its weights).
        regularization: λ_R of the score regulariser (SMP: 400; 0 switches it off).
        regularization_ramp: ``"falling"``, λ_R · v_t / v_f (the paper's) or ``"rising"``, λ_R · (1 − v_t) /
            (1 − v_f) (SMP's code).
        final_hold: the fraction of the training steps, at the end, spent at ``params_kept`` (0: none, the paper's).
        scores_learning_rate: learning rate of the scores' parameter group (SMP: 2e-2, with Adam).
        train_head: train the model's task head (the parameters outside its base model, and the pooler) with the
            scores; ``False`` freezes it too (the paper's).
        output_dir: where the outputs go (default: the Trainer's ``default_root_dir``).
        save_model: write the pruned model folder.
        save_dtype: the dtype the pruned folder's weights are written in, ``"float32"``, ``"bfloat16"`` or
            ``"float16"`` (recorded in its config, loaded back at it); the model in the module stays as it is.
        evaluate: evaluate the model before training and the pruned model after it, under the fit's precision, with
            the module's
            ``evaluate(dataloaders, progress)`` (lit_prune's task modules) or the fit's own validation loop.
        latency_batch_size: evaluation examples in the batch timed for the latency comparison (0 skips it).
        latency_repeats: timed passes of each model.
        model_attribute: the LightningModule attribute holding the Hugging Face model (``None``: the only one).
        seq_len: the ``s`` of the FLOPs accounting; ``None``: the data module's ``average_sequence_length()`` where it
            has one, else the average non-padding tokens per example of the batches trained on (the report's
            ``flops.seq_len_from`` says which).
        seed: recorded in the report (``None``: the run's ``seed_everything`` seed, if any).
        batch_to_inputs: turns one batch into a dict of model inputs (``None``: batches are such dicts).
        tokenizer: saved beside the pruned model (a tokenizer, or a name or folder); ``None``: found on the module,
            the data module or in the model's folder.
    """

    method = "smp"

    def __init__(
        self,
        params_kept: float = 0.1,
        masking: Masking = "global",
        regularization: float = 400.0,
        regularization_ramp: Ramp = "falling",
        final_hold: float = 0.0,
        scores_learning_rate: float = 2e-2,
        train_head: bool = True,
        output_dir: str | None = None,
        save_model: bool = True,
        evaluate: bool = True,
        latency_batch_size: int = 32,
        latency_repeats: int = 10,
        model_attribute: str | None = None,
        seq_len: float | None = None,
        seed: int | None = None,
        batch_to_inputs: BatchToInputs | None = None,
        tokenizer: Any = None,
        save_dtype: SaveDtype = "float32",
    ) -> None:
        super().__init__()
        problems = settings_problems(params_kept, masking, regularization, regularization_ramp, scores_learning_rate,
                                     final_hold)
        problems += shared_settings_problems(
            latency_batch_size=latency_batch_size, latency_repeats=latency_repeats, seq_len=seq_len, seed=seed,
            batch_to_inputs=batch_to_inputs, save_dtype=save_dtype, train_head=train_head, save_model=save_model,
            evaluate=evaluate)
        if problems:  # at construction, as every lit_prune callback checks its settings
            raise ValueError(f"{type(self).__name__}: " + "; ".join(problems))
        self.params_kept, self.masking, self.regularization = params_kept, masking, regularization
        self.regularization_ramp, self.final_hold = regularization_ramp, final_hold
        self.scores_learning_rate, self.train_head = scores_learning_rate, train_head
        self.output_dir, self.save_model, self.evaluate = output_dir, save_model, evaluate
        self.save_dtype = save_dtype
        self.latency_batch_size, self.latency_repeats = latency_batch_size, latency_repeats
        self.model_attribute, self.seq_len, self.seed = model_attribute, seq_len, seed
        self.batch_to_inputs, self.tokenizer = batch_to_inputs, tokenizer
        self.score_masks: ScoreMasks | None = None
        self.keep = 1.0  # the keep ratio last set
        self.total_steps: int | None = None  # N of the schedule, fixed by the first fit (kept on resume)
        self.dense_metrics: dict[str, float] | None = None
        self.report: dict[str, Any] | None = None
        self._tokens = self._examples = 0  # of the batches trained on, for seq_len
        self._optimizer: torch.optim.Optimizer | None = None
        self._seconds: dict[str, float] = {}
        self._seconds_before_resume = 0.0
        self._started: float | None = None

    def settings(self) -> dict[str, Any]:
        """The settings, for the report and the resume check."""
        return {"params_kept": self.params_kept, "masking": self.masking, "regularization": self.regularization,
                "regularization_ramp": self.regularization_ramp, "final_hold": self.final_hold,
                "scores_learning_rate": self.scores_learning_rate, "train_head": self.train_head,
                "regularizer_as": "gradient", "distill": False, "save_dtype": self.save_dtype}

    def target(self, trainer: L.Trainer, pl_module: L.LightningModule) -> PruningTarget:
        """The user's project as this callback sees it (see :mod:`lit_prune.methods.contract`)."""
        return PruningTarget(trainer, pl_module, self.model_attribute, self.batch_to_inputs, self.tokenizer)

    # ------------------------------------------------------------------------------------------------ setup
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        target = self.target(trainer, pl_module)
        problems = target.problems(evaluate=self.evaluate, dense_hint="SMP prunes a dense model", trains="SMP")
        if trainer.max_epochs == 0 or trainer.max_steps == 0 or trainer.limit_train_batches == 0:
            problems.append(f"the Trainer trains nothing (max_epochs={trainer.max_epochs}, max_steps="
                            f"{trainer.max_steps}, limit_train_batches={trainer.limit_train_batches}): SMP trains its "
                            "scores during the fit; give it training steps")
        if not problems and has_scores(target.model):
            problems.append(f"{type(target.model).__name__} already carries SMP scores (another SMPCallback, or an "
                            "SMP task module): give the fit one SMPCallback and a model without scores")
        if problems:
            raise ValueError(f"{type(self).__name__}: " + "; ".join(problems))
        self.score_masks = install_scores(target.model, train_head=self.train_head)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.total_steps is None:  # a resumed fit keeps the schedule of the run it resumes
            total = trainer.estimated_stepping_batches
            if not math.isfinite(total) or total < 1:
                raise ValueError(f"{type(self).__name__}: the Trainer cannot tell how many steps it will train "
                                 f"(estimated_stepping_batches={total}); set trainer.max_steps, over which the "
                                 "schedule runs")
            self.total_steps = int(total)
        self._optimizer = self._own_param_group(trainer)
        self._started = time.perf_counter()
        self._seconds = {}
        if self.evaluate and self.dense_metrics is None:
            self.dense_metrics = timed_evaluation(self.target(trainer, pl_module), "dense", self._seconds)

    def _own_param_group(self, trainer: L.Trainer) -> torch.optim.Optimizer:
        """Move the scores into their own parameter group of the user's optimiser (the one holding them, else the
        first), and extend that optimiser's schedulers' per-group lists to it. Returns the optimiser."""
        if not trainer.optimizers:
            raise ValueError(f"{type(self).__name__}: {type(trainer.lightning_module).__name__}.configure_optimizers "
                             "returned no optimiser; SMP trains its scores with the module's optimiser")
        scores = score_tensors(self.score_masks)
        ids = {id(p) for p in scores}
        optimizer = next((o for o in trainer.optimizers if any(id(p) in ids for g in o.param_groups
                                                               for p in g["params"])), trainer.optimizers[0])
        source = next((i for i, g in enumerate(optimizer.param_groups) if any(id(p) in ids for p in g["params"])), 0)
        groups = len(optimizer.param_groups)
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in ids]
        settings = {k: v for k, v in optimizer.param_groups[source].items() if k != "params"}
        # where a scheduler has already moved the source group's rate (a warm-up's first step), start at the same
        # fraction of scores_learning_rate
        initial = settings.get("initial_lr")
        scale = settings["lr"] / initial if isinstance(initial, (int, float)) and initial > 0 else 1.0
        lr = self.scores_learning_rate * scale
        optimizer.add_param_group({**settings, "params": scores, "lr": lr, "initial_lr": self.scores_learning_rate,
                                   "weight_decay": 0.0})
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if getattr(scheduler, "optimizer", None) is not optimizer:
                continue
            for name, value in (("base_lrs", self.scores_learning_rate), ("_last_lr", lr), ("lr_lambdas", None),
                                ("min_lrs", None)):
                values = getattr(scheduler, name, None)
                if isinstance(values, list) and len(values) == groups:
                    values.append(values[source] if value is None else value)
        return optimizer

    # ------------------------------------------------------------------------------------------------ training
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.keep = keep_at(trainer.global_step, schedule_steps(self.total_steps, self.final_hold), self.params_kept)
        set_counts(self.score_masks, self.keep, self.masking)
        if self.seq_len is None:
            self._count_tokens(batch)
        pl_module.log("smp/keep", self.keep, on_step=True, on_epoch=False, batch_size=1)
        pl_module.log("smp/kept", kept_fraction(self.score_masks), on_step=True, on_epoch=False, batch_size=1)

    def _count_tokens(self, batch: Any) -> None:
        inputs = self.batch_to_inputs(batch) if self.batch_to_inputs is not None else batch
        if not isinstance(inputs, Mapping) or not isinstance(inputs.get("input_ids"), torch.Tensor):
            return
        mask = inputs.get("attention_mask")
        self._tokens += int(mask.sum()) if isinstance(mask, torch.Tensor) else int(inputs["input_ids"].numel())
        self._examples += int(inputs["input_ids"].shape[0])

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        """Add the regulariser's gradient to the scores' (once per optimiser step; skipped when the user's loss gave
        the scores no gradient, e.g. a skipped step)."""
        scores = score_tensors(self.score_masks)
        if self.regularization == 0 or optimizer is not self._optimizer or all(p.grad is None for p in scores):
            return
        with torch.enable_grad():
            term, regularizer = regularizer_term(self.score_masks, self.keep, self.params_kept, self.regularization,
                                                 self.regularization_ramp)
            # autograd.grad, not backward: DDP's gradient hooks stay out of it (every process adds the same values)
            grads = torch.autograd.grad(term, scores)
        for parameter, grad in zip(scores, grads):
            if parameter.grad is None:
                parameter.grad = grad.to(parameter.dtype)
            else:
                parameter.grad.add_(grad.to(parameter.grad.dtype))
        pl_module.log("smp/regularizer", regularizer.detach(), on_step=True, on_epoch=False, batch_size=1)

    # ------------------------------------------------------------------------------------------------ the end
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.finish(trainer, pl_module)

    def finish(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """Fix the final masks into the weights, compact, evaluate, time and write the outputs; return the report."""
        training = training_seconds(self._started, self._seconds_before_resume, self._seconds)
        seconds = {**self._seconds, "prune": round(training, 3)}
        if self._seconds_before_resume:
            seconds["prune_before_resume"] = round(self._seconds_before_resume, 3)
        seq_len, seq_len_from = resolve_seq_len(trainer, self.seq_len, float(self._tokens), self._examples,
                                                "training batches")
        steps = schedule_steps(self.total_steps, self.final_hold)
        warnings_ = []
        if trainer.global_step < steps:
            warnings_.append(f"training stopped at step {trainer.global_step} of the schedule's {steps} (keep ratio "
                             f"{self.keep:.4f}): the final masks keep params_kept={self.params_kept} of the weights "
                             "without training after")
        report = {"settings": self.settings(), "warnings": warnings_,
                  "training": {**training_summary(trainer), "schedule_steps": steps, "total_steps": self.total_steps}}
        self.report = export_scores(self.target(trainer, pl_module), self.score_masks, params_kept=self.params_kept,
                                    masking=self.masking, seed=run_seed(self.seed), seq_len=seq_len, seconds=seconds,
                                    started=time.perf_counter() - training - seconds.get("evaluate_dense", 0.0),
                                    dense_metrics=self.dense_metrics, evaluate=self.evaluate,
                                    latency_batch_size=self.latency_batch_size, latency_repeats=self.latency_repeats,
                                    output_dir=self.output_dir, save_model=self.save_model,
                                    method_report=report, seq_len_from=seq_len_from, save_dtype=self.save_dtype)
        return self.report

    # ------------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        if self.total_steps is None:
            return {}
        return {"settings": self.settings(), "total_steps": self.total_steps, "keep": self.keep,
                "dense_metrics": self.dense_metrics, "tokens": self._tokens, "examples": self._examples,
                "training_seconds": training_seconds(self._started, self._seconds_before_resume, self._seconds)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        saved = state_dict.get("settings", {})
        changed = [f"{k}: {saved[k]!r} -> {v!r}" for k, v in self.settings().items()
                   if k in ("params_kept", "masking", "final_hold") and k in saved and saved[k] != v]
        if changed:
            raise ValueError(f"{type(self).__name__}: the checkpoint was written with other pruning settings "
                             f"({'; '.join(changed)}); resume with the same settings")
        self.total_steps, self.keep = int(state_dict["total_steps"]), float(state_dict["keep"])
        self.dense_metrics = state_dict.get("dense_metrics")
        self._tokens, self._examples = int(state_dict.get("tokens", 0)), int(state_dict.get("examples", 0))
        self._seconds_before_resume = float(state_dict.get("training_seconds", 0.0))


__all__ = ["SMPCallback"]
