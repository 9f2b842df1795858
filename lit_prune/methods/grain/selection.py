"""GRAIN's selection: one global ranking of every kept unit, cut down to the schedule's density.

Paper: Yang, Cui, Wang, ACL 2023: global pruning across unit types. Reference code: airaria/GRAIN
(``pruners_and_distiller/pruners.py``: ``FineISPruner.generate_mask``).

* **Global ranking** over all unit types by EMA importance, counted by weights: the least important kept units are
  removed until the kept encoder Linear weights fall to the density (a query unit, a value unit and a neuron hold
  2d weights each, a whole head d_h·4d: :class:`~lit_prune.methods.grain.layout.GrainLayout`). The ranking is by
  importance alone, not per weight, as in the paper. Removed units never return.
* **The cascade**: the query units of a head with no value units left are removed with it (the reference code
  does this too). Departure: a head with no query units left is removed as a whole, its value units too: lit_prune's
  masks treat such a head as pruned (in the reference code it would still average its values uniformly), and the
  weight count says so.
* Departure: the reference stops as soon as the removed mass reaches 1 − density (so it keeps slightly more than
  the target); here the density is met exactly or from below, like every lit_prune budget.
* A latency budget (lit_prune's addition, ``speedup``): the density is the latency model's predicted time over the
  dense time, and the least important units are removed until the prediction is within it
  (:func:`select_units_by`; the ranking is the same).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lit_prune.core.masks import PruningMasks
from lit_prune.methods.grain.layout import GrainLayout, Units


def _cascade(masks: PruningMasks) -> PruningMasks:
    """Remove what no longer does anything: the query units of a head without value units, the value units of a head
    without query units, and both of a head whose head mask is 0."""
    alive = masks.heads_alive().to(masks.qk.dtype)[..., None]  # (L, H, 1)
    return PruningMasks(head=masks.head * alive[..., 0], qk=masks.qk * alive, vo=masks.vo * alive,
                        ffn=masks.ffn.clone())


def _ranked(scores: dict[str, torch.Tensor], masks: PruningMasks, layout: GrainLayout,
            units: Units) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept units ranked least important first: their sizes (weights held) and owners (field index, position)."""
    sizes = layout.unit_sizes
    fields = layout.unit_fields(units)
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
    return all_sizes[order], all_owners[order]


def _remove(masks: PruningMasks, owners: torch.Tensor, fields: tuple[str, ...]) -> PruningMasks:
    """``masks`` without the units ``owners`` names (indices into ``fields``), cascaded."""
    out = {name: getattr(masks, name).clone() for name in ("head", "qk", "vo", "ffn")}
    for index, name in enumerate(fields):
        positions = owners[owners[:, 0] == index, 1]
        out[name].view(-1)[positions] = 0
    return _cascade(PruningMasks(**out))


def select_units_by(scores: dict[str, torch.Tensor], masks: PruningMasks, layout: GrainLayout, density: float,
                    kept_fraction: Callable[[PruningMasks], float], units: Units = "intra") -> PruningMasks:
    """The masks after removing the least important kept units until ``kept_fraction(masks) <= density`` (a latency
    model's predicted time over the dense time), found by bisection over how many of the ranking are removed (the
    fraction never grows as units go). Units already removed stay removed."""
    masks = _cascade(masks.binary())
    if kept_fraction(masks) <= density:
        return masks
    _, owners = _ranked(scores, masks, layout, units)
    low, high = 1, owners.shape[0]  # the fewest removals that reach the density (all of them always do)
    while low < high:
        middle = (low + high) // 2
        if kept_fraction(_remove(masks, owners[:middle], layout.unit_fields(units))) <= density:
            high = middle
        else:
            low = middle + 1
    return _remove(masks, owners[:low], layout.unit_fields(units))


def select_units(scores: dict[str, torch.Tensor], masks: PruningMasks, layout: GrainLayout, density: float,
                 units: Units = "intra") -> PruningMasks:
    """The masks after removing the least important kept units until the kept encoder Linear weights are at most
    ``density`` × the dense count.

    Units already removed stay removed; a kept unit is removed only if needed, lowest score first (ties by position,
    so the result is deterministic). Heads left without query or value units are then removed as a whole.

    Args:
        scores: importance per unit field (see :class:`~lit_prune.methods.grain.importance.GrainImportance`).
        masks: the current binary masks.
        layout: the encoder's shape.
        density: the fraction of the dense encoder Linear weights to keep, in (0, 1].
        units: which fields are units.

    Returns:
        New binary masks (``masks`` is not modified).
    """
    budget = density * layout.dense_parameters
    masks = _cascade(masks.binary())
    kept = layout.kept_parameters(masks)
    if kept <= budget:
        return masks
    sizes, owners = _ranked(scores, masks, layout, units)
    removed_mass = torch.cumsum(sizes, 0)
    excess = kept - budget
    count = int(torch.searchsorted(removed_mass, torch.tensor(excess, dtype=removed_mass.dtype)).item()) + 1
    result = _remove(masks, owners[:count], layout.unit_fields(units))
    assert layout.kept_parameters(result) <= budget + 1e-6 * layout.dense_parameters
    return result


__all__ = ["select_units", "select_units_by"]
