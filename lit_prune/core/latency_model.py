"""A latency model measured on the running machine, and latency budgets ("prune to 2x faster").

FLOPs are a poor proxy for time: on a CPU a FLOP of attention (small per-head matmuls, softmax, reshapes) costs far
more than a FLOP of the FFN's large GEMMs, and fixed costs (embeddings, LayerNorms, the task head, Python) weigh
more at small batches. So lit_prune times the model itself, at the batch size, sequence length, dtype, threads and
device it will serve with, and searches masks under the measured latency instead of the FLOPs count.

**The tables** (:func:`measure_table`). Every encoder layer of the supported families has the same shape, so one
layer stands for all (measured on a one-layer copy of the model that shares everything outside the layer):

* ``attention_ms[h]``: the time an attention sublayer with ``h`` whole heads adds, for every h in 0..H;
* ``ffn_ms``: the time an FFN sublayer with n neurons adds, at n = 0, 1 and every F/16, interpolated linearly;
* ``width_ms``: all H heads at a uniform head size w (d_h, d_h/2, ..., 1), for heads with fewer dims (GRAIN);
* ``fixed_ms``: the whole model with every head and neuron removed (embeddings, emptied layers, the task head).

Each value is the one-layer model's time minus the one-layer model's time with nothing kept. All variants are
timed in one interleaved loop (each round runs every variant once, in a fresh random order, after warm-up passes),
and the median of each is taken, so drifts of a shared machine spread over all of them. The tables are then
**fitted**: made non-decreasing (pool-adjacent-violators: a unit removed never costs time) with nothing kept at
zero. Layers timed alone do not add up exactly to a whole model (caches, memory traffic), so the same loop also
times whole models keeping a quarter, half and three quarters of every layer's heads and neurons, the dense model
and the emptied one, and the sum of the layers' times is mapped to the whole model's time through these points
(piecewise linear, non-decreasing): the prediction is exact there. A held-out model (layers alternating between
three quarters of the heads with a quarter of the neurons and the reverse) is timed too, and its prediction error
is reported with the table.

Departure from Kwon et al.'s reference code (``efficiency/latency.py``), which fits a constant up to a threshold and
a line above it, and keeps at least the threshold's units in every layer: here every head count is measured and
the FFN is interpolated between 18 measured points, so the fit follows the machine's curve (including the time an
emptied sublayer saves), and a sublayer may be emptied.

**Prediction**: ``fixed_ms + calibration(Σ_layers attention(h_l) · width_factor_l + ffn(n_l))``; the width factor
is 1 for whole heads, else ``width_ms`` at the layer's average padded head size over ``width_ms`` at d_h (compacted layers
run heads of one power-of-two size class in one padded call: see the modelling file's ``head_layout``).

**The cache**: a table is written as JSON under ``cache_dir`` (``$LIT_PRUNE_CACHE/latency``, else
``~/.cache/lit_prune/latency``), keyed by the hardware fingerprint (device, CPU or GPU model, cores, threads,
torch; :func:`~lit_prune.hardware.hardware_key`), the model's shape and the timed shape; a second run reuses it.
A table of the same model and shape measured on other hardware is never used, and :func:`load_or_measure` says so.
"""

from __future__ import annotations

import bisect
import copy
import hashlib
import json
import math
import os
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_prune.core.arch import get_adapter
from lit_prune.core.atomic import atomic_write_text
from lit_prune.core.compact import compact
from lit_prune.core.flops import FlopsBudget
from lit_prune.core.hf_modeling.modeling_lit_pruned import head_layout
from lit_prune.core.masks import PruningMasks
from lit_prune.hardware import hardware_key, hardware_label, hardware_summary

TABLE_FORMAT = "lit_prune.LatencyTable"
TABLE_VERSION = 1
#: FFN sizes are measured at 0, 1 and every F / FFN_STEPS neurons
FFN_STEPS = 16
Progress = Callable[[str, int, int], None]


# ------------------------------------------------------------------------------------------------ the shape
@dataclass(frozen=True)
class LatencyShape:
    """What a latency is measured for: one forward pass of ``batch_size`` sequences of ``seq_len`` tokens, in
    ``dtype``, on ``device``, with ``threads`` intra-op threads (CPU)."""

    batch_size: int
    seq_len: int
    threads: int
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        problems = [f"{name}={getattr(self, name)!r}: expected an integer >= 1"
                    for name in ("batch_size", "seq_len", "threads")
                    if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int)
                    or getattr(self, name) < 1]
        if problems:
            raise ValueError("latency shape: " + "; ".join(problems))

    @classmethod
    def of(cls, model: nn.Module, batch_size: int, seq_len: int, threads: int | None = None) -> LatencyShape:
        """The shape for ``model`` where it is (its device and dtype), with the current threads by default."""
        parameter = next(model.parameters())
        return cls(batch_size, seq_len, torch.get_num_threads() if threads is None else threads,
                   str(parameter.device), str(parameter.dtype).removeprefix("torch."))

    def label(self) -> str:
        return f"batch {self.batch_size} × {self.seq_len} tokens, {self.dtype}, {self.device}, {self.threads} threads"


def model_signature(model: nn.Module) -> dict[str, Any]:
    """What of a model decides its latency: the class, the architecture and its dense shape, the vocabulary."""
    adapter = get_adapter(model)
    return {"class": type(model).__name__, "model_type": adapter.model_type, "num_layers": adapter.num_layers,
            "num_heads": adapter.num_heads, "head_dim": adapter.head_dim, "hidden_size": adapter.hidden_size,
            "ffn_dim": adapter.ffn_dim, "vocab_size": int(getattr(model.config, "vocab_size", 0) or 0)}


# ------------------------------------------------------------------------------------------------ the table
def _non_decreasing(values: Sequence[float]) -> list[float]:
    """The least-squares non-decreasing fit of ``values`` (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, count]
    for value in values:
        blocks.append([float(value), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            mean, count = blocks.pop()
            blocks[-1] = [(blocks[-1][0] * blocks[-1][1] + mean * count) / (blocks[-1][1] + count),
                          blocks[-1][1] + count]
    return [mean for mean, count in blocks for _ in range(int(count))]


def fit_curve(counts: Sequence[int], added_ms: Sequence[float]) -> list[float]:
    """A sublayer's fitted latency: 0 with nothing kept, then the measured times made non-decreasing (and >= 0).

    Args:
        counts: the measured unit counts, ascending, starting at 0.
        added_ms: the time each adds over nothing kept.
    """
    if not counts or counts[0] != 0 or list(counts) != sorted(set(counts)):
        raise ValueError(f"counts={list(counts)}: expected ascending distinct counts starting at 0")
    return [0.0] + [max(0.0, v) for v in _non_decreasing(added_ms[1:])]


@dataclass
class LatencyTable:
    """Measured, fitted per-sublayer latencies of one model shape on one machine (see the module docstring).

    Attributes:
        shape: what was timed.
        model: :func:`model_signature` of the model timed.
        hardware: :func:`~lit_prune.hardware.hardware_summary` of the machine.
        fixed_ms: the whole model with every unit removed.
        dense_ms: the whole dense model (measured).
        attention_counts, attention_ms: fitted time added by a layer's attention with that many whole heads.
        ffn_counts, ffn_ms: fitted time added by a layer's FFN with that many neurons (interpolated between).
        width_sizes, width_ms: fitted time of all H heads at that uniform head size.
        calibration_sum, calibration_ms: the layers' summed times of the whole models timed, and those models'
            measured times over ``fixed_ms`` (ascending, from (0, 0) to the dense model); empty: the sum as it is.
        measured: the raw medians (ms) per variant, for the record.
        validation: the held-out model's measured and predicted time and the relative error.
        seconds: how long the measurement took.
    """

    shape: LatencyShape
    model: dict[str, Any]
    hardware: dict[str, Any]
    fixed_ms: float
    dense_ms: float
    attention_counts: list[int]
    attention_ms: list[float]
    ffn_counts: list[int]
    ffn_ms: list[float]
    width_sizes: list[int]
    width_ms: list[float]
    calibration_sum: list[float] = field(default_factory=list)
    calibration_ms: list[float] = field(default_factory=list)
    measured: dict[str, float] = field(default_factory=dict)
    validation: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def __post_init__(self) -> None:
        self._ffn_all = torch.tensor([float(v) for v in _interpolate(self.ffn_counts, self.ffn_ms,
                                                                     range(self.model["ffn_dim"] + 1))],
                                     dtype=torch.float64)
        self._attention_all = torch.tensor([float(v) for v in _interpolate(
            self.attention_counts, self.attention_ms, range(self.model["num_heads"] + 1))], dtype=torch.float64)

    # -------------------------------------------------------------------------------------- predictions
    @property
    def max_speedup(self) -> float:
        """The speedup of removing every prunable unit: ``dense_ms / fixed_ms``."""
        return self.dense_ms / self.fixed_ms

    def attention(self, heads: int) -> float:
        """Fitted time a layer's attention with ``heads`` whole heads adds."""
        return float(self._attention_all[heads])

    def ffn(self, neurons: int) -> float:
        """Fitted time a layer's FFN with ``neurons`` neurons adds (interpolated)."""
        return float(self._ffn_all[neurons])

    def predict_counts(self, head_counts: torch.Tensor | Sequence[int],
                       neuron_counts: torch.Tensor | Sequence[int]) -> float:
        """Predicted time of the model keeping that many whole heads and neurons per layer (sequences of length L).
        """
        return self.whole_model(self.layers_sum(head_counts, neuron_counts))

    def layers_sum(self, head_counts: torch.Tensor | Sequence[int], neuron_counts: torch.Tensor | Sequence[int]) -> float:
        """The layers' summed one-layer times for those per-layer counts of whole heads and neurons."""
        heads = torch.as_tensor(head_counts, dtype=torch.long).cpu()
        neurons = torch.as_tensor(neuron_counts, dtype=torch.long).cpu()
        return float(self._attention_all[heads].sum() + self._ffn_all[neurons].sum())

    def whole_model(self, layers_ms: float) -> float:
        """The whole model's time for layers that add ``layers_ms`` when timed alone (the calibration)."""
        if not self.calibration_sum:
            return self.fixed_ms + layers_ms
        return self.fixed_ms + _interpolate(self.calibration_sum, self.calibration_ms, [layers_ms])[0]

    def width_factor(self, heads: Sequence[Sequence[int]]) -> float:
        """How much of the whole-head time a layer with these (q, v) head sizes takes (1 for whole heads)."""
        if not heads:
            return 1.0
        d_h = self.model["head_dim"]
        sizes = sorted(((int(q), int(v)) for q, v in heads), key=lambda s: (-max(s), -s[0], -s[1]))
        layout = head_layout(sizes)
        width = sum(group.num_heads * group.width for group in layout.groups) / len(sizes)
        if width >= d_h:
            return 1.0
        return float(_interpolate(self.width_sizes, self.width_ms, [width])[0]) / self.width_ms[-1]

    def predict(self, structure: Sequence[dict[str, Any]]) -> float:
        """Predicted time of a kept structure (per layer ``{"heads": [[q, v], ...], "ffn": n}``, as
        :meth:`PruningMasks.structure` and compacted configs give it)."""
        total = 0.0
        for layer in structure:
            total += self.attention(len(layer["heads"])) * self.width_factor(layer["heads"]) + self.ffn(layer["ffn"])
        return self.whole_model(total)

    def predict_masks(self, masks: PruningMasks) -> float:
        return self.predict(masks.structure())

    # -------------------------------------------------------------------------------------- storage
    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["shape"] = asdict(self.shape)
        return {"format": TABLE_FORMAT, "format_version": TABLE_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyTable:
        if data.get("format") != TABLE_FORMAT or data.get("format_version") != TABLE_VERSION:
            raise ValueError(f"not a {TABLE_FORMAT} version {TABLE_VERSION} table (format={data.get('format')!r}, "
                             f"format_version={data.get('format_version')!r})")
        fields_ = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        fields_["shape"] = LatencyShape(**data["shape"])
        return cls(**fields_)

    def summary(self) -> dict[str, Any]:
        """What a report records of the table."""
        return {"shape": asdict(self.shape), "hardware": hardware_label(self.hardware), "dense_ms": self.dense_ms,
                "fixed_ms": self.fixed_ms, "max_speedup": self.max_speedup,
                "calibration": dict(zip(("sum_ms", "whole_ms"), (self.calibration_sum, self.calibration_ms))),
                "validation": self.validation, "attention_ms": self.attention_ms,
                "ffn_ms": dict(zip(map(str, self.ffn_counts), self.ffn_ms)), "seconds": self.seconds}


def _interpolate(xs: Sequence[float], ys: Sequence[float], at: Sequence[float] | range) -> list[float]:
    """Piecewise-linear interpolation of (xs, ys) at ``at`` (xs ascending; clamped at the ends)."""
    out = []
    for x in at:
        if x <= xs[0] or x >= xs[-1]:
            out.append(float(ys[0] if x <= xs[0] else ys[-1]))
            continue
        k = bisect.bisect_right(xs, x) - 1
        t = (x - xs[k]) / (xs[k + 1] - xs[k])
        out.append(float(ys[k] + t * (ys[k + 1] - ys[k])))
    return out


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


def _inputs(model: nn.Module, shape: LatencyShape) -> dict[str, torch.Tensor]:
    """Random token ids (away from the special tokens at the start of the vocabulary), no padding."""
    vocab = int(getattr(model.config, "vocab_size", 0) or 1000)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(min(1000, vocab // 2), vocab, (shape.batch_size, shape.seq_len), generator=generator)
    device = next(model.parameters()).device
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


def time_variants(variants: dict[str, nn.Module], inputs: dict[str, torch.Tensor], warmup: int, repeats: int,
                  seed: int = 0, progress: Progress | None = None) -> dict[str, float]:
    """Median wall time (ms) of each variant's forward pass, timed interleaved: after ``warmup`` passes of each,
    ``repeats`` rounds each run every variant once in a fresh random order."""
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
    return {name: statistics.median(values) for name, values in times.items()}


def measure_table(model: nn.Module, shape: LatencyShape, warmup: int = 2, repeats: int = 7,
                  progress: Progress | None = None) -> LatencyTable:
    """Measure and fit the latency table of ``model`` (dense, on its device and in its dtype) at ``shape``.

    Args:
        model: a dense BERT / RoBERTa / DistilBERT model (any head); it is not changed.
        shape: what to time; its device and dtype must be the model's.
        warmup, repeats: untimed and timed rounds of the interleaved loop (the medians of ``repeats`` are taken).
        progress: ``progress(description, done, total)`` after each round.

    Raises:
        ValueError: a compacted model, or a shape whose device / dtype is not the model's.
    """
    adapter = get_adapter(model)
    adapter.require_dense("measure a latency table")
    here = LatencyShape.of(model, shape.batch_size, shape.seq_len, shape.threads)
    if (here.device, here.dtype) != (shape.device, shape.dtype):
        raise ValueError(f"latency shape {shape.label()}: the model is on {here.device} in {here.dtype}; move it "
                         "there first (tables are measured where the model runs)")
    started = time.perf_counter()
    L, H, d_h, F = adapter.num_layers, adapter.num_heads, adapter.head_dim, adapter.ffn_dim
    ffn_counts = sorted({0, 1, *(round(F * i / FFN_STEPS) for i in range(1, FFN_STEPS + 1))})
    widths = sorted({max(1, d_h >> i) for i in range(d_h.bit_length())})
    was_training = model.training
    model.eval()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(shape.threads)
    try:
        one = _shared_copy(model, keep_layers=1)
        variants: dict[str, nn.Module] = {}

        def one_layer(heads: int, neurons: int, width: int | None = None) -> nn.Module:
            return compact(_shared_copy(one), _uniform_masks(1, H, d_h, F, heads, neurons, width)).eval()

        for h in range(H + 1):
            variants[f"heads={h}"] = one_layer(h, 0)
        for n in ffn_counts[1:]:
            variants[f"neurons={n}"] = one_layer(0, n)
        for w in widths[:-1]:
            variants[f"width={w}"] = one_layer(H, 0, w)
        variants["dense"] = model
        whole = {"empty": _uniform_masks(L, H, d_h, F, 0, 0)}
        for quarter in (1, 2, 3):
            whole[f"quarter={quarter}"] = _uniform_masks(L, H, d_h, F, round(H * quarter / 4), round(F * quarter / 4))
        whole["held_out"] = _held_out_masks(L, H, d_h, F)
        for name, masks in whole.items():
            variants[name] = compact(_shared_copy(model), masks).eval()
        medians = time_variants(variants, _inputs(model, shape), warmup, repeats, progress=progress)
    finally:
        torch.set_num_threads(previous_threads)
        model.train(was_training)
    base = medians["heads=0"]
    attention = fit_curve(list(range(H + 1)), [medians[f"heads={h}"] - base for h in range(H + 1)])
    ffn = fit_curve(ffn_counts, [0.0] + [medians[f"neurons={n}"] - base for n in ffn_counts[1:]])
    width = [medians[f"width={w}"] - base for w in widths[:-1]] + [medians[f"heads={H}"] - base]
    width = [max(v, 1e-6) for v in _non_decreasing(width)]
    dense_ms, fixed_ms = medians["dense"], medians["empty"]
    if not (dense_ms > fixed_ms and attention[-1] + ffn[-1] > 0):
        raise RuntimeError(f"latency table at {shape.label()}: the dense model ({dense_ms:.3f} ms) is not slower than "
                           f"the model with every unit removed ({fixed_ms:.3f} ms); the timings are too noisy or too "
                           "short to fit: use a larger batch or sequence, or more repeats")
    table = LatencyTable(
        shape=shape, model=model_signature(model), hardware=hardware_summary(shape.device) | {"threads": shape.threads},
        fixed_ms=fixed_ms, dense_ms=dense_ms, attention_counts=list(range(H + 1)), attention_ms=attention,
        ffn_counts=ffn_counts, ffn_ms=ffn, width_sizes=widths, width_ms=width,
        measured={k: round(v, 4) for k, v in medians.items()})
    # the calibration: the layers' summed times of each whole model timed, against its measured time
    points = sorted((table.layers_sum(masks.head.sum(1).long(), masks.ffn.sum(1).long()), medians[name] - fixed_ms)
                    for name, masks in whole.items() if name not in ("empty", "held_out"))
    points = [(0.0, 0.0)] + points + [(L * (attention[-1] + ffn[-1]), dense_ms - fixed_ms)]
    fitted = _non_decreasing([max(0.0, y) for _, y in points])
    kept = [0]  # strictly ascending sums (the dense point last), so the interpolation is defined
    for index in range(1, len(points)):
        if points[index][0] > points[kept[-1]][0]:
            kept.append(index)
        elif index == len(points) - 1:
            kept[-1] = index
    table.calibration_sum = [points[i][0] for i in kept]
    table.calibration_ms = [fitted[i] for i in kept]
    predicted = table.predict(whole["held_out"].structure())
    table.validation = {"held_out_measured_ms": medians["held_out"], "held_out_predicted_ms": predicted,
                        "relative_error": predicted / medians["held_out"] - 1}
    table.seconds = time.perf_counter() - started
    return table


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


# ------------------------------------------------------------------------------------------------ the budget
def check_speedup(value: Any, setting: str = "speedup") -> float:
    """Validate a requested speedup (a real number >= 1)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value < 1:
        raise ValueError(f"{setting}={value!r}: expected a number >= 1, the factor by which the pruned model must be "
                         "faster than the dense one on this machine (2.0: twice as fast)")
    return float(value)


@dataclass(frozen=True)
class LatencyBudget:
    """A latency budget: the pruned model's predicted time at most ``table.dense_ms / speedup``.

    It offers what the searches ask of a budget (as :class:`~lit_prune.core.flops.FlopsBudget` does):
    :meth:`fits_counts`, :meth:`fits`, :meth:`halfway`, the dense shape.

    Raises:
        ValueError: a speedup below 1, or above what removing every prunable unit allows (the maximum is named).
    """

    table: LatencyTable
    speedup: float

    def __post_init__(self) -> None:
        check_speedup(self.speedup)
        if self.speedup > self.table.max_speedup:
            raise ValueError(f"speedup={self.speedup:g} is beyond what removing every head and neuron allows on this "
                             f"machine at {self.table.shape.label()}: at most {self.table.max_speedup:.2f}x (the "
                             f"dense model takes {self.table.dense_ms:.1f} ms, embeddings, LayerNorms and the task "
                             f"head alone {self.table.fixed_ms:.1f} ms)")

    @property
    def num_layers(self) -> int:
        return self.table.model["num_layers"]

    @property
    def num_heads(self) -> int:
        return self.table.model["num_heads"]

    @property
    def head_dim(self) -> int:
        return self.table.model["head_dim"]

    @property
    def ffn_dim(self) -> int:
        return self.table.model["ffn_dim"]

    @property
    def total_heads(self) -> int:
        return self.num_layers * self.num_heads

    @property
    def total_neurons(self) -> int:
        return self.num_layers * self.ffn_dim

    @property
    def max_ms(self) -> float:
        """The budget: the dense model's measured time over the speedup."""
        return self.table.dense_ms / self.speedup

    @property
    def unit_costs(self) -> tuple[float, float]:
        """Average ms of one head and one neuron in a dense layer (for per-cost scores)."""
        return self.table.attention(self.num_heads) / self.num_heads, self.table.ffn(self.ffn_dim) / self.ffn_dim

    def fits_counts(self, head_counts: torch.Tensor | Sequence[int], neuron_counts: torch.Tensor | Sequence[int]) -> bool:
        """Whether keeping that many whole heads and neurons per layer is predicted within the budget."""
        return self.table.predict_counts(head_counts, neuron_counts) <= self.max_ms * (1 + 1e-12)

    def fits(self, masks: PruningMasks) -> bool:
        masks.check_shape(self.num_layers, self.num_heads, self.head_dim, self.ffn_dim, what="the latency budget")
        return self.table.predict(masks.structure()) <= self.max_ms * (1 + 1e-12)

    def halfway(self) -> LatencyBudget:
        """The budget geometrically halfway from dense (Kwon's tuning teacher: speedup ** 0.5)."""
        return LatencyBudget(self.table, math.sqrt(self.speedup))

    def kept_fraction(self, masks: PruningMasks) -> float:
        """Predicted time of ``masks`` over the dense time."""
        return self.table.predict(masks.structure()) / self.table.dense_ms

    def describe(self) -> dict[str, Any]:
        return {"kind": "latency", "speedup": self.speedup, "max_ms": self.max_ms}


#: What the searches take: a FLOPs or a latency budget (both offer ``fits_counts``, ``fits``, ``halfway``,
#: ``unit_costs``, ``describe`` and the dense shape).
Budget = FlopsBudget | LatencyBudget


__all__ = ["Budget", "LatencyBudget", "LatencyShape", "LatencyTable", "check_speedup", "default_cache_dir", "fit_curve",
           "load_or_measure", "measure_table", "model_signature", "table_path", "time_variants"]
