"""G-Pruner as a Lightning callback: Kwon's pipeline with PPOM search and CG²MT tuning, each behind a switch.

The pipeline is :func:`~lit_prune.prune.post_training.kwon_prune` (the shared layer); this module hands it the PPO
search (:mod:`~lit_prune.methods.gpruner.ppo`, with the reward of :mod:`~lit_prune.methods.gpruner.reward`) as its
``refine`` step and the CGS solver (:mod:`~lit_prune.methods.gpruner.cgs`) as its tuning ``solver``, and adds their
logs to the report (see :mod:`lit_prune.methods.base` for when the callback runs and how every run ends).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

from lit_prune.core.masks import PruningMasks
from lit_prune.methods.base import MaskTuningPruning
from lit_prune.methods.gpruner.cgs import CGSTuningSolver
from lit_prune.methods.gpruner.ppo import PPOSettings, ppo_search
from lit_prune.methods.gpruner.reward import REWARDS, CalibrationLoss, Reward
from lit_prune.prune.fisher import FisherStatistics


class GPrunerCallback(MaskTuningPruning):
    """G-Pruner as a Lightning callback: Kwon's pipeline with PPO mask search and CGS mask tuning (switchable).

    ``search="greedy", solver="lstsq"`` is exactly Kwon et al.'s pipeline (the masks of ``KwonCallback`` with the
    same settings); ``search="ppo", solver="cgs"`` is G-Pruner; the other two are the ablations. Passes: as Kwon's
    (one Fisher pass, 2L − 1 truncated tuning passes), plus one forward pass of a compacted copy per PPO rollout.

    Args:
        flops_kept: the fraction of the dense FLOPs to keep, in (0, 1] (``None``: 0.5, unless ``speedup`` is given:
            a latency budget, see :class:`~lit_prune.methods.base.RetrainingFreePruning`).
        search: ``"ppo"`` (PPOM) or ``"greedy"`` (Kwon's search + rearrangement only).
        solver: ``"cgs"`` (CG²MT) or ``"lstsq"`` (Kwon's damped least squares).
        reward_samples: held calibration examples for the PPO reward (the first ones of the calibration sample).
        reward: the PPO reward's loss: ``"distillation"`` (KL from the dense model) or ``"task"`` (the task loss).
        ppo_iterations, ppo_rollouts, ppo_epochs, ppo_clip, ppo_entropy_coef, ppo_value_coef, ppo_learning_rate,
            ppo_init_temperature: :class:`PPOSettings` (the PPO seed is ``seed``).
        cgs_tol, cgs_max_iter, cgs_ridge: :class:`CGSTuningSolver` (``cgs_ridge``: the relative ridge that guards
            singular systems; see docs/callbacks.md for ``damping`` against ``ridge``).
        **kwargs: Kwon's pipeline settings (``num_samples``, ``replacement``, ``rearrange``, ``tune``,
            ``tuning_reference``, ``damping`` (for ``solver="lstsq"``), ``tuning_cache_mb``:
            :class:`~lit_prune.methods.base.MaskTuningPruning`) and those every retraining-free callback shares
            (``seed``: the calibration draw's and the PPO search's; output, evaluation, latency, ...:
            :class:`~lit_prune.methods.base.RetrainingFreePruning`).
    """

    method = "gpruner"

    def __init__(
        self,
        flops_kept: float | None = None,
        search: Literal["ppo", "greedy"] = "ppo",
        solver: Literal["cgs", "lstsq"] = "cgs",
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
        cgs_ridge: float = 1e-6,
        **kwargs: Any,
    ) -> None:
        super().__init__(flops_kept=flops_kept, **kwargs)
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
                               learning_rate=ppo_learning_rate, init_temperature=ppo_init_temperature,
                               seed=self.seed)
        if search == "ppo":
            problems += self.ppo.problems()
        try:
            CGSTuningSolver(cgs_tol, cgs_max_iter, cgs_ridge)
        except ValueError as error:
            problems.append(str(error))
        self.problems += problems
        self.raise_problems(self.problems)
        self.search = search
        self.solver = solver
        self.reward_samples = reward_samples
        self.reward = reward
        self.cgs = {"tol": cgs_tol, "max_iter": cgs_max_iter, "ridge": cgs_ridge}

    def method_settings(self) -> dict[str, Any]:
        settings = {**super().method_settings(), "search": self.search, "solver": self.solver}
        if self.search == "ppo":
            settings.update(reward=self.reward, reward_samples=self.reward_samples,
                            **{f"ppo_{k}": v for k, v in dataclasses.asdict(self.ppo).items() if k != "seed"})
        if self.solver == "cgs":
            settings.update({f"cgs_{k}": v for k, v in self.cgs.items()})
        return settings

    def run_method(self, model, dense, batches, batch_ids, num_batches, budget, reduce, progress):
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
        result = self.pipeline(model, batches, batch_ids, num_batches, budget, reduce, progress, refine, solver)
        details = result.report_details()
        if result.refined is not None:
            details["ppo"] = result.refined
        if solver is not None:
            details["cgs"] = [dataclasses.asdict(entry) for entry in solver.log]
            breakdowns = sum(entry.status == "breakdown" for entry in solver.log)
            if breakdowns:
                details["warnings"].append(f"CGS broke down in {breakdowns} of {len(solver.log)} sublayer solves "
                                           "(the best iterate before the breakdown was used)")
        return result.masks, details



__all__ = ["GPrunerCallback"]
