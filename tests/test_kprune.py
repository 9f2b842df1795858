"""KPrune's stages on tiny random models: knowledge, search, weight tuning, and the whole process."""

from __future__ import annotations

import copy
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_inputs, tiny_model
from lit_prune.core.compact import compact
from lit_prune.core.flops import FlopsBudget, flops_kept
from lit_prune.core.masking import apply_masks
from lit_prune.core.masks import PruningMasks
from lit_prune.methods.kprune import KnowledgeAccumulator, KPruneCallback, knowledge_step, kprune, search_sublayer
from lit_prune.prune.capture import sublayer_of
from lit_prune.prune.distill import dense_predictions, distillation_loss
from lit_prune.prune.lstsq import ProjectionSystem

SEQ_LEN = 8.5


def batches(n: int = 3, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    return [tiny_inputs(batch=4, seq=10, seed=seed + i) for i in range(n)]


def test_sublayer_order():
    assert [sublayer_of(i) for i in range(4)] == [(0, "attention"), (0, "ffn"), (1, "attention"), (1, "ffn")]


# ------------------------------------------------------------------------------------------------ knowledge
def test_distillation_loss_kinds():
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]])
    targets = {"probs": F.softmax(logits / 2, -1)}
    out = type("O", (), {"logits": logits})()
    assert float(distillation_loss(out, targets, 2.0)) == pytest.approx(0.0, abs=1e-7)
    other = type("O", (), {"logits": logits.flip(-1)})()
    expected = F.kl_div(F.log_softmax(logits.flip(-1) / 2, -1), targets["probs"], reduction="batchmean") * 4
    assert float(distillation_loss(other, targets, 2.0)) == pytest.approx(float(expected))
    reg = type("O", (), {"logits": torch.tensor([[1.0], [3.0]])})()
    assert float(distillation_loss(reg, {"values": torch.tensor([[0.0], [1.0]])}, 2.0)) == pytest.approx(2.5)


def test_knowledge_step_matches_definitions():
    """Representational knowledge: Σ_tokens x² · mean_rows(W²) (per head: mean over its dims); predictive:
    ½ grad² of the distillation loss w.r.t. masks on the output projections' inputs (per head: mean over dims)."""
    torch.manual_seed(0)
    model = tiny_model("bert")
    dense = copy.deepcopy(model)
    # a different student, so the predictive knowledge is not zero (it is zero at the dense model itself)
    with torch.no_grad():
        model.bert.encoder.layer[0].output.dense.weight.mul_(0.5)
    batch = tiny_inputs(batch=4, seq=10, seed=3)
    masks = PruningMasks.ones(2, 4, 8, 48)
    targets = dense_predictions(dense, batch, 2.0)
    acc = KnowledgeAccumulator.zeros(2, 4, 48)
    knowledge_step(model, dense, masks, batch, targets, 0, 2.0, acc, None)

    # by hand: masks as leaf tensors on the projections' inputs
    token_mask = batch["attention_mask"].bool()
    head_vars = [torch.ones(32, requires_grad=True) for _ in range(2)]
    ffn_vars = [torch.ones(48, requires_grad=True) for _ in range(2)]
    inputs: dict[tuple[int, str], torch.Tensor] = {}
    handles = []
    for i, layer in enumerate(model.bert.encoder.layer):
        for kind, module, var in (("attention", layer.attention.output.dense, head_vars[i]),
                                  ("ffn", layer.output.dense, ffn_vars[i])):
            def pre(m, args, var=var, key=(i, kind)):
                inputs[key] = args[0].detach()
                return (args[0] * var,)
            handles.append(module.register_forward_pre_hook(pre))
    loss = distillation_loss(model(**batch), targets, 2.0)
    grads = torch.autograd.grad(loss, head_vars + ffn_vars)
    for h in handles:
        h.remove()
    for i, layer in enumerate(model.bert.encoder.layer):
        w_o, w_d = layer.attention.output.dense.weight, layer.output.dense.weight
        rep_o = (inputs[(i, "attention")][token_mask].double() ** 2).sum(0) * (w_o.double() ** 2).mean(0)
        rep_d = (inputs[(i, "ffn")][token_mask].double() ** 2).sum(0) * (w_d.double() ** 2).mean(0)
        torch.testing.assert_close(acc.head_rep[i], rep_o.view(4, 8).mean(-1))
        torch.testing.assert_close(acc.ffn_rep[i], rep_d)
        torch.testing.assert_close(acc.head_pred[i], (0.5 * grads[i].double() ** 2).view(4, 8).mean(-1))
        torch.testing.assert_close(acc.ffn_pred[i], 0.5 * grads[2 + i].double() ** 2)
    assert float(acc.samples) == 4 and float(acc.tokens) == int(token_mask.sum())
    assert float(acc.head_pred.sum()) > 0


def test_scores_weight_heads_by_mu_and_divide_by_flops():
    acc = KnowledgeAccumulator.zeros(1, 2, 3)
    acc.head_rep += 4.0
    acc.head_pred += 1.0
    acc.ffn_rep += 8.0
    acc.ffn_pred += 2.0
    acc.samples += 2
    acc.tokens += 4
    head, neuron = acc.scores(mu=64, lam_pred=1, lam_rep=0.5, head_cost=10.0, neuron_cost=2.0)
    torch.testing.assert_close(head, torch.full((1, 2), 64 * (0.5 * 1 + 1 * 0.5) / 10, dtype=torch.float64))
    torch.testing.assert_close(neuron, torch.full((1, 3), (0.5 * 2 + 1 * 1) / 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="saw no samples"):
        KnowledgeAccumulator.zeros(1, 2, 3).scores(64, 1, 1, 1.0, 1.0)


# ------------------------------------------------------------------------------------------------ search
def test_search_keeps_the_best_units_that_fit():
    heads = torch.tensor([[5.0, 1.0], [4.0, 0.5]])
    neurons = torch.tensor([[3.0, 2.0, 0.1], [6.0, 0.2, 0.3]])
    # target MHA of layer 0: every unit competes; head costs 3, neuron 1, 8 left → 6.0(n), 5.0(h), 4.0(h) = 7,
    # then 3.0 (n) = 8; 2.0 (n) would exceed
    kept = search_sublayer(heads, neurons, 0, Fraction(8), Fraction(3), Fraction(1))
    assert kept.tolist() == [True, False]
    # target FFN of layer 0: layer 0's heads are fixed already; candidates: heads of layer 1, all neurons
    kept = search_sublayer(heads, neurons, 1, Fraction(5), Fraction(3), Fraction(1))
    assert kept.tolist() == [True, False, False]  # 6.0(n1), 4.0(h1)=4, 3.0(n0)=5
    # nothing fits
    assert not search_sublayer(heads, neurons, 0, Fraction(0), Fraction(3), Fraction(1)).any()


def test_search_is_exact_at_the_boundary():
    heads = torch.tensor([[1.0]])
    neurons = torch.tensor([[2.0, 0.5]])
    cost = Fraction(7, 3)
    assert search_sublayer(heads, neurons, 1, cost * 2, Fraction(1), cost).tolist() == [True, True]
    assert search_sublayer(heads, neurons, 1, cost * 2 - Fraction(1, 10**12), Fraction(1), cost).tolist() == \
        [True, False]


# ------------------------------------------------------------------------------------------------ tuning
def test_projection_system_solves_least_squares():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g)
    w_true = torch.randn(6, 3, generator=g)
    y = x @ w_true + 0.01 * torch.randn(200, 3, generator=g)
    system = ProjectionSystem.zeros(6, 3)
    system.add(x[:120], y[:120])
    system.add(x[120:], y[120:])
    columns = torch.tensor([0, 2, 3, 5])
    current = torch.zeros(4, 3)
    result = system.solve(columns, current, damping=1e-12)
    expected = torch.linalg.lstsq(x[:, columns].double(), y.double()).solution
    torch.testing.assert_close(result.weight.double(), expected, atol=1e-4, rtol=1e-4)
    assert result.status == "tuned" and result.warning is None
    assert result.error_after < result.error_before
    residual = ((x[:, columns].double() @ expected - y.double()) ** 2).sum()
    assert result.error_after == pytest.approx(float(residual), rel=1e-4)


def test_singular_system_gives_finite_weights_and_a_warning():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 3, generator=g)
    x = torch.cat([x, x[:, :1]], 1)  # a duplicated column: XᵀX is singular
    y = torch.randn(50, 2, generator=g)
    system = ProjectionSystem.zeros(4, 2)
    system.add(x, y)
    result = system.solve(torch.arange(4), torch.zeros(4, 2))
    assert torch.isfinite(result.weight).all()
    assert result.status == "tuned" and "ill-conditioned" in result.warning
    assert result.error_after <= result.error_before


def test_zero_inputs_keep_the_weights():
    system = ProjectionSystem.zeros(3, 2)
    system.add(torch.zeros(5, 3), torch.ones(5, 2))
    current = torch.ones(3, 2)
    result = system.solve(torch.arange(3), current)
    assert result.status == "kept" and torch.equal(result.weight, current) and "all zero" in result.warning


# ------------------------------------------------------------------------------------------------ the process
@pytest.mark.parametrize("kind", ["sequence_classification", "question_answering"])
@pytest.mark.parametrize("flops", [0.7, 0.4])
def test_kprune_meets_the_budget_and_tuning_lowers_the_error(tiny_model_type, kind, flops):
    model = tiny_model(tiny_model_type, kind)
    budget = FlopsBudget.for_model(model, SEQ_LEN, flops)
    result = kprune(model, batches(), budget)
    assert budget.fits(result.masks)
    assert flops_kept(result.masks, SEQ_LEN) <= flops
    assert len(result.steps) == 4
    for step in result.steps:
        if step.status == "tuned":
            assert step.error_after < step.error_before
        if step.error_before is not None:
            assert step.error_after <= step.error_before
    # the kept-units counts of the steps are the masks'
    assert [s.kept for s in result.steps] == [int(result.masks.head[0].sum()), int(result.masks.ffn[0].sum()),
                                             int(result.masks.head[1].sum()), int(result.masks.ffn[1].sum())]


def test_tuned_model_compacts_to_the_same_function():
    model = tiny_model("bert")
    result = kprune(model, batches(), FlopsBudget.for_model(model, SEQ_LEN, 0.5))
    inputs = tiny_inputs(batch=3, seq=10, seed=42)
    with apply_masks(model, result.masks):
        masked = model(**inputs).logits
    small = compact(copy.deepcopy(model), result.masks)
    torch.testing.assert_close(small(**inputs).logits, masked, atol=1e-5, rtol=1e-5)


def test_tuning_brings_the_pruned_model_closer_to_the_dense_one():
    model = tiny_model("bert", seed=3)
    dense = copy.deepcopy(model)
    data = batches(4)
    budget = FlopsBudget.for_model(model, SEQ_LEN, 0.5)
    untuned = copy.deepcopy(model)
    plain = kprune(untuned, data, budget, weight_tuning=False)
    tuned = kprune(model, data, budget)

    def distance(m, masks):
        with torch.no_grad(), apply_masks(m, masks):
            return sum(float(((m(**b).logits - dense(**b).logits) ** 2).sum()) for b in data)

    assert all(s.status in ("untuned", "empty") for s in plain.steps)
    assert distance(model, tuned.masks) < distance(untuned, plain.masks)


def test_budget_of_one_keeps_everything():
    model = tiny_model("distilbert")
    result = kprune(model, batches(2), FlopsBudget.for_model(model, SEQ_LEN, 1.0))
    assert bool(result.masks.head.all()) and bool(result.masks.ffn.all())


def test_sums_over_shards_equal_the_whole():
    """What DDP does: each process sums its own batches and the sums are added. The float64 sums of float32 terms
    come out the same in either grouping (to float64 rounding)."""
    model = tiny_model("bert", seed=5)
    data = batches(4)
    masks = PruningMasks.ones(2, 4, 8, 48)
    dense = copy.deepcopy(model)
    predictions = [dense_predictions(dense, b, 2.0) for b in data]
    full, parts = KnowledgeAccumulator.zeros(2, 4, 48), [KnowledgeAccumulator.zeros(2, 4, 48) for _ in range(2)]
    system, systems = ProjectionSystem.zeros(48, 32), [ProjectionSystem.zeros(48, 32) for _ in range(2)]
    for i, b in enumerate(data):
        knowledge_step(model, dense, masks, b, predictions[i], 1, 2.0, full, system)
        knowledge_step(model, dense, masks, b, predictions[i], 1, 2.0, parts[i % 2], systems[i % 2])
    for name, value in full.to_dict().items():
        torch.testing.assert_close(parts[0].to_dict()[name] + parts[1].to_dict()[name], value, rtol=1e-12, atol=0)
    for name, value in system.to_dict().items():
        torch.testing.assert_close(systems[0].to_dict()[name] + systems[1].to_dict()[name], value, rtol=1e-12,
                                   atol=1e-12)


# ------------------------------------------------------------------------------------------------ settings
def test_callback_settings_are_checked_together():
    with pytest.raises(ValueError) as error:
        KPruneCallback(flops_kept=1.5, num_tokens=None, num_samples=None, temperature=0, mu=-1)
    message = str(error.value)
    for part in ("flops_kept=1.5 is outside the allowed range (0, 1]", "give exactly one", "temperature=0",
                 "mu=-1"):
        assert part in message
    with pytest.raises(ValueError, match="lam_pred=0 and lam_rep=0"):
        KPruneCallback(lam_pred=0, lam_rep=0)
