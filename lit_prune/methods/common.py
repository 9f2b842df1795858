"""What every pruning callback shares, whatever its method: finding the Hugging Face model in a LightningModule,
progress bars, evaluation before and after, the latency comparison, the rank agreement check, and the run's
outputs (``pruned_model/``, ``pruning_report.json``, ``pruning_masks.safetensors``) and logged numbers.

The retraining-free callbacks (:mod:`lit_prune.methods.base`) and the callbacks that prune while training
(:mod:`lit_prune.methods.grain`) both end their runs through these functions, so every method's report has the same
shared keys (:data:`lit_prune.report.REPORT_KEYS`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from lit_prune.core.arch import get_adapter
from lit_prune.core.flops import count_parameters, model_dense_flops, model_flops
from lit_prune.core.io import save_pruned
from lit_prune.core.latency import compare
from lit_prune.core.masks import PruningMasks
from lit_prune.hardware import hardware_summary
from lit_prune.prune.batches import LABEL_KEYS, forward_keys
from lit_prune.report import MASKS_FILE, PRUNED_MODEL_DIR, REPORT_FILE, write_report

log = logging.getLogger(__name__)


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


def shard_loader(loader: DataLoader, rank: int, world_size: int) -> DataLoader:
    """Every ``world_size``-th example of ``loader``'s dataset from ``rank`` on, same batch size and collate."""
    if world_size == 1:
        return loader
    dataset = loader.dataset
    return DataLoader(Subset(dataset, list(range(rank, len(dataset), world_size))), batch_size=loader.batch_size,
                      collate_fn=loader.collate_fn, num_workers=loader.num_workers, shuffle=False)


class Progress:
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


def setup_problems(trainer: L.Trainer, pl_module: L.LightningModule, model_attribute: str | None,
                   seq_len: float | None, evaluate: bool, dense_hint: str) -> tuple[nn.Module | None, list[str]]:
    """What every pruning callback checks before any work: the Hugging Face model (found and not yet pruned; a
    pruned one gets ``dense_hint``), a data module that gives the FLOPs' ``s`` unless ``seq_len`` is set, and an
    ``evaluate`` method when ``evaluate`` is on. Returns the model (``None`` when not found) and the problems."""
    problems = []
    model = None
    try:
        model = find_encoder_model(pl_module, model_attribute)
        if get_adapter(model).is_compacted:
            problems.append(f"model.name_or_path={getattr(pl_module, 'name_or_path', 'the model')!r} is already "
                            f"pruned (its config has a lit_prune_structure); {dense_hint}")
    except ValueError as error:
        problems.append(str(error))
    datamodule = trainer.datamodule
    if datamodule is None:
        problems.append("no data module: pass datamodule= to trainer.fit")
    elif seq_len is None and not callable(getattr(datamodule, "average_sequence_length", None)):
        problems.append(f"seq_len=None, but the data module {type(datamodule).__name__} has no "
                        "average_sequence_length(): set seq_len to the task's average tokenised length (the s "
                        "of the FLOPs accounting)")
    if evaluate and not callable(getattr(pl_module, "evaluate", None)):
        problems.append(f"evaluate=True, but {type(pl_module).__name__} has no evaluate(dataloaders) method; "
                        "set evaluate=False or add one (see lit_prune.tasks.TaskModule.evaluate)")
    return model, problems


def show_progress(trainer: L.Trainer) -> bool:
    """Whether this process draws progress bars (process 0, with the Trainer's progress bar on)."""
    return trainer.is_global_zero and trainer.progress_bar_callback is not None


def evaluation_loaders(trainer: L.Trainer) -> list[DataLoader]:
    """This process's shard of each evaluation dataloader of the Trainer's data module."""
    loaders = trainer.datamodule.val_dataloader()
    loaders = list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
    return [shard_loader(loader, trainer.global_rank, trainer.world_size) for loader in loaders]


def evaluate_module(trainer: L.Trainer, pl_module: L.LightningModule, which: str) -> dict[str, float]:
    """The evaluation split's metrics of ``pl_module``'s current model (``pl_module.evaluate``), with a progress bar
    named ``evaluate <which>``; under DDP every process evaluates its shard and gets the gathered metrics."""
    loaders = evaluation_loaders(trainer)
    total = sum(len(loader) for loader in loaders)
    progress = Progress(show_progress(trainer))
    done = [0]

    def step() -> None:
        done[0] += 1
        progress(f"evaluate {which}", done[0], total)

    try:
        return pl_module.evaluate(loaders if len(loaders) > 1 else loaders[0], progress=step)
    finally:
        progress.close()


def latency_comparison(trainer: L.Trainer, dense: nn.Module, pruned: nn.Module, batch_size: int, repeats: int,
                       fallback: Mapping[str, torch.Tensor] | None = None) -> dict[str, Any] | None:
    """Dense vs pruned latency on the first ``batch_size`` evaluation examples (``fallback``, e.g. a calibration
    batch, when the data module has no validation data), measured interleaved. ``None`` when ``batch_size`` is 0."""
    if batch_size == 0:
        return None
    from lightning.pytorch.utilities.model_helpers import is_overridden

    if is_overridden("val_dataloader", trainer.datamodule, parent=L.LightningDataModule):
        loader = trainer.datamodule.val_dataloader()
        loader = loader[0] if isinstance(loader, (list, tuple)) else loader
        count = min(batch_size, len(loader.dataset))
        batch, source = loader.collate_fn([loader.dataset[i] for i in range(count)]), "evaluation split"
    elif fallback is not None:
        batch = {k: v[:batch_size] for k, v in fallback.items()}
        source = "first calibration batch"
    else:
        raise ValueError(f"latency_batch_size={batch_size}: the data module has no val_dataloader() to time the "
                         "models on; set latency_batch_size=0")
    keys = forward_keys(pruned)
    inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and k not in LABEL_KEYS
              and (keys is None or k in keys)}
    result = compare(dense, pruned, inputs, warmup=3, repeats=repeats)
    return {"dense_ms": result["dense"]["median_ms"], "pruned_ms": result["pruned"]["median_ms"],
            "speedup": result["speedup"], "speedup_paired": result["speedup_paired"],
            "batch_size": int(inputs["input_ids"].shape[0]), "seq_len": int(inputs["input_ids"].shape[1]),
            "threads": result["threads"], "repeats": repeats, "inputs": source}


@contextmanager
def phase(seconds: dict[str, float], name: str) -> Iterator[None]:
    """Record the wall seconds of the ``with`` block in ``seconds[name]``."""
    started = time.perf_counter()
    yield
    seconds[name] = round(time.perf_counter() - started, 3)


def agree_across_ranks(trainer: L.Trainer, model: nn.Module, masks: PruningMasks) -> dict[str, Any] | None:
    """Check that every process holds the same masks, and give every process process 0's weights.

    Every statistic a method uses is reduced over the processes, so the masks agree exactly; a disagreement is a
    bug and stops the run. Weights may differ in the last bits (each process's float32 passes round on their own,
    and an ill-conditioned least-squares system can amplify that), so process 0's weights are broadcast and the
    largest difference each process had is recorded. ``None`` in a single process.
    """
    if trainer.world_size == 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    flat = torch.cat([tensor.detach().reshape(-1).double() for tensor in masks.to_dict().values()])
    gathered = [torch.empty_like(flat) for _ in range(trainer.world_size)]
    torch.distributed.all_gather(gathered, flat)
    differing = [rank for rank, other in enumerate(gathered) if not torch.equal(other, gathered[0])]
    if differing:
        raise RuntimeError(f"lit_prune: the pruning masks of process(es) {differing} differ from process 0's "
                           "although every statistic was reduced over the processes. This is a bug in lit_prune; "
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


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """A SHA-256 of the tensors' names, shapes, dtypes and bytes (in name order)."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def check_same_on_all_ranks(trainer: L.Trainer, tensors: Mapping[str, torch.Tensor], what: str) -> dict[str, Any] | None:
    """Gather a digest of ``tensors`` from every process and stop the run if any differs from process 0's.
    ``None`` in a single process."""
    if trainer.world_size == 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    mine = tensors_digest(tensors)
    digests: list[str | None] = [None] * trainer.world_size
    torch.distributed.all_gather_object(digests, mine)
    differing = [rank for rank, digest in enumerate(digests) if digest != digests[0]]
    if differing:
        raise RuntimeError(f"lit_prune: the {what} of process(es) {differing} differ from process 0's; every process "
                           "must end with the same ones. This is a bug in lit_prune; please report it.")
    return {f"{what.replace(' ', '_')}_identical": True, "digest": mine}


def shared_report(method: str, pl_module: L.LightningModule, trainer: L.Trainer, model: nn.Module, dense: nn.Module,
                  seed: int, seq_len: float, flops_target: float | None, metrics: dict[str, Any],
                  seconds: dict[str, float], latency: dict[str, Any] | None, masks: PruningMasks) -> dict[str, Any]:
    """The report keys every method shares, for the compacted ``model`` and its ``dense`` counterpart."""
    pruned_flops, dense_flops = model_flops(model, seq_len), model_dense_flops(model, seq_len)
    return {
        "method": method,
        "model": str(getattr(pl_module, "name_or_path", getattr(model.config, "_name_or_path", ""))),
        "task": getattr(pl_module, "task", getattr(trainer.datamodule, "task", None)),
        "seed": seed,
        "world_size": trainer.world_size,
        "flops": {"dense": dense_flops, "pruned": pruned_flops, "kept": pruned_flops / dense_flops,
                  "seq_len": seq_len, "target": flops_target},
        "params": {"dense": count_parameters(dense), "pruned": count_parameters(model)},
        "metrics": {**metrics, "main": getattr(pl_module, "main_metric", None)},
        "seconds": seconds,
        "latency": latency,
        "structure": masks.structure(),
        "hardware": hardware_summary(pl_module.device),
    }


def training_summary(trainer: L.Trainer) -> dict[str, Any]:
    """How long a method that trains trained: the Trainer's length settings and the optimiser steps taken."""
    return {"max_epochs": trainer.max_epochs, "max_steps": trainer.max_steps,
            "accumulate_grad_batches": trainer.accumulate_grad_batches, "steps": int(trainer.global_step)}


def write_outputs(folder: Path, model: nn.Module, masks: PruningMasks, report: dict[str, Any], tokenizer: Any,
                  save_model: bool) -> None:
    """Write the pruned folder (when ``save_model``), the binary masks and the report into ``folder``, and print a
    one-line summary. Call on process 0 only."""
    folder.mkdir(parents=True, exist_ok=True)
    if save_model:
        save_pruned(model, folder / PRUNED_MODEL_DIR, tokenizer=tokenizer)
        report["pruned_model"] = str(folder / PRUNED_MODEL_DIR)
    masks.save(folder / MASKS_FILE)
    write_report(folder / REPORT_FILE, report)
    main = report["metrics"]["main"]
    dense, pruned = report["metrics"]["dense"], report["metrics"]["pruned"]
    summary = f"lit_prune: {report['method']} kept {report['flops']['kept']:.3f} of the FLOPs"
    if main and dense and pruned:
        summary += f"; {main} {dense.get(main, float('nan')):.4f} → {pruned.get(main, float('nan')):.4f}"
    if report["latency"]:
        summary += f"; {report['latency']['speedup']:.2f}× faster"
    if "prune" in report["seconds"]:
        summary += f"; {report['seconds']['prune']:.1f} s pruning"
    summary += f". Report: {folder / REPORT_FILE}"
    print(summary)
    log.info(summary)


def publish(trainer: L.Trainer, report: dict[str, Any], folder: Path, model: nn.Module, masks: PruningMasks,
            tokenizer: Any, save_model: bool, ranks: dict[str, Any] | None = None) -> dict[str, Any]:
    """End a pruning run on every process: add the rank check to the report, write the outputs on process 0 (see
    :func:`write_outputs`), wait for it, and log the numbers. Returns the report."""
    if ranks is not None:
        report["ranks"] = ranks
    if trainer.is_global_zero:
        write_outputs(folder, model, masks, report, tokenizer, save_model)
    trainer.strategy.barrier("lit_prune-published")
    log_report(trainer, report)
    return report


def log_report(trainer: L.Trainer, report: dict[str, Any]) -> None:
    """Send the report's numbers to the Trainer's loggers under ``prune/``."""
    if not trainer.loggers:
        return
    metrics: dict[str, float] = {"prune/flops_kept": report["flops"]["kept"]}
    for which in ("dense", "pruned"):
        for name, value in (report["metrics"][which] or {}).items():
            metrics[f"prune/{which}/{name}"] = value
    for name, value in report["seconds"].items():
        metrics[f"prune/seconds/{name}"] = value
    if report["latency"]:
        metrics["prune/speedup"] = report["latency"]["speedup"]
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
        logger.save()


__all__ = ["Progress", "agree_across_ranks", "check_same_on_all_ranks", "evaluate_module", "evaluation_loaders",
           "find_encoder_model", "latency_comparison", "log_report", "phase", "publish", "setup_problems",
           "shard_loader", "shared_report", "show_progress", "tensors_digest", "write_outputs"]
