"""G-Pruner ("Global-Pruner", CoNLL 2024): PPO mask search (PPOM) and conjugate gradient squared mask tuning (CG²MT).

No reference code exists and only the paper's abstract could be read, so this module is *our reading* of it, built
on Kwon et al.'s pipeline (:mod:`lit_prune.methods.kwon`: Fisher statistics → budgeted search → rearrangement →
mask tuning), with two parts swapped in, each behind a switch so that the four combinations
{greedy search, PPOM} × {least squares as in Kwon, CGS} run from a config:

**PPOM** (:func:`ppo_search`, ``search="ppo"``). A stochastic policy over binary masks is trained by proximal
policy optimisation to minimise the calibration loss of the masked model:

* Policy: one logit per unit (every head and every FFN neuron of the model); an action is an independent Bernoulli
  draw per unit. Initialised from the Fisher ranking: within each unit type, a unit's logit is its rank distance
  from the searched mask's boundary, ``(k − ½ − rank) / (n·τ₀)`` (``k`` kept of ``n``, rank 0 the most important,
  ``τ₀ = init_temperature``), so the initial policy keeps the top of the ranking almost surely, prunes its bottom
  almost surely, and explores around the boundary.
* Budget: every sampled action is projected onto the FLOPs budget (:class:`BudgetProjection`, deterministic,
  part of the environment): if the sampled heads alone exceed the budget the least important of them are dropped;
  then the sampled neurons are cut to, or filled up to, the most that fit beside the heads, in Fisher order. Every
  mask the policy proposes therefore satisfies the budget exactly or from below, like the greedy search's.
* Reward: minus the calibration loss of the projected mask on held calibration batches (the first
  ``reward_samples`` examples of the calibration sample, fixed for the whole search so rewards are comparable): the
  KL divergence from the dense model's predictions (MSE for regression; start and end distributions for QA).
  The dense predictions are computed once and cached; each rollout is one forward pass of a compacted copy of the
  model (the masked units physically removed), which costs about ``flops_kept`` of a dense pass.
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

**CG²MT** (:func:`cgs_solve`, :func:`cgs_tuning_solver`, ``solver="cgs"``). Kwon's mask tuning, sublayer by
sublayer, with the same streaming systems (:class:`~lit_prune.methods.kwon.LeastSquaresAccumulator`: ``G = AᵀA``,
``h = Aᵀb``), but the scales come from the normal equations ``(G + δ·I)·y = h − G·1``, ``x = 1 + y``, solved by the
conjugate gradient squared method (Sonneveld 1989; our own torch implementation, float64) from ``y = 0`` (the
binary mask), with a relative-residual tolerance ``cgs_tol`` and an iteration cap ``cgs_max_iter``. ``δ`` is
``cgs_damping`` × the mean of G's diagonal (scale-free; the default 1e-6 only guards singular systems). The solver
is guarded: a breakdown (``ρ`` or ``σ`` vanishing, or a non-finite iterate) stops the iteration and the best
iterate so far (smallest residual) is used; non-finite scales or scales outside [-10, 10] fail the sublayer as in
Kwon (tuning stops, scales found so far are kept).

Departures and choices (none can be checked against the paper's code, which is not public):

* PPOM searches over whole heads and FFN neurons (Kwon's units), with the Fisher pass, the rearrangement and the
  intermediate tuning reference of Kwon unchanged.
* The policy is state-less (a bandit over masks): PPO's critic reduces to a learned baseline.
* The reward is a distillation loss on the held calibration batches by default, not the task loss
  (``reward="task"``: the masked model's own loss on the calibration labels, an ablation; with the few reward
  examples of a calibration sample it overfits their labels, see the README).
* CGS solves the normal equations of the sublayer's least squares (the systems Kwon hands to LSMR) directly, with
  its own stopping rule; Kwon's damping prior (pull towards the binary mask) is replaced by the start at the binary
  mask plus the tiny relative ridge ``δ``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from lit_prune.core.compact import compact
from lit_prune.core.flops import FlopsBudget
from lit_prune.core.masking import apply_masks
from lit_prune.core.masks import PruningMasks
from lit_prune.methods.common import LABEL_KEYS
from lit_prune.methods.kwon import FisherStatistics, KwonCallback, kwon_prune
from lit_prune.prune.batches import model_inputs
from lit_prune.prune.distill import dense_predictions, distillation_loss
from lit_prune.prune.lstsq import MAX_ABS_SCALE, LeastSquaresAccumulator, cgs_solve

Progress = Callable[[str, int, int], None]
Reward = Literal["distillation", "task"]
REWARDS = ("distillation", "task")
Reduce = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


# ================================================================================================ CG²MT


@dataclass
class CGSLog:
    """One sublayer's CGS solve (for the report)."""

    status: str
    iterations: int
    residual: float
    units: int


class CGSTuningSolver:
    """CG²MT's solver for Kwon's mask tuning: ``(G + δI) y = h − G·1`` by CGS, ``x = 1 + y`` (see the module doc).

    Callable as ``solver(acc) -> (scales or None, reason)`` (:func:`~lit_prune.methods.kwon.tune_masks`'s
    ``solver``); every solve is logged in :attr:`log`, in order.
    """

    def __init__(self, tol: float = 1e-6, max_iter: int = 100, damping: float = 1e-6) -> None:
        for name, value, low in (("cgs_tol", tol, 0.0), ("cgs_damping", damping, 0.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < low or (name == "cgs_tol" and value == 0):
                raise ValueError(f"{name}={value!r}: expected a finite number {'> 0' if name == 'cgs_tol' else '>= 0'}")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"cgs_max_iter={max_iter!r}: expected an integer >= 1")
        self.tol, self.max_iter, self.damping = float(tol), max_iter, float(damping)
        self.log: list[CGSLog] = []

    def __call__(self, acc: LeastSquaresAccumulator) -> tuple[torch.Tensor | None, str | None]:
        if int(acc.count) == 0:
            return None, "the system is empty (no tokens were added)"
        if not (torch.isfinite(acc.gram).all() and torch.isfinite(acc.rhs).all()):
            return None, "the accumulated system holds non-finite values"
        gram = acc.gram.double()
        units = gram.shape[0]
        delta = self.damping * float(gram.diagonal().mean()) if units else 0.0
        system = gram + delta * torch.eye(units, dtype=torch.float64, device=gram.device)
        result = cgs_solve(system, acc.rhs.double() - gram.sum(1), tol=self.tol, max_iter=self.max_iter)
        self.log.append(CGSLog(result.status, result.iterations, result.residual, units))
        scales = 1 + result.x
        if not torch.isfinite(scales).all():
            return None, f"CGS ({result.status}) gave non-finite scales"
        low, high = float(scales.min()), float(scales.max())
        if low < -MAX_ABS_SCALE or high > MAX_ABS_SCALE:
            return None, (f"CGS ({result.status}, {result.iterations} iterations): scales outside "
                          f"[-{MAX_ABS_SCALE:g}, {MAX_ABS_SCALE:g}] (min {low:.4g}, max {high:.4g}): an ill-conditioned fit")
        return scales, None


# ================================================================================================ PPOM
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
    """Maps any (heads, neurons) keep-vector onto the FLOPs budget, deterministically, by a fixed priority.

    Sampled heads beyond what the budget can hold are dropped lowest priority first; then the kept neurons are cut
    to, or filled up to (highest priority first), the most that fit beside the kept heads. The result always
    satisfies ``budget.fits`` and, unless every neuron is kept, no further neuron would fit.
    """

    def __init__(self, budget: FlopsBudget, head_priority: torch.Tensor, ffn_priority: torch.Tensor) -> None:
        if head_priority.numel() != budget.total_heads or ffn_priority.numel() != budget.total_neurons:
            raise ValueError(f"BudgetProjection: priorities of {head_priority.numel()} heads and "
                             f"{ffn_priority.numel()} neurons for a budget of {budget.total_heads} and "
                             f"{budget.total_neurons}")
        self.budget = budget
        self.head_order = torch.sort(head_priority.detach().flatten().cpu(), descending=True, stable=True).indices
        self.ffn_order = torch.sort(ffn_priority.detach().flatten().cpu(), descending=True, stable=True).indices
        self.max_heads = 0
        while self.max_heads < budget.total_heads and budget.max_neurons(self.max_heads + 1) is not None:
            self.max_heads += 1
        self._max_neurons = [budget.max_neurons(k) for k in range(self.max_heads + 1)]

    def _select(self, chosen: torch.Tensor, order: torch.Tensor, count: int) -> torch.Tensor:
        """``count`` units: the chosen ones in priority order, then (if short) the others in priority order."""
        ranked = chosen[order]
        preferred = torch.cat([order[ranked], order[~ranked]])
        keep = torch.zeros_like(chosen)
        keep[preferred[:count]] = True
        return keep

    def __call__(self, heads: torch.Tensor, neurons: torch.Tensor) -> PruningMasks:
        """Project keep-vectors (L·H,) and (L·F,) (bool or 0/1) onto the budget; returns binary masks (CPU)."""
        heads = heads.flatten().cpu().bool()
        neurons = neurons.flatten().cpu().bool()
        k = min(int(heads.sum()), self.max_heads)
        head_keep = self._select(heads, self.head_order, k) if k < int(heads.sum()) else heads.clone()
        ffn_keep = self._select(neurons, self.ffn_order, self._max_neurons[k])
        b = self.budget
        masks = PruningMasks(head=head_keep.float().view(b.num_layers, b.num_heads),
                             qk=torch.ones(b.num_layers, b.num_heads, b.head_dim),
                             vo=torch.ones(b.num_layers, b.num_heads, b.head_dim),
                             ffn=ffn_keep.float().view(b.num_layers, b.ffn_dim))
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
               ffn_importance: torch.Tensor, incumbent: PruningMasks, budget: FlopsBudget,
               settings: PPOSettings = PPOSettings(), progress: Progress | None = None) -> PPOResult:
    """PPOM: search binary head/neuron masks under ``budget`` with PPO (see the module docstring).

    Args:
        evaluate: the calibration loss of a mask (lower is better; the same value on every process).
        head_importance: (L, H) Fisher importances (the initial ranking and the projection priority).
        ffn_importance: (L, F).
        incumbent: the masks to beat (Kwon's search + rearrangement); evaluated first.
        budget: the FLOPs budget.
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


class CalibrationLoss:
    """The PPOM reward's loss: the masked model's distillation loss against the dense model's cached predictions
    (``reward="distillation"``), or its own task loss on the batches' labels (``reward="task"``).

    Each evaluation runs a compacted copy of the model (the mask's units physically removed, as the pruned model
    will be), so a rollout costs about ``flops_kept`` of a dense forward pass instead of a whole one; the result is
    the masked model's, up to float rounding (a test checks both ways agree).

    Args:
        model: the dense model (copied and compacted for each evaluation; never changed).
        dense: a dense copy that gives the cached predictions (used once, at construction; unused for ``"task"``).
        batches: this process's held calibration batches (labelled for ``"task"``).
        reduce: sums tensors over processes.
        reward: ``"distillation"`` or ``"task"``.
    """

    def __init__(self, model: nn.Module, dense: nn.Module, batches: Sequence[Mapping[str, Any]],
                 reduce: Reduce | None = None, reward: Reward = "distillation") -> None:
        if reward not in REWARDS:
            raise ValueError(f"G-Pruner: reward={reward!r}: expected one of {', '.join(map(repr, REWARDS))}")
        self.model = model
        self.reward = reward
        self.batches = [model_inputs(model, batch) for batch in batches]
        device = next(model.parameters()).device
        if reward == "task":
            self.targets = [{key: value.to(device) for key, value in batch.items() if key in LABEL_KEYS}
                            for batch in batches]
            if any(not target for target in self.targets):
                raise ValueError("G-Pruner: reward='task' needs labelled calibration batches (labels, or "
                                 "start_positions and end_positions)")
        else:
            self.targets = [dense_predictions(dense, batch, 1.0) for batch in batches]
        self.reduce = reduce
        count = torch.tensor(float(sum(int(b["input_ids"].shape[0]) for b in self.batches)), device=device,
                             dtype=torch.float64)
        self.count = float(reduce({"count": count})["count"]) if reduce is not None else float(count)
        if self.count == 0:
            raise ValueError("G-Pruner: no held calibration examples for the PPO reward")

    @torch.no_grad()
    def __call__(self, masks: PruningMasks, compacted: bool = True) -> float:
        """The loss of ``masks``; ``compacted=False`` masks the model by hooks instead (the same value, slower)."""
        device = next(self.model.parameters()).device
        total = torch.zeros((), dtype=torch.float64, device=device)
        if compacted:
            model, context = compact(copy.deepcopy(self.model), masks).eval(), contextlib.nullcontext()
        else:
            model, context = self.model, apply_masks(self.model, masks.to(device))
        with context:
            for inputs, targets in zip(self.batches, self.targets):
                if self.reward == "task":
                    loss = model(**inputs, **targets).loss
                else:
                    loss = distillation_loss(model(**inputs), targets, 1.0)
                total += loss.double() * inputs["input_ids"].shape[0]
        if self.reduce is not None:
            total = self.reduce({"loss": total})["loss"]
        return float(total) / self.count


# ================================================================================================ Lightning
class GPrunerCallback(KwonCallback):
    """G-Pruner as a Lightning callback: Kwon's pipeline with PPO mask search and CGS mask tuning (switchable).

    ``search="greedy", solver="lstsq"`` is exactly :class:`~lit_prune.methods.kwon.KwonCallback`;
    ``search="ppo", solver="cgs"`` is G-Pruner; the other two are the ablations.

    Args:
        search: ``"ppo"`` (PPOM) or ``"greedy"`` (Kwon's search + rearrangement only).
        solver: ``"cgs"`` (CG²MT) or ``"lstsq"`` (Kwon's damped least squares).
        reward_samples: held calibration examples for the PPO reward (the first ones of the calibration sample).
        reward: the PPO reward's loss: ``"distillation"`` (KL from the dense model) or ``"task"`` (the task loss).
        ppo_iterations, ppo_rollouts, ppo_epochs, ppo_clip, ppo_entropy_coef, ppo_value_coef, ppo_learning_rate,
            ppo_init_temperature: :class:`PPOSettings` (the PPO seed is ``seed``).
        cgs_tol, cgs_max_iter, cgs_damping: :class:`CGSTuningSolver`.
        everything else: see :class:`~lit_prune.methods.kwon.KwonCallback`.
    """

    method = "gpruner"

    def __init__(
        self,
        flops_kept: float = 0.5,
        search: Literal["ppo", "greedy"] = "ppo",
        solver: Literal["cgs", "lstsq"] = "cgs",
        num_samples: int = 2048,
        replacement: bool = True,
        calibration_batch_size: int = 32,
        seed: int = 0,
        rearrange: bool = True,
        tune: bool = True,
        tuning_reference: Literal["intermediate", "dense"] = "intermediate",
        damping: float = 1.0,
        tuning_cache_mb: float | None = 256,
        reward_samples: int = 256,
        reward: Reward = "distillation",
        ppo_iterations: int = 10,
        ppo_rollouts: int = 8,
        ppo_epochs: int = 4,
        ppo_clip: float = 0.2,
        ppo_entropy_coef: float = 0.01,
        ppo_value_coef: float = 0.5,
        ppo_learning_rate: float = 0.05,
        ppo_init_temperature: float = 0.02,
        cgs_tol: float = 1e-6,
        cgs_max_iter: int = 100,
        cgs_damping: float = 1e-6,
        output_dir: str | None = None,
        save_model: bool = True,
        evaluate: bool = True,
        dense_metrics: dict[str, float] | None = None,
        latency_batch_size: int = 32,
        latency_repeats: int = 10,
        model_attribute: str | None = None,
        seq_len: float | None = None,
        time_reference_pass: bool = False,
    ) -> None:
        problems = []
        if search not in ("ppo", "greedy"):
            problems.append(f"search={search!r}: expected 'ppo' or 'greedy'")
        if solver not in ("cgs", "lstsq"):
            problems.append(f"solver={solver!r}: expected 'cgs' or 'lstsq'")
        if reward not in REWARDS:
            problems.append(f"reward={reward!r}: expected one of {', '.join(map(repr, REWARDS))}")
        if isinstance(reward_samples, bool) or not isinstance(reward_samples, int) or reward_samples < 1:
            problems.append(f"reward_samples={reward_samples!r}: expected an integer >= 1")
        self.ppo = PPOSettings(iterations=ppo_iterations, rollouts=ppo_rollouts, ppo_epochs=ppo_epochs, clip=ppo_clip,
                               entropy_coef=ppo_entropy_coef, value_coef=ppo_value_coef,
                               learning_rate=ppo_learning_rate, init_temperature=ppo_init_temperature, seed=seed)
        if search == "ppo":
            problems += self.ppo.problems()
        try:
            CGSTuningSolver(cgs_tol, cgs_max_iter, cgs_damping)
        except ValueError as error:
            problems.append(str(error))
        super().__init__(flops_kept=flops_kept, num_samples=num_samples, replacement=replacement,
                         calibration_batch_size=calibration_batch_size, seed=seed, rearrange=rearrange, tune=tune,
                         tuning_reference=tuning_reference, damping=damping, tuning_cache_mb=tuning_cache_mb,
                         output_dir=output_dir,
                         save_model=save_model, evaluate=evaluate, dense_metrics=dense_metrics,
                         latency_batch_size=latency_batch_size,
                         latency_repeats=latency_repeats, model_attribute=model_attribute, seq_len=seq_len,
                         time_reference_pass=time_reference_pass)
        self.raise_problems(problems)
        self.search = search
        self.solver = solver
        self.reward_samples = reward_samples
        self.reward = reward
        self.cgs = {"tol": cgs_tol, "max_iter": cgs_max_iter, "damping": cgs_damping}

    def method_settings(self) -> dict[str, Any]:
        settings = super().method_settings()
        settings.update(search=self.search, solver=self.solver)
        if self.search == "ppo":
            settings.update(reward=self.reward, reward_samples=self.reward_samples,
                            **{f"ppo_{k}": v for k, v in dataclasses.asdict(self.ppo).items() if k != "seed"})
        if self.solver == "cgs":
            settings.update({f"cgs_{k}": v for k, v in self.cgs.items()})
        return settings

    def run_method(self, model, dense, batches, batch_ids, num_batches, budget, reduce, progress):
        is_qa = getattr(model, "qa_outputs", None) is not None
        refine = None
        if self.search == "ppo":
            batch_size = int(batches[0]["input_ids"].shape[0]) if batches else self.calibration_batch_size
            held = max(1, math.ceil(self.reward_samples / max(batch_size, 1)))
            reward_batches = [batch for batch, position in zip(batches, batch_ids) if position < held]
            loss = CalibrationLoss(model, dense, reward_batches, reduce, self.reward)

            def refine(masks: PruningMasks, stats: FisherStatistics):
                result = ppo_search(loss, stats.head_importance(), stats.ffn_importance(), masks, budget, self.ppo,
                                    progress)
                return result.masks.to(masks.head.device), {
                    "reward_examples": int(loss.count), "incumbent_loss": result.incumbent_loss,
                    "best_loss": result.loss, "improved": result.improved, "evaluations": result.evaluations,
                    "history": result.history}

        solver = CGSTuningSolver(**self.cgs) if self.solver == "cgs" else None
        result = kwon_prune(model, batches, budget, batch_ids=batch_ids, num_batches=num_batches,
                            rearrange=self.rearrange, tune=self.tune, tuning_reference=self.tuning_reference,
                            damping=self.damping, cls_only_last_ffn=not is_qa, reduce=reduce, progress=progress,
                            refine=refine, solver=solver, tuning_cache_bytes=self.tuning_cache_bytes())
        warnings_ = [f"layer {step.layer} {step.sublayer}: tuning stopped: {step.reason}"
                     for step in result.tuning if step.status == "failed"]
        details: dict[str, Any] = {"rearrangement": result.objective,
                                   "steps": [dataclasses.asdict(step) for step in result.tuning],
                                   "tuning_cache": result.tuning_cache,
                                   "warnings": warnings_}
        if result.refined is not None:
            details["ppo"] = result.refined
        if solver is not None:
            details["cgs"] = [dataclasses.asdict(entry) for entry in solver.log]
            breakdowns = sum(entry.status == "breakdown" for entry in solver.log)
            if breakdowns:
                warnings_.append(f"CGS broke down in {breakdowns} of {len(solver.log)} sublayer solves (the best "
                                 "iterate before the breakdown was used)")
        return result.masks, details


__all__ = ["BudgetProjection", "CGSTuningSolver", "CalibrationLoss", "GPrunerCallback", "PPOResult", "PPOSettings",
           "bernoulli_entropy", "bernoulli_log_prob", "clipped_surrogate", "ppo_search", "ranking_logits"]
