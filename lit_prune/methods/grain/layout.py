"""GRAIN's pruning units and the parameter budget they are counted in.

Paper: Yang, Cui, Wang, "Gradient-based Intra-attention Pruning on Pre-trained Language Models", ACL 2023: the units.
Reference code: airaria/GRAIN (``pruners_and_distiller/pruners.py``: ``FineISPruner.initialize``).

* **Units.** Per head, *query units* (dim j of the head's query/key: a row of W_Q and of W_K) and *value units*
  (dim j of its value/output: a row of W_V and a column of W_O); FFN neurons (a row of W_1, a column of W_2).
  Heads are not units, so heads end with different sizes (``PruningMasks.qk`` / ``.vo``). The ablation
  ``units="heads_ffn"`` prunes whole heads (``PruningMasks.head``) and FFN neurons instead.
* **The budget counts weights only** (``params_kept``: the fraction of the encoder's attention and FFN Linear
  *weights* kept, biases excluded: one meaning across lit_prune's methods, SMP's and the report's ``params.kept``).
  A query unit, a value unit and a neuron each hold 2d weights, a whole head d_h·4d. Departure: the reference code
  counts each unit's biases too (2d + 2, 2d + 1, 2d + 1); the difference is one parameter in ~770 for BERT-base
  and the ranking of units (by importance, not per parameter) is the same.
* **Other encoders** (lit_prune's extension; the paper prunes BERT): a gated FFN's neuron (GeGLU) holds 3d weights;
  under rotary position embeddings (ModernBERT) query units are not units, since a head's query/key dims rotate in
  pairs and a kept head keeps them all: ``intra`` prunes value units and neurons, and a head goes with its last
  value unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from lit_prune.core.arch import get_adapter
from lit_prune.core.masks import PruningMasks

Units = Literal["intra", "heads_ffn"]
UNITS = ("intra", "heads_ffn")

#: the mask fields that are pruning units, per unit kind
UNIT_FIELDS: dict[str, tuple[str, ...]] = {"intra": ("qk", "vo", "ffn"), "heads_ffn": ("head", "ffn")}


@dataclass(frozen=True)
class GrainLayout:
    """The shape of the encoder GRAIN prunes and the weight count of each kind of unit."""

    num_layers: int
    num_heads: int
    head_dim: int
    ffn_dim: int
    hidden_size: int
    ffn_matrices: int = 2
    qk_units: bool = True

    @classmethod
    def from_model(cls, model: nn.Module) -> GrainLayout:
        adapter = get_adapter(model)
        return cls(adapter.num_layers, adapter.num_heads, adapter.head_dim, adapter.ffn_dim, adapter.hidden_size,
                   adapter.ffn_matrices, adapter.qk_dims_prunable)

    def unit_fields(self, units: Units) -> tuple[str, ...]:
        """The mask fields that are pruning units (query units only where single query/key dims can go)."""
        return tuple(name for name in UNIT_FIELDS[units] if name != "qk" or self.qk_units)

    @property
    def unit_sizes(self) -> dict[str, int]:
        """Encoder Linear weights (biases excluded) removed with one unit of each kind."""
        d = self.hidden_size
        return {"qk": 2 * d, "vo": 2 * d, "ffn": self.ffn_matrices * d, "head": self.head_dim * 4 * d}

    @property
    def dense_parameters(self) -> int:
        """Encoder Linear weights of the dense model (``encoder_linear_weights`` of
        :func:`lit_prune.core.flops.count_parameters`)."""
        sizes = self.unit_sizes
        return (self.num_layers * self.num_heads * self.head_dim * (sizes["qk"] + sizes["vo"])
                + self.num_layers * self.ffn_dim * sizes["ffn"])

    def kept_parameters(self, masks: PruningMasks) -> int:
        """Encoder Linear weights of the units ``masks`` keep (effective masks: dead heads count as removed)."""
        binary = masks.binary()
        sizes = self.unit_sizes
        return int(sizes["qk"] * binary.qk.sum().item() + sizes["vo"] * binary.vo.sum().item()
                   + sizes["ffn"] * binary.ffn.sum().item())

    def masks(self, device: torch.device | str | None = None) -> PruningMasks:
        return PruningMasks.ones(self.num_layers, self.num_heads, self.head_dim, self.ffn_dim, device=device)


def check_density(value: Any, setting: str = "params_kept") -> float:
    """Validate a ``params_kept`` setting: a number in (0, 1], a fraction of the encoder's Linear weights.

    Every such fraction is reachable: each weight of a Q, K, V, O, FFN-up or FFN-down Linear belongs to a unit (a
    budget counting biases would have a floor, the attention-output and FFN-down biases, which no unit removes).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{setting}={value!r}: expected a number in (0, 1]")
    if not 0 < value <= 1:
        raise ValueError(f"{setting}={value!r}: expected a fraction of the encoder's Linear weights in (0, 1]")
    return float(value)


__all__ = ["UNITS", "UNIT_FIELDS", "GrainLayout", "Units", "check_density"]
