"""Latency budgets in the callbacks: ``speedup: 2.0`` instead of ``flops_kept`` (or GRAIN's ``params_kept``).

What every method shares (the methods' searches take the budget through
:class:`~lit_prune.core.latency_model.LatencyBudget`):

* :class:`LatencySettings`: the settings, checked at construction with every problem named;
* :func:`latency_table`: at the start of the ``fit`` (before any training or calibration), process 0 measures the
  latency table of the user's model where it runs, or reuses the cached one, and shares it with the other
  processes (every process then searches the same masks); an impossible ``speedup`` is refused there, with the
  maximum this machine allows;
* :func:`budget_report`: after compaction, the requested speedup, the table's prediction for the pruned structure,
  and the measured speedup (dense and pruned interleaved) at the table's shape and at batch 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lit_prune.core.latency import compare
from lit_prune.core.latency_model import LatencyBudget, LatencyShape, LatencyTable, check_speedup
from lit_prune.core.latency_tables import load_or_measure, random_inputs
from lit_prune.methods.contract import PruningTarget
from lit_prune.methods.run import progress_bar
from lit_prune.prune.batches import count_tokens


@dataclass(frozen=True)
class LatencySettings:
    """A callback's latency-budget settings (see the callbacks' docstrings).

    Attributes:
        speedup: the factor by which the pruned model must be faster than the dense one (``None``: no latency
            budget).
        batch_size: the batch the table is measured at (the callbacks' ``latency_batch_size``).
        seq_len: the sequence length measured at (``None``: the data's average length, rounded).
        threads: intra-op threads while timing (``None``: the run's own).
        cache: the tables' folder (``None``: :func:`~lit_prune.core.latency_model.default_cache_dir`).
        repeats: timed rounds per variant when a table is measured.
    """

    speedup: float | None = None
    batch_size: int = 32
    seq_len: int | None = None
    threads: int | None = None
    cache: str | None = None
    repeats: int = 7

    def problems(self, other_budget: str, other_value: Any) -> list[str]:
        """Every invalid setting, named with its value and what is allowed (``other_budget``: the FLOPs or
        parameter budget's setting, which must not be given with ``speedup``)."""
        if self.speedup is None:
            return []
        problems = []
        try:
            check_speedup(self.speedup)
        except ValueError as error:
            problems.append(str(error))
        if other_value is not None:
            problems.append(f"{other_budget}={other_value!r} and speedup={self.speedup!r}: give one budget, not both "
                            f"({other_budget} for a {'FLOPs' if other_budget == 'flops_kept' else 'parameter'} "
                            "budget, speedup for a latency budget measured on this machine; to replace a recipe's "
                            f"{other_budget} on the command line, add --trainer.callbacks.init_args.{other_budget} "
                            "null)")
        if isinstance(self.batch_size, int) and not isinstance(self.batch_size, bool) and self.batch_size < 1:
            problems.append(f"latency_batch_size={self.batch_size!r} with speedup={self.speedup!r}: a latency budget "
                            "is measured at a batch size >= 1")
        for name, value in (("latency_seq_len", self.seq_len), ("latency_threads", self.threads)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                problems.append(f"{name}={value!r}: expected an integer >= 1 or None")
        return problems

    def as_dict(self) -> dict[str, Any]:
        return {"speedup": self.speedup, "latency_batch_size": self.batch_size, "latency_seq_len": self.seq_len,
                "latency_threads": self.threads}


def data_seq_len(target: PruningTarget) -> tuple[int, str]:
    """The data's average tokenised length (rounded, >= 1), and where it came from: the data module's
    ``average_sequence_length()``, else the first training batch's non-padding tokens per example."""
    datamodule = target.trainer.datamodule
    if callable(getattr(datamodule, "average_sequence_length", None)):
        return max(1, round(float(datamodule.average_sequence_length()))), "data module (evaluation split)"
    for batch in target.train_batches():
        inputs = target.inputs(batch)
        return max(1, round(count_tokens(inputs) / int(inputs["input_ids"].shape[0]))), "first training batch"
    raise ValueError("latency_seq_len=None: the training dataloader is empty, so there is no average length to time "
                     "at; set latency_seq_len")


def latency_table(target: PruningTarget, settings: LatencySettings) -> LatencyTable:
    """The latency table of the user's model at the settings' shape, on its device and in its dtype: measured (or
    taken from the cache) on process 0, then shared with every process. Says what happened in the log."""
    trainer, model = target.trainer, target.model
    table = None
    if trainer.is_global_zero:
        seq_len, _ = (settings.seq_len, "latency_seq_len") if settings.seq_len is not None else data_seq_len(target)
        shape = LatencyShape.of(model, settings.batch_size, seq_len, settings.threads)
        with progress_bar(trainer) as progress:
            table, notes = load_or_measure(model, shape, settings.cache, repeats=settings.repeats, progress=progress)
        for note in notes:
            rank_zero_info(f"lit_prune: {note}")
        table = table.to_dict()
    if trainer.world_size > 1:
        table = trainer.strategy.broadcast(table, src=0)
    return LatencyTable.from_dict(table)


def budget_report(budget: LatencyBudget, dense: nn.Module, pruned: nn.Module, structure: list[dict[str, Any]],
                  repeats: int) -> dict[str, Any]:
    """The latency budget's outcome: requested, predicted (the table, for the pruned structure) and measured
    (dense and pruned interleaved, at the table's shape and at batch 1 of the same length, the table's threads)."""
    table = budget.table
    shape = table.shape
    predicted_ms = table.predict(structure)
    measured = {}
    for name, batch_size in (("asked", shape.batch_size), ("batch_1", 1)):
        result = compare(dense, pruned, random_inputs(dense, batch_size, shape.seq_len, seed=1), warmup=3,
                         repeats=repeats if batch_size > 1 else max(repeats, 30), threads=shape.threads)
        measured[name] = {"batch_size": batch_size, "seq_len": shape.seq_len, "dense_ms": result["dense"]["median_ms"],
                          "pruned_ms": result["pruned"]["median_ms"], "speedup": result["speedup"],
                          "speedup_paired": result["speedup_paired"]}
    asked = measured["asked"]["speedup"]
    return {"requested_speedup": budget.speedup, "predicted_speedup": table.dense_ms / predicted_ms,
            "predicted_ms": predicted_ms, "measured_speedup": asked,
            "measured_vs_requested": asked / budget.speedup - 1 if math.isfinite(asked) else None,
            "measured": measured, "table": table.summary()}


__all__ = ["LatencySettings", "budget_report", "data_seq_len", "latency_table"]
