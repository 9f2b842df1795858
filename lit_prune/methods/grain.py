"""GRAIN: gradient-based intra-attention pruning during distillation.

Paper: Yang, Cui, Wang, "Gradient-based Intra-attention Pruning on Pre-trained Language Models", ACL 2023.
Reference code: airaria/GRAIN (``pruners_and_distiller/pruners.py``: ``FineISPruner``; ``utils.py``:
``schedule_threshold``). What this module implements, and where it departs:

* **Units.** Per head, *query units* (dim j of the head's query/key: a row of W_Q and of W_K) and *value units*
  (dim j of its value/output: a row of W_V and a column of W_O); FFN neurons. Heads are not units, so heads end
  with different sizes (``PruningMasks.qk`` / ``.vo``). The ablation ``units="heads_ffn"`` prunes whole heads
  (``PruningMasks.head``) and FFN neurons instead.
* **Importance** of a unit: |Σ grad ⊙ weight| over the weights whose zeroing removes the unit exactly: the W_Q row
  and bias of a query unit, the W_O column of a value unit, the W_2 column of a neuron (the reference code's
  choice), a head's W_O block in the ablation. These sums are exactly the gradients of the loss with respect to
  lit_prune's multiplicative masks at 1, so they are computed as ``∂L/∂mask`` through the masking hooks, with
  ``torch.autograd.grad`` on the prediction loss only (gradient separation): the hidden-state loss trains the weights
  but never moves the importance. Under DDP the mask gradients are averaged over processes before the absolute
  value, as the reference's all-reduced weight gradients are.
* **EMA**: ``ema ← β·ema + (1 − β)·|∂L/∂m|``, β = 0.998.
* **Structure regularisation**: a value unit's update is multiplied by tanh(density of its head's value units / α),
  α = 0.3, so a head that starts losing value units keeps losing them and empties out; the query units of a head
  with no value units left are removed with it. (The reference code has the same factor per layer for attention and
  FFN with a tiny α that only matters for empty layers; it is left out.)
* **Global ranking** over all unit types by EMA importance, counted by parameters: the least important units are
  removed until the kept encoder Linear parameters fall to the schedule's density (query unit 2d + 2 parameters,
  value unit 2d + 1, neuron 2d + 1, whole head d_h·(4d + 3); the per-layer output biases, 2d, always stay).
  Removed units never return. Departure: the reference stops as soon as the removed mass reaches 1 − density
  (so it keeps slightly more than the target); here the density is met exactly or from below, like every
  lit_prune budget.
* **Schedule**: cubic, density 1 until 20% of the training steps, the target from 40% on, pruning every step.
* **A head with no query units left is removed as a whole.** lit_prune's masks treat a head with no query/key dims
  as pruned (in the reference code it would still average its values uniformly); its value units are removed too,
  and the parameter count says so.

Everything here is plain PyTorch (no Lightning): :class:`GrainLayout`, :func:`density_schedule`,
:class:`GrainImportance` and :func:`select_units`. The Lightning callback that drives them during a distillation
``fit`` is :class:`GrainCallback`.
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

# the mask fields that are pruning units, per unit kind
UNIT_FIELDS: dict[str, tuple[str, ...]] = {"intra": ("qk", "vo", "ffn"), "heads_ffn": ("head", "ffn")}


# ------------------------------------------------------------------------------------------------ layout
@dataclass(frozen=True)
class GrainLayout:
    """The shape of the encoder GRAIN prunes and the parameter count of each kind of unit."""

    num_layers: int
    num_heads: int
    head_dim: int
    ffn_dim: int
    hidden_size: int

    @classmethod
    def from_model(cls, model: nn.Module) -> GrainLayout:
        adapter = get_adapter(model)
        return cls(adapter.num_layers, adapter.num_heads, adapter.head_dim, adapter.ffn_dim, adapter.hidden_size)

    @property
    def unit_sizes(self) -> dict[str, int]:
        """Encoder Linear parameters (weights and biases) removed with one unit of each kind."""
        d = self.hidden_size
        return {"qk": 2 * d + 2, "vo": 2 * d + 1, "ffn": 2 * d + 1, "head": self.head_dim * (4 * d + 3)}

    @property
    def fixed_parameters(self) -> int:
        """Parameters no unit removes: the biases of every layer's attention output and FFN down projections."""
        return self.num_layers * 2 * self.hidden_size

    @property
    def dense_parameters(self) -> int:
        """Encoder Linear parameters of the dense model (as :func:`lit_prune.core.flops.count_parameters`)."""
        sizes = self.unit_sizes
        return (self.fixed_parameters
                + self.num_layers * self.num_heads * self.head_dim * (sizes["qk"] + sizes["vo"])
                + self.num_layers * self.ffn_dim * sizes["ffn"])

    def kept_parameters(self, masks: PruningMasks) -> int:
        """Encoder Linear parameters of the units ``masks`` keep (effective masks: dead heads count as removed)."""
        binary = masks.binary()
        sizes = self.unit_sizes
        return int(self.fixed_parameters + sizes["qk"] * binary.qk.sum().item() + sizes["vo"] * binary.vo.sum().item()
                   + sizes["ffn"] * binary.ffn.sum().item())

    def masks(self, device: torch.device | str | None = None) -> PruningMasks:
        return PruningMasks.ones(self.num_layers, self.num_heads, self.head_dim, self.ffn_dim, device=device)


# ------------------------------------------------------------------------------------------------ schedule
def density_schedule(step: int, total_steps: int, target: float, start: float = 0.2, end: float = 0.4) -> float:
    """The cubic density schedule: 1 until ``start``·T, ``target`` from ``end``·T on, and in between
    ``target + (1 − target)·(1 − (t − t₀)/(t₁ − t₀))³`` with t₀ = ⌊start·T⌋, t₁ = ⌊end·T⌋ (steps counted from 0).

    Raises:
        ValueError: ``total_steps`` < 1, ``target`` outside (0, 1], or not 0 ≤ start < end ≤ 1.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps}: expected at least 1 training step")
    if not 0 < target <= 1:
        raise ValueError(f"target={target}: expected a density in (0, 1]")
    if not 0 <= start < end <= 1:
        raise ValueError(f"start={start}, end={end}: expected 0 <= start < end <= 1")
    first, last = int(start * total_steps), int(end * total_steps)
    if step <= first:
        return 1.0
    if step >= last:
        return target
    remaining = 1 - (step - first) / (last - first)
    return target + (1 - target) * remaining ** 3


# ------------------------------------------------------------------------------------------------ importance
class GrainImportance:
    """EMA-smoothed importance of every unit, with the structure regulariser.

    Args:
        layout: the encoder's shape.
        units: ``"intra"`` (query units, value units, neurons) or ``"heads_ffn"`` (heads, neurons).
        beta: EMA coefficient β.
        alpha: the structure regulariser's α (value units only); ``None`` switches it off.
        device: where the scores live (the model's device).
    """

    def __init__(self, layout: GrainLayout, units: Units = "intra", beta: float = 0.998, alpha: float | None = 0.3,
                 device: torch.device | str | None = None) -> None:
        if units not in UNITS:
            raise ValueError(f"units={units!r}: expected one of {list(UNITS)}")
        self.layout, self.units, self.beta, self.alpha = layout, units, beta, alpha
        template = layout.masks(device)
        self.scores: dict[str, torch.Tensor] = {name: torch.zeros_like(getattr(template, name))
                                                for name in UNIT_FIELDS[units]}
        self.updates = 0

    @property
    def fields(self) -> tuple[str, ...]:
        return UNIT_FIELDS[self.units]

    def update(self, mask_grads: dict[str, torch.Tensor], masks: PruningMasks) -> dict[str, torch.Tensor]:
        """Fold one step's mask gradients into the EMA.

        Args:
            mask_grads: ∂(prediction loss)/∂mask for each field in :attr:`fields` (already averaged over processes).
            masks: the current binary masks (the regulariser reads each head's value-unit density).

        Returns:
            The step's regularised importance (before the EMA), by field.
        """
        step = {}
        for name in self.fields:
            grad = mask_grads[name].detach()
            if not torch.isfinite(grad).all():
                raise FloatingPointError(f"GRAIN: the gradient of the {name} masks is not finite at update "
                                         f"{self.updates}; lower the learning rate or check the loss")
            value = grad.abs().to(self.scores[name].dtype)
            if name == "vo" and self.alpha is not None:
                density = (masks.vo != 0).to(value.dtype).mean(-1, keepdim=True)  # (L, H, 1)
                value = value * torch.tanh(density / self.alpha)
            step[name] = value
            self.scores[name].mul_(self.beta).add_(value, alpha=1 - self.beta)
        self.updates += 1
        return step

    def state_dict(self) -> dict[str, Any]:
        return {"scores": {name: value.detach().cpu().clone() for name, value in self.scores.items()},
                "updates": self.updates, "units": self.units}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("units") != self.units:
            raise ValueError(f"GRAIN state for units={state.get('units')!r} cannot resume units={self.units!r}")
        for name, value in state["scores"].items():
            if value.shape != self.scores[name].shape:
                raise ValueError(f"GRAIN state: {name} scores have shape {tuple(value.shape)}, the model needs "
                                 f"{tuple(self.scores[name].shape)}")
            self.scores[name] = value.to(self.scores[name].device, self.scores[name].dtype)
        self.updates = int(state["updates"])


# ------------------------------------------------------------------------------------------------ selection
def _cascade(masks: PruningMasks) -> PruningMasks:
    """Remove what no longer does anything: the query units of a head without value units, the value units of a head
    without query units, and both of a head whose head mask is 0."""
    alive = masks.heads_alive().to(masks.qk.dtype)[..., None]  # (L, H, 1)
    return PruningMasks(head=masks.head * alive[..., 0], qk=masks.qk * alive, vo=masks.vo * alive,
                        ffn=masks.ffn.clone())


def select_units(scores: dict[str, torch.Tensor], masks: PruningMasks, layout: GrainLayout, density: float,
                 units: Units = "intra") -> PruningMasks:
    """The masks after removing the least important kept units until the kept encoder Linear parameters are at most
    ``density`` × the dense count.

    Units already removed stay removed; a kept unit is removed only if needed, lowest score first (ties by position,
    so the result is deterministic). Heads left without query or value units are then removed as a whole.

    Args:
        scores: importance per unit field (see :class:`GrainImportance`).
        masks: the current binary masks.
        layout: the encoder's shape.
        density: the fraction of the dense encoder Linear parameters to keep, in (0, 1].
        units: which fields are units.

    Returns:
        New binary masks (``masks`` is not modified).

    Raises:
        ValueError: ``density`` is so low that even removing every unit cannot reach it.
    """
    budget = density * layout.dense_parameters
    masks = _cascade(masks.binary())
    kept = layout.kept_parameters(masks)
    if kept <= budget:
        return masks
    if budget < layout.fixed_parameters:
        raise ValueError(f"density={density}: below the {layout.fixed_parameters / layout.dense_parameters:.4f} of "
                         f"the encoder Linear parameters that no unit removes (output biases)")
    sizes = layout.unit_sizes
    fields = UNIT_FIELDS[units]
    flat_scores, flat_sizes, owners = [], [], []
    for index, name in enumerate(fields):
        mask = getattr(masks, name)
        alive = mask.reshape(-1) != 0
        if name == "head":  # whole heads: the size of what they still hold
            size = (sizes["qk"] * masks.qk.sum(-1) + sizes["vo"] * masks.vo.sum(-1)).reshape(-1)
        else:
            size = torch.full_like(mask.reshape(-1), float(sizes[name]))
        positions = torch.nonzero(alive).squeeze(-1)
        flat_scores.append(scores[name].reshape(-1)[positions].double())
        flat_sizes.append(size[positions].double())
        owners.append(torch.stack([torch.full_like(positions, index), positions], dim=-1))
    all_scores, all_sizes, all_owners = torch.cat(flat_scores), torch.cat(flat_sizes), torch.cat(owners)
    order = torch.argsort(all_scores, stable=True)
    removed_mass = torch.cumsum(all_sizes[order], 0)
    excess = kept - budget
    count = int(torch.searchsorted(removed_mass, torch.tensor(excess, dtype=removed_mass.dtype)).item()) + 1
    chosen = all_owners[order[:count]]
    out = {name: getattr(masks, name).clone() for name in ("head", "qk", "vo", "ffn")}
    for index, name in enumerate(fields):
        positions = chosen[chosen[:, 0] == index, 1]
        out[name].view(-1)[positions] = 0
    result = _cascade(PruningMasks(**out))
    assert layout.kept_parameters(result) <= budget + 1e-6 * layout.dense_parameters
    return result


def check_density(value: Any, layout: GrainLayout | None = None, setting: str = "params_kept") -> float:
    """Validate a ``params_kept`` setting: a number in (0, 1], above the fraction no unit can remove."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{setting}={value!r}: expected a number in (0, 1]")
    if not 0 < value <= 1:
        raise ValueError(f"{setting}={value!r}: expected a fraction of the encoder parameters in (0, 1]")
    if layout is not None and value * layout.dense_parameters < layout.fixed_parameters:
        floor = layout.fixed_parameters / layout.dense_parameters
        raise ValueError(f"{setting}={value!r}: below {floor:.4f}, the fraction of this model's encoder Linear "
                         f"parameters that pruning cannot remove (the attention-output and FFN-down biases)")
    return float(value)


__all__ = ["UNITS", "UNIT_FIELDS", "GrainImportance", "GrainLayout", "Units", "check_density", "density_schedule",
           "select_units"]
