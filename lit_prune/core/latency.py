"""Measured inference latency, and dense-vs-pruned speedups measured in one interleaved run.

Latency is the median wall time of ``repeats`` forward passes under ``torch.inference_mode`` after ``warmup``
passes, with a fixed number of intra-op threads (restored afterwards). :func:`compare` alternates the two models
pass by pass, so drifts of the machine (frequency, other processes) affect both alike.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn


@contextlib.contextmanager
def _threads(threads: int | None) -> Iterator[int]:
    previous = torch.get_num_threads()
    if threads is not None:
        if type(threads) is not int or threads < 1:
            raise ValueError(f"threads={threads!r}: expected a positive integer or None (keep the current setting)")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def _check_counts(warmup: int, repeats: int) -> None:
    problems = []
    if type(warmup) is not int or warmup < 0:
        problems.append(f"warmup={warmup!r}: expected an integer >= 0")
    if type(repeats) is not int or repeats < 1:
        problems.append(f"repeats={repeats!r}: expected an integer >= 1")
    if problems:
        raise ValueError("; ".join(problems))


def _runner(model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> Callable[[], float]:
    """A function that runs one forward pass and returns its wall time in milliseconds."""
    device = next(model.parameters()).device
    batch = {name: value.to(device) for name, value in inputs.items()}
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run() -> float:
        synchronize()
        start = time.perf_counter()
        model(**batch)
        synchronize()
        return (time.perf_counter() - start) * 1e3

    return run


def _summary(times_ms: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(times_ms), "mean_ms": statistics.fmean(times_ms),
            "min_ms": min(times_ms), "max_ms": max(times_ms),
            "stdev_ms": statistics.stdev(times_ms) if len(times_ms) > 1 else 0.0, "repeats": len(times_ms)}


def measure_latency(model: nn.Module, inputs: Mapping[str, torch.Tensor], warmup: int = 3, repeats: int = 10,
                    threads: int | None = None) -> dict[str, Any]:
    """Median forward latency of ``model`` on one batch.

    Args:
        model: any module called as ``model(**inputs)``; it is put in eval mode for the measurement and restored.
        inputs: the batch (moved to the model's device once, before timing).
        warmup: untimed passes first.
        repeats: timed passes.
        threads: intra-op threads during the measurement (``None``: leave as is).

    Returns:
        ``median_ms``, ``mean_ms``, ``min_ms``, ``max_ms``, ``stdev_ms``, ``repeats``, ``threads``, ``times_ms``.
    """
    _check_counts(warmup, repeats)
    was_training = model.training
    model.eval()
    try:
        with _threads(threads) as used, torch.inference_mode():
            run = _runner(model, inputs)
            for _ in range(warmup):
                run()
            times = [run() for _ in range(repeats)]
    finally:
        model.train(was_training)
    return {**_summary(times), "threads": used, "times_ms": times}


def compare(dense: nn.Module, pruned: nn.Module, inputs: Mapping[str, torch.Tensor], warmup: int = 3,
            repeats: int = 10, threads: int | None = None) -> dict[str, Any]:
    """Latency of a dense and a pruned model measured interleaved in one run.

    Each round times both models, alternating which goes first, so slow drifts of the machine cancel out.

    Args: as :func:`measure_latency`.

    Returns:
        ``{"dense": {...}, "pruned": {...}, "speedup": dense median / pruned median, "speedup_paired": median over
        rounds of dense time / pruned time, "threads": n}``, each side with the keys of :func:`measure_latency`'s
        summary. The paired ratio compares passes run back to back, so it is the steadier of the two on a machine
        shared with other work.
    """
    _check_counts(warmup, repeats)
    modes = (dense.training, pruned.training)
    dense.eval()
    pruned.eval()
    try:
        with _threads(threads) as used, torch.inference_mode():
            runners = {"dense": _runner(dense, inputs), "pruned": _runner(pruned, inputs)}
            for _ in range(warmup):
                runners["dense"]()
                runners["pruned"]()
            times: dict[str, list[float]] = {"dense": [], "pruned": []}
            for round_ in range(repeats):
                order = ("dense", "pruned") if round_ % 2 == 0 else ("pruned", "dense")
                for name in order:
                    times[name].append(runners[name]())
    finally:
        dense.train(modes[0])
        pruned.train(modes[1])
    summary = {name: {**_summary(values), "times_ms": values} for name, values in times.items()}
    paired = statistics.median(d / p for d, p in zip(times["dense"], times["pruned"]))
    return {**summary, "speedup": summary["dense"]["median_ms"] / summary["pruned"]["median_ms"],
            "speedup_paired": paired, "threads": used}
