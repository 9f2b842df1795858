"""A latency model measured on the running machine, and latency budgets ("prune to 2x faster").

FLOPs are a poor proxy for time: on a CPU a FLOP of attention (small per-head matmuls, softmax, reshapes) costs far
more than a FLOP of the FFN's large GEMMs, and fixed costs (embeddings, LayerNorms, the task head, Python) weigh
more at small batches. So lit_prune times the model itself, at the batch size, sequence length, dtype, threads and
device it will serve with, and searches masks under the measured latency instead of the FLOPs count.

**The tables** (measured by :mod:`lit_prune.core.latency_tables`). Every encoder layer of the supported families
has the same shape, so one layer stands for all (measured on a one-layer copy of the model that shares everything
outside the layer):

* ``attention_ms[h]``: the time an attention sublayer with ``h`` whole heads adds, for every h in 0..H;
* ``ffn_ms``: the time an FFN sublayer with n neurons adds, at n = 0, 1 and every F/16, interpolated linearly;
* ``width_ms``: all H heads at a uniform head size w (d_h, d_h/2, ..., 1), for heads with fewer dims (GRAIN);
* ``fixed_ms``: the whole model with every head and neuron removed (embeddings, emptied layers, the task head).

Each value is the one-layer model's time minus the one-layer model's time with nothing kept. All variants are
timed in one interleaved loop (each round runs every variant once, in a fresh random order, after warm-up passes),
and each variant's time is the median over rounds of its time over the dense model's in the same round, times the
dense model's median: a machine that slows down for a few rounds slows every variant of those rounds alike, and
the ratio cancels it. The tables are then **fitted**: the times at one or more units by the least-squares
piecewise-linear function with knots at 1 and every quarter of the heads, and at 1, F/16, F/8, F/4, F/2, 3F/4 and F
neurons (each value is estimated from several timings, not one), made non-decreasing (pool-adjacent-violators: a
unit removed never costs time) with nothing kept at zero. Layers timed alone do not add up exactly to a whole model
(caches, memory traffic), so the same loop also times whole models keeping one to seven eighths of every layer's
heads and neurons, the dense model and the emptied one, and the sum of the layers' times is mapped to the whole
model's time by a least-squares piecewise-linear fit through these points (knots at nothing, the half model and
the dense model; non-decreasing). A held-out model (layers alternating between three quarters of the heads with a
quarter of the neurons and the reverse) is timed too, and its prediction error is reported with the table.
``python -m benchmarks.studies.latency_tables`` measures how far predictions fall from speedups measured in the
same loop, for this fit and for the previous one (plain medians, every count as measured).

Departure from Kwon et al.'s reference code (``efficiency/latency.py``), which fits a constant up to a threshold and
a line above it, and keeps at least the threshold's units in every layer: here every head count is timed and the
FFN at 18 sizes, fitted with more knots, so the fit follows the machine's curve (including the time an emptied
sublayer saves), and a sublayer may be emptied.

**Prediction**: ``fixed_ms + calibration(Σ_layers attention(h_l) · width_factor_l + ffn(n_l))``; the width factor
is 1 for whole heads, else ``width_ms`` at the layer's average padded head size over ``width_ms`` at d_h (compacted
layers run heads of one power-of-two size class in one padded call: see the modelling file's ``head_layout``).

**The cache** (:mod:`lit_prune.core.latency_tables`): a table is written as JSON, keyed by the hardware fingerprint
(device, CPU or GPU model, cores, threads, torch), the model's shape and the timed shape; a second run reuses it. A
table of the same model and shape measured on other hardware is never used, and the log says so.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from numbers import Real
from typing import Any

import torch
from torch import nn

from lit_prune.core.arch import get_adapter
from lit_prune.core.flops import BudgetUnits, FlopsBudget
from lit_prune.core.hardware import hardware_label
from lit_prune.core.hf_modeling.modeling_lit_pruned import head_layout
from lit_prune.core.masks import PruningMasks

TABLE_FORMAT = "lit_prune.LatencyTable"
TABLE_VERSION = 3  # 2: the whole-model calibration; 3: ratios to the dense model per round, least-squares fits
#: FFN sizes are measured at 0, 1 and every F / FFN_STEPS neurons
FFN_STEPS = 16


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
def non_decreasing(values: Sequence[float]) -> list[float]:
    """The least-squares non-decreasing fit of ``values`` (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, count]
    for value in values:
        blocks.append([float(value), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            mean, count = blocks.pop()
            blocks[-1] = [(blocks[-1][0] * blocks[-1][1] + mean * count) / (blocks[-1][1] + count),
                          blocks[-1][1] + count]
    return [mean for mean, count in blocks for _ in range(int(count))]


def least_squares_knots(xs: Sequence[float], ys: Sequence[float], knots: Sequence[float],
                        fixed: dict[int, float] | None = None) -> list[float]:
    """The values at ``knots`` (ascending, spanning ``xs``) of the continuous piecewise-linear function that fits the
    points (xs, ys) best in least squares; ``fixed``: knot index -> a value imposed there."""
    fixed = fixed or {}
    if list(knots) != sorted(set(knots)) or min(xs) < knots[0] or max(xs) > knots[-1]:
        raise ValueError(f"knots={list(knots)}: expected ascending distinct values spanning {min(xs)}..{max(xs)}")
    basis = torch.zeros(len(xs), len(knots), dtype=torch.float64)
    if len(knots) == 1:  # every point at the one knot
        basis[:, 0] = 1
    else:
        for row, x in enumerate(xs):  # each point is a blend of its two neighbouring knots
            k = min(bisect.bisect_right(knots, x) - 1, len(knots) - 2)
            t = (x - knots[k]) / (knots[k + 1] - knots[k])
            basis[row, k] += 1 - t
            basis[row, k + 1] += t
    target = torch.tensor([float(y) for y in ys], dtype=torch.float64)
    free = [k for k in range(len(knots)) if k not in fixed]
    for k, value in fixed.items():
        target -= basis[:, k] * value
    solution = torch.linalg.lstsq(basis[:, free], target.unsqueeze(1), driver="gelsd").solution.squeeze(1)
    values = [0.0] * len(knots)
    for k, value in fixed.items():
        values[k] = float(value)
    for k, value in zip(free, solution.tolist()):
        values[k] = float(value)
    return values


def fit_curve(counts: Sequence[int], added_ms: Sequence[float], knots: Sequence[int] | None = None) -> list[float]:
    """A sublayer's fitted latency at ``counts``: 0 with nothing kept, then the measured times fitted, >= 0 and
    non-decreasing.

    Args:
        counts: the measured unit counts, ascending, starting at 0.
        added_ms: the time each adds over nothing kept.
        knots: unit counts (>= 1, among ``counts``, spanning ``counts[1:]``) where the fit may bend: the times at
            one or more units are fitted in least squares by the piecewise-linear function through them, so each
            value is estimated from several timings, not one. ``None``: every count (the times as measured).
    """
    if not counts or counts[0] != 0 or list(counts) != sorted(set(counts)):
        raise ValueError(f"counts={list(counts)}: expected ascending distinct counts starting at 0")
    measured = [float(v) for v in added_ms[1:]]
    if knots is not None and len(counts) > 1:
        if not set(knots) <= set(counts[1:]):
            raise ValueError(f"knots={list(knots)}: expected counts among {list(counts[1:])}")
        at_knots = least_squares_knots(counts[1:], measured, knots)
        measured = _interpolate(list(knots), at_knots, counts[1:])
    return [0.0] + [max(0.0, v) for v in non_decreasing(measured)]


@dataclass
class LatencyTable:
    """Measured, fitted per-sublayer latencies of one model shape on one machine (see the module docstring).

    Attributes:
        shape: what was timed.
        model: :func:`model_signature` of the model timed.
        hardware: :func:`~lit_prune.core.hardware.hardware_summary` of the machine.
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
        """Predicted time of the model keeping that many whole heads and neurons per layer (length-L sequences)."""
        return self.whole_model(self.layers_sum(head_counts, neuron_counts))

    def layers_sum(self, head_counts: torch.Tensor | Sequence[int],
                   neuron_counts: torch.Tensor | Sequence[int]) -> float:
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
        return {"version": TABLE_VERSION, "shape": asdict(self.shape), "hardware": hardware_label(self.hardware),
                "dense_ms": self.dense_ms, "fixed_ms": self.fixed_ms, "max_speedup": self.max_speedup,
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


# ------------------------------------------------------------------------------------------------ the budget
def check_speedup(value: Any, setting: str = "speedup") -> float:
    """Validate a requested speedup (a real number >= 1)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value < 1:
        raise ValueError(f"{setting}={value!r}: expected a number >= 1, the factor by which the pruned model must be "
                         "faster than the dense one on this machine (2.0: twice as fast)")
    return float(value)


@dataclass(frozen=True)
class LatencyBudget(BudgetUnits):
    """A latency budget: the pruned model's predicted time at most ``table.dense_ms / speedup``.

    It offers what the searches ask of a budget (as :class:`~lit_prune.core.flops.FlopsBudget` does):
    :meth:`fits_counts`, :meth:`fits`, :meth:`halfway`, the dense shape, and ``neuron_multiple``.

    Attributes:
        table: the latency table.
        speedup: the factor asked for.
        neuron_multiple: every layer keeps a multiple of this many FFN neurons (or all of them): a GEMM whose inner
            size is not a multiple of the vector width runs slower than its size says (measured on a 2-core CPU:
            1,521 neurons take 20% longer than 1,520), so the table, measured at multiples of F/16, would
            under-predict odd counts. 1: any count.

    Raises:
        ValueError: a speedup below 1, or above what removing every prunable unit allows (the maximum is named).
    """

    table: LatencyTable
    speedup: float
    neuron_multiple: int = 16

    def __post_init__(self) -> None:
        check_speedup(self.speedup)
        if isinstance(self.neuron_multiple, bool) or not isinstance(self.neuron_multiple, int) \
                or self.neuron_multiple < 1:
            raise ValueError(f"neuron_multiple={self.neuron_multiple!r}: expected an integer >= 1")
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
    def max_ms(self) -> float:
        """The budget: the dense model's measured time over the speedup."""
        return self.table.dense_ms / self.speedup

    @property
    def unit_costs(self) -> tuple[float, float]:
        """Average ms of one head and one neuron in a dense layer (for per-cost scores)."""
        return self.table.attention(self.num_heads) / self.num_heads, self.table.ffn(self.ffn_dim) / self.ffn_dim

    def fits_counts(self, head_counts: torch.Tensor | Sequence[int],
                    neuron_counts: torch.Tensor | Sequence[int]) -> bool:
        """Whether keeping that many whole heads and neurons per layer is predicted within the budget."""
        return self.table.predict_counts(head_counts, neuron_counts) <= self.max_ms * (1 + 1e-12)

    def fits(self, masks: PruningMasks) -> bool:
        masks.check_shape(self.num_layers, self.num_heads, self.head_dim, self.ffn_dim, what="the latency budget")
        return self.table.predict(masks.structure()) <= self.max_ms * (1 + 1e-12)

    def halfway(self) -> LatencyBudget:
        """The budget geometrically halfway from dense (Kwon's tuning teacher: speedup ** 0.5)."""
        return LatencyBudget(self.table, math.sqrt(self.speedup), self.neuron_multiple)

    def kept_fraction(self, masks: PruningMasks) -> float:
        """Predicted time of ``masks`` over the dense time."""
        return self.table.predict(masks.structure()) / self.table.dense_ms

    def describe(self) -> dict[str, Any]:
        return {"kind": "latency", "speedup": self.speedup, "max_ms": self.max_ms}


#: What the searches take: a FLOPs or a latency budget (both offer ``fits_counts``, ``fits``, ``halfway``,
#: ``unit_costs``, ``describe`` and the dense shape).
Budget = FlopsBudget | LatencyBudget


__all__ = ["Budget", "LatencyBudget", "LatencyShape", "LatencyTable", "check_speedup", "fit_curve",
           "least_squares_knots", "model_signature", "non_decreasing"]
