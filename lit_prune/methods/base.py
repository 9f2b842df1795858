"""What the retraining-free pruning callbacks share: calibration loops run inside a Lightning ``fit``.

A retraining-free method prunes a model that is already fine-tuned, with a few passes over a calibration sample
and no optimiser step. As a :class:`~lightning.pytorch.callbacks.Callback` it runs once per ``fit``, when the
model's training in that fit is over:

* at the start of a fit that trains nothing (``max_epochs: 0``, as the recipes in ``configs/kwon/`` and
  ``configs/kprune/`` do, for a model fine-tuned earlier);
* otherwise at the end of training (``on_train_end``), so a user's own fine-tuning project can add the callback and
  get the pruned model at the end of its ``fit``.

Either way the Trainer has already placed the model on its device and set up the processes, so the calibration
passes run on any accelerator, and under ``strategy=ddp`` the calibration batches are split across the processes
(batch i goes to process i mod world size) while every statistic is summed over them: every process ends with the
same masks and weights. Progress goes to Lightning's progress bar (process 0), numbers to the Trainer's logger.

Every run ends the same way (:meth:`RetrainingFreePruning.prune`): the model is compacted in place (units
physically removed), evaluated, timed against the dense copy, and written as ``<output_dir>/pruned_model/`` (a
Hugging Face folder) with ``<output_dir>/pruning_report.json`` (see :mod:`lit_prune.report`) and the binary masks
in ``<output_dir>/pruning_masks.safetensors``.
"""

from __future__ import annotations

import copy
import inspect
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, Subset

from lit_prune.core.arch import get_adapter
from lit_prune.core.compact import compact
from lit_prune.core.flops import FlopsBudget, check_flops_kept, count_parameters, model_dense_flops, model_flops
from lit_prune.core.io import save_pruned
from lit_prune.core.latency import compare
from lit_prune.core.masks import PruningMasks
from lit_prune.hardware import hardware_summary
from lit_prune.report import MASKS_FILE, PRUNED_MODEL_DIR, REPORT_FILE, write_report

log = logging.getLogger(__name__)

LABEL_KEYS = ("labels", "start_positions", "end_positions")


def find_encoder_model(pl_module: nn.Module, attribute: str | None = None) -> nn.Module:
    """The Hugging Face encoder task model held by ``pl_module``.

    Args:
        pl_module: the LightningModule.
        attribute: the attribute that holds it (a dotted path); ``None`` looks for the one child module that is a
            ``transformers.PreTrainedModel``.

    Raises:
        ValueError: no such attribute, no or several candidate models, or an unsupported architecture.
    """
    from transformers import PreTrainedModel

    if attribute is not None:
        try:
            model = pl_module.get_submodule(attribute)
        except AttributeError:
            raise ValueError(f"model_attribute={attribute!r}: {type(pl_module).__name__} has no submodule "
                             f"{attribute!r}") from None
    else:
        candidates = [(name, child) for name, child in pl_module.named_children()
                      if isinstance(child, PreTrainedModel)]
        if len(candidates) != 1:
            found = ", ".join(name for name, _ in candidates) or "none"
            raise ValueError(f"model_attribute=None: {type(pl_module).__name__} must hold exactly one Hugging Face "
                             f"model as a direct attribute (found: {found}); name the one to prune with "
                             "model_attribute")
        model = candidates[0][1]
    get_adapter(model)  # raises UnsupportedArchitectureError naming the supported types
    return model


def forward_keys(model: nn.Module) -> set[str] | None:
    """The keyword arguments ``model.forward`` takes (``None``: it takes any)."""
    parameters = inspect.signature(model.forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    return set(parameters)


def model_batch(model: nn.Module, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of ``batch`` the model takes, labels included (drops e.g. ``feature_index``)."""
    keys = forward_keys(model)
    return {name: value for name, value in batch.items()
            if isinstance(value, torch.Tensor) and (keys is None or name in keys)}


def shard_loader(loader: DataLoader, rank: int, world_size: int) -> DataLoader:
    """Every ``world_size``-th example of ``loader``'s dataset from ``rank`` on, same batch size and collate."""
    if world_size == 1:
        return loader
    dataset = loader.dataset
    return DataLoader(Subset(dataset, list(range(rank, len(dataset), world_size))), batch_size=loader.batch_size,
                      collate_fn=loader.collate_fn, num_workers=loader.num_workers, shuffle=False)


class _Progress:
    """A progress bar on process 0 that restarts whenever the description changes (one per pass)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None
        self.description = None

    def __call__(self, description: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if description != self.description:
            self.close()
            from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

            self.bar = Tqdm(total=total, desc=description, leave=False, dynamic_ncols=True, smoothing=0)
            self.description = description
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar = None
        self.description = None


class RetrainingFreePruning(Callback):
    """Base class of the retraining-free pruning callbacks (see the module docstring for when and how they run).

    Subclasses set :attr:`method` and implement :meth:`run_method`; everything else (calibration sample,
    evaluation, compaction, latency, saving, the report) is shared.

    Args:
        flops_kept: the fraction of the dense model's FLOPs to keep, in (0, 1].
        num_samples: calibration examples to draw from the training split (``None``: by ``num_tokens``).
        num_tokens: draw examples until they hold this many tokens (``None``: by ``num_samples``).
        replacement: draw ``num_samples`` with replacement.
        calibration_batch_size: batch size of the calibration passes.
        seed: seed of the calibration draw (the same on every process).
        output_dir: where ``pruned_model/`` and ``pruning_report.json`` go (default: the Trainer's
            ``default_root_dir``).
        save_model: write the pruned model folder.
        evaluate: evaluate the dense and the pruned model on the evaluation split (needs a LightningModule with
            ``evaluate(dataloaders)``, as lit_prune's task modules have).
        latency_batch_size: examples of the evaluation split in the batch timed for the latency comparison
            (0 skips it).
        latency_repeats: timed passes of each model.
        model_attribute: the LightningModule attribute that holds the Hugging Face model (``None``: the only one).
        seq_len: the ``s`` of the FLOPs accounting; ``None`` asks the data module (its
            ``average_sequence_length()``: the evaluation split's average tokenised length).
        time_reference_pass: also time one forward and backward pass (task loss, weight gradients, as in training)
            over the same calibration batches, and report the pruning time as a multiple of it
            (``seconds.reference_pass``, ``seconds.prune_over_pass``): a machine-independent cost.
    """

    method = "retraining_free"

    def __init__(
        self,
        flops_kept: float = 0.5,
        num_samples: int | None = 2048,
        num_tokens: int | None = None,
        replacement: bool = False,
        calibration_batch_size: int = 32,
        seed: int = 0,
        output_dir: str | None = None,
        save_model: bool = True,
        evaluate: bool = True,
        latency_batch_size: int = 32,
        latency_repeats: int = 10,
        model_attribute: str | None = None,
        seq_len: float | None = None,
        time_reference_pass: bool = False,
    ) -> None:
        super().__init__()
        self.problems: list[str] = []
        try:
            check_flops_kept(flops_kept)
        except ValueError as error:
            self.problems.append(str(error))
        if (num_samples is None) == (num_tokens is None):
            self.problems.append(f"num_samples={num_samples!r}, num_tokens={num_tokens!r}: give exactly one (the "
                                 "calibration sample is drawn by examples or by tokens)")
        for name, value, low in (("num_samples", num_samples, 1), ("num_tokens", num_tokens, 1),
                                 ("calibration_batch_size", calibration_batch_size, 1),
                                 ("latency_batch_size", latency_batch_size, 0), ("latency_repeats", latency_repeats, 1)):
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
        self.latency_batch_size = latency_batch_size
        self.latency_repeats = latency_repeats
        if seq_len is not None and (isinstance(seq_len, bool) or not isinstance(seq_len, (int, float))
                                    or not seq_len > 0):
            self.problems.append(f"seq_len={seq_len!r}: expected a number > 0 (an average tokenised length) or None")
        self.model_attribute = model_attribute
        self.seq_len = seq_len
        self.time_reference_pass = time_reference_pass
        self.report: dict[str, Any] | None = None
        self.masks: PruningMasks | None = None

    def raise_problems(self, problems: list[str]) -> None:
        """Raise one error naming every invalid setting."""
        if problems:
            raise ValueError(f"{type(self).__name__}: " + "; ".join(problems))

    # -------------------------------------------------------------------------------------------- to override
    def run_method(self, model: nn.Module, dense: nn.Module, batches: list[dict[str, torch.Tensor]],
                   batch_ids: list[int], num_batches: int, budget: FlopsBudget,
                   reduce: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
                   progress: Callable[[str, int, int], None]) -> tuple[PruningMasks, dict[str, Any]]:
        """Find the masks (and edit weights in place if the method does); return them and the method's report keys.

        Args:
            model: the model to prune (dense, in eval mode, on the Trainer's device).
            dense: an untouched copy of it.
            batches: this process's calibration batches (the model's inputs and labels only).
            batch_ids: their positions in the whole sample; num_batches: the whole sample's batch count.
            budget: the FLOPs budget.
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
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        problems = list(self.problems)
        name = getattr(pl_module, "name_or_path", "the model")
        try:
            model = find_encoder_model(pl_module, self.model_attribute)
            if get_adapter(model).is_compacted:
                problems.append(f"model.name_or_path={name!r} is already pruned (its config has a "
                                "lit_prune_structure); prune the dense fine-tuned model, with a smaller flops_kept")
        except ValueError as error:
            problems.append(str(error))
        missing = getattr(pl_module, "newly_initialized", None)
        if missing:
            task = getattr(pl_module, "task", None)
            problems.append(f"model.name_or_path={name!r} is not fine-tuned for task {task!r}: "
                            f"its checkpoint lacks {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''} "
                            "(initialised at random). Retraining-free pruning starts from a fine-tuned model: run "
                            "the task's recipe in configs/finetune/ first and point model.name_or_path at its "
                            "final_model/ folder")
        datamodule = trainer.datamodule
        if datamodule is None:
            problems.append("no data module: pass datamodule= to trainer.fit (the calibration sample is drawn from "
                            "its training split)")
        elif self.seq_len is None and not callable(getattr(datamodule, "average_sequence_length", None)):
            problems.append(f"seq_len=None, but the data module {type(datamodule).__name__} has no "
                            "average_sequence_length(): set seq_len to the task's average tokenised length (the s "
                            "of the FLOPs accounting)")
        if self.evaluate and not callable(getattr(pl_module, "evaluate", None)):
            problems.append(f"evaluate=True, but {type(pl_module).__name__} has no evaluate(dataloaders) method; "
                            "set evaluate=False or add one (see lit_prune.tasks.TaskModule.evaluate)")
        self.raise_problems(problems)

    @staticmethod
    def _trains_nothing(trainer: L.Trainer) -> bool:
        return trainer.max_epochs == 0 or trainer.max_steps == 0 or trainer.limit_train_batches == 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pruned_this_fit = False
        if self._trains_nothing(trainer):
            self.prune(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not getattr(self, "_pruned_this_fit", False):
            self.prune(trainer, pl_module)

    # ------------------------------------------------------------------------------------------ the run
    def _reduce(self, trainer: L.Trainer) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        def reduce(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            if trainer.world_size == 1:
                return tensors
            return {name: trainer.strategy.reduce(value.clone(), reduce_op="sum") for name, value in tensors.items()}

        return reduce

    @staticmethod
    def _agree_across_ranks(trainer: L.Trainer, model: nn.Module, masks: PruningMasks) -> dict[str, Any] | None:
        """Check that every process found the same masks, and give every process process 0's weights.

        Every statistic is summed over the processes, so each one solves the same problems and the masks agree
        exactly; a disagreement is a bug and stops the run. Refitted weights may differ in the last bits (each
        process's float32 forward passes round on their own, and an ill-conditioned least-squares system can amplify
        that), so process 0's weights are broadcast and the largest difference each process had is recorded.
        """
        if trainer.world_size == 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return None
        flat = torch.cat([tensor.detach().reshape(-1).double() for tensor in masks.to_dict().values()])
        gathered = [torch.empty_like(flat) for _ in range(trainer.world_size)]
        torch.distributed.all_gather(gathered, flat)
        differing = [rank for rank, other in enumerate(gathered) if not torch.equal(other, gathered[0])]
        if differing:
            raise RuntimeError(f"lit_prune: the pruning masks of process(es) {differing} differ from process 0's "
                               "although every statistic was summed over the processes. This is a bug in lit_prune; "
                               "please report it with the pruning settings.")
        largest = torch.zeros((), dtype=torch.float64, device=flat.device)
        with torch.no_grad():
            for tensor in model.state_dict(keep_vars=False).values():
                if not tensor.is_floating_point() or tensor.numel() == 0:
                    continue
                reference = tensor.clone()
                torch.distributed.broadcast(reference, src=0)
                largest = torch.maximum(largest, (tensor - reference).abs().max().double())
                tensor.copy_(reference)
        torch.distributed.all_reduce(largest, op=torch.distributed.ReduceOp.MAX)
        return {"masks_identical": True, "weights_from": 0, "weights_max_difference": float(largest)}

    def calibration_batches(self, trainer: L.Trainer, model: nn.Module) -> tuple[list[dict], list[int], int, dict]:
        """This process's calibration batches, their positions in the whole sample, its batch count, its summary."""
        datamodule = trainer.datamodule
        if callable(getattr(datamodule, "calibration_sample", None)):
            sample = datamodule.calibration_sample(num_samples=self.num_samples, num_tokens=self.num_tokens,
                                                   seed=self.seed, replacement=self.replacement)
            loader = DataLoader(sample.dataset, batch_size=self.calibration_batch_size, shuffle=False,
                                collate_fn=datamodule.collate)
            info = sample.as_dict()
            all_batches: Iterator[dict] = iter(loader)
            num_batches = len(loader)
        else:
            # A user's data module: the first examples of its training dataloader, in its order.
            if self.num_samples is None:
                raise ValueError(f"{type(self).__name__}: num_tokens needs a data module with calibration_sample(); "
                                 f"{type(datamodule).__name__} has none: set num_samples instead")
            taken, batches = 0, []
            for batch in datamodule.train_dataloader():
                size = next(v for v in batch.values() if isinstance(v, torch.Tensor)).shape[0]
                batches.append(batch)
                taken += size
                if taken >= self.num_samples:
                    break
            note = None if taken >= self.num_samples else (f"num_samples={self.num_samples} exceeds the {taken} "
                                                           "training examples; using all of them")
            if note:
                warnings.warn(f"calibration: {note}")
            info = {"num_samples": taken, "num_tokens": None, "note": note,
                    "requested": {"num_samples": self.num_samples, "source": "the training dataloader's first batches"}}
            all_batches, num_batches = iter(batches), len(batches)
        rank, world = trainer.global_rank, trainer.world_size
        mine, ids = [], []
        for index, batch in enumerate(all_batches):
            if index % world == rank:
                mine.append(model_batch(model, batch))
                ids.append(index)
        if self.needs_labels() and mine and not any(key in mine[0] for key in LABEL_KEYS):
            raise ValueError(f"{type(self).__name__} needs labelled calibration batches (labels, or start_positions "
                             f"and end_positions); the batches hold {sorted(mine[0])}")
        info["batches"] = num_batches
        info["batch_size"] = self.calibration_batch_size
        return mine, ids, num_batches, info

    @staticmethod
    def _evaluation_loaders(trainer: L.Trainer) -> list[DataLoader]:
        loaders = trainer.datamodule.val_dataloader()
        loaders = list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
        return [shard_loader(loader, trainer.global_rank, trainer.world_size) for loader in loaders]

    def _evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, which: str) -> dict[str, float] | None:
        if not self.evaluate:
            return None
        loaders = self._evaluation_loaders(trainer)
        total = sum(len(loader) for loader in loaders)
        progress = _Progress(self._show_progress(trainer))
        done = [0]

        def step() -> None:
            done[0] += 1
            progress(f"evaluate {which}", done[0], total)

        try:
            return pl_module.evaluate(loaders if len(loaders) > 1 else loaders[0], progress=step)
        finally:
            progress.close()

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

    @staticmethod
    def _show_progress(trainer: L.Trainer) -> bool:
        return trainer.is_global_zero and trainer.progress_bar_callback is not None

    def _latency(self, trainer: L.Trainer, dense: nn.Module, pruned: nn.Module,
                 calibration: list[dict[str, torch.Tensor]]) -> dict[str, Any] | None:
        """Dense vs pruned latency on the first evaluation examples (the first calibration batch when the data
        module has no validation data), measured interleaved."""
        if self.latency_batch_size == 0:
            return None
        from lightning.pytorch.utilities.model_helpers import is_overridden

        if is_overridden("val_dataloader", trainer.datamodule, parent=L.LightningDataModule):
            loader = trainer.datamodule.val_dataloader()
            loader = loader[0] if isinstance(loader, (list, tuple)) else loader
            count = min(self.latency_batch_size, len(loader.dataset))
            batch, source = loader.collate_fn([loader.dataset[i] for i in range(count)]), "evaluation split"
        else:
            batch = {k: v[:self.latency_batch_size] for k, v in calibration[0].items()}
            source = "first calibration batch"
        keys = forward_keys(pruned)
        inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and k not in LABEL_KEYS
                  and (keys is None or k in keys)}
        result = compare(dense, pruned, inputs, warmup=3, repeats=self.latency_repeats)
        return {"dense_ms": result["dense"]["median_ms"], "pruned_ms": result["pruned"]["median_ms"],
                "speedup": result["speedup"], "speedup_paired": result["speedup_paired"],
                "batch_size": int(inputs["input_ids"].shape[0]), "seq_len": int(inputs["input_ids"].shape[1]),
                "threads": result["threads"], "repeats": self.latency_repeats, "inputs": source}

    @contextmanager
    def _phase(self, seconds: dict[str, float], name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        seconds[name] = round(time.perf_counter() - started, 3)

    def output_folder(self, trainer: L.Trainer) -> Path:
        return Path(self.output_dir or trainer.default_root_dir)

    def prune(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """Prune the LightningModule's model in place, write the pruned folder and the report; return the report."""
        self._pruned_this_fit = True
        started = time.perf_counter()
        seconds: dict[str, float] = {}
        model = find_encoder_model(pl_module, self.model_attribute)
        datamodule = trainer.datamodule
        modes = [(module, module.training) for module in model.modules()]
        model.eval()
        seq_len = self.seq_len
        if seq_len is None:
            seq_len = datamodule.average_sequence_length()
        budget = FlopsBudget.for_model(model, seq_len, self.flops_kept)
        with self._phase(seconds, "calibration_data"):
            batches, batch_ids, num_batches, calibration = self.calibration_batches(trainer, model)
        dense = copy.deepcopy(model).eval()
        with self._phase(seconds, "evaluate_dense"):
            dense_metrics = self._evaluate(trainer, pl_module, "dense")
        if self.time_reference_pass:
            with self._phase(seconds, "reference_pass"):
                self._reference_pass(dense, batches)
        progress = _Progress(self._show_progress(trainer))
        try:
            with self._phase(seconds, "prune"):
                masks, details = self.run_method(model, dense, batches, batch_ids, num_batches, budget,
                                                 self._reduce(trainer), progress)
        finally:
            progress.close()
        with self._phase(seconds, "compact"):
            compact(model, masks)
        ranks = self._agree_across_ranks(trainer, model, masks)
        for module, training in modes:
            module.training = training
        with self._phase(seconds, "evaluate_pruned"):
            pruned_metrics = self._evaluate(trainer, pl_module, "pruned")
        self.masks = masks.binary().to("cpu")
        latency = None
        if trainer.is_global_zero:
            with self._phase(seconds, "latency"):
                latency = self._latency(trainer, dense, model, batches)
        seconds["total"] = round(time.perf_counter() - started, 3)
        if self.time_reference_pass:
            seconds["prune_over_pass"] = round(seconds["prune"] / max(seconds["reference_pass"], 1e-9), 3)
        report = {
            "method": self.method,
            "model": str(getattr(pl_module, "name_or_path", getattr(model.config, "_name_or_path", ""))),
            "task": getattr(pl_module, "task", getattr(datamodule, "task", None)),
            "seed": self.seed,
            "world_size": trainer.world_size,
            "flops": {"dense": model_dense_flops(model, seq_len), "pruned": model_flops(model, seq_len),
                      "kept": model_flops(model, seq_len) / model_dense_flops(model, seq_len), "seq_len": seq_len,
                      "target": self.flops_kept},
            "params": {"dense": count_parameters(dense), "pruned": count_parameters(model)},
            "metrics": {"dense": dense_metrics, "pruned": pruned_metrics,
                        "main": getattr(pl_module, "main_metric", None)},
            "seconds": seconds,
            "latency": latency,
            "structure": self.masks.structure(),
            "hardware": hardware_summary(pl_module.device),
            "calibration": calibration,
            "settings": {"flops_kept": self.flops_kept, "seed": self.seed, **self.method_settings()},
            **details,
        }
        if ranks is not None:
            report["ranks"] = ranks
        self.report = report
        if trainer.is_global_zero:
            self._write(trainer, datamodule, model, report)
        trainer.strategy.barrier("lit_prune-pruned")
        self._log(trainer, report)
        return report

    def _write(self, trainer: L.Trainer, datamodule: Any, model: nn.Module, report: dict[str, Any]) -> None:
        folder = self.output_folder(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        if self.save_model:
            tokenizer = getattr(datamodule, "tokenizer", None)
            save_pruned(model, folder / PRUNED_MODEL_DIR, tokenizer=tokenizer)
            report["pruned_model"] = str(folder / PRUNED_MODEL_DIR)
        self.masks.save(folder / MASKS_FILE)
        write_report(folder / REPORT_FILE, report)
        main = report["metrics"]["main"]
        dense, pruned = report["metrics"]["dense"], report["metrics"]["pruned"]
        summary = f"lit_prune: {self.method} kept {report['flops']['kept']:.3f} of the FLOPs"
        if main and dense and pruned:
            summary += f"; {main} {dense.get(main, float('nan')):.4f} → {pruned.get(main, float('nan')):.4f}"
        if report["latency"]:
            summary += f"; {report['latency']['speedup']:.2f}× faster"
        summary += f"; {report['seconds']['prune']:.1f} s pruning. Report: {folder / REPORT_FILE}"
        print(summary)
        log.info(summary)

    def _log(self, trainer: L.Trainer, report: dict[str, Any]) -> None:
        if not trainer.loggers:
            return
        metrics: dict[str, float] = {"prune/flops_kept": report["flops"]["kept"]}
        for which in ("dense", "pruned"):
            for name, value in (report["metrics"][which] or {}).items():
                metrics[f"prune/{which}/{name}"] = value
        for phase, value in report["seconds"].items():
            metrics[f"prune/seconds/{phase}"] = value
        if report["latency"]:
            metrics["prune/speedup"] = report["latency"]["speedup"]
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            logger.save()

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"masks": self.masks.to_dict() if self.masks is not None else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        masks = state_dict.get("masks")
        self.masks = PruningMasks.from_dict(masks) if masks is not None else None


__all__ = ["RetrainingFreePruning", "find_encoder_model", "forward_keys", "model_batch", "shard_loader"]
