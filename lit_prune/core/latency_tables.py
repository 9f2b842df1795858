"""Measuring latency tables on the running machine, and their cache (see :mod:`lit_prune.core.latency_model` for
what a table holds, how it is fitted and how it predicts).

Every variant is a compacted copy of the model (a one-layer copy for the per-count tables, whole models for the
calibration and the held-out check) that shares the embeddings and the task head with the model, so memory stays
small. All are timed in one interleaved loop: after warm-up passes of each, every round runs every variant once in a
fresh random order, and the median of each is taken.

The cache: a table is written as JSON under ``cache_dir`` (``$LIT_PRUNE_CACHE/latency``, else
``~/.cache/lit_prune/latency``), named by the model's shape and the timed shape, then by the hardware fingerprint
(:func:`~lit_prune.core.hardware.hardware_key`); :func:`load_or_measure` reuses a table measured here, and names every
table of the same model and shape from other hardware as ignored.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_prune.core.arch import get_adapter
from lit_prune.core.atomic import atomic_write_text
from lit_prune.core.compact import compact
from lit_prune.core.hardware import hardware_key, hardware_label, hardware_summary
from lit_prune.core.latency_model import (
    FFN_STEPS,
    TABLE_VERSION,
    LatencyShape,
    LatencyTable,
    fit_curve,
    least_squares_knots,
    model_signature,
    non_decreasing,
)
from lit_prune.core.masks import PruningMasks

Progress = Callable[[str, int, int], None]

# ------------------------------------------------------------------------------------------------ measuring
def _uniform_masks(num_layers: int, num_heads: int, head_dim: int, ffn_dim: int, heads: int, neurons: int,
                   width: int | None = None) -> PruningMasks:
    """Every layer keeps its first ``heads`` heads (with their first ``width`` dims) and ``neurons`` neurons."""
    width = head_dim if width is None else width
    head = torch.zeros(num_layers, num_heads)
    head[:, :heads] = 1
    dims = torch.zeros(num_layers, num_heads, head_dim)
    dims[:, :, :width] = 1
    ffn = torch.zeros(num_layers, ffn_dim)
    ffn[:, :neurons] = 1
    return PruningMasks(head=head, qk=dims, vo=dims.clone(), ffn=ffn)


def _held_out_masks(num_layers: int, num_heads: int, head_dim: int, ffn_dim: int) -> PruningMasks:
    """The held-out check's structure: layers alternating between 3/4 of the heads with 1/4 of the neurons and the
    reverse (a structure unlike the calibration's uniform ones)."""
    masks = _uniform_masks(num_layers, num_heads, head_dim, ffn_dim, 0, 0)
    for layer in range(num_layers):
        heads, neurons = (3, 1) if layer % 2 == 0 else (1, 3)
        masks.head[layer, :round(num_heads * heads / 4)] = 1
        masks.ffn[layer, :round(ffn_dim * neurons / 4)] = 1
    return masks


def _shared_copy(model: nn.Module, keep_layers: int | None = None) -> nn.Module:
    """A deep copy of ``model`` that shares every parameter and buffer outside its encoder layers (cheap in
    memory); with ``keep_layers``, only the first that many layers."""
    adapter = get_adapter(model)
    layer_tensors = {id(t) for t in list(adapter.layers.parameters()) + list(adapter.layers.buffers())}
    memo: dict[int, Any] = {id(t): t for t in list(model.parameters()) + list(model.buffers())
                            if id(t) not in layer_tensors}
    copied = copy.deepcopy(model, memo)
    if keep_layers is not None:
        copied_adapter = get_adapter(copied)
        base = copied.base_model
        path = copied_adapter.spec.layers
        parent_path, _, name = path.rpartition(".")
        parent = base.get_submodule(parent_path) if parent_path else base
        setattr(parent, name, nn.ModuleList(list(copied_adapter.layers)[:keep_layers]))
        setattr(copied.config, copied_adapter.spec.num_layers, keep_layers)
    return copied.eval()


def random_inputs(model: nn.Module, batch_size: int, seq_len: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids (away from the special tokens at the start of the vocabulary), no padding, on the model's
    device: what a latency is timed on (the time does not depend on the ids)."""
    vocab = int(getattr(model.config, "vocab_size", 0) or 1000)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(1000, vocab // 2), vocab, (batch_size, seq_len), generator=generator)
    device = next(model.parameters()).device
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


def time_rounds(variants: dict[str, nn.Module], inputs: dict[str, torch.Tensor], warmup: int, repeats: int,
                seed: int = 0, progress: Progress | None = None) -> dict[str, list[float]]:
    """Wall times (ms) of each variant's forward pass, timed interleaved: after ``warmup`` passes of each,
    ``repeats`` rounds each run every variant once in a fresh random order. Returns each variant's ``repeats``
    times, round by round."""
    device = next(next(iter(variants.values())).parameters()).device
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    order = list(variants)
    times: dict[str, list[float]] = {name: [] for name in order}
    rng = random.Random(seed)
    total = len(order) * (warmup + repeats)
    done = 0
    with torch.inference_mode():
        for round_ in range(warmup + repeats):
            rng.shuffle(order)
            for name in order:
                synchronize()
                start = time.perf_counter()
                variants[name](**inputs)
                synchronize()
                if round_ >= warmup:
                    times[name].append((time.perf_counter() - start) * 1e3)
                done += 1
            if progress:
                progress("latency table", done, total)
    return times


def relative_medians(times: dict[str, list[float]], reference: str) -> dict[str, float]:
    """Each variant's time as the median over rounds of its time over ``reference``'s in the same round, times
    ``reference``'s median: a machine that slows down for a few rounds slows every variant of those rounds alike,
    and the ratios cancel it (plain medians would keep whatever part of the slowdown fell on each variant)."""
    scale = statistics.median(times[reference])
    return {name: scale * statistics.median(t / r for t, r in zip(values, times[reference], strict=True))
            for name, values in times.items()}


def table_variants(model: nn.Module) -> tuple[dict[str, nn.Module], dict[str, PruningMasks]]:
    """Every model a table times (see :mod:`lit_prune.core.latency_model`), by name: one-layer copies compacted to
    each head count (``heads=h``), FFN size (``neurons=n``) and uniform head size (``width=w``); the dense
    ``model``; whole models compacted to nothing (``empty``), to k eighths of every layer's heads and neurons
    (``eighths=k``) and to the held-out structure (``held_out``). Also returns the whole models' masks."""
    adapter = get_adapter(model)
    L, H, d_h, F = adapter.num_layers, adapter.num_heads, adapter.head_dim, adapter.ffn_dim
    one = _shared_copy(model, keep_layers=1)

    def one_layer(heads: int, neurons: int, width: int | None = None) -> nn.Module:
        # under rotary embeddings a head keeps its query/key dims whole: the widths are its value dims'
        masks = adapter.conform_masks(_uniform_masks(1, H, d_h, F, heads, neurons, width))
        return compact(_shared_copy(one), masks).eval()

    variants: dict[str, nn.Module] = {f"heads={h}": one_layer(h, 0) for h in range(H + 1)}
    variants |= {f"neurons={n}": one_layer(0, n) for n in ffn_counts(F)[1:]}
    variants |= {f"width={w}": one_layer(H, 0, w) for w in head_widths(d_h)[:-1]}
    variants["dense"] = model
    whole = {"empty": _uniform_masks(L, H, d_h, F, 0, 0)}
    whole |= {f"eighths={k}": _uniform_masks(L, H, d_h, F, round(H * k / 8), round(F * k / 8)) for k in range(1, 8)}
    whole["held_out"] = _held_out_masks(L, H, d_h, F)
    variants |= {name: compact(_shared_copy(model), masks).eval() for name, masks in whole.items()}
    return variants, whole


def ffn_counts(ffn_dim: int) -> list[int]:
    """The FFN sizes a table measures: 0, 1 and every ``ffn_dim / FFN_STEPS``."""
    return sorted({0, 1, *(round(ffn_dim * i / FFN_STEPS) for i in range(1, FFN_STEPS + 1))})


def head_widths(head_dim: int) -> list[int]:
    """The uniform head sizes a table measures: head_dim, head_dim / 2, ..., 1 (ascending)."""
    return sorted({max(1, head_dim >> i) for i in range(head_dim.bit_length())})


def measure_table(model: nn.Module, shape: LatencyShape, warmup: int = 2, repeats: int = 7,
                  progress: Progress | None = None) -> LatencyTable:
    """Measure and fit the latency table of ``model`` (dense, on its device and in its dtype) at ``shape``.

    Args:
        model: a dense model of a supported encoder (any head); it is not changed.
        shape: what to time; its device and dtype must be the model's.
        warmup, repeats: untimed and timed rounds of the interleaved loop.
        progress: ``progress(description, done, total)`` after each round.

    Raises:
        ValueError: a compacted model, or a shape whose device / dtype is not the model's.
    """
    get_adapter(model).require_dense("measure a latency table")
    here = LatencyShape.of(model, shape.batch_size, shape.seq_len, shape.threads)
    if (here.device, here.dtype) != (shape.device, shape.dtype):
        raise ValueError(f"latency shape {shape.label()}: the model is on {here.device} in {here.dtype}; move it "
                         "there first (tables are measured where the model runs)")
    started = time.perf_counter()
    was_training = model.training
    model.eval()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(shape.threads)
    try:
        variants, whole = table_variants(model)
        times = time_rounds(variants, random_inputs(model, shape.batch_size, shape.seq_len), warmup, repeats,
                            progress=progress)
    finally:
        torch.set_num_threads(previous_threads)
        model.train(was_training)
    return fit_table(model, shape, relative_medians(times, "dense"), whole, time.perf_counter() - started)


def fit_table(model: nn.Module, shape: LatencyShape, medians: dict[str, float], whole: dict[str, PruningMasks],
              seconds: float) -> LatencyTable:
    """Fit the table of ``model`` at ``shape`` from the medians (ms) of :func:`table_variants`' models.

    The per-count curves: least-squares piecewise-linear fits (:func:`~lit_prune.core.latency_model.fit_curve`) with
    knots at 1 and every quarter of the heads, and at 1, F/16, F/8, F/4, F/2, 3F/4 and F neurons. The calibration:
    the whole models at eighths, against their layers' summed times, fitted piecewise linearly with knots at the
    half model's sum and the dense model's (nothing kept at zero)."""
    adapter = get_adapter(model)
    H, d_h, F = adapter.num_heads, adapter.head_dim, adapter.ffn_dim
    counts, widths = ffn_counts(F), head_widths(d_h)
    base = medians["heads=0"]
    attention = fit_curve(list(range(H + 1)), [medians[f"heads={h}"] - base for h in range(H + 1)],
                          knots=sorted({1, *(round(H * q / 4) for q in range(1, 5))} - {0}))
    ffn = fit_curve(counts, [0.0] + [medians[f"neurons={n}"] - base for n in counts[1:]],
                    knots=sorted({1, *(round(F * s / FFN_STEPS) for s in (1, 2, 4, 8, 12, 16))} - {0}))
    width = [medians[f"width={w}"] - base for w in widths[:-1]] + [medians[f"heads={H}"] - base]
    width = [max(v, 1e-6) for v in non_decreasing(width)]
    dense_ms, fixed_ms = medians["dense"], medians["empty"]
    noisy = "the timings are too noisy or too short to fit: use a larger batch or sequence, or more repeats"
    if not dense_ms > fixed_ms:
        raise RuntimeError(f"latency table at {shape.label()}: the dense model ({dense_ms:.3f} ms) is not slower than "
                           f"the model with every unit removed ({fixed_ms:.3f} ms); {noisy}")
    if not attention[-1] + ffn[-1] > 0:
        raise RuntimeError(f"latency table at {shape.label()}: one layer with all its heads and neurons "
                           f"({medians[f'heads={H}'] - base:+.4f} ms and {medians[f'neurons={F}'] - base:+.4f} ms over "
                           f"the empty layer's {base:.3f} ms) is not measurably slower than the empty layer; {noisy}")
    table = LatencyTable(
        shape=shape, model=model_signature(model), hardware=hardware_summary(shape.device) | {"threads": shape.threads},
        fixed_ms=fixed_ms, dense_ms=dense_ms, attention_counts=list(range(H + 1)), attention_ms=attention,
        ffn_counts=counts, ffn_ms=ffn, width_sizes=widths, width_ms=width,
        measured={k: round(v, 4) for k, v in medians.items()})
    table.calibration_sum, table.calibration_ms = calibration(
        table, [(masks, medians[name]) for name, masks in whole.items() if name.startswith("eighths=")])
    predicted = table.predict(whole["held_out"].structure())
    table.validation = {"held_out_measured_ms": medians["held_out"], "held_out_predicted_ms": predicted,
                        "relative_error": predicted / medians["held_out"] - 1}
    table.seconds = seconds
    return table


def calibration(table: LatencyTable, points: list[tuple[PruningMasks, float]]) -> tuple[list[float], list[float]]:
    """The map from the layers' summed one-layer times to the whole model's time over ``fixed_ms``: a least-squares
    piecewise-linear fit through (0, 0) of the whole models timed (and the dense one), with knots at the median
    model's sum and the dense model's, made non-decreasing. Returns the knots and the fitted values there."""
    L = table.model["num_layers"]
    dense_sum = L * (table.attention_ms[-1] + table.ffn_ms[-1])
    xy = sorted((table.layers_sum(masks.head.sum(1).long(), masks.ffn.sum(1).long()), ms - table.fixed_ms)
                for masks, ms in points)
    middle = xy[(len(xy) - 1) // 2][0] if xy else 0.0
    xy.append((dense_sum, table.dense_ms - table.fixed_ms))
    knots = [0.0] + ([middle] if 0 < middle < dense_sum else []) + [dense_sum]
    values = least_squares_knots([x for x, _ in xy], [y for _, y in xy], knots, fixed={0: 0.0})
    return knots, [max(0.0, v) for v in non_decreasing(values)]


# ------------------------------------------------------------------------------------------------ the cache
def default_cache_dir() -> Path:
    """``$LIT_PRUNE_CACHE/latency``, else ``$XDG_CACHE_HOME/lit_prune/latency``, else ``~/.cache/lit_prune/latency``."""
    if os.environ.get("LIT_PRUNE_CACHE"):
        return Path(os.environ["LIT_PRUNE_CACHE"]) / "latency"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lit_prune" / "latency"


def _digest(value: Any) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def table_path(cache_dir: Path, model: nn.Module, shape: LatencyShape) -> Path:
    """``<model and shape digest>-<hardware digest>.json``: same model and shape on other hardware share the
    prefix (so they can be found, and named as ignored)."""
    hardware = hardware_summary(shape.device) | {"threads": shape.threads}
    return Path(cache_dir) / (f"{_digest([model_signature(model), asdict(shape), TABLE_VERSION])}-"
                              f"{_digest(list(hardware_key(hardware)))}.json")


def load_or_measure(model: nn.Module, shape: LatencyShape, cache_dir: str | Path | None = None,
                    warmup: int = 2, repeats: int = 7, progress: Progress | None = None
                    ) -> tuple[LatencyTable, list[str]]:
    """The latency table of ``model`` at ``shape`` on this machine: from the cache when it was measured here
    before, else measured (and saved).

    Returns:
        The table, and what happened, in lines for the log: reused (and where from), or measured (how long, where
        saved), and every table of this model and shape from other hardware that was ignored.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = table_path(cache, model, shape)
    notes = []
    here = hardware_key(hardware_summary(shape.device) | {"threads": shape.threads})
    for other in sorted(cache.glob(path.name.rsplit("-", 1)[0] + "-*.json")) if cache.is_dir() else []:
        if other == path:
            continue
        try:
            hardware = json.loads(other.read_text())["hardware"]
        except (OSError, ValueError, KeyError, TypeError):
            hardware = None
        if hardware is None or hardware_key(hardware) != here:
            notes.append(f"latency table {other} ignored: measured on "
                         f"{hardware_label(hardware) if hardware else 'an unreadable machine record'}, not on this "
                         f"machine ({hardware_label(hardware_summary(shape.device) | {'threads': shape.threads})})")
    if path.is_file():
        try:
            table = LatencyTable.from_dict(json.loads(path.read_text()))
            if hardware_key(table.hardware) == here:
                notes.append(f"latency table reused from {path} (measured in {table.seconds:.0f} s on "
                             f"{hardware_label(table.hardware)}, {shape.label()})")
                return table, notes
        except (OSError, ValueError, KeyError, TypeError) as error:
            notes.append(f"latency table {path} ignored: unreadable ({error})")
    table = measure_table(model, shape, warmup=warmup, repeats=repeats, progress=progress)
    atomic_write_text(path, json.dumps(table.to_dict(), indent=1) + "\n")
    notes.append(f"latency table measured in {table.seconds:.0f} s ({shape.label()}; held-out model predicted "
                 f"within {100 * table.validation['relative_error']:+.1f}%), saved to {path}")
    return table, notes


__all__ = ["calibration", "default_cache_dir", "ffn_counts", "fit_table", "head_widths", "load_or_measure",
           "measure_table", "random_inputs", "relative_medians", "table_path", "table_variants", "time_rounds"]
