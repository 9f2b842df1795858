"""G-Pruner's PPOM (Proximal Policy Optimization Mask): PPO search over head/neuron masks under a FLOPs or latency budget.

Our reading of the paper (see :mod:`lit_prune.methods.gpruner`; only its abstract could be read). A stochastic
policy over binary masks is trained by proximal policy optimisation to minimise the calibration loss of the masked
model (:func:`ppo_search`, the callback's ``search="ppo"``):

* Policy: one logit per unit (every head and every FFN neuron of the model); an action is an independent Bernoulli
  draw per unit. Initialised from the Fisher ranking: within each unit type, a unit's logit is its rank distance
  from the searched mask's boundary, ``(k − ½ − rank) / (n·τ₀)`` (``k`` kept of ``n``, rank 0 the most important,
  ``τ₀ = init_temperature``), so the initial policy keeps the top of the ranking almost surely, prunes its bottom
  almost surely, and explores around the boundary (:func:`ranking_logits`).
* Budget: every sampled action is projected onto the budget (:class:`BudgetProjection`, deterministic,
  part of the environment): if the sampled heads alone exceed the budget the least important of them are dropped;
  then the sampled neurons are cut to, or filled up to, the most that fit beside the heads, in Fisher order. Every
  mask the policy proposes therefore satisfies the budget exactly or from below, like the greedy search's.
* Reward: minus the calibration loss of the projected mask (``evaluate``; the callback's is
  :class:`~lit_prune.methods.gpruner.reward.CalibrationLoss`).
* PPO: per iteration ``rollouts`` actions from the current policy, then ``ppo_epochs`` Adam steps on the clipped
  surrogate objective (:func:`clipped_surrogate`, ratio clip ``clip``) with a learned value baseline (the
  problem has one state, so the critic is a scalar trained by squared error to the rewards; rewards are measured
  from the incumbent's loss in units of the first iteration's spread, advantages are the rewards minus the
  critic, normalised by their standard deviation) and an entropy bonus (``entropy_coef`` × the mean
  per-unit Bernoulli entropy).
* Best-of: the search keeps the best mask seen, starting from Kwon's searched-and-rearranged mask (evaluated
  first), so PPOM never returns a mask with a higher calibration loss than the greedy pipeline's.
* Seeded (``seed``: its own ``torch.Generator``) and identical on every process: the policy lives on the CPU,
  and each reward is summed over the processes before anyone uses it.

Choices: PPOM searches over whole heads and FFN neurons (Kwon's units); the policy is state-less (a bandit over
masks), so PPO's critic reduces to a learned baseline.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lit_prune.core.latency_model import Budget
from lit_prune.core.masks import PruningMasks
from lit_prune.prune.search import align_neurons, layer_counts, longest_prefix
from lit_prune.prune.types import Progress


@dataclass(frozen=True)
class PPOSettings:
    """PPOM's settings (see the module docstring).

    Attributes:
        iterations: policy updates.
        rollouts: masks sampled per iteration.
        ppo_epochs: gradient steps per iteration on the same rollouts.
        clip: the ratio clip ε of the surrogate objective.
        entropy_coef: weight of the mean per-unit entropy bonus.
        value_coef: weight of the baseline's squared error.
        learning_rate: Adam's learning rate for the logits and the baseline.
        init_temperature: τ₀ of the Fisher-ranking initialisation (smaller: less exploration).
        seed: the sampling seed.
    """

    iterations: int = 10
    rollouts: int = 8
    ppo_epochs: int = 4
    clip: float = 0.2
    entropy_coef: float = 0.01
    value_coef: float = 0.5
    learning_rate: float = 0.05
    init_temperature: float = 0.02
    seed: int = 0

    def problems(self) -> list[str]:
        out = []
        for name in ("iterations", "rollouts", "ppo_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                out.append(f"ppo_{name}={value!r}: expected an integer >= 1")
        for name, low, high in (("clip", 0.0, 1.0), ("entropy_coef", 0.0, math.inf), ("value_coef", 0.0, math.inf),
                                ("learning_rate", 0.0, math.inf), ("init_temperature", 0.0, math.inf)):
            value = getattr(self, name)
            strict = name in ("clip", "learning_rate", "init_temperature")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < low or (strict and value == low) or value > high:
                out.append(f"ppo_{name}={value!r}: expected a number {'>' if strict else '>='} {low:g}"
                           + (f" and <= {high:g}" if math.isfinite(high) else ""))
        if self.rollouts < 2:
            out.append(f"ppo_rollouts={self.rollouts!r}: expected at least 2 (advantages compare rollouts)")
        return out


def clipped_surrogate(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                      clip: float) -> torch.Tensor:
    """PPO's clipped surrogate objective (to maximise): ``mean(min(ρ·A, clip(ρ, 1−ε, 1+ε)·A))``, ``ρ = π/π_old``."""
    ratio = torch.exp(log_prob - old_log_prob)
    return torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages).mean()


def bernoulli_log_prob(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Log-probability of each row of ``actions`` (R, U) under independent Bernoullis with ``logits`` (U,)."""
    return -nn.functional.binary_cross_entropy_with_logits(
        logits.expand_as(actions), actions, reduction="none").sum(-1)


def bernoulli_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean per-unit entropy (nats) of independent Bernoullis with ``logits``."""
    p = torch.sigmoid(logits)
    return nn.functional.binary_cross_entropy_with_logits(logits, p, reduction="none").mean()


def ranking_logits(importance: torch.Tensor, kept: int, temperature: float) -> torch.Tensor:
    """The policy's initial logits for one unit type: ``(kept − ½ − rank) / (n·τ₀)`` (rank 0: most important).

    Positive exactly for the ``kept`` most important units (stable order among equals).
    """
    flat = importance.detach().double().flatten()
    n = flat.numel()
    order = torch.sort(flat, descending=True, stable=True).indices
    rank = torch.empty(n, dtype=torch.float64)
    rank[order] = torch.arange(n, dtype=torch.float64)
    return ((kept - 0.5 - rank) / (n * temperature)).float()


class BudgetProjection:
    """Maps any (heads, neurons) keep-vector onto the budget (FLOPs or latency), deterministically, by a fixed
    priority.

    Sampled heads beyond what the budget can hold are dropped lowest priority first; then the kept neurons are cut
    to, or filled up to (highest priority first), the most that fit beside the kept heads. The result always
    satisfies ``budget.fits`` and, unless every neuron is kept, the next neuron in that order would not fit.
    """

    def __init__(self, budget: Budget, head_priority: torch.Tensor, ffn_priority: torch.Tensor) -> None:
        if head_priority.numel() != budget.total_heads or ffn_priority.numel() != budget.total_neurons:
            raise ValueError(f"BudgetProjection: priorities of {head_priority.numel()} heads and "
                             f"{ffn_priority.numel()} neurons for a budget of {budget.total_heads} and "
                             f"{budget.total_neurons}")
        self.budget = budget
        self.head_order = torch.sort(head_priority.detach().flatten().cpu(), descending=True, stable=True).indices
        self.ffn_order = torch.sort(ffn_priority.detach().flatten().cpu(), descending=True, stable=True).indices
        self.ffn_priority = ffn_priority.detach().cpu().reshape(budget.num_layers, budget.ffn_dim)

    @staticmethod
    def _preferred(chosen: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """All units: the chosen ones in priority order, then the others in priority order."""
        ranked = chosen[order]
        return torch.cat([order[ranked], order[~ranked]])

    def __call__(self, heads: torch.Tensor, neurons: torch.Tensor) -> PruningMasks:
        """Project keep-vectors (L·H,) and (L·F,) (bool or 0/1) onto the budget; returns binary masks (CPU)."""
        b = self.budget
        L, H, F = b.num_layers, b.num_heads, b.ffn_dim
        heads = heads.flatten().cpu().bool()
        neurons = neurons.flatten().cpu().bool()
        no_neurons = torch.zeros(L, dtype=torch.long)
        head_counts = layer_counts(self._preferred(heads, self.head_order), H, L)
        k = longest_prefix(int(heads.sum()), lambda p: b.fits_counts(head_counts[p], no_neurons))
        assert k is not None  # nothing kept always fits (budgets are checked on construction)
        head_keep = torch.zeros_like(heads)
        head_keep[self._preferred(heads, self.head_order)[:k]] = True
        kept_per_layer = head_counts[k]
        preferred = self._preferred(neurons, self.ffn_order)
        ffn_counts = layer_counts(preferred, F, L)
        n = longest_prefix(b.total_neurons, lambda p: b.fits_counts(kept_per_layer, ffn_counts[p]))
        ffn_keep = torch.zeros_like(neurons)
        ffn_keep[preferred[:n]] = True
        masks = PruningMasks(head=head_keep.float().view(L, H), qk=torch.ones(L, H, b.head_dim),
                             vo=torch.ones(L, H, b.head_dim), ffn=ffn_keep.float().view(L, F))
        # a latency budget keeps multiples of its neuron_multiple per layer (the priority decides which)
        masks = align_neurons(masks, self.ffn_priority, b)
        assert b.fits(masks), "BudgetProjection produced masks over the budget (a bug)"
        return masks


@dataclass
class PPOResult:
    """What :func:`ppo_search` found: the best masks, their loss, the incumbent's, and the history per iteration."""

    masks: PruningMasks
    loss: float
    incumbent_loss: float
    improved: bool
    evaluations: int
    history: list[dict[str, float]]


def ppo_search(evaluate: Callable[[PruningMasks], float], head_importance: torch.Tensor,
               ffn_importance: torch.Tensor, incumbent: PruningMasks, budget: Budget,
               settings: PPOSettings = PPOSettings(), progress: Progress | None = None) -> PPOResult:
    """PPOM: search binary head/neuron masks under ``budget`` with PPO (see the module docstring).

    Args:
        evaluate: the calibration loss of a mask (lower is better; the same value on every process).
        head_importance: (L, H) Fisher importances (the initial ranking and the projection priority).
        ffn_importance: (L, F).
        incumbent: the masks to beat (Kwon's search + rearrangement); evaluated first.
        budget: the FLOPs or latency budget.
        settings: :class:`PPOSettings`.
        progress: called as ``progress(description, done, total)`` after each evaluation.

    Returns:
        :class:`PPOResult` whose masks fit the budget and whose loss is at most the incumbent's.
    """
    problems = settings.problems()
    if problems:
        raise ValueError("ppo_search: " + "; ".join(problems))
    if not budget.fits(incumbent):
        raise ValueError("ppo_search: the incumbent masks exceed the budget")
    kept_heads = int((incumbent.head != 0).sum())
    kept_neurons = int((incumbent.ffn != 0).sum())
    head_logits = ranking_logits(head_importance, kept_heads, settings.init_temperature)
    ffn_logits = ranking_logits(ffn_importance, kept_neurons, settings.init_temperature)
    project = BudgetProjection(budget, head_logits, ffn_logits)
    num_heads = head_logits.numel()
    logits = torch.cat([head_logits, ffn_logits]).clone().requires_grad_(True)
    baseline = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.Adam([logits, baseline], lr=settings.learning_rate)
    generator = torch.Generator().manual_seed(settings.seed)
    total = 1 + settings.iterations * settings.rollouts
    done = 0

    def score(masks: PruningMasks) -> float:
        nonlocal done
        loss = float(evaluate(masks))
        done += 1
        if progress is not None:
            progress("G-Pruner PPO search", done, total)
        return loss

    incumbent_binary = PruningMasks(head=(incumbent.head != 0).float().cpu(), qk=torch.ones_like(incumbent.qk).cpu(),
                                    vo=torch.ones_like(incumbent.vo).cpu(), ffn=(incumbent.ffn != 0).float().cpu())
    incumbent_loss = score(incumbent_binary)
    best_loss, best = incumbent_loss, incumbent_binary
    history = []
    scale: float | None = None
    for iteration in range(settings.iterations):
        with torch.no_grad():
            probs = torch.sigmoid(logits).expand(settings.rollouts, -1)
            actions = torch.bernoulli(probs, generator=generator)
            old_log_prob = bernoulli_log_prob(logits, actions)
        losses = []
        for action in actions:
            masks = project(action[:num_heads], action[num_heads:])
            loss = score(masks)
            losses.append(loss)
            if loss < best_loss:
                best_loss, best = loss, masks
        # rewards in units of the first iteration's spread, relative to the incumbent (the baseline starts at 0)
        if scale is None:
            scale = float(torch.tensor(losses).std()) or max(abs(incumbent_loss), 1e-12)
        rewards = (incumbent_loss - torch.tensor(losses, dtype=torch.float32)) / scale
        advantages = rewards - baseline.detach()
        spread = float(rewards.std())
        if spread > 0:
            advantages = advantages / spread
        clipped = 0.0
        for _ in range(settings.ppo_epochs):
            log_prob = bernoulli_log_prob(logits, actions)
            surrogate = clipped_surrogate(log_prob, old_log_prob, advantages, settings.clip)
            entropy = bernoulli_entropy(logits)
            value_loss = (baseline - rewards).pow(2).mean()
            loss = -surrogate - settings.entropy_coef * entropy + settings.value_coef * value_loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                ratio = torch.exp(bernoulli_log_prob(logits, actions) - old_log_prob)
                clipped = float(((ratio - 1).abs() > settings.clip).float().mean())
        history.append({"iteration": iteration, "mean_loss": sum(losses) / len(losses), "min_loss": float(min(losses)),
                        "best_loss": best_loss, "entropy": float(bernoulli_entropy(logits.detach())),
                        "baseline_loss": incumbent_loss - float(baseline.detach()) * scale,
                        "clip_fraction": clipped})
    return PPOResult(masks=best, loss=best_loss, incumbent_loss=incumbent_loss, improved=best_loss < incumbent_loss,
                     evaluations=done, history=history)


__all__ = ["BudgetProjection", "PPOResult", "PPOSettings", "bernoulli_entropy", "bernoulli_log_prob",
           "clipped_surrogate", "ppo_search", "ranking_logits"]
