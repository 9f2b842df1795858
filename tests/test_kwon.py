"""Kwon et al. 2022's pure stages: Fisher gradients, budgeted search, rearrangement, least-squares mask tuning."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch

from conftest import tiny_inputs, tiny_model
from lit_prune.core.flops import FlopsBudget
from lit_prune.core.masking import apply_masks
from lit_prune.core.masks import PruningMasks
from lit_prune.methods.kwon import (
    FisherStatistics,
    apply_scales,
    collect_sublayer,
    kwon_prune,
    rearrange_layer,
    rearrange_masks,
    rearrangement_objective,
    search_masks,
    teacher_budget,
    tune_masks,
)
from lit_prune.prune.cache import SpillCache
from lit_prune.prune.importance import mask_gradients
from lit_prune.prune.lstsq import LeastSquaresAccumulator, unit_contributions


def half_pruned(model, seed: int = 0) -> PruningMasks:
    """Binary masks keeping about half the heads (at least one per layer) and half the neurons."""
    g = torch.Generator().manual_seed(seed)
    masks = PruningMasks.from_model(model)
    masks.head = (torch.rand(masks.head.shape, generator=g) < 0.5).float()
    masks.head[:, 0] = 1
    masks.ffn = (torch.rand(masks.ffn.shape, generator=g) < 0.5).float()
    return masks


# ------------------------------------------------------------------------------------------------ 1. Fisher
TASKS = {  # model type, head, labels for a batch of 3
    "classification": ("bert", "sequence_classification", {}, {"labels": torch.tensor([0, 1, 1])}),
    "regression": ("roberta", "sequence_classification", {"num_labels": 1},
                   {"labels": torch.tensor([0.5, -1.0, 2.0])}),
    "qa": ("distilbert", "question_answering", {},
           {"start_positions": torch.tensor([1, 2, 3]), "end_positions": torch.tensor([2, 5, 4])}),
}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_mask_gradients_match_finite_differences(task):
    model_type, kind, overrides, labels = TASKS[task]
    model = tiny_model(model_type, kind=kind, **overrides).double()
    batch = {**tiny_inputs(), **labels}
    masks = PruningMasks.from_model(model).to(dtype=torch.float64)
    masks.ffn[1, :10] = 0  # gradients at a non-trivial mask, too
    head_grad, ffn_grad = mask_gradients(model, masks, batch)
    assert head_grad.shape == (2, 4) and ffn_grad.shape == (2, 48) and masks.head.grad is None

    def loss_at(field: str, index: tuple[int, int], value: float) -> float:
        probe = masks.clone()
        getattr(probe, field)[index] = value
        with torch.no_grad(), apply_masks(model, probe):
            return model(**batch).loss.item()

    eps = 1e-6
    for field, index, grad in (("head", (1, 2), head_grad), ("head", (0, 0), head_grad),
                               ("ffn", (0, 5), ffn_grad), ("ffn", (1, 3), ffn_grad), ("ffn", (1, 20), ffn_grad)):
        value = getattr(masks, field)[index].item()
        numeric = (loss_at(field, index, value + eps) - loss_at(field, index, value - eps)) / (2 * eps)
        assert grad[index].item() == pytest.approx(numeric, rel=1e-4, abs=1e-8), (field, index)


def test_mask_gradients_leave_weights_untouched_and_restore_flags_and_mode():
    model = tiny_model("bert")
    params = list(model.parameters())
    params[0].requires_grad_(False)  # a frozen embedding stays frozen, the rest stays trainable
    flags = [p.requires_grad for p in params]
    batch = {**tiny_inputs(), "labels": torch.tensor([0, 1, 1])}
    reference = mask_gradients(model, PruningMasks.from_model(model), batch)
    model.train()
    model.bert.embeddings.eval()  # a mixed mode, restored module by module
    with torch.inference_mode():  # as inside a Lightning validation / predict loop: inference tensors everywhere
        again = mask_gradients(model, PruningMasks.from_model(model), {k: v.clone() for k, v in batch.items()})
    assert model.training and model.bert.encoder.training and not model.bert.embeddings.training
    assert [p.requires_grad for p in params] == flags
    assert all(p.grad is None for p in params)
    for expected, actual in zip(reference, again):  # eval mode inside: no dropout, identical gradients
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_mask_gradients_errors():
    model = tiny_model("bert")
    masks = PruningMasks.from_model(model)
    with pytest.raises(ValueError, match=r"no labels: missing 'labels' .* or 'start_positions' and 'end_positions'"):
        mask_gradients(model, masks, tiny_inputs())
    with pytest.raises(ValueError, match=r"no 'end_positions'"):
        mask_gradients(model, masks, {**tiny_inputs(), "start_positions": torch.tensor([1, 2, 3])})
    wrong = PruningMasks.ones(2, 4, 8, 40)
    with pytest.raises(ValueError, match=r"masks do not fit BertForSequenceClassification .* ffn has shape \(2, 40\)"):
        mask_gradients(model, wrong, {**tiny_inputs(), "labels": torch.tensor([0, 1, 1])})


def test_fisher_statistics_accumulate_merge_and_round_trip():
    g = torch.Generator().manual_seed(0)
    grads = [(torch.randn(2, 4, generator=g), torch.randn(2, 6, generator=g)) for _ in range(5)]
    stats = FisherStatistics.empty(2, 4, 6)
    for head, ffn in grads:
        stats.add(head, ffn)
    assert stats.num_batches == 5 and stats.head_grads.shape == (5, 2, 4) and stats.ffn_grads.shape == (5, 2, 6)
    torch.testing.assert_close(stats.head_importance(), sum(h.double() ** 2 for h, _ in grads))
    torch.testing.assert_close(stats.ffn_importance(), sum(f.double() ** 2 for _, f in grads))
    # Two "ranks" with 2 and 3 batches, merged; and an all-gather of equal halves.
    first, second = FisherStatistics.empty(2, 4, 6), FisherStatistics.empty(2, 4, 6)
    for i, (head, ffn) in enumerate(grads):
        (first if i < 2 else second).add(head, ffn)
    merged = FisherStatistics.merge([first, second])
    torch.testing.assert_close(merged.head_grads, stats.head_grads, rtol=0, atol=0)
    torch.testing.assert_close(merged.ffn_grads, stats.ffn_grads, rtol=0, atol=0)
    gathered = FisherStatistics.from_gathered(stats.head_grads[:4].view(2, 2, 2, 4),
                                              stats.ffn_grads[:4].view(2, 2, 2, 6))
    torch.testing.assert_close(gathered.head_grads, stats.head_grads[:4], rtol=0, atol=0)
    restored = FisherStatistics.from_dict(stats.to_dict())
    torch.testing.assert_close(restored.ffn_grads, stats.ffn_grads, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"got head_grad \(2, 5\) and ffn_grad \(2, 6\), expected \(2, 4\) "
                                         r"and \(2, 6\)"):
        stats.add(torch.zeros(2, 5), torch.zeros(2, 6))
    with pytest.raises(ValueError, match=r"disagree on \(N, L\)"):
        FisherStatistics(torch.zeros(3, 2, 4), torch.zeros(2, 2, 6))


# ------------------------------------------------------------------------------------------------ 2. search
def tiny_budget(flops_kept: float, seq_len: float = 10) -> FlopsBudget:
    return FlopsBudget(num_layers=2, num_heads=4, head_dim=8, ffn_dim=48, hidden_size=32, seq_len=seq_len,
                       flops_kept=flops_kept)


@pytest.mark.parametrize("seq_len", [1, 10, 25.16, 64])
@pytest.mark.parametrize("flops_kept", [0.05, 0.3, 0.5, 0.77, 1.0])
def test_search_meets_the_budget_exactly_or_from_below(flops_kept, seq_len):
    budget = tiny_budget(flops_kept, seq_len)
    g = torch.Generator().manual_seed(int(flops_kept * 100) + int(seq_len))
    masks = search_masks(torch.rand(2, 4, generator=g), torch.rand(2, 48, generator=g), budget)
    assert budget.fits(masks)
    kept = masks.num_kept()
    used = kept["heads"] * budget.head_macs + kept["neurons"] * budget.neuron_macs
    assert used <= budget.max_macs
    # Maximal: no further neuron fits, unless every neuron is kept.
    assert kept["neurons"] == budget.total_neurons or budget.max_macs - used < budget.neuron_macs
    assert torch.equal(masks.qk, torch.ones(2, 4, 8)) and torch.equal(masks.vo, torch.ones(2, 4, 8))
    assert set(masks.head.unique().tolist()) <= {0.0, 1.0} and set(masks.ffn.unique().tolist()) <= {0.0, 1.0}
    if flops_kept == 1.0:
        assert masks == PruningMasks.ones(2, 4, 8, 48)


def test_search_on_a_hand_made_example():
    # s = 1, d = 4, d_h = 2: a head costs 1·4·(2·2 + 2·2) + 1·(2 + 2) = 36 MACs, a neuron 2·1·4 = 8; dense 2·36 + 4·8
    # = 104; half of it, 52, fits k = 0 heads + 4 neurons (32), or k = 1 head (36) + 2 neurons (16).
    budget = FlopsBudget(num_layers=1, num_heads=2, head_dim=2, ffn_dim=4, hidden_size=4, seq_len=1, flops_kept=0.5)
    assert (budget.head_macs, budget.neuron_macs, budget.max_neurons(0), budget.max_neurons(1)) == (36, 8, 4, 2)
    assert budget.max_neurons(2) is None
    neurons = torch.tensor([[3.0, 1.0, 0.5, 2.0]])
    # k = 1: 5 + (3 + 2) = 10 beats k = 0: 3 + 2 + 1 + 0.5 = 6.5; keeps head 0 and neurons 0 and 3.
    masks = search_masks(torch.tensor([[5.0, 1.0]]), neurons, budget)
    assert masks.head.tolist() == [[1.0, 0.0]] and masks.ffn.tolist() == [[1.0, 0.0, 0.0, 1.0]]
    # k = 1: 1 + 5 = 6 < 6.5: no head at all (the reference code cannot return this: its k starts at 1).
    masks = search_masks(torch.tensor([[1.0, 1.0]]), neurons, budget)
    assert masks.head.tolist() == [[0.0, 0.0]] and masks.ffn.tolist() == [[1.0, 1.0, 1.0, 1.0]]
    # Ties: equal heads, the lower index is kept; k = 1 totals 1.5 + 5 = 6.5 = k = 0's, the smaller k wins.
    masks = search_masks(torch.tensor([[1.5, 1.5]]), neurons, budget)
    assert masks.head.tolist() == [[0.0, 0.0]]
    masks = search_masks(torch.tensor([[2.0, 2.0]]), neurons, budget)
    assert masks.head.tolist() == [[1.0, 0.0]]


def test_search_is_optimal_against_brute_force():
    # Every subset of 6 heads × every subset of 10 neurons: the best feasible total equals the search's.
    budget = FlopsBudget(num_layers=2, num_heads=3, head_dim=2, ffn_dim=5, hidden_size=6, seq_len=3, flops_kept=0.45)
    g = torch.Generator().manual_seed(3)
    heads, neurons = torch.rand(2, 3, generator=g) * 4, torch.rand(2, 5, generator=g)
    head_sets = torch.tensor(list(itertools.product([0.0, 1.0], repeat=6)))  # (64, 6)
    neuron_sets = torch.tensor(list(itertools.product([0.0, 1.0], repeat=10)))  # (1024, 10)
    totals = (head_sets @ heads.flatten())[:, None] + (neuron_sets @ neurons.flatten())[None]
    cost = [[k * budget.head_macs + n * budget.neuron_macs <= budget.max_macs for n in range(11)] for k in range(7)]
    feasible = torch.tensor(cost)[head_sets.sum(1).long()][:, neuron_sets.sum(1).long()]  # (64, 1024)
    best = totals[feasible].max().item()
    masks = search_masks(heads, neurons, budget)
    found = (masks.head * heads).sum().item() + (masks.ffn * neurons).sum().item()
    assert found == pytest.approx(best, rel=1e-6)
    assert budget.fits(masks)


def test_search_errors():
    with pytest.raises(ValueError, match=r"flops_kept=1.5 is outside the allowed range \(0, 1\]"):
        tiny_budget(1.5)
    with pytest.raises(ValueError, match=r"flops_kept=0 is outside the allowed range \(0, 1\]"):
        tiny_budget(0)
    with pytest.raises(ValueError, match=r"head_importance has shape \(2, 3\), expected \(2, 4\); "
                                         r"ffn_importance has non-finite values"):
        search_masks(torch.ones(2, 3), torch.full((2, 48), math.nan), tiny_budget(0.5))


def test_teacher_budget_is_the_square_root_of_the_target():
    budget = tiny_budget(0.49)
    teacher = teacher_budget(budget)
    assert teacher.flops_kept == pytest.approx(0.7)
    assert dataclasses.replace(teacher, flops_kept=0.49) == budget


# ------------------------------------------------------------------------------------------------ 3. rearrange
def test_rearrangement_finds_the_cancelling_pair():
    # Columns g0 = (1, 0), g1 = (-1, 0), g2 = (0, 0.5); prune 2 of 3. Fisher alone prunes {2, 0} (objective 1.25);
    # g0 and g1 cancel: {0, 1} has objective 0, the optimum.
    grads = torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 0.5]])
    assert rearrangement_objective([2, 0], grads) == pytest.approx(1.25)
    assert rearrangement_objective([0, 1], grads) == 0
    kept = rearrange_layer(torch.tensor([True, False, False]), grads)
    assert kept.tolist() == [False, False, True]


def test_rearrangement_keeps_the_input_when_greedy_ends_worse():
    # Found by search: the greedy (from the least important {2, 3}) ends at {1, 3}, objective 13; {0, 1} has 10.
    grads = torch.tensor([[-2.0, -1.0, -2.0, -2.0], [2.0, -3.0, 0.0, 1.0]])
    assert rearrangement_objective([1, 3], grads) == 13 and rearrangement_objective([0, 1], grads) == 10
    kept = torch.tensor([False, False, True, True])
    assert rearrange_layer(kept, grads).tolist() == kept.tolist()
    # From another input the greedy result is better, and taken.
    assert rearrange_layer(torch.tensor([False, True, True, False]), grads).tolist() == [True, False, True, False]


@pytest.mark.parametrize("seed", range(12))
def test_rearrangement_never_raises_the_objective_and_keeps_counts(seed):
    g = torch.Generator().manual_seed(seed)
    stats = FisherStatistics(torch.randn(6, 3, 4, generator=g), torch.randn(6, 3, 20, generator=g))
    masks = PruningMasks.ones(3, 4, 2, 20)
    masks.head = (torch.rand(3, 4, generator=g) < 0.5).float()
    masks.ffn = (torch.rand(3, 20, generator=g) < 0.4).float()
    masks.head[0] = 1  # nothing pruned: unchanged
    masks.ffn[1] = 0  # nothing kept: unchanged
    new = rearrange_masks(masks, stats)
    assert torch.equal(new.head.sum(1), masks.head.sum(1)) and torch.equal(new.ffn.sum(1), masks.ffn.sum(1))
    assert torch.equal(new.head[0], masks.head[0]) and torch.equal(new.ffn[1], masks.ffn[1])
    for field, grads in (("head", stats.head_grads), ("ffn", stats.ffn_grads)):
        for layer in range(3):
            pruned_before = torch.nonzero(getattr(masks, field)[layer] == 0).flatten()
            pruned_after = torch.nonzero(getattr(new, field)[layer] == 0).flatten()
            assert rearrangement_objective(pruned_after, grads[:, layer]) <= rearrangement_objective(
                pruned_before, grads[:, layer]) + 1e-12


def test_rearrange_errors():
    stats = FisherStatistics.empty(2, 4, 6)
    with pytest.raises(ValueError, match=r"masks do not fit the Fisher statistics .* ffn has shape \(2, 48\), "
                                         r"expected \(2, 6\)"):
        rearrange_masks(PruningMasks.ones(2, 4, 8, 48), stats)
    with pytest.raises(ValueError, match="hold no batch"):
        rearrange_masks(PruningMasks.ones(2, 4, 8, 6), stats)


# ------------------------------------------------------------------------------------------------ 4. least squares
def random_system(rows: int = 60, units: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(rows, units, generator=g, dtype=torch.float64)
    return a, a @ torch.linspace(0.5, 1.5, units, dtype=torch.float64) + 0.1 * torch.randn(rows, generator=g,
                                                                                          dtype=torch.float64)


def test_streaming_equals_one_shot_and_solves_the_reference_codes_problem():
    a, b = random_system()
    one_shot = LeastSquaresAccumulator.zeros(5)
    one_shot.add(a, b)
    streamed = LeastSquaresAccumulator.zeros(5)
    for rows in torch.split(torch.arange(60), [7, 20, 1, 32]):
        streamed.add(a[rows], b[rows])
    for name, value in one_shot.to_dict().items():
        torch.testing.assert_close(getattr(streamed, name), value)
    assert int(streamed.count) == 60
    x, reason = streamed.solve()
    expected, _ = one_shot.solve()
    assert reason is None
    torch.testing.assert_close(x, expected)
    # The minimiser of ||G y − (h − G·1)||² + ||y||² (what the code's LSMR converges to): (G² + I) y = G (h − G·1).
    gram, residual = one_shot.gram, one_shot.rhs - one_shot.gram.sum(1)
    torch.testing.assert_close((gram @ gram + torch.eye(5, dtype=torch.float64)) @ (x - 1), gram @ residual)
    # The objective is ||A x − b||², and the fit never does worse than the binary mask (x = 1).
    assert one_shot.objective(x) == pytest.approx(float((a @ x - b).pow(2).sum()), rel=1e-9)
    assert one_shot.objective(x) < one_shot.objective(torch.ones(5))
    # Much data (a large Gram matrix) makes the damping negligible: close to the plain least-squares fit.
    torch.testing.assert_close(x, torch.linalg.lstsq(a, b[:, None]).solution[:, 0], atol=5e-3, rtol=0)


def test_merged_accumulators_equal_one_over_all_data():
    a, b = random_system(rows=40)
    left, right, everything = (LeastSquaresAccumulator.zeros(5) for _ in range(3))
    left.add(a[:15], b[:15])
    right.add(a[15:], b[15:])
    everything.add(a, b)
    merged = LeastSquaresAccumulator.merge([left, right])
    for name, value in everything.to_dict().items():
        torch.testing.assert_close(getattr(merged, name), value)
    torch.testing.assert_close(LeastSquaresAccumulator.from_dict(merged.to_dict()).solve()[0], everything.solve()[0])
    assert int(left.count) == 15  # merging does not modify the parts


def test_singular_system_still_solves_and_keeps_the_idle_unit_at_one():
    a, b = random_system()
    a[:, 2] = 0  # a unit that contributes nothing: AᵀA is singular
    acc = LeastSquaresAccumulator.zeros(5)
    acc.add(a, b)
    x, reason = acc.solve(damping=1.0)
    assert reason is None and torch.isfinite(x).all()
    assert x[2].item() == pytest.approx(1.0, abs=1e-12)


def test_guarded_solve_reports_out_of_range_non_finite_and_empty():
    acc = LeastSquaresAccumulator.zeros(1)
    acc.add(torch.ones(100, 1), torch.full((100,), 50.0))  # the fit wants scale ≈ 50
    scales, reason = acc.solve()
    assert scales is None and reason == "scales outside [-10, 10] (min 50, max 50): an ill-conditioned fit"
    acc = LeastSquaresAccumulator.zeros(2)
    acc.add(torch.ones(3, 2), torch.tensor([1.0, math.nan, 0.0]))
    assert acc.solve() == (None, "the accumulated system holds non-finite values")
    assert LeastSquaresAccumulator.zeros(3).solve() == (None, "the system is empty (no tokens were added)")
    with pytest.raises(ValueError, match=r"damping=0: expected a positive finite number"):
        acc.solve(damping=0)
    with pytest.raises(ValueError, match=r"got a \(3, 4\) and b \(3,\), expected \(R, 2\) and \(R,\)"):
        acc.add(torch.ones(3, 4), torch.ones(3))
    with pytest.raises(ValueError, match=r"systems of different sizes \[1, 2\]"):
        LeastSquaresAccumulator.merge([acc, LeastSquaresAccumulator.zeros(1)])


def test_collected_system_matches_the_sublayer_and_the_factored_sums(tiny_model_type):
    model = tiny_model(tiny_model_type)
    masks = half_pruned(model)
    batch = tiny_inputs(seed=1)
    for layer, sublayer in ((0, "attention"), (1, "ffn")):
        # Reference = the student itself: the kept units at scale 1 reproduce the target exactly.
        data = collect_sublayer(model, masks, batch, layer, sublayer, reference=masks)
        kept = masks.head[layer] if sublayer == "attention" else masks.ffn[layer]
        assert data.units.tolist() == torch.nonzero(kept).flatten().tolist()
        assert int(data.token_mask.sum()) == 27  # 3 × 10 tokens, 3 of them padding
        a = unit_contributions(data.unit_inputs, data.unit_weights, data.token_mask)
        b = data.target[data.token_mask].reshape(-1)
        assert a.shape == (27 * 32, data.units.numel())
        torch.testing.assert_close(a.sum(1), b, atol=1e-5, rtol=1e-5)
        direct, factored = LeastSquaresAccumulator.zeros(a.shape[1]), LeastSquaresAccumulator.zeros(a.shape[1])
        direct.add(a, b)
        factored.add_factored(data.unit_inputs, data.unit_weights, data.target, data.token_mask)
        for name, value in direct.to_dict().items():
            torch.testing.assert_close(getattr(factored, name), value, atol=1e-6, rtol=1e-6)


def test_tuning_lowers_the_reconstruction_error_and_keeps_pruned_units_at_zero():
    model = tiny_model("bert", kind="base")
    masks = half_pruned(model, seed=2)
    batches = [tiny_inputs(batch=4, seq=12, seed=seed, pad_last=seed) for seed in range(4)]
    tuned, steps = tune_masks(model, masks, batches, reference="dense")
    assert [(s.layer, s.sublayer, s.status) for s in steps] == [
        (0, "attention", "skipped"), (0, "ffn", "tuned"), (1, "attention", "tuned"), (1, "ffn", "tuned")]
    assert all(s.error_after < s.error_before for s in steps if s.status == "tuned")
    assert torch.equal(tuned.head == 0, masks.head == 0) and torch.equal(tuned.ffn == 0, masks.ffn == 0)
    assert torch.equal(tuned.head[0], masks.head[0])  # layer 0's attention untouched
    assert not torch.equal(tuned.ffn, masks.ffn)
    assert tuned.qk.equal(masks.qk) and tuned.vo.equal(masks.vo) and masks.ffn.unique().tolist() == [0.0, 1.0]

    def error(student: PruningMasks) -> float:
        total = 0.0
        for batch in batches:
            keep = batch["attention_mask"].bool()
            with torch.no_grad():
                dense = model(**batch).last_hidden_state
                with apply_masks(model, student):
                    pruned = model(**batch).last_hidden_state
            total += (dense - pruned)[keep].pow(2).sum().item()
        return total

    assert error(tuned) < error(masks)


def test_tuning_against_a_teacher_mask_equals_the_streamed_solves():
    model = tiny_model("distilbert")
    masks = half_pruned(model, seed=4)
    teacher = masks.clone()
    teacher.ffn[:] = 1  # a less pruned reference, as the code's intermediate mask
    batches = [tiny_inputs(seed=seed) for seed in range(3)]
    tuned, steps = tune_masks(model, masks, batches, reference=teacher, skip_first_attention=False,
                              cls_only_last_ffn=True)
    assert [s.status for s in steps] == ["tuned"] * 4
    assert all(s.error_after <= s.error_before for s in steps)
    # The last FFN's scales are the solve of its system, streamed batch by batch on the first tokens only, with
    # every earlier sublayer already tuned.
    student = tuned.clone()
    student.ffn[1] = masks.ffn[1]
    collected = [collect_sublayer(model, student, batch, 1, "ffn", teacher, first_token_only=True) for batch in batches]
    acc = LeastSquaresAccumulator.zeros(collected[0].units.numel())
    for data in collected:
        assert int(data.token_mask.sum()) == 3
        acc.add_factored(data.unit_inputs, data.unit_weights, data.target, data.token_mask)
    scales, _ = acc.solve()
    torch.testing.assert_close(tuned.ffn[1, data.units], scales.float())
    assert steps[-1].error_after == pytest.approx(acc.objective(scales))
    # apply_scales multiplies in place.
    apply_scales(student, 1, "ffn", data.units, scales)
    assert student == tuned


@pytest.mark.parametrize("memory_bytes", [0, 3000])
def test_spilling_the_tuning_cache_to_disk_gives_the_same_masks(tmp_path, memory_bytes):
    """Hidden states spilled to disk (all, or those beyond a budget) tune as all kept in memory, to the last bits
    (a tensor read back from disk may sit at another memory alignment, which can change a float32 sum's rounding)."""
    model = tiny_model("bert")
    masks = half_pruned(model, seed=3)
    batches = [tiny_inputs(batch=4, seq=12, seed=seed, pad_last=seed) for seed in range(4)]
    in_memory, steps = tune_masks(model, masks, batches, reference="dense")
    cache = SpillCache(memory_bytes, folder=tmp_path)
    spilled, spilled_steps = tune_masks(model, masks, batches, reference="dense", cache=cache)
    assert spilled.allclose(in_memory, rtol=1e-6, atol=1e-7)
    assert [(s.layer, s.sublayer, s.status, s.reason) for s in spilled_steps] == \
        [(s.layer, s.sublayer, s.status, s.reason) for s in steps]
    for ours, theirs in zip(spilled_steps, steps):
        for name in ("error_before", "error_after"):
            expected = getattr(theirs, name)
            assert getattr(ours, name) == (expected if expected is None else pytest.approx(expected, rel=1e-9))
    assert cache.spilled_bytes > 0 and cache.peak_memory_bytes <= memory_bytes
    assert list(tmp_path.iterdir()) == []  # removed once tuning is done


def test_tuning_stops_at_the_first_failure():
    model = tiny_model("bert")
    masks = half_pruned(model)
    batches = [tiny_inputs()]
    # A NaN in layer 0's W_down poisons the first tuned system: it fails and nothing after it is visited.
    with torch.no_grad():
        model.bert.encoder.layer[0].output.dense.weight[0, 0] = math.nan
    tuned, steps = tune_masks(model, masks, batches)
    assert [(s.layer, s.sublayer, s.status) for s in steps] == [(0, "attention", "skipped"), (0, "ffn", "failed")]
    assert steps[-1].reason == "the accumulated system holds non-finite values"
    assert tuned == masks


def test_tuning_errors():
    model = tiny_model("bert")
    with pytest.raises(ValueError, match=r"masks do not fit BertForSequenceClassification"):
        tune_masks(model, PruningMasks.ones(3, 4, 8, 48), [tiny_inputs()])
    masks = PruningMasks.from_model(model)
    with pytest.raises(ValueError, match=r"reference='teacher': expected 'dense' or PruningMasks"):
        collect_sublayer(model, masks, tiny_inputs(), 0, "ffn", reference="teacher")
    with pytest.raises(ValueError, match=r"sublayer='mlp': expected 'attention' or 'ffn'"):
        collect_sublayer(model, masks, tiny_inputs(), 0, "mlp")
    with pytest.raises(ValueError, match=r"layer=2: expected an index in \[0, 2\)"):
        collect_sublayer(model, masks, tiny_inputs(), 2, "ffn")


# ================================================================================================ the pipeline
def labelled_batches(n: int = 4) -> list[dict[str, torch.Tensor]]:
    return [{**tiny_inputs(batch=4, seq=10, seed=i), "labels": torch.tensor([0, 1, 1, 0])} for i in range(n)]


@pytest.mark.parametrize("flops", [0.7, 0.4])
def test_pipeline_meets_the_budget_and_each_stage_does_its_job(tiny_model_type, flops):
    model = tiny_model(tiny_model_type)
    before = {name: p.clone() for name, p in model.state_dict().items()}
    budget = FlopsBudget.for_model(model, 8.5, flops)
    result = kwon_prune(model, labelled_batches(), budget)
    assert budget.fits(result.searched) and budget.fits(result.rearranged) and budget.fits(result.masks.binary())
    assert result.objective["rearranged"] <= result.objective["searched"]
    # rearrangement keeps the per-layer counts
    assert torch.equal(result.rearranged.head.sum(1), result.searched.head.sum(1))
    assert torch.equal(result.rearranged.ffn.sum(1), result.searched.ffn.sum(1))
    tuned = [step for step in result.tuning if step.status == "tuned"]
    assert tuned and all(step.error_after <= step.error_before for step in tuned)
    assert result.fisher.num_batches == 4
    for name, value in model.state_dict().items():  # Kwon never edits weights: the scales live in the masks
        assert torch.equal(value, before[name])


def test_pipeline_stages_switch_off():
    model = tiny_model("bert")
    budget = FlopsBudget.for_model(model, 8.5, 0.5)
    result = kwon_prune(model, labelled_batches(), budget, rearrange=False, tune=False)
    assert result.rearranged is None and result.tuning == [] and result.masks is result.searched
    assert set(result.objective) == {"searched"}


def test_pipeline_fisher_rows_follow_the_batch_positions():
    """A process's batches land in their rows of the whole sample's table (what the DDP sum relies on)."""
    model = tiny_model("bert")
    budget = FlopsBudget.for_model(model, 8.5, 0.5)
    data = labelled_batches()
    whole = kwon_prune(model, data, budget, tune=False)
    odd = kwon_prune(model, data[1::2], budget, batch_ids=[1, 3], num_batches=4, tune=False)
    torch.testing.assert_close(odd.fisher.head_grads[1::2], whole.fisher.head_grads[1::2])
    assert not odd.fisher.head_grads[0::2].any()
    with pytest.raises(ValueError, match="batch_ids must give each of the 2 batches a position in"):
        kwon_prune(model, data[:2], budget, batch_ids=[0, 9], num_batches=4)
