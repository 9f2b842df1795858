"""G-Pruner: the CGS solver and its tuning, PPO's pieces, the PPO search on a tiny model, and the callback."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch

from conftest import tiny_inputs, tiny_model
from lit_prune.core.flops import FlopsBudget
from lit_prune.core.masking import apply_masks
from lit_prune.core.masks import PruningMasks
from lit_prune.methods import GPrunerCallback
from lit_prune.methods.gpruner import (
    BudgetProjection,
    CalibrationLoss,
    CGSTuningSolver,
    PPOSettings,
    bernoulli_entropy,
    bernoulli_log_prob,
    clipped_surrogate,
    ppo_search,
    ranking_logits,
)
from lit_prune.prune.lstsq import LeastSquaresAccumulator, cgs_solve
from lit_prune.prune.post_training import kwon_prune
from lit_prune.prune.search import search_masks
from lit_prune.report import read_report


# ------------------------------------------------------------------------------------------------ CGS
@pytest.mark.parametrize("n, seed", [(1, 0), (5, 1), (20, 2), (60, 3)])
def test_cgs_matches_a_direct_solve_on_well_conditioned_systems(n, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64) / n ** 0.5 + 2 * torch.eye(n, dtype=torch.float64)
    b = torch.randn(n, generator=g, dtype=torch.float64)
    result = cgs_solve(a, b, tol=1e-12)
    assert result.status == "converged" and result.iterations <= 2 * n + 5
    torch.testing.assert_close(result.x, torch.linalg.solve(a, b), rtol=1e-9, atol=1e-9)
    assert result.residual <= 1e-10


def test_cgs_on_a_symmetric_positive_definite_system_and_from_a_start():
    g = torch.Generator().manual_seed(4)
    m = torch.randn(30, 10, generator=g, dtype=torch.float64)
    a = m.t() @ m + 0.1 * torch.eye(10, dtype=torch.float64)
    b = torch.randn(10, generator=g, dtype=torch.float64)
    exact = torch.linalg.solve(a, b)
    result = cgs_solve(a, b, x0=exact + 0.01, tol=1e-12)
    assert result.status == "converged"
    torch.testing.assert_close(result.x, exact, rtol=1e-9, atol=1e-9)
    assert cgs_solve(a, b, x0=exact).iterations == 0  # already solved


def test_cgs_breakdown_guard_on_singular_systems():
    # zero matrix: the first step divides by r̂·(A p) = 0
    zero = cgs_solve(torch.zeros(3, 3), torch.ones(3))
    assert zero.status == "breakdown" and torch.equal(zero.x, torch.zeros(3, dtype=torch.float64))
    # singular and inconsistent: no solution exists; the guard returns the best finite iterate, never NaN
    a = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    result = cgs_solve(a, b, max_iter=50)
    assert result.status != "converged" and torch.isfinite(result.x).all()
    assert result.residual <= 1.0 + 1e-12  # never worse than the start x = 0
    # singular but consistent (the normal equations of a rank-deficient fit always are): it converges
    consistent = cgs_solve(a, torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64), tol=1e-12)
    assert consistent.status == "converged"
    torch.testing.assert_close(consistent.x, torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="non-finite"):
        cgs_solve(torch.full((2, 2), float("nan")), torch.ones(2))
    with pytest.raises(ValueError, match=r"matrix \(2, 3\), rhs \(2,\); expected"):
        cgs_solve(torch.ones(2, 3), torch.ones(2))


def test_cgs_tuning_solver_finds_the_least_squares_scales():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 6, generator=g, dtype=torch.float64)
    b = a @ torch.tensor([1.0, 0.5, 2.0, 1.0, -0.5, 1.5], dtype=torch.float64) + 0.01 * torch.randn(200, generator=g,
                                                                                                  dtype=torch.float64)
    acc = LeastSquaresAccumulator.zeros(6)
    acc.add(a, b)
    solver = CGSTuningSolver(tol=1e-12, max_iter=100, ridge=0.0)
    scales, reason = solver(acc)
    assert reason is None
    torch.testing.assert_close(scales, torch.linalg.lstsq(a, b[:, None]).solution[:, 0], rtol=1e-8, atol=1e-8)
    assert acc.objective(scales) < acc.objective(torch.ones(6))
    assert solver.log[0].status == "converged" and solver.log[0].units == 6
    # the guards of Kwon's solver hold for CGS too
    assert solver(LeastSquaresAccumulator.zeros(3)) == (None, "the system is empty (no tokens were added)")
    wild = LeastSquaresAccumulator.zeros(1)
    wild.add(torch.tensor([[1e-3]], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64))
    scales, reason = solver(wild)
    assert scales is None and "outside [-10, 10]" in reason


def test_cgs_tuning_in_kwons_pipeline_lowers_every_reconstruction_error():
    model = tiny_model("bert")
    batches = [{**tiny_inputs(batch=4, seq=10, seed=i), "labels": torch.tensor([0, 1, 1, 0])} for i in range(4)]
    budget = FlopsBudget.for_model(model, 8.5, 0.5)
    solver = CGSTuningSolver()
    result = kwon_prune(model, batches, budget, solver=solver)
    tuned = [step for step in result.tuning if step.status == "tuned"]
    assert tuned and all(step.error_after <= step.error_before * (1 + 1e-9) for step in tuned)
    assert len(solver.log) == len([s for s in result.tuning if s.status in ("tuned", "failed")])
    assert budget.fits(result.masks.binary())


@pytest.mark.parametrize("settings, message", [
    ({"tol": 0}, "cgs_tol=0: expected a finite number > 0"),
    ({"max_iter": 0}, "cgs_max_iter=0: expected an integer >= 1"),
    ({"ridge": -1.0}, "cgs_ridge=-1.0: expected a finite number >= 0"),
])
def test_cgs_settings_are_checked(settings, message):
    with pytest.raises(ValueError, match=message):
        CGSTuningSolver(**settings)


# ------------------------------------------------------------------------------------------------ PPO pieces
def test_clipped_objective_matches_a_hand_computation():
    ratios = torch.tensor([1.5, 0.5, 1.0, 1.5, 0.5])
    advantages = torch.tensor([1.0, 1.0, -1.0, -1.0, -1.0])
    old = torch.zeros(5)
    # min(1.5, 1.2) = 1.2; min(0.5, 0.8) = 0.5; -1; min(-1.5, -1.2) = -1.5; min(-0.5, -0.8) = -0.8
    expected = (1.2 + 0.5 - 1.0 - 1.5 - 0.8) / 5
    assert clipped_surrogate(ratios.log(), old, advantages, 0.2).item() == pytest.approx(expected)


def test_bernoulli_log_prob_and_entropy_by_hand():
    logits = torch.tensor([0.0, 2.0])
    actions = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    p = torch.sigmoid(torch.tensor(2.0)).item()
    expected = torch.tensor([torch.log(torch.tensor(0.5 * p)).item(), torch.log(torch.tensor(0.5 * (1 - p))).item()])
    torch.testing.assert_close(bernoulli_log_prob(logits, actions), expected)
    h = lambda q: -(q * torch.log(torch.tensor(q)) + (1 - q) * torch.log(torch.tensor(1 - q)))  # noqa: E731
    assert bernoulli_entropy(logits).item() == pytest.approx(((h(0.5) + h(p)) / 2).item(), rel=1e-6)


def test_ranking_logits_are_positive_exactly_for_the_top_units():
    importance = torch.tensor([[0.1, 5.0, 3.0], [3.0, 0.0, 7.0]])
    logits = ranking_logits(importance, kept=3, temperature=0.1)
    assert (logits > 0).view(2, 3).tolist() == [[False, True, True], [False, False, True]]  # ties: lower index first
    assert logits.argmax().item() == 5 and logits.argmin().item() == 4


@pytest.mark.parametrize("flops_kept", [1.0, 0.6, 0.3, 0.05])
def test_every_projected_sample_meets_the_budget_and_uses_it(flops_kept):
    model = tiny_model("bert")
    budget = FlopsBudget.for_model(model, 8.5, flops_kept)
    g = torch.Generator().manual_seed(0)
    projection = BudgetProjection(budget, torch.randn(budget.total_heads, generator=g),
                                  torch.randn(budget.total_neurons, generator=g))
    for p in (0.0, 0.3, 0.7, 1.0):
        for _ in range(5):
            heads = torch.rand(budget.total_heads, generator=g) < p
            neurons = torch.rand(budget.total_neurons, generator=g) < p
            masks = projection(heads, neurons)
            assert budget.fits(masks)
            kept_heads = int(masks.head.sum())
            assert kept_heads <= int(heads.sum())  # heads are never added
            assert int(masks.ffn.sum()) == budget.max_neurons(kept_heads)  # no further neuron would fit
            if kept_heads == int(heads.sum()) and int(neurons.sum()) <= budget.max_neurons(kept_heads):
                assert bool((masks.ffn.flatten().bool() | ~neurons).all())  # every sampled neuron kept


# ------------------------------------------------------------------------------------------------ PPO search
def ppo_setup(flops_kept: float = 0.5):
    model = tiny_model("bert")
    batches = [{**tiny_inputs(batch=4, seq=10, seed=i), "labels": torch.tensor([0, 1, 1, 0])} for i in range(3)]
    budget = FlopsBudget.for_model(model, 8.5, flops_kept)
    g = torch.Generator().manual_seed(1)
    head_importance = torch.rand(budget.num_layers, budget.num_heads, generator=g)
    ffn_importance = torch.rand(budget.num_layers, budget.ffn_dim, generator=g)
    incumbent = search_masks(head_importance, ffn_importance, budget)
    return model, batches, budget, head_importance, ffn_importance, incumbent


def test_ppo_search_proposes_only_masks_within_budget_and_never_loses_to_the_incumbent():
    model, batches, budget, head_importance, ffn_importance, incumbent = ppo_setup()
    loss = CalibrationLoss(model, model, batches)
    seen = []

    def evaluate(masks: PruningMasks) -> float:
        assert budget.fits(masks), "a proposed mask exceeds the budget"
        seen.append(masks)
        return loss(masks)

    settings = PPOSettings(iterations=3, rollouts=4, ppo_epochs=2, seed=0)
    result = ppo_search(evaluate, head_importance, ffn_importance, incumbent, budget, settings)
    assert len(seen) == result.evaluations == 1 + 3 * 4
    assert result.loss <= result.incumbent_loss == pytest.approx(loss(incumbent))
    assert result.loss == pytest.approx(min(loss(m) for m in seen))
    assert budget.fits(result.masks) and len(result.history) == 3
    assert result.improved == (result.loss < result.incumbent_loss)
    assert all(0 <= h["clip_fraction"] <= 1 and h["entropy"] > 0 for h in result.history)


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_the_reward_of_a_compacted_copy_equals_the_masked_models(arch):
    """Rewards run a compacted copy (units physically removed): the same loss as masking by hooks, model untouched."""
    model = tiny_model(arch, initializer_range=0.5)  # logits large enough for the masks to move the loss
    batches = [{**tiny_inputs(batch=4, seq=10, seed=i)} for i in range(2)]
    budget = FlopsBudget.for_model(model, 8.5, 0.4)
    g = torch.Generator().manual_seed(2)
    masks = search_masks(torch.rand(budget.num_layers, budget.num_heads, generator=g),
                         torch.rand(budget.num_layers, budget.ffn_dim, generator=g), budget)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    loss = CalibrationLoss(model, copy.deepcopy(model), batches)
    compacted, hooked = loss(masks), loss(masks, compacted=False)
    assert compacted > 1e-4 and compacted == pytest.approx(hooked, rel=1e-5, abs=1e-7)
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert not hasattr(model.config, "lit_prune_structure")


def test_the_task_reward_is_the_masked_models_mean_task_loss():
    """reward='task': the example-weighted mean of the masked model's own loss on the calibration labels."""
    model = tiny_model("bert", initializer_range=0.5)
    batches = [{**tiny_inputs(batch=size, seq=10, seed=i), "labels": torch.arange(size) % 2}
               for i, size in enumerate((4, 2))]
    budget = FlopsBudget.for_model(model, 8.5, 0.5)
    g = torch.Generator().manual_seed(2)
    masks = search_masks(torch.rand(budget.num_layers, budget.num_heads, generator=g),
                         torch.rand(budget.num_layers, budget.ffn_dim, generator=g), budget)
    loss = CalibrationLoss(model, model, batches, reward="task")
    with torch.no_grad(), apply_masks(model, masks):
        expected = sum(float(model(**batch).loss) * len(batch["labels"]) for batch in batches) / 6
    assert loss(masks) == pytest.approx(expected, rel=1e-5)
    assert loss(masks, compacted=False) == pytest.approx(expected, rel=1e-5)
    assert loss(masks) != pytest.approx(CalibrationLoss(model, model, batches)(masks), rel=1e-3)
    with pytest.raises(ValueError, match=r"reward='task' needs labelled calibration batches"):
        CalibrationLoss(model, model, [{k: v for k, v in b.items() if k != "labels"} for b in batches], reward="task")
    with pytest.raises(ValueError, match=r"reward='kl': expected one of 'distillation', 'task'"):
        CalibrationLoss(model, model, batches, reward="kl")


def test_ppo_search_is_reproducible_with_a_seed():
    model, batches, budget, head_importance, ffn_importance, incumbent = ppo_setup(0.4)
    loss = CalibrationLoss(model, model, batches)
    runs = [ppo_search(loss, head_importance, ffn_importance, incumbent, budget,
                       PPOSettings(iterations=2, rollouts=4, ppo_epochs=2, seed=seed)) for seed in (7, 7, 8)]
    assert runs[0].masks.allclose(runs[1].masks, rtol=0, atol=0)
    assert runs[0].history == runs[1].history
    assert runs[0].history != runs[2].history  # another seed samples other masks


def test_ppo_learns_on_a_known_objective():
    """A loss that rewards neurons the Fisher ranking does not prefer: the policy's rollouts get better."""
    model, _, budget, head_importance, ffn_importance, incumbent = ppo_setup(0.3)
    target = torch.rand(budget.total_neurons, generator=torch.Generator().manual_seed(3))

    def evaluate(masks: PruningMasks) -> float:  # keep high-`target` neurons, and no heads
        return -float((masks.ffn.flatten() * target).sum()) + 5 * float(masks.head.sum())

    result = ppo_search(evaluate, head_importance, ffn_importance, incumbent, budget,
                        PPOSettings(iterations=30, rollouts=8, ppo_epochs=4, learning_rate=0.1, seed=0))
    means = [h["mean_loss"] for h in result.history]
    assert sum(means[-5:]) / 5 < means[0] - 0.5
    assert result.improved and result.loss < result.incumbent_loss - 1


def test_ppo_settings_are_checked():
    problems = PPOSettings(iterations=0, rollouts=1, clip=1.5, learning_rate=0).problems()
    text = "; ".join(problems)
    assert "ppo_iterations=0: expected an integer >= 1" in text
    assert "ppo_rollouts=1: expected at least 2" in text
    assert "ppo_clip=1.5: expected a number > 0 and <= 1" in text
    assert "ppo_learning_rate=0: expected a number > 0" in text


# ------------------------------------------------------------------------------------------------ callback
@pytest.mark.parametrize("settings, message", [
    ({"search": "beam"}, r"search='beam': expected 'ppo' or 'greedy'"),
    ({"solver": "lsmr"}, r"solver='lsmr': expected 'cgs' or 'lstsq'"),
    ({"ppo_rollouts": 1}, r"ppo_rollouts=1: expected at least 2"),
    ({"cgs_max_iter": 0}, r"cgs_max_iter=0: expected an integer >= 1"),
    ({"reward_samples": 0}, r"reward_samples=0: expected an integer >= 1"),
    ({"reward": "f1"}, r"reward='f1': expected one of 'distillation', 'task'"),
    ({"flops_kept": 1.5}, r"flops_kept=1.5 is outside the allowed range"),
])
def test_bad_settings_fail_at_construction(settings, message):
    with pytest.raises(ValueError, match=message):
        GPrunerCallback(**settings)


class UserModule(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = tiny_model("bert").train()

    def training_step(self, batch, batch_idx):
        return self.encoder(**batch).loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


class UserData(L.LightningDataModule):
    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        rows = [{"input_ids": torch.randint(5, 100, (12,), generator=g), "attention_mask": torch.ones(12, dtype=torch.long),
                 "labels": torch.tensor(i % 2)} for i in range(48)]
        return torch.utils.data.DataLoader(rows, batch_size=8)


def prune_user_module(tmp_path, **settings) -> dict:
    callback = GPrunerCallback(flops_kept=0.5, num_samples=32, replacement=False, calibration_batch_size=8,
                               evaluate=False, seq_len=12, latency_batch_size=0, output_dir=str(tmp_path),
                               reward_samples=16, ppo_iterations=2, ppo_rollouts=3, ppo_epochs=2, **settings)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        accelerator="cpu", devices=1, callbacks=[callback])
    trainer.fit(UserModule(), UserData())
    return read_report(tmp_path)


def test_the_four_combinations_run_and_greedy_lstsq_is_kwon(tmp_path):
    reports = {(search, solver): prune_user_module(tmp_path / f"{search}-{solver}", search=search, solver=solver)
               for search in ("greedy", "ppo") for solver in ("lstsq", "cgs")}
    for (search, solver), report in reports.items():
        assert report["method"] == "gpruner" and report["flops"]["kept"] <= 0.5
        assert report["settings"]["search"] == search and report["settings"]["solver"] == solver
        assert ("ppo" in report) == (search == "ppo") and ("cgs" in report) == (solver == "cgs")
    ppo = reports[("ppo", "cgs")]["ppo"]
    assert ppo["reward_examples"] == 16 and ppo["evaluations"] == 1 + 2 * 3
    assert ppo["best_loss"] <= ppo["incumbent_loss"]
    from lit_prune.methods import KwonCallback

    kwon = KwonCallback(flops_kept=0.5, num_samples=32, replacement=False, calibration_batch_size=8, evaluate=False,
                        seq_len=12, latency_batch_size=0, output_dir=str(tmp_path / "kwon"))
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        accelerator="cpu", devices=1, callbacks=[kwon])
    trainer.fit(UserModule(), UserData())
    masks = [PruningMasks.load(tmp_path / name / "pruning_masks.safetensors") for name in ("kwon", "greedy-lstsq")]
    assert masks[0].allclose(masks[1], rtol=0, atol=0)
    assert read_report(tmp_path / "kwon")["structure"] == reports[("greedy", "lstsq")]["structure"]
