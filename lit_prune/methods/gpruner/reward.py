"""G-Pruner's PPOM reward: the calibration loss of a masked model (our reading; see :mod:`lit_prune.methods.gpruner`).

The reward of a mask is minus the calibration loss of the masked model on held calibration batches (the first
``reward_samples`` examples of the calibration sample, fixed for the whole search so rewards are comparable): the
KL divergence from the dense model's predictions (MSE for regression; start and end distributions for QA). The
dense predictions are computed once and cached; each rollout is one forward pass of a compacted copy of the model
(the masked units physically removed), which costs about ``flops_kept`` of a dense pass (:class:`CalibrationLoss`).

Choice (the paper's code is not public): the reward is a distillation loss on the held calibration batches by
default, not the task loss (``reward="task"``: the masked model's own loss on the calibration labels, an ablation;
with the few reward examples of a calibration sample it overfits their labels, see the README).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from lit_prune.core.compact import compact
from lit_prune.core.masking import apply_masks
from lit_prune.core.masks import PruningMasks
from lit_prune.prune.batches import LABEL_KEYS, model_inputs
from lit_prune.prune.distill import dense_predictions, distillation_loss
from lit_prune.prune.types import Reduce

Reward = Literal["distillation", "task"]
REWARDS = ("distillation", "task")


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


__all__ = ["REWARDS", "CalibrationLoss", "Reward"]
