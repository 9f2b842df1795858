"""FLOPs and parameter accounting, and FLOPs budgets (Kwon et al. 2022's convention, METHODS.md).

Only the encoder's attention and FFN matrix work counts; embeddings, LayerNorm, softmax, biases, pooler and
classifier are excluded. With s the sequence length, d the hidden size and d_h the head size, in multiply-adds:

* an attention head with q query/key dims and v value/output dims: s·d·(2q + 2v) + s²·(q + v)
  (a full head, q = v = d_h: 4·s·d·d_h for the Q, K, V, O projections + 2·s²·d_h for QKᵀ and AV);
* an FFN neuron: 2·s·d (a gated FFN's neuron, GeGLU's, has a gate row too: 3·s·d; ``ffn_matrices`` = 3).

FLOPs = 2 × multiply-adds. ``s`` is the task's average tokenised dev-set length (the data module computes it),
never the padded length: every function takes it as an argument. Budget arithmetic is exact (``fractions``), so a
count that "fits" meets the budget exactly or from below.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from numbers import Real
from typing import Any

from torch import nn

from lit_prune.core.arch import STRUCTURE_KEY, get_adapter
from lit_prune.core.masks import PruningMasks


# ------------------------------------------------------------------------------------------------ validation
def check_flops_kept(value: Any, setting: str = "flops_kept") -> float:
    """Validate a fraction of the dense FLOPs to keep.

    Args:
        value: the fraction kept, in (0, 1] (0.5 keeps half the FLOPs; 1 keeps the dense model).
        setting: the setting's name, for the message.

    Returns:
        ``value`` as a float.

    Raises:
        ValueError: ``value`` is not a real number in (0, 1].
    """
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or not 0 < value <= 1:
        raise ValueError(f"{setting}={value!r} is outside the allowed range (0, 1]: it is the fraction of the dense "
                         "model's FLOPs to keep (0.5 keeps half; a fraction to REMOVE r is flops_kept = 1 - r).")
    return float(value)


def _exact_seq_len(seq_len: Any) -> Fraction:
    if isinstance(seq_len, bool) or not isinstance(seq_len, Real) or not math.isfinite(seq_len) or seq_len <= 0:
        raise ValueError(f"seq_len={seq_len!r}: expected a positive number (the average tokenised length of the "
                         "task's dev set, not the padded length)")
    return Fraction(seq_len)


# ------------------------------------------------------------------------------------------------ unit costs
def head_macs(seq_len: float, hidden_size: int, q: int, v: int) -> Fraction:
    """Multiply-adds of one attention head with ``q`` query/key dims and ``v`` value/output dims (exact)."""
    s = _exact_seq_len(seq_len)
    return s * hidden_size * (2 * q + 2 * v) + s * s * (q + v)


def neuron_macs(seq_len: float, hidden_size: int, ffn_matrices: int = 2) -> Fraction:
    """Multiply-adds of one FFN neuron (exact): ``ffn_matrices`` (2; 3 for a gated FFN) products of length d."""
    return ffn_matrices * _exact_seq_len(seq_len) * hidden_size


def _structure_macs(layers: Sequence[dict[str, Any]], seq_len: float, hidden_size: int,
                    ffn_matrices: int = 2) -> Fraction:
    per_neuron = neuron_macs(seq_len, hidden_size, ffn_matrices)
    return sum((sum((head_macs(seq_len, hidden_size, q, v) for q, v in layer["heads"]), Fraction(0))
                + layer["ffn"] * per_neuron for layer in layers), Fraction(0))


def _dense_macs(num_layers: int, num_heads: int, head_dim: int, ffn_dim: int, seq_len: float,
                hidden_size: int, ffn_matrices: int = 2) -> Fraction:
    return num_layers * (num_heads * head_macs(seq_len, hidden_size, head_dim, head_dim)
                         + ffn_dim * neuron_macs(seq_len, hidden_size, ffn_matrices))


# ------------------------------------------------------------------------------------------------ FLOPs
def dense_flops(num_layers: int, num_heads: int, head_dim: int, ffn_dim: int, seq_len: float,
                hidden_size: int | None = None, ffn_matrices: int = 2) -> float:
    """The dense encoder's FLOPs: 2·L·(H·(4·s·d·d_h + 2·s²·d_h) + F·2·s·d) (F·3·s·d for a gated FFN).

    Args:
        hidden_size: d; ``None`` means H·d_h (true of BERT, RoBERTa and DistilBERT).
        ffn_matrices: 2, or 3 for a gated FFN (``ArchAdapter.ffn_matrices``).
    """
    d = num_heads * head_dim if hidden_size is None else hidden_size
    return float(2 * _dense_macs(num_layers, num_heads, head_dim, ffn_dim, seq_len, d, ffn_matrices))


def structure_flops(layers: Sequence[dict[str, Any]], seq_len: float, hidden_size: int,
                    ffn_matrices: int = 2) -> float:
    """FLOPs of a kept structure: per layer ``{"heads": [[q, v], ...], "ffn": n}`` (see ``PruningMasks.structure``)."""
    return float(2 * _structure_macs(layers, seq_len, hidden_size, ffn_matrices))


def masks_flops(masks: PruningMasks, seq_len: float, hidden_size: int | None = None, ffn_matrices: int = 2) -> float:
    """FLOPs of the units ``masks`` keep (effectively kept heads, their nonzero dims, nonzero neurons).

    Args:
        hidden_size: d; ``None`` means H·d_h.
        ffn_matrices: 2, or 3 for a gated FFN.
    """
    d = masks.num_heads * masks.head_dim if hidden_size is None else hidden_size
    return structure_flops(masks.structure(), seq_len, d, ffn_matrices)


def flops_kept(masks: PruningMasks, seq_len: float, hidden_size: int | None = None, ffn_matrices: int = 2) -> float:
    """The fraction of the dense FLOPs that ``masks`` keep."""
    d = masks.num_heads * masks.head_dim if hidden_size is None else hidden_size
    dense = _dense_macs(masks.num_layers, masks.num_heads, masks.head_dim, masks.ffn_dim, seq_len, d, ffn_matrices)
    return float(_structure_macs(masks.structure(), seq_len, d, ffn_matrices) / dense)


def model_flops(model: nn.Module, seq_len: float) -> float:
    """FLOPs of ``model``: the pruned structure of a compacted model, else the dense closed form."""
    adapter = get_adapter(model)
    structure = getattr(model.config, STRUCTURE_KEY, None)
    if structure is not None:
        return structure_flops(structure["layers"], seq_len, adapter.hidden_size, adapter.ffn_matrices)
    return model_dense_flops(model, seq_len)


def model_dense_flops(model: nn.Module, seq_len: float) -> float:
    """FLOPs of ``model``'s dense shape (for a compacted model: of the model it was pruned from)."""
    a = get_adapter(model)
    return dense_flops(a.num_layers, a.num_heads, a.head_dim, a.ffn_dim, seq_len, a.hidden_size, a.ffn_matrices)


# ------------------------------------------------------------------------------------------------ parameters
def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts of a dense or compacted model.

    Returns:
        ``total``: every parameter of the model (shared ones once); ``encoder_linear``: weights and biases of the
        encoder's Q, K, V, O, FFN-up and FFN-down Linear layers; ``encoder_linear_weights``: their weights only.
    """
    adapter = get_adapter(model)
    weights = biases = 0
    for index in range(adapter.num_layers):
        modules = adapter.layer(index)
        for linear in (modules.query, modules.key, modules.value, modules.attn_out, modules.ffn_up, modules.ffn_down):
            weights += linear.weight.numel()
            biases += linear.bias.numel() if linear.bias is not None else 0
    return {"total": sum(p.numel() for p in model.parameters()), "encoder_linear": weights + biases,
            "encoder_linear_weights": weights}


def structure_parameters(layers: Sequence[dict[str, Any]], hidden_size: int, ffn_matrices: int = 2,
                         attention_bias: bool = True, ffn_bias: bool = True) -> dict[str, int]:
    """Encoder Linear parameter counts of a kept structure (as in a compacted model).

    A head with (q, v) dims has 2·q·d + 2·v·d weights and 2·q + v biases; a neuron 2·d weights and 1 bias (a gated
    neuron, ``ffn_matrices`` = 3: 3·d weights and 2 biases); every layer keeps the d biases of its attention output
    and FFN down projections, even with no heads or neurons left. ``attention_bias`` / ``ffn_bias`` False: those
    Linear layers have no biases (ModernBERT's).

    Returns:
        ``encoder_linear`` (weights and biases) and ``encoder_linear_weights``.
    """
    d = hidden_size
    weights = sum(sum((2 * q + 2 * v) * d for q, v in layer["heads"]) + ffn_matrices * d * layer["ffn"]
                  for layer in layers)
    biases = sum(attention_bias * (sum(2 * q + v for q, v in layer["heads"]) + d)
                 + ffn_bias * ((ffn_matrices - 1) * layer["ffn"] + d) for layer in layers)
    return {"encoder_linear": weights + biases, "encoder_linear_weights": weights}


def masks_parameters(masks: PruningMasks, hidden_size: int | None = None, **accounting: Any) -> dict[str, int]:
    """Encoder Linear parameter counts of the units ``masks`` keep (see :func:`structure_parameters`, which takes
    the ``accounting`` keywords: :meth:`~lit_prune.core.arch.ArchAdapter.accounting` gives a model's)."""
    d = masks.num_heads * masks.head_dim if hidden_size is None else hidden_size
    return structure_parameters(masks.structure(), d, **accounting)


# ------------------------------------------------------------------------------------------------ budgets
class BudgetUnits:
    """The unit totals every budget derives from its dense shape (``num_layers``, ``num_heads``, ``ffn_dim``)."""

    num_layers: int
    num_heads: int
    ffn_dim: int

    @property
    def total_heads(self) -> int:
        """L·H."""
        return self.num_layers * self.num_heads

    @property
    def total_neurons(self) -> int:
        """L·F."""
        return self.num_layers * self.ffn_dim


@dataclass(frozen=True)
class FlopsBudget(BudgetUnits):
    """A FLOPs budget for whole heads and FFN neurons, with exact arithmetic (Kwon et al.'s mask search).

    Attributes:
        num_layers, num_heads, head_dim, ffn_dim, hidden_size: the dense shape.
        seq_len: s.
        flops_kept: the fraction of the dense FLOPs allowed, in (0, 1].
        ffn_matrices: 2, or 3 for a gated FFN (a neuron's cost).

    Example::

        budget = FlopsBudget.for_model(model, seq_len=25.16, flops_kept=0.5)
        for heads in range(budget.total_heads + 1):
            neurons = budget.max_neurons(heads)   # None when the heads alone exceed the budget
    """

    num_layers: int
    num_heads: int
    head_dim: int
    ffn_dim: int
    hidden_size: int
    seq_len: float
    flops_kept: float
    ffn_matrices: int = 2

    def __post_init__(self) -> None:
        check_flops_kept(self.flops_kept)
        _exact_seq_len(self.seq_len)

    @classmethod
    def for_model(cls, model: nn.Module, seq_len: float, flops_kept: float) -> FlopsBudget:
        """The budget for ``model``'s dense shape."""
        a = get_adapter(model)
        return cls(a.num_layers, a.num_heads, a.head_dim, a.ffn_dim, a.hidden_size, seq_len, flops_kept,
                   a.ffn_matrices)

    @classmethod
    def for_masks(cls, masks: PruningMasks, seq_len: float, flops_kept: float,
                  hidden_size: int | None = None) -> FlopsBudget:
        """The budget for masks of this shape (``hidden_size=None`` means H·d_h)."""
        d = masks.num_heads * masks.head_dim if hidden_size is None else hidden_size
        return cls(masks.num_layers, masks.num_heads, masks.head_dim, masks.ffn_dim, d, seq_len, flops_kept)

    @property
    def head_macs(self) -> Fraction:
        """Multiply-adds of one full head."""
        return head_macs(self.seq_len, self.hidden_size, self.head_dim, self.head_dim)

    @property
    def neuron_macs(self) -> Fraction:
        """Multiply-adds of one FFN neuron."""
        return neuron_macs(self.seq_len, self.hidden_size, self.ffn_matrices)

    @property
    def dense_macs(self) -> Fraction:
        """Multiply-adds of the dense encoder."""
        return _dense_macs(self.num_layers, self.num_heads, self.head_dim, self.ffn_dim, self.seq_len,
                           self.hidden_size, self.ffn_matrices)

    @property
    def max_macs(self) -> Fraction:
        """The budget in multiply-adds: flops_kept × dense (exact)."""
        return Fraction(self.flops_kept) * self.dense_macs

    @property
    def dense_flops(self) -> float:
        """FLOPs of the dense encoder."""
        return float(2 * self.dense_macs)

    @property
    def max_flops(self) -> float:
        """The budget in FLOPs."""
        return float(2 * self.max_macs)

    def max_neurons(self, num_heads_kept: int) -> int | None:
        """The most FFN neurons that fit beside ``num_heads_kept`` full heads (at most L·F).

        Returns:
            The count, or ``None`` when the heads alone exceed the budget.
        """
        if type(num_heads_kept) is not int or not 0 <= num_heads_kept <= self.total_heads:
            raise ValueError(f"num_heads_kept={num_heads_kept!r}: expected an integer in [0, {self.total_heads}]")
        left = self.max_macs - num_heads_kept * self.head_macs
        if left < 0:
            return None
        return min(self.total_neurons, math.floor(left / self.neuron_macs))

    def max_heads(self) -> int:
        """The most full heads that fit with no neurons (at most L·H)."""
        return min(self.total_heads, math.floor(self.max_macs / self.head_macs))

    def fits(self, masks: PruningMasks) -> bool:
        """Whether the units ``masks`` keep cost at most the budget (exactly)."""
        masks.check_shape(self.num_layers, self.num_heads, self.head_dim, self.ffn_dim, what="the budget")
        return _structure_macs(masks.structure(), self.seq_len, self.hidden_size, self.ffn_matrices) <= self.max_macs

    # What every budget offers the searches (see also :class:`~lit_prune.core.latency_model.LatencyBudget`).
    def fits_counts(self, head_counts: Any, neuron_counts: Any) -> bool:
        """Whether keeping that many whole heads and neurons per layer fits (exactly; per-layer counts of length
        L, or any sequence whose sums are the totals: FLOPs are additive)."""
        heads, neurons = int(sum(int(h) for h in head_counts)), int(sum(int(n) for n in neuron_counts))
        return heads * self.head_macs + neurons * self.neuron_macs <= self.max_macs

    @property
    def unit_costs(self) -> tuple[Fraction, Fraction]:
        """Multiply-adds of one full head and one neuron."""
        return self.head_macs, self.neuron_macs

    def halfway(self) -> FlopsBudget:
        """The budget geometrically halfway from dense: ``flops_kept ** 0.5`` (Kwon's tuning teacher)."""
        return FlopsBudget(self.num_layers, self.num_heads, self.head_dim, self.ffn_dim, self.hidden_size,
                           self.seq_len, math.sqrt(self.flops_kept), self.ffn_matrices)

    @property
    def neuron_multiple(self) -> int:
        """FLOPs are exact for any count: no rounding of the per-layer neuron counts."""
        return 1

    def describe(self) -> dict[str, Any]:
        return {"kind": "flops", "flops_kept": self.flops_kept, "seq_len": self.seq_len}
