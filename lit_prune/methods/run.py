"""The end of every pruning run, whatever the method: compact → rank agreement → evaluate → latency → report →
publish, written once (:func:`finish_run`), plus the pieces it is made of.

A run ends with ``<output_dir>/pruned_model/`` (a Hugging Face folder that loads with plain transformers, with the
project's tokenizer), ``<output_dir>/pruning_report.json`` (the shared keys of :data:`lit_prune.report.REPORT_KEYS`
plus the method's own) and ``<output_dir>/pruning_masks.safetensors``; the numbers also go to the Trainer's loggers
under ``prune/``. If anything fails between the first edit of the model and the report, the model is put back as
it was (:func:`restore_on_failure`): a failed run never leaves a half-pruned model in the user's module.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from lit_prune.core.compact import compact
from lit_prune.core.flops import count_parameters, model_dense_flops, model_flops
from lit_prune.core.io import SAVE_DTYPES, SaveDtype, save_pruned
from lit_prune.core.latency import compare
from lit_prune.core.masks import PruningMasks
from lit_prune.core.hardware import hardware_summary
from lit_prune.methods.contract import PruningTarget
from lit_prune.model_card import write_model_card
from lit_prune.prune.batches import model_batch
from lit_prune.report import MASKS_FILE, PRUNED_MODEL_DIR, REPORT_FILE, write_report

log = logging.getLogger(__name__)


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


def show_progress(trainer: L.Trainer) -> bool:
    """Whether this process draws progress bars (process 0, with the Trainer's progress bar on)."""
    return trainer.is_global_zero and trainer.progress_bar_callback is not None


def latency_comparison(target: PruningTarget, dense: nn.Module, pruned: nn.Module, batch_size: int, repeats: int,
                       fallback: Mapping[str, torch.Tensor] | None = None,
                       dtype: SaveDtype | None = None) -> dict[str, Any] | None:
    """Dense vs pruned latency on :meth:`PruningTarget.latency_batch` (the first ``batch_size`` evaluation examples,
    or ``fallback``, a calibration batch, when there is no validation data), measured interleaved. ``None`` when
    ``batch_size`` is 0.

    The models are timed as they would serve, outside any autocast: in ``dtype`` (the folder's ``save_dtype``;
    ``None``: the pruned model's own dtype), a model held in another dtype (float32 weights, also after a
    ``bf16-mixed`` fit) timed as a copy cast to it. The entry's ``dtype`` says which."""
    if batch_size == 0:
        return None
    batch, source = target.latency_batch(batch_size, fallback)
    inputs = model_batch(pruned, batch)
    timed = next(pruned.parameters()).dtype if dtype is None else SAVE_DTYPES[dtype]
    dense, pruned = (model if next(model.parameters()).dtype == timed else copy.deepcopy(model).to(timed)
                     for model in (dense, pruned))
    result = compare(dense, pruned, inputs, warmup=3, repeats=repeats)
    return {"dense_ms": result["dense"]["median_ms"], "pruned_ms": result["pruned"]["median_ms"],
            "speedup": result["speedup"], "speedup_paired": result["speedup_paired"],
            "batch_size": int(inputs["input_ids"].shape[0]), "seq_len": int(inputs["input_ids"].shape[1]),
            "threads": result["threads"], "repeats": repeats, "inputs": source,
            "dtype": str(timed).removeprefix("torch.")}


@contextmanager
def progress_bar(trainer: L.Trainer) -> Iterator[Progress]:
    """A :class:`Progress` for the ``with`` block, closed after it (also on errors)."""
    progress = Progress(show_progress(trainer))
    try:
        yield progress
    finally:
        progress.close()


def timed_evaluation(target: PruningTarget, which: str, seconds: dict[str, float]) -> dict[str, float]:
    """:meth:`PruningTarget.evaluate` with a progress bar, its wall seconds in ``seconds["evaluate_<which>"]``."""
    with progress_bar(target.trainer) as progress, phase(seconds, f"evaluate_{which}"):
        return target.evaluate(which, progress)


def training_seconds(started: float | None, before_resume: float, seconds: dict[str, float]) -> float:
    """Seconds a method that prunes while training has trained: this fit's since ``started`` (less its dense
    evaluation, ``seconds["evaluate_dense"]``) plus, after a resume, those of the run up to its checkpoint."""
    if started is None:
        return before_resume
    return before_resume + time.perf_counter() - started - seconds.get("evaluate_dense", 0.0)


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


def shared_report(method: str, target: PruningTarget, model: nn.Module, dense: nn.Module, seed: int | None,
                  seq_len: float, flops_target: float | None, metrics: dict[str, Any], seconds: dict[str, float],
                  latency: dict[str, Any] | None, masks: PruningMasks) -> dict[str, Any]:
    """The report keys every method shares, for the compacted ``model`` and its ``dense`` counterpart."""
    pruned_flops, dense_flops = model_flops(model, seq_len), model_dense_flops(model, seq_len)
    pl_module, trainer = target.pl_module, target.trainer
    return {
        "method": method,
        "model": target.name,
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
                  save_model: bool, save_dtype: SaveDtype = "float32") -> None:
    """Write the pruned folder (when ``save_model``, with its model card: :func:`lit_prune.model_card.model_card`;
    its weights in ``save_dtype``), the binary masks and the report into ``folder``, and print a one-line summary.
    Call on process 0 only."""
    folder.mkdir(parents=True, exist_ok=True)
    if save_model:
        if tokenizer is None:
            warnings.warn(f"lit_prune: no tokenizer was found on the LightningModule, its data module or the model's "
                          f"folder: {folder / PRUNED_MODEL_DIR} is written without one. Pass tokenizer=<a tokenizer, "
                          "or its name or folder> to the callback to save it beside the model", stacklevel=2)
        report["pruned_model"] = str(folder / PRUNED_MODEL_DIR)
        # the folder says what it is wherever it is copied or uploaded: README.md, a Hugging Face model card, written
        # into the folder before it takes its place
        save_pruned(model, folder / PRUNED_MODEL_DIR, tokenizer=tokenizer,
                    finish=lambda tmp: write_model_card(tmp, report), dtype=save_dtype)
    masks.save(folder / MASKS_FILE)
    write_report(folder / REPORT_FILE, report)
    main = report["metrics"]["main"]
    dense, pruned = report["metrics"]["dense"], report["metrics"]["pruned"]
    summary = f"lit_prune: {report['method']} kept {report['flops']['kept']:.3f} of the FLOPs"
    if main and dense and pruned:
        summary += f"; {main} {dense.get(main, float('nan')):.4f} → {pruned.get(main, float('nan')):.4f}"
    if report["latency"]:
        budget = report["latency"].get("budget")
        if budget:  # a latency budget: the speed at the shape it was asked for first
            shape = budget["measured"]["asked"]
            summary += (f"; asked {budget['requested_speedup']:g}× faster, measured {budget['measured_speedup']:.2f}× "
                        f"at batch {shape['batch_size']} × {shape['seq_len']} tokens")
        latency = report["latency"]
        summary += f"; {latency['speedup']:.2f}× faster on {latency['batch_size']} examples of the {latency['inputs']}"
    if "prune" in report["seconds"]:
        summary += f"; {report['seconds']['prune']:.1f} s pruning"
    summary += f". Report: {folder / REPORT_FILE}"
    print(summary)
    log.info(summary)


def publish(trainer: L.Trainer, report: dict[str, Any], folder: Path, model: nn.Module, masks: PruningMasks,
            tokenizer: Any, save_model: bool, ranks: dict[str, Any] | None = None,
            save_dtype: SaveDtype = "float32") -> dict[str, Any]:
    """End a pruning run on every process: add the rank check to the report, write the outputs on process 0 (see
    :func:`write_outputs`), wait for it, and log the numbers. Returns the report."""
    if ranks is not None:
        report["ranks"] = ranks
    if trainer.is_global_zero:
        write_outputs(folder, model, masks, report, tokenizer, save_model, save_dtype)
    trainer.strategy.barrier("lit_prune-published")
    log_report(trainer, report)
    return report


def resolve_seq_len(trainer: L.Trainer, given: float | None, tokens: float, examples: float,
                    counted_on: str) -> tuple[float, str]:
    """The ``s`` of the FLOPs accounting, and where it came from: ``given`` (the callback's ``seq_len``), else the
    data module's ``average_sequence_length()`` where it has one (lit_prune's: the evaluation split's average
    tokenised length), else ``tokens / examples`` counted on this process's ``counted_on`` batches, summed over
    the processes.

    Raises:
        ValueError: nothing to count on.
    """
    if given is not None:
        return float(given), "seq_len"
    if callable(getattr(trainer.datamodule, "average_sequence_length", None)):
        return float(trainer.datamodule.average_sequence_length()), "data module (evaluation split)"
    counts = torch.tensor([float(tokens), float(examples)], dtype=torch.float64, device=trainer.strategy.root_device)
    if trainer.world_size > 1:
        counts = trainer.strategy.reduce(counts, reduce_op="sum")
    if counts[1] == 0:
        raise ValueError(f"seq_len=None: no {counted_on} were seen to measure the average sequence length on; set "
                         "seq_len to the task's average tokenised length")
    return float(counts[0] / counts[1]), counted_on


def output_folder(output_dir: str | Path | None, trainer: L.Trainer) -> Path:
    """Where a run writes: ``output_dir``, else the Trainer's ``default_root_dir``."""
    return Path(output_dir or trainer.default_root_dir)


def restore_dense(model: nn.Module, dense: nn.Module) -> None:
    """Put ``dense`` (an untouched deep copy of ``model`` taken before pruning) back into ``model``, in place: its
    modules (the architecture, if compaction changed it) and its config, so the object the user holds is whole."""
    for name, child in dense.named_children():
        setattr(model, name, child)
    model.config = dense.config


@contextmanager
def restore_on_failure(model: nn.Module, dense: nn.Module) -> Iterator[None]:
    """If the block raises, :func:`restore_dense` before the error goes on (a failed run leaves the model whole)."""
    try:
        yield
    except BaseException:
        restore_dense(model, dense)
        raise


def finish_run(target: PruningTarget, model: nn.Module, dense: nn.Module, masks: PruningMasks, *, method: str,
               seed: int | None, seq_len: float, seconds: dict[str, float], started: float,
               dense_metrics: dict[str, float] | None, evaluate: bool, latency_batch_size: int, latency_repeats: int,
               output_dir: str | Path | None, save_model: bool, flops_target: float | None = None,
               method_report: dict[str, Any] | None = None,
               fallback_batch: Mapping[str, torch.Tensor] | None = None,
               extra_latency: Callable[[nn.Module, nn.Module], dict[str, Any]] | None = None,
               given_dense_metrics: dict[str, float] | None = None,
               params_report: dict[str, Any] | None = None,
               ranks_report: dict[str, Any] | None = None,
               flops_report: dict[str, Any] | None = None, save_dtype: SaveDtype = "float32") -> dict[str, Any]:
    """End a pruning run: compact ``model`` in place with ``masks``, check every process agrees, evaluate the pruned
    model, time it against ``dense``, and write the folder, the masks and the report. Returns the report.

    Args:
        target: the user's project (:class:`~lit_prune.methods.contract.PruningTarget`).
        model: the model being pruned (masked, dense shape): compacted here.
        dense: an untouched copy of it from before pruning (the latency comparison's baseline).
        masks: the final masks (binary, or real-valued where tuning scaled them; compaction folds scales in).
        method, seed, seq_len, flops_target: the report's.
        seconds: the phases timed so far; ``compact``, ``evaluate_pruned``, ``latency`` and ``total`` are added.
        started: ``time.perf_counter()`` at the run's start.
        dense_metrics: the dense model's metrics (``None``: not evaluated).
        evaluate: evaluate the pruned model.
        latency_batch_size, latency_repeats: the latency comparison's (batch size 0 skips it; see
            :func:`latency_comparison` for what is timed).
        output_dir, save_model: where to write (``None``: the Trainer's ``default_root_dir``), and whether to write
            the model folder.
        save_dtype: the dtype of the folder's weights (``"float32"``, ``"bfloat16"``, ``"float16"``), also the dtype
            the latency comparison times in; the model in memory is not cast.
        method_report: the method's own report keys (settings, calibration, steps, warnings, ...).
        fallback_batch: timed when there is no validation data (a calibration batch).
        extra_latency: ``extra_latency(dense, model)`` adds keys to the latency entry (SMP's CSR timing, a latency
            budget's outcome); it gets the models as they are (float32), not cast to ``save_dtype``.
        given_dense_metrics: ``dense_metrics`` came from the user (not evaluated here): every metric the
            evaluation gives must be among them.
        params_report: keys added to the report's ``params`` (a parameter budget's ``target``, ``kept``).
        ranks_report: the method's own cross-process checks, added to the report's ``ranks``.
        flops_report: keys added to the report's ``flops`` (``seq_len_from``: where ``seq_len`` came from).
    """
    trainer = target.trainer
    with restore_on_failure(model, dense):
        modes = [(module, module.training) for module in model.modules()]
        model.eval()
        with phase(seconds, "compact"):
            compact(model, masks)
        ranks = agree_across_ranks(trainer, model, masks)
        for module, training in modes:
            module.training = training
        pruned_metrics = None
        if evaluate:
            pruned_metrics = timed_evaluation(target, "pruned", seconds)
        metrics: dict[str, Any] = {"dense": dense_metrics, "pruned": pruned_metrics}
        if given_dense_metrics is not None and pruned_metrics is not None:
            missing = sorted(set(pruned_metrics) - set(given_dense_metrics))
            if missing:
                raise ValueError(f"dense_metrics={given_dense_metrics!r} lacks {missing}, which the evaluation gives "
                                 f"({sorted(pruned_metrics)}): give every metric of the dense model, or drop "
                                 "dense_metrics to measure them")
            metrics["dense"] = {name: given_dense_metrics[name] for name in pruned_metrics}
        if metrics["dense"] is not None:
            metrics["dense_source"] = "given" if given_dense_metrics is not None else "evaluated"
        binary = masks.binary().to("cpu")
        latency = None
        if trainer.is_global_zero and latency_batch_size:
            with phase(seconds, "latency"):
                latency = latency_comparison(target, dense, model, latency_batch_size, latency_repeats,
                                             fallback=fallback_batch, dtype=save_dtype)
                if extra_latency is not None:
                    latency.update(extra_latency(dense, model))
        seconds["total"] = round(time.perf_counter() - started, 3)
        report = {**shared_report(method, target, model, dense, seed, seq_len, flops_target, metrics, seconds,
                                  latency, binary), **(method_report or {})}
        report["flops"].update(flops_report or {})
        params = report["params"]
        # params_kept's one meaning, for every method: the encoder's attention and FFN Linear weights kept
        params["kept"] = params["pruned"]["encoder_linear_weights"] / params["dense"]["encoder_linear_weights"]
        params.update(params_report or {})
        tokenizer, found_at = target.tokenizer() if save_model else (None, None)
        report["tokenizer"] = found_at
        ranks = {**(ranks or {}), **(ranks_report or {})} or None
        return publish(trainer, report, output_folder(output_dir, trainer), model, binary, tokenizer, save_model,
                       ranks, save_dtype)


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


__all__ = ["Progress", "agree_across_ranks", "check_same_on_all_ranks", "finish_run", "latency_comparison", "log_report",
           "output_folder", "phase", "progress_bar", "publish", "resolve_seq_len", "restore_dense", "restore_on_failure",
           "shared_report", "show_progress", "tensors_digest", "timed_evaluation", "training_seconds",
           "training_summary", "write_outputs"]
