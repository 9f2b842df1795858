"""GRAIN's pure parts on tiny models: layout counts, the cubic schedule, importance and its EMA against a hand
computation from weight gradients, the structure regulariser, and the global selection under a density budget."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny_inputs, tiny_model
from lit_prune.core.arch import get_adapter
from lit_prune.core.flops import count_parameters, masks_parameters
from lit_prune.core.masking import apply_masks
from lit_prune.core.masks import PruningMasks
from lit_prune.methods.grain import (GrainImportance, GrainLayout, check_density, density_schedule, select_units)


@pytest.fixture
def model():
    return tiny_model("bert")


def test_layout_counts_match_the_core(tiny_model_type):
    model = tiny_model(tiny_model_type)
    layout = GrainLayout.from_model(model)
    assert layout.dense_parameters == count_parameters(model)["encoder_linear"]
    masks = PruningMasks.ones(2, 4, 8, 48)
    masks.qk[0, 1, :3] = 0
    masks.vo[1, 2] = 0  # a dead head: its query units count as removed too
    masks.ffn[1, :10] = 0
    assert layout.kept_parameters(masks) == masks_parameters(masks)["encoder_linear"]


def test_cubic_schedule_at_chosen_steps():
    # T = 100: density 1 up to step 20, the target from step 40, cubic in between
    assert density_schedule(0, 100, 0.1) == 1.0
    assert density_schedule(20, 100, 0.1) == 1.0
    assert density_schedule(30, 100, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 ** 3)
    assert density_schedule(35, 100, 0.1) == pytest.approx(0.1 + 0.9 * 0.25 ** 3)
    assert density_schedule(40, 100, 0.1) == 0.1
    assert density_schedule(99, 100, 0.1) == 0.1
    values = [density_schedule(t, 100, 0.05) for t in range(100)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    with pytest.raises(ValueError, match="target=0"):
        density_schedule(1, 10, 0)
    with pytest.raises(ValueError, match="start=0.5, end=0.4"):
        density_schedule(1, 10, 0.5, start=0.5, end=0.4)


def _loss(model, masks):
    inputs = tiny_inputs()
    with apply_masks(model, masks):
        return model(**inputs, labels=torch.tensor([0, 1, 0])).loss


def test_mask_gradients_are_the_sums_of_grad_times_weight(model):
    """|∂L/∂m| equals |Σ grad ⊙ w| over the W_Q row and bias (query unit), the W_O column (value unit) and the W_2
    column (neuron): the reference code's importance."""
    masks = PruningMasks.from_model(model).requires_grad_(True, fields=("qk", "vo", "ffn"))
    loss = _loss(model, masks)
    grads = dict(zip(("qk", "vo", "ffn"), torch.autograd.grad(loss, [masks.qk, masks.vo, masks.ffn],
                                                               retain_graph=True)))
    model.zero_grad()
    loss.backward()
    adapter = get_adapter(model)
    for layer in range(2):
        m = adapter.layer(layer)
        q = (m.query.weight.grad * m.query.weight).sum(1) + m.query.bias.grad * m.query.bias  # (H·d_h,)
        v = (m.attn_out.weight.grad * m.attn_out.weight).sum(0)
        f = (m.ffn_down.weight.grad * m.ffn_down.weight).sum(0)
        torch.testing.assert_close(grads["qk"][layer].reshape(-1), q, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(grads["vo"][layer].reshape(-1), v, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(grads["ffn"][layer], f, rtol=1e-4, atol=1e-7)


def test_ema_and_regulariser_by_hand(model):
    layout = GrainLayout.from_model(model)
    importance = GrainImportance(layout, beta=0.9, alpha=0.3)
    masks = layout.masks()
    masks.vo[0, 1, :6] = 0  # head (0, 1) keeps 2 of 8 value units
    g1 = {name: torch.randn_like(getattr(masks, name)) for name in ("qk", "vo", "ffn")}
    g2 = {name: torch.randn_like(getattr(masks, name)) for name in ("qk", "vo", "ffn")}
    importance.update(g1, masks)
    importance.update(g2, masks)
    factor = torch.ones(2, 4, 1)
    factor[:] = math.tanh(1 / 0.3)
    factor[0, 1] = math.tanh(0.25 / 0.3)
    for name in ("qk", "vo", "ffn"):
        scale = factor if name == "vo" else 1.0
        expected = 0.9 * (0.1 * g1[name].abs() * scale) + 0.1 * g2[name].abs() * scale
        torch.testing.assert_close(importance.scores[name], expected)
    assert importance.updates == 2
    restored = GrainImportance(layout, beta=0.9, alpha=0.3)
    restored.load_state_dict(importance.state_dict())
    assert all(torch.equal(restored.scores[n], importance.scores[n]) for n in importance.fields)
    with pytest.raises(FloatingPointError, match="gradient of the qk masks is not finite"):
        importance.update({**g1, "qk": torch.full_like(g1["qk"], float("nan"))}, masks)


def test_regulariser_empties_a_head_before_spreading_cuts(model):
    """Equal raw importance everywhere but one head already thinned: that head's value units go first."""
    layout = GrainLayout.from_model(model)
    importance = GrainImportance(layout, beta=0.0, alpha=0.3)
    masks = layout.masks()
    masks.vo[1, 3, :5] = 0  # head (1, 3): 3 value units left
    ones = {name: torch.ones_like(getattr(masks, name)) for name in ("qk", "vo", "ffn")}
    importance.update(ones, masks)
    importance.scores["qk"] += 1.0  # keep query units and neurons out of the way
    importance.scores["ffn"] += 1.0
    # remove the mass of exactly 3 value units
    density = (layout.kept_parameters(masks) - 3 * layout.unit_sizes["vo"]) / layout.dense_parameters
    pruned = select_units(importance.scores, masks, layout, density)
    assert pruned.vo[1, 3].sum() == 0  # the thinned head is empty ...
    assert pruned.qk[1, 3].sum() == 0  # ... and its query units went with it
    assert pruned.vo.sum() == masks.vo.sum() - 3  # no other value unit was cut
    assert layout.kept_parameters(pruned) <= density * layout.dense_parameters
    # without the regulariser the same budget cuts value units by position among equal scores
    plain = GrainImportance(layout, beta=0.0, alpha=None)
    plain.update(ones, masks)
    plain.scores["qk"] += 1.0
    plain.scores["ffn"] += 1.0
    spread = select_units(plain.scores, masks, layout, density)
    assert spread.vo[1, 3].sum() == 3


@pytest.mark.parametrize("units", ["intra", "heads_ffn"])
@pytest.mark.parametrize("density", [0.9, 0.5, 0.2, 0.05])
def test_selection_meets_the_budget_from_below_and_is_monotone(model, units, density):
    layout = GrainLayout.from_model(model)
    g = torch.Generator().manual_seed(1)
    fields = ("qk", "vo", "ffn") if units == "intra" else ("head", "ffn")
    masks = layout.masks()
    scores = {name: torch.rand(getattr(masks, name).shape, generator=g) for name in fields}
    half = select_units(scores, masks, layout, (1 + density) / 2, units)
    pruned = select_units(scores, half, layout, density, units)
    budget = density * layout.dense_parameters
    assert layout.kept_parameters(pruned) <= budget
    # minimal: it removes no more than one unit past the budget, plus the query units of a head it emptied
    slack = max(layout.unit_sizes[f] for f in fields) + (layout.head_dim * layout.unit_sizes["qk"]
                                                         if units == "intra" else 0)
    assert layout.kept_parameters(pruned) > budget - slack
    for name in ("head", "qk", "vo", "ffn"):  # removed units stay removed
        assert not ((getattr(half, name) == 0) & (getattr(pruned, name) != 0)).any()
    assert pruned == select_units(scores, half, layout, density, units)  # deterministic
    if units == "heads_ffn":
        assert set(pruned.qk.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(pruned.qk.amax(-1), pruned.head)  # whole heads only


def test_lowest_scores_go_first(model):
    layout = GrainLayout.from_model(model)
    masks = layout.masks()
    scores = {name: torch.ones_like(getattr(masks, name)) for name in ("qk", "vo", "ffn")}
    scores["ffn"][0, :5] = 0.0  # the five least important units in the model
    density = (layout.dense_parameters - 5 * layout.unit_sizes["ffn"]) / layout.dense_parameters
    pruned = select_units(scores, masks, layout, density)
    assert pruned.ffn[0, :5].sum() == 0 and pruned.ffn.sum() == 2 * 48 - 5
    assert pruned.qk.sum() == masks.qk.sum() and pruned.vo.sum() == masks.vo.sum()


def test_density_checks(model):
    layout = GrainLayout.from_model(model)
    assert check_density(0.05, layout) == 0.05
    for bad in (0, 1.5, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match="params_kept="):
            check_density(bad, layout)
    floor = layout.fixed_parameters / layout.dense_parameters
    with pytest.raises(ValueError, match=f"below {floor:.4f}"):
        check_density(floor / 2, layout)
    with pytest.raises(ValueError, match="below"):
        select_units({n: torch.zeros_like(getattr(layout.masks(), n)) for n in ("qk", "vo", "ffn")}, layout.masks(),
                     layout, floor / 2)
