"""What the retraining-free pruning callbacks share: calibration loops run inside a Lightning ``fit``.

A retraining-free method prunes a model that is already fine-tuned, with a few passes over a calibration sample
and no optimiser step. As a :class:`~lightning.pytorch.callbacks.Callback` it runs once per ``fit``, when the
model's training in that fit is over:

* at the start of a fit that trains nothing (``max_epochs: 0``, as the recipes in ``configs/kwon/`` and
  ``configs/kprune/`` do, for a model fine-tuned earlier);
* otherwise at the end of training (``on_train_end``), so a user's own fine-tuning project can add the callback and
  get the pruned model at the end of its ``fit``.

It works on any LightningModule that holds one Hugging Face task model (the contract, checked in ``setup`` before
any training: :mod:`lit_prune.methods.contract`). The calibration sample is drawn from the ``fit``'s training data:
lit_prune's data modules draw it at random (``calibration_sample()``, by examples or by tokens); any other
dataloader gives its first batches, up to ``num_samples`` examples or ``num_tokens`` non-padding tokens, taken on
process 0 and shared with the others.

The Trainer has already placed the model on its device and set up the processes, so the calibration passes run on
any accelerator, and under ``strategy=ddp`` the calibration batches are split across the processes (batch i goes
to process i mod world size) while every statistic is summed over them: every process ends with the same masks and
weights. Progress goes to Lightning's progress bar (process 0), numbers to the Trainer's logger.

The passes run under the Trainer's precision, as its training steps do (:meth:`PruningTarget.precision
<lit_prune.methods.contract.PruningTarget.precision>`): with ``precision="bf16-mixed"`` the model's forward and
backward passes run in bf16 autocast, while the mask gradients, Fisher tables and knowledge sums stay float32 /
float64 and every least-squares system is accumulated and solved in float64. ``"32-true"`` (the default) changes
nothing.

Every run ends the same way (:func:`lit_prune.methods.run.finish_run`): the model is compacted in place (units
physically removed), evaluated, timed against the dense copy, and written as ``<output_dir>/pruned_model/`` (a
Hugging Face folder) with ``<output_dir>/pruning_report.json`` (see :mod:`lit_prune.report`) and the binary masks
in ``<output_dir>/pruning_masks.safetensors``.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader

from lit_prune.core.flops import FlopsBudget, check_flops_kept
from lit_prune.core.io import SaveDtype
from lit_prune.core.latency_model import Budget, LatencyBudget, LatencyTable
from lit_prune.core.masks import PruningMasks
from lit_prune.methods.contract import BatchToInputs, PruningTarget
from lit_prune.methods.latency_budget import LatencySettings, budget_report, latency_table
from lit_prune.methods.run import finish_run, phase, progress_bar, resolve_seq_len, restore_on_failure, timed_evaluation
from lit_prune.methods.settings import shared_settings_problems
from lit_prune.prune.batches import count_tokens, model_batch
from lit_prune.prune.distill import predicts_embeddings, reads_first_token_only
from lit_prune.prune.fisher import embedding_fisher_loss
from lit_prune.prune.mask_tuning import Solver
from lit_prune.prune.post_training import KwonResult, Refine, check_tuning_settings, kwon_prune, tuning_cache_limit


class RetrainingFreePruning(Callback):
    """Base class of the retraining-free pruning callbacks (see the module docstring for when and how they run).

    Subclasses set :attr:`method` and implement :meth:`run_method`; everything else (calibration sample,
    evaluation, compaction, latency, saving, the report) is shared.

    Args:
        flops_kept: the fraction of the dense model's FLOPs to keep, in (0, 1] (``None``: 0.5, unless ``speedup``
            is given).
        speedup: a latency budget instead: the pruned model must be this many times faster than the dense one on
            this machine, at ``latency_batch_size`` × ``latency_seq_len`` with ``latency_threads``, as predicted by
            a latency table measured (or reused from the cache) when the fit starts (see
            :mod:`lit_prune.core.latency_model`). Give ``flops_kept`` or ``speedup``, not both.
        num_samples: calibration examples to draw from the training split (``None``: by ``num_tokens``).
        num_tokens: draw examples until they hold this many tokens (``None``: by ``num_samples``).
        replacement: draw ``num_samples`` with replacement.
        calibration_batch_size: batch size of the calibration passes.
        seed: seed of the calibration draw (the same on every process), and of the Fisher pass's draws for a
            sentence-embedding model (:func:`~lit_prune.prune.fisher.embedding_fisher_loss`).
        output_dir: where ``pruned_model/`` and ``pruning_report.json`` go (default: the Trainer's
            ``default_root_dir``).
        save_model: write the pruned model folder.
        save_dtype: the dtype the pruned folder's weights are written in, ``"float32"``, ``"bfloat16"`` or
            ``"float16"``; its config records it, so ``from_pretrained`` loads them back at it. The model in the
            module stays as it is; the latency comparison times copies in this dtype.
        evaluate: evaluate the dense and the pruned model (under the fit's precision): with the module's
            ``evaluate(dataloaders, progress)`` (lit_prune's task modules), else with the ``fit``'s own validation
            loop (the metrics its ``validation_step`` logs).
        dense_metrics: the dense model's metrics on this same evaluation split, when they are already known (a
            fine-tune's final validation metrics, e.g. its ``fit_summary.json``; a ``val/`` prefix is ignored and
            entries the evaluation does not give, such as the loss, are dropped): the dense evaluation is skipped
            and the report says ``metrics.dense_source: "given"``. Must hold the module's ``main_metric``
            (checked before pruning) and every metric the evaluation gives (checked after it). Saves a sweep
            over budgets one dense evaluation per run (SQuAD: minutes on a CPU).
        latency_batch_size: examples of the evaluation split in the batch timed for the latency comparison
            (0 skips it); without validation data, the first calibration batch is timed (said in the report). With
            ``speedup``, also the batch size the latency budget is measured at.
        latency_repeats: timed passes of each model.
        latency_seq_len: the sequence length a latency budget is measured at (``None``: the data's average
            tokenised length, rounded).
        latency_threads: intra-op threads while timing a latency budget (``None``: the run's own).
        latency_cache: the latency tables' folder (``None``: ``$LIT_PRUNE_CACHE/latency``, else
            ``~/.cache/lit_prune/latency``).
        model_attribute: the LightningModule attribute that holds the Hugging Face model (``None``: the only one).
        seq_len: the ``s`` of the FLOPs accounting; ``None``: the data module's ``average_sequence_length()``
            where it has one (lit_prune's: the evaluation split's average tokenised length), else the average
            number of non-padding tokens per example of the calibration batches (``flops.seq_len_from``).
        time_reference_pass: also time one forward and backward pass (task loss, weight gradients, as in training)
            over the same calibration batches, and report the pruning time as a multiple of it
            (``seconds.reference_pass``, ``seconds.prune_over_pass``): a machine-independent cost.
        batch_to_inputs: turns one batch of the ``fit``'s dataloaders into a dict of model inputs (and labels);
            ``None``: the batches are such dicts (see :mod:`lit_prune.methods.contract`).
        tokenizer: saved beside the pruned model (a tokenizer, or a name or folder to load one from); ``None``:
            found on the module, the data module or in the model's folder.
    """

    method = "retraining_free"

    def __init__(
        self,
        flops_kept: float | None = None,
        num_samples: int | None = 2048,
        num_tokens: int | None = None,
        replacement: bool = False,
        calibration_batch_size: int = 32,
        seed: int = 0,
        output_dir: str | None = None,
        save_model: bool = True,
        evaluate: bool = True,
        dense_metrics: dict[str, float] | None = None,
        latency_batch_size: int = 32,
        latency_repeats: int = 10,
        model_attribute: str | None = None,
        seq_len: float | None = None,
        time_reference_pass: bool = False,
        batch_to_inputs: BatchToInputs | None = None,
        tokenizer: Any = None,
        speedup: float | None = None,
        latency_seq_len: int | None = None,
        latency_threads: int | None = None,
        latency_cache: str | None = None,
        save_dtype: SaveDtype = "float32",
    ) -> None:
        super().__init__()
        self.problems: list[str] = shared_settings_problems(
            latency_batch_size=latency_batch_size, latency_repeats=latency_repeats, seq_len=seq_len, seed=seed,
            batch_to_inputs=batch_to_inputs, save_dtype=save_dtype, save_model=save_model, evaluate=evaluate)
        self.save_dtype = save_dtype
        self.latency = LatencySettings(speedup, latency_batch_size, latency_seq_len, latency_threads, latency_cache)
        self.problems += self.latency.problems("flops_kept", flops_kept)
        if flops_kept is None and speedup is None:
            flops_kept = 0.5
        if flops_kept is not None:
            try:
                check_flops_kept(flops_kept)
            except ValueError as error:
                self.problems.append(str(error))
        if (num_samples is None) == (num_tokens is None):
            self.problems.append(f"num_samples={num_samples!r}, num_tokens={num_tokens!r}: give exactly one (the "
                                 "calibration sample is drawn by examples or by tokens)")
        for name, value, low in (("num_samples", num_samples, 1), ("num_tokens", num_tokens, 1),
                                 ("calibration_batch_size", calibration_batch_size, 1)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                self.problems.append(f"{name}={value!r}: expected an integer >= {low}")
        self.flops_kept = flops_kept
        self.num_samples = num_samples
        self.num_tokens = num_tokens
        self.replacement = replacement
        self.calibration_batch_size = calibration_batch_size
        self.seed = seed
        self.output_dir = output_dir
        self.save_model = save_model
        self.evaluate = evaluate
        self.dense_metrics = self._given_metrics(dense_metrics, evaluate)
        self.latency_batch_size = latency_batch_size
        self.latency_repeats = latency_repeats
        self.batch_to_inputs = batch_to_inputs
        self.tokenizer = tokenizer
        self.model_attribute = model_attribute
        self.seq_len = seq_len
        self.time_reference_pass = time_reference_pass
        self.report: dict[str, Any] | None = None
        self.masks: PruningMasks | None = None
        self.table: LatencyTable | None = None

    def _given_metrics(self, metrics: Any, evaluate: bool) -> dict[str, float] | None:
        """``dense_metrics`` with the ``val/`` prefixes removed (``None`` when invalid: the problem is recorded)."""
        if metrics is None:
            return None
        allowed = "a non-empty mapping of metric names to finite numbers (e.g. {f1: 0.85}) or None"
        if not isinstance(metrics, Mapping) or not metrics or not all(
                isinstance(k, str) and not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
                for k, v in metrics.items()):
            self.problems.append(f"dense_metrics={metrics!r}: expected {allowed}")
            return None
        if not evaluate:
            self.problems.append(f"dense_metrics={dict(metrics)!r} with evaluate=False: nothing is evaluated, so "
                                 "there is nothing to pair them with; drop dense_metrics or set evaluate=True")
            return None
        return {k.removeprefix("val/"): float(v) for k, v in metrics.items()}

    def raise_problems(self, problems: list[str]) -> None:
        """Raise one error naming every invalid setting."""
        if problems:
            raise ValueError(f"{type(self).__name__}: " + "; ".join(problems))

    # -------------------------------------------------------------------------------------------- to override
    def run_method(self, model: nn.Module, dense: nn.Module, batches: list[dict[str, torch.Tensor]],
                   batch_ids: list[int], num_batches: int, budget: Budget,
                   reduce: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
                   progress: Callable[[str, int, int], None]) -> tuple[PruningMasks, dict[str, Any]]:
        """Find the masks (and edit weights in place if the method does); return them and the method's report keys.

        Args:
            model: the model to prune (dense, in eval mode, on the Trainer's device).
            dense: an untouched copy of it.
            batches: this process's calibration batches (the model's inputs and labels only).
            batch_ids: their positions in the whole sample; num_batches: the whole sample's batch count.
            budget: the FLOPs or latency budget.
            reduce: sums a dict of tensors over processes (identity in a single process).
            progress: ``progress(description, done, total)``.
        """
        raise NotImplementedError

    def method_settings(self) -> dict[str, Any]:
        """The method's own settings, for the report."""
        return {}

    def needs_labels(self) -> bool:
        """Whether the calibration batches must carry labels."""
        return False

    # ------------------------------------------------------------------------------------------------ hooks
    def target(self, trainer: L.Trainer, pl_module: L.LightningModule) -> PruningTarget:
        """The user's project as this callback sees it (see :mod:`lit_prune.methods.contract`)."""
        return PruningTarget(trainer, pl_module, self.model_attribute, self.batch_to_inputs, self.tokenizer)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        problems = list(self.problems) + self.target(trainer, pl_module).problems(
            needs_labels=self.needs_labels(), evaluate=self.evaluate,
            dense_hint="prune the dense fine-tuned model, with a smaller flops_kept")
        main = getattr(pl_module, "main_metric", None)
        if self.dense_metrics is not None and isinstance(main, str) and main not in self.dense_metrics:
            problems.append(f"dense_metrics={self.dense_metrics!r} lacks the task's main metric {main!r}: give the "
                            "metrics of the dense model on this evaluation split, or drop dense_metrics to measure them")
        name = getattr(pl_module, "name_or_path", "the model")
        missing = getattr(pl_module, "newly_initialized", None)
        if missing:
            task = getattr(pl_module, "task", None)
            problems.append(f"model.name_or_path={name!r} is not fine-tuned for task {task!r}: "
                            f"its checkpoint lacks {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''} "
                            "(initialised at random). Retraining-free pruning starts from a fine-tuned model: run "
                            "the task's recipe in configs/finetune/ first and point model.name_or_path at its "
                            "final_model/ folder")
        self.raise_problems(problems)

    @staticmethod
    def _trains_nothing(trainer: L.Trainer) -> bool:
        return trainer.max_epochs == 0 or trainer.max_steps == 0 or trainer.limit_train_batches == 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pruned_this_fit = False
        if self.latency.speedup is not None:  # before any training or calibration: an impossible speedup stops here
            self.table = latency_table(self.target(trainer, pl_module), self.latency)
            self.raise_problems(self._budget_problems())
        if self._trains_nothing(trainer):
            self.prune(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not getattr(self, "_pruned_this_fit", False):
            self.prune(trainer, pl_module)

    # ------------------------------------------------------------------------------------------ the run
    def _budget_problems(self) -> list[str]:
        try:
            LatencyBudget(self.table, self.latency.speedup)
        except ValueError as error:
            return [str(error)]
        return []

    def budget(self, model: nn.Module, seq_len: float) -> Budget:
        """The run's budget: the latency budget when ``speedup`` is given, else the FLOPs budget at ``seq_len``."""
        if self.latency.speedup is not None:
            return LatencyBudget(self.table, self.latency.speedup)
        return FlopsBudget.for_model(model, seq_len, self.flops_kept)

    def _reduce(self, trainer: L.Trainer) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        def reduce(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            if trainer.world_size == 1:
                return tensors
            return {name: trainer.strategy.reduce(value.clone(), reduce_op="sum") for name, value in tensors.items()}

        return reduce

    def calibration_batches(self, target: PruningTarget) -> tuple[list[dict], list[int], int, dict]:
        """This process's calibration batches, their positions in the whole sample, its batch count, its summary."""
        trainer, model = target.trainer, target.model
        datamodule = trainer.datamodule
        if callable(getattr(datamodule, "calibration_sample", None)):
            sample = datamodule.calibration_sample(num_samples=self.num_samples, num_tokens=self.num_tokens,
                                                   seed=self.seed, replacement=self.replacement)
            loader = DataLoader(sample.dataset, batch_size=self.calibration_batch_size, shuffle=False,
                                collate_fn=datamodule.collate)
            info = sample.as_dict()
            all_batches = [model_batch(model, batch) for batch in loader]
        else:
            # Any other dataloader: its first batches, on process 0 (a shuffling loader draws differently on each
            # process), shared with the others so that every process splits the same sample.
            all_batches, info = self._first_batches(target) if trainer.is_global_zero else (None, None)
            if trainer.world_size > 1:
                all_batches, info = trainer.strategy.broadcast((all_batches, info), src=0)
        rank, world = trainer.global_rank, trainer.world_size
        ids = [index for index in range(len(all_batches)) if index % world == rank]
        info["batches"] = len(all_batches)
        info["batch_size"] = int(all_batches[0]["input_ids"].shape[0]) if all_batches else 0
        return [all_batches[i] for i in ids], ids, len(all_batches), info

    def _first_batches(self, target: PruningTarget) -> tuple[list[dict], dict[str, Any]]:
        """The training dataloader's first batches holding ``num_samples`` examples or ``num_tokens`` tokens."""
        by_tokens = self.num_tokens is not None
        wanted = self.num_tokens if by_tokens else self.num_samples
        examples = tokens = 0
        batches = []
        for batch in target.train_batches():
            inputs = {k: v.cpu() for k, v in target.inputs(batch).items()}
            batches.append(inputs)
            examples += int(inputs["input_ids"].shape[0])
            tokens += count_tokens(inputs)
            if (tokens if by_tokens else examples) >= wanted:
                break
        unit = "tokens" if by_tokens else "training examples"
        have = tokens if by_tokens else examples
        note = None if have >= wanted else (f"{'num_tokens' if by_tokens else 'num_samples'}={wanted} exceeds the "
                                            f"{have} {unit} of the training dataloader; using all of them")
        if note:
            warnings.warn(f"calibration: {note}")
        return batches, {"num_samples": examples, "num_tokens": tokens, "note": note,
                         "requested": {"num_samples": self.num_samples, "num_tokens": self.num_tokens,
                                       "source": "the training dataloader's first batches"}}

    @staticmethod
    def _reference_pass(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> None:
        """One forward and backward pass over ``batches`` as training does it (the loss, weight gradients)."""
        device = next(model.parameters()).device
        with torch.enable_grad():
            for batch in batches:
                outputs = model(**{k: v.to(device) for k, v in batch.items()})
                loss = outputs.loss
                if loss is None:  # no labels: any scalar of the outputs costs the same backward
                    loss = sum(value.float().sum() for value in outputs.values() if isinstance(value, torch.Tensor))
                loss.backward()
        model.zero_grad(set_to_none=True)

    def prune(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """Prune the LightningModule's model in place, write the pruned folder and the report; return the report."""
        self._pruned_this_fit = True
        started = time.perf_counter()
        seconds: dict[str, float] = {}
        target = self.target(trainer, pl_module)
        model = target.model
        modes = [(module, module.training) for module in model.modules()]
        model.eval()
        with phase(seconds, "calibration_data"):
            batches, batch_ids, num_batches, calibration = self.calibration_batches(target)
        seq_len, seq_len_from = resolve_seq_len(trainer, self.seq_len, sum(count_tokens(b) for b in batches),
                                                sum(b["input_ids"].shape[0] for b in batches), "calibration batches")
        budget = self.budget(model, seq_len)
        dense = copy.deepcopy(model).eval()
        dense_metrics = self.dense_metrics
        if self.evaluate and dense_metrics is None:
            dense_metrics = timed_evaluation(target, "dense", seconds)
            model.eval()  # a validation loop leaves the module in training mode
        if self.time_reference_pass:
            with phase(seconds, "reference_pass"), target.precision():
                self._reference_pass(dense, batches)
        with restore_on_failure(model, dense):
            with progress_bar(trainer) as progress, phase(seconds, "prune"), target.precision():
                masks, details = self.run_method(model, dense, batches, batch_ids, num_batches, budget,
                                                 self._reduce(trainer), progress)
            for module, training in modes:
                module.training = training
            if self.time_reference_pass:
                seconds["prune_over_pass"] = round(seconds["prune"] / max(seconds["reference_pass"], 1e-9), 3)
            self.masks = masks.binary().to("cpu")
            report = {"calibration": calibration,
                      "settings": {"flops_kept": self.flops_kept, **self.latency.as_dict(), "seed": self.seed,
                                   "save_dtype": self.save_dtype, **self.method_settings()}, **details}
            extra_latency = None
            if isinstance(budget, LatencyBudget):
                def extra_latency(dense_model: nn.Module, pruned: nn.Module) -> dict[str, Any]:
                    return {"budget": budget_report(budget, dense_model, pruned, masks.structure(),
                                                    self.latency_repeats)}
            self.report = finish_run(
                target, model, dense, masks, method=self.method, seed=self.seed, seq_len=seq_len, seconds=seconds,
                started=started, dense_metrics=dense_metrics, evaluate=self.evaluate,
                latency_batch_size=self.latency_batch_size, latency_repeats=self.latency_repeats,
                output_dir=self.output_dir, save_model=self.save_model, flops_target=self.flops_kept,
                method_report=report, fallback_batch=batches[0] if batches else None,
                given_dense_metrics=self.dense_metrics, flops_report={"seq_len_from": seq_len_from},
                extra_latency=extra_latency, save_dtype=self.save_dtype)
        return self.report

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"masks": self.masks.to_dict() if self.masks is not None else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        masks = state_dict.get("masks")
        self.masks = PruningMasks.from_dict(masks) if masks is not None else None


class MaskTuningPruning(RetrainingFreePruning):
    """The retraining-free callbacks built on the post-training mask pipeline (Kwon et al.'s Fisher → budgeted search
    → rearrangement → mask tuning, :func:`~lit_prune.prune.post_training.kwon_prune`): Kwon's, and G-Pruner's with
    its stages swapped in. Holds the pipeline's settings, checked once for both.

    Args:
        flops_kept: the fraction of the dense FLOPs to keep, in (0, 1] (``None``: 0.5, unless ``speedup`` is given).
        num_samples: calibration examples (the paper: 2,048, drawn with replacement).
        replacement: draw them with replacement.
        rearrange: run the mask rearrangement (off: ablation).
        tune: run the least-squares mask tuning (off: ablation).
        tuning_reference: the tuning target: ``"intermediate"`` (the reference code: the model under the mask
            searched at ``flops_kept ** 0.5``, or ``speedup ** 0.5``) or ``"dense"``.
        damping: the tuning solver's damping (the reference code's LSMR ``damp``: an absolute Tikhonov weight that
            pulls the scales towards the binary mask).
        tuning_cache_mb: MiB of the tuning's per-batch hidden states kept in memory (per process); the rest is
            spilled to a temporary folder (``$TMPDIR``) and read back, so memory stays bounded whatever
            ``num_samples``; ``None``: keep everything in memory. The masks do not depend on it.
        **kwargs: the settings every retraining-free callback shares (:class:`RetrainingFreePruning`).
    """

    def __init__(
        self,
        flops_kept: float | None = None,
        num_samples: int = 2048,
        replacement: bool = True,
        rearrange: bool = True,
        tune: bool = True,
        tuning_reference: Literal["intermediate", "dense"] = "intermediate",
        damping: float = 1.0,
        tuning_cache_mb: float | None = 256,
        **kwargs: Any,
    ) -> None:
        super().__init__(flops_kept=flops_kept, num_samples=num_samples, num_tokens=None, replacement=replacement,
                         **kwargs)
        self.problems += check_tuning_settings(tuning_reference, damping, tuning_cache_mb)
        self.tuning_cache_mb = tuning_cache_mb
        self.rearrange = rearrange
        self.tune = tune
        self.tuning_reference = tuning_reference
        self.damping = damping

    def needs_labels(self) -> bool:
        return True

    def method_settings(self) -> dict[str, Any]:
        return {"num_samples": self.num_samples, "replacement": self.replacement, "rearrange": self.rearrange,
                "tune": self.tune, "tuning_reference": self.tuning_reference, "damping": self.damping}

    def pipeline(self, model: nn.Module, batches: list[dict[str, torch.Tensor]], batch_ids: list[int],
                 num_batches: int, budget: Budget, reduce: Callable, progress: Callable,
                 refine: Refine | None = None, solver: Solver | None = None) -> KwonResult:
        """Run the pipeline with this callback's settings (``refine`` and ``solver``: the stages swapped in)."""
        return kwon_prune(model, batches, budget, batch_ids=batch_ids, num_batches=num_batches,
                          rearrange=self.rearrange, tune=self.tune, tuning_reference=self.tuning_reference,
                          damping=self.damping, cls_only_last_ffn=reads_first_token_only(model), reduce=reduce,
                          progress=progress, refine=refine, solver=solver,
                          tuning_cache_bytes=tuning_cache_limit(self.tuning_cache_mb),
                          fisher_loss=embedding_fisher_loss(self.seed) if predicts_embeddings(model) else None)


__all__ = ["MaskTuningPruning", "RetrainingFreePruning"]
