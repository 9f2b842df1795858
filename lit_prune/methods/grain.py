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
* **Embedding factorisation** (optional, ``embedding_rank``): the word embeddings become a rank-r SVD product before
  training and train as such; the pruned folder keeps them factorised.
* **A head with no query units left is removed as a whole.** lit_prune's masks treat a head with no query/key dims
  as pruned (in the reference code it would still average its values uniformly); its value units are removed too,
  and the parameter count says so.

Everything here is plain PyTorch (no Lightning): :class:`GrainLayout`, :func:`~lit_prune.prune.schedules.cubic_schedule`,
:class:`GrainImportance` and :func:`select_units`. The Lightning callback that drives them during a distillation
``fit`` is :class:`GrainCallback`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from lit_prune.core.arch import get_adapter
from lit_prune.core.compact import compact
from lit_prune.core.embeddings import FactorizedEmbedding, factorize_embeddings
from lit_prune.core.masking import apply_masks
from lit_prune.core.masks import PruningMasks
from lit_prune.methods.common import (agree_across_ranks, evaluate_module, find_encoder_model, latency_comparison,
                                      phase, publish, setup_problems, shared_report, training_summary)
from lit_prune.prune.schedules import cubic_schedule

log = logging.getLogger(__name__)

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


# ------------------------------------------------------------------------------------------------ the callback
class GrainCallback(Callback):
    """GRAIN as a Lightning callback: prunes the LightningModule's Hugging Face encoder while it trains.

    Add it to a ``fit`` that trains the model, best by distillation from the fine-tuned teacher
    (:class:`lit_prune.distill.DistilledSequenceClassificationModule` or ``...QuestionAnsweringModule``). Each
    training step folds the gradient of the module's ``prediction_loss`` (set by its ``training_step``; the
    distilled task modules set it to the distillation loss) with respect to the unit masks into the importance EMA,
    then, after the optimiser step, removes units down to the schedule's density. A module without
    ``prediction_loss`` has its importance taken from the whole training loss (said in the report). At the end of
    training the model is compacted (heads of different sizes), evaluated, timed against its dense copy and written
    as ``pruned_model/`` with ``pruning_report.json`` and ``pruning_masks.safetensors``, like every lit_prune method.

    Masks, importance and the schedule position are the callback's state: a ``fit`` resumed from a checkpoint goes
    on with them. Under DDP the mask gradients are averaged over processes before they enter the importance, so
    every process removes the same units; the run checks at the end that all processes agree.

    Args:
        params_kept: the fraction of the encoder's attention and FFN Linear parameters (weights and biases) to keep
            at the end, in (0, 1] (GRAIN's "density": 0.2, 0.1, 0.05).
        units: ``"intra"`` (query units, value units, FFN neurons: GRAIN) or ``"heads_ffn"`` (whole heads and FFN
            neurons: the paper's ablation).
        start: fraction of the training steps after which pruning starts (GRAIN: 0.2).
        end: fraction of the training steps at which the target density is reached (GRAIN: 0.4).
        ema_beta: β of the importance EMA (GRAIN: 0.998).
        alpha: α of the structure regulariser tanh(head value density / α) (GRAIN: 0.3); ``None`` switches it off.
        prune_every: prune every this many optimiser steps (GRAIN: 1).
        output_dir: where ``pruned_model/`` and ``pruning_report.json`` go (default: the Trainer's
            ``default_root_dir``).
        save_model: write the pruned model folder.
        evaluate: evaluate the model before training (``metrics.dense``: the teacher, when the student starts from
            it) and after pruning (needs the LightningModule's ``evaluate(dataloaders)``).
        latency_batch_size: evaluation examples in the batch timed for the latency comparison (0 skips it).
        latency_repeats: timed passes of each model.
        model_attribute: the LightningModule attribute that holds the Hugging Face model (``None``: the only one).
        seq_len: the ``s`` of the FLOPs accounting; ``None`` asks the data module's ``average_sequence_length()``.
        seed: recorded in the report (the run's randomness comes from ``seed_everything``).
        embedding_rank: factorise the word embeddings to this rank by SVD before training (GRAIN's option: 192
            for BERT-base); they train factorised and the pruned folder keeps them so. ``None``: leave them.
    """

    method = "grain"

    def __init__(
        self,
        params_kept: float = 0.2,
        units: Units = "intra",
        start: float = 0.2,
        end: float = 0.4,
        ema_beta: float = 0.998,
        alpha: float | None = 0.3,
        prune_every: int = 1,
        output_dir: str | None = None,
        save_model: bool = True,
        evaluate: bool = True,
        latency_batch_size: int = 32,
        latency_repeats: int = 10,
        model_attribute: str | None = None,
        seq_len: float | None = None,
        seed: int = 0,
        embedding_rank: int | None = None,
    ) -> None:
        super().__init__()
        problems = []
        if embedding_rank is not None and (isinstance(embedding_rank, bool) or not isinstance(embedding_rank, int)
                                           or embedding_rank < 1):
            problems.append(f"embedding_rank={embedding_rank!r}: expected a positive integer (below the hidden size) "
                            "or None")
        try:
            check_density(params_kept)
        except ValueError as error:
            problems.append(str(error))
        if units not in UNITS:
            problems.append(f"units={units!r}: expected one of {list(UNITS)}")
        if not (isinstance(start, (int, float)) and isinstance(end, (int, float)) and 0 <= start < end <= 1):
            problems.append(f"start={start!r}, end={end!r}: expected fractions of training with 0 <= start < end <= 1")
        if not (isinstance(ema_beta, (int, float)) and 0 <= ema_beta < 1):
            problems.append(f"ema_beta={ema_beta!r}: expected a number in [0, 1)")
        if alpha is not None and not (isinstance(alpha, (int, float)) and alpha > 0):
            problems.append(f"alpha={alpha!r}: expected a number > 0, or None to switch the regulariser off")
        for name, value, low in (("prune_every", prune_every, 1), ("latency_batch_size", latency_batch_size, 0),
                                 ("latency_repeats", latency_repeats, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                problems.append(f"{name}={value!r}: expected an integer >= {low}")
        if seq_len is not None and (isinstance(seq_len, bool) or not isinstance(seq_len, (int, float))
                                    or not seq_len > 0):
            problems.append(f"seq_len={seq_len!r}: expected a number > 0 (an average tokenised length) or None")
        if problems:
            raise ValueError(f"{type(self).__name__}: " + "; ".join(problems))
        self.params_kept, self.units, self.start, self.end = float(params_kept), units, start, end
        self.ema_beta, self.alpha, self.prune_every = ema_beta, alpha, prune_every
        self.output_dir, self.save_model, self.evaluate = output_dir, save_model, evaluate
        self.latency_batch_size, self.latency_repeats = latency_batch_size, latency_repeats
        self.model_attribute, self.seq_len, self.seed = model_attribute, seq_len, seed
        self.embedding_rank = embedding_rank
        self.embedding_info: dict[str, Any] | None = None
        self.masks: PruningMasks | None = None
        self.importance: GrainImportance | None = None
        self.layout: GrainLayout | None = None
        self.density = 1.0  # the schedule density last applied
        self.last_step = -1  # the optimiser step last pruned at
        self.history: list[dict[str, Any]] = []
        self.importance_source: str | None = None
        self.report: dict[str, Any] | None = None
        self.dense_metrics: dict[str, float] | None = None
        self._pending: dict[str, Any] | None = None
        self._seconds_before_resume = 0.0  # training seconds of the run a checkpoint came from
        self._started: float | None = None
        self._hooks: contextlib.ExitStack | None = None

    # ------------------------------------------------------------------------------------------------ settings
    def settings(self) -> dict[str, Any]:
        return {"params_kept": self.params_kept, "units": self.units, "start": self.start, "end": self.end,
                "ema_beta": self.ema_beta, "alpha": self.alpha, "prune_every": self.prune_every, "seed": self.seed,
                "embedding_rank": self.embedding_rank}

    def _fields(self) -> tuple[str, ...]:
        return UNIT_FIELDS[self.units]

    # ------------------------------------------------------------------------------------------------ hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        model, problems = setup_problems(trainer, pl_module, self.model_attribute, self.seq_len, self.evaluate,
                                         "GRAIN prunes a dense model")
        if model is not None and not problems:
            self.layout = GrainLayout.from_model(model)
            try:
                check_density(self.params_kept, self.layout)
            except ValueError as error:
                problems.append(str(error))
            hidden = self.layout.hidden_size
            if self.embedding_rank is not None and self.embedding_rank >= hidden:
                problems.append(f"embedding_rank={self.embedding_rank}: expected less than the hidden size {hidden}")
        if trainer.max_epochs == 0 or trainer.max_steps == 0:
            problems.append("the Trainer trains nothing (max_epochs or max_steps is 0): GRAIN prunes during training")
        if problems:
            raise ValueError(f"{type(self).__name__}: " + "; ".join(problems))
        if self.embedding_rank is not None and not isinstance(model.base_model.get_input_embeddings(),
                                                              FactorizedEmbedding):
            # before the optimiser is built, so the factors train; a resumed fit loads them from the checkpoint
            self.embedding_info = factorize_embeddings(model, self.embedding_rank)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = find_encoder_model(pl_module, self.model_attribute)
        device = next(model.parameters()).device
        self.layout = GrainLayout.from_model(model)
        self.masks = self.layout.masks(device).requires_grad_(True, fields=self._fields())
        self.importance = GrainImportance(self.layout, self.units, self.ema_beta, self.alpha, device=device)
        if self._pending is not None:
            self._restore(self._pending)
            self._pending = None
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total) or total < 1:
            raise ValueError(f"{type(self).__name__}: the Trainer cannot tell how many steps it will train "
                             f"(estimated_stepping_batches={total}); set trainer.max_steps")
        self.total_steps = int(total)
        self._started = time.perf_counter()
        self._seconds: dict[str, float] = {}
        if self.evaluate and self.last_step < 0:
            with phase(self._seconds, "evaluate_dense"):
                self.dense_metrics = evaluate_module(trainer, pl_module, "dense")
        self._hooks = contextlib.ExitStack()
        self._hooks.enter_context(apply_masks(model, self.masks))

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        """Fold the prediction loss's mask gradients into the importance (gradient separation)."""
        prediction = getattr(pl_module, "prediction_loss", None)
        source = "prediction_loss" if isinstance(prediction, torch.Tensor) and prediction.requires_grad else "loss"
        if self.importance_source is None:
            self.importance_source = source
            if source == "loss":
                log.warning("GRAIN: %s sets no prediction_loss; importance comes from the whole training loss",
                            type(pl_module).__name__)
        target = prediction if source == "prediction_loss" else loss
        tensors = [getattr(self.masks, name) for name in self._fields()]
        grads = torch.autograd.grad(target, tensors, retain_graph=True, allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)]
        if trainer.world_size > 1:  # one all-reduce of every mask gradient, averaged like DDP averages gradients
            flat = trainer.strategy.reduce(torch.cat([g.reshape(-1) for g in grads]), reduce_op="mean")
            grads = list(torch.split(flat, [g.numel() for g in grads]))
            grads = [g.reshape(t.shape) for g, t in zip(grads, tensors)]
        binary = self.masks.binary()
        self.importance.update(dict(zip(self._fields(), grads)), binary)
        if source == "prediction_loss":
            pl_module.prediction_loss = None  # never reuse a step's graph

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for name in self._fields():  # the total loss's backward also reached the masks: not used
            getattr(self.masks, name).grad = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step  # optimiser steps taken so far
        if step == self.last_step:  # gradient accumulation: no new optimiser step
            return
        self.last_step = step
        density = cubic_schedule(step, self.total_steps, self.params_kept, self.start, self.end)
        if density < self.density and (step % self.prune_every == 0 or density == self.params_kept):
            self._prune_to(density, step)
        pl_module.log("grain/params_kept", self.layout.kept_parameters(self.masks) / self.layout.dense_parameters,
                      on_step=True, on_epoch=False, batch_size=1)

    def _prune_to(self, density: float, step: int) -> None:
        new = select_units(self.importance.scores, self.masks, self.layout, density, self.units)
        with torch.no_grad():
            for name in ("head", "qk", "vo", "ffn"):
                getattr(self.masks, name).copy_(getattr(new, name))
        self.density = density
        kept = self.layout.kept_parameters(self.masks) / self.layout.dense_parameters
        if not self.history or step - self.history[-1]["step"] >= max(1, self.total_steps // 100) \
                or density == self.params_kept:
            binary = self.masks.binary()
            self.history.append({"step": step, "density": density, "params_kept": kept,
                                 "heads": int(binary.heads_alive().sum()), "ffn": int(binary.ffn.sum())})

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.finish(trainer, pl_module)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._hooks is not None:  # a fit that stopped with an error: leave the model unhooked
            self._hooks.close()
            self._hooks = None

    # ------------------------------------------------------------------------------------------------ the end
    def finish(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """Prune to the target (when training stopped before the schedule's end), compact the model in place,
        evaluate and time it, write the pruned folder and the report; return the report."""
        warnings_: list[str] = []
        if self.density > self.params_kept:
            warnings_.append(f"training stopped at step {self.last_step} of {self.total_steps}, before the schedule "
                             f"reached params_kept={self.params_kept} (density {self.density:.4f}): the remaining "
                             "units were removed at the end, without training after")
            self._prune_to(self.params_kept, self.last_step)
        self._hooks.close()
        self._hooks = None
        seconds = self._seconds
        # GRAIN prunes while it trains: its pruning cost is the training (the report's ``prune`` phase, as for
        # every method), without the evaluation before it
        seconds["prune"] = round(self._training_seconds(), 3)
        if self._seconds_before_resume:
            seconds["prune_before_resume"] = round(self._seconds_before_resume, 3)
        model = find_encoder_model(pl_module, self.model_attribute)
        modes = [(module, module.training) for module in model.modules()]
        model.eval()
        masks = self.masks.binary()  # comparisons: no autograd history
        dense = copy.deepcopy(model).eval()
        with phase(seconds, "compact"):
            compact(model, masks)
        ranks = agree_across_ranks(trainer, model, masks)
        for module, training in modes:
            module.training = training
        pruned_metrics = None
        if self.evaluate:
            with phase(seconds, "evaluate_pruned"):
                pruned_metrics = evaluate_module(trainer, pl_module, "pruned")
        self.masks = masks.to("cpu")
        latency = None
        if trainer.is_global_zero:
            with phase(seconds, "latency"):
                latency = latency_comparison(trainer, dense, model, self.latency_batch_size, self.latency_repeats)
        seconds["total"] = round(time.perf_counter() - self._started, 3)
        datamodule = trainer.datamodule
        seq_len = self.seq_len if self.seq_len is not None else datamodule.average_sequence_length()
        report = shared_report(self.method, pl_module, trainer, model, dense, self.seed, seq_len, None,
                               {"dense": self.dense_metrics, "pruned": pruned_metrics}, seconds, latency, self.masks)
        report["params"]["kept"] = report["params"]["pruned"]["encoder_linear"] / report["params"]["dense"][
            "encoder_linear"]
        report["params"]["target"] = self.params_kept
        report.update({"settings": self.settings(), "importance_from": self.importance_source,
                       "embeddings": self.embedding_info, "training": training_summary(trainer),
                       "schedule": {"total_steps": self.total_steps, "start_step": int(self.start * self.total_steps),
                                    "end_step": int(self.end * self.total_steps), "history": self.history},
                       "warnings": warnings_})
        self.report = report
        return publish(trainer, report, self.output_folder(trainer), model, self.masks,
                       getattr(datamodule, "tokenizer", None), self.save_model, ranks)

    def output_folder(self, trainer: L.Trainer) -> Path:
        return Path(self.output_dir or trainer.default_root_dir)

    def _training_seconds(self) -> float:
        """Seconds of pruning-while-training so far: this fit's (without the dense evaluation) plus, after a resume,
        those of the run up to its checkpoint."""
        if self._started is None:
            return self._seconds_before_resume
        return (self._seconds_before_resume + time.perf_counter() - self._started
                - self._seconds.get("evaluate_dense", 0.0))

    # ------------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        if self.masks is None:
            return {}
        return {"masks": {name: t.detach().cpu().clone() for name, t in self.masks.to_dict().items()},
                "importance": self.importance.state_dict() if self.importance is not None else None,
                "density": self.density, "last_step": self.last_step, "history": list(self.history),
                "importance_source": self.importance_source, "dense_metrics": self.dense_metrics,
                "settings": self.settings(), "training_seconds": self._training_seconds()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.masks is None:  # restored before fit starts: applied in on_fit_start
            self._pending = state_dict
        else:
            self._restore(state_dict)

    def _restore(self, state: dict[str, Any]) -> None:
        saved = state.get("settings", {})
        changed = [f"{k}: {saved[k]!r} -> {v!r}" for k, v in self.settings().items()
                   if k in ("params_kept", "units", "start", "end") and k in saved and saved[k] != v]
        if changed:
            raise ValueError(f"{type(self).__name__}: the checkpoint was written with other pruning settings "
                             f"({'; '.join(changed)}); resume with the same settings")
        with torch.no_grad():
            for name, value in state["masks"].items():
                getattr(self.masks, name).copy_(value.to(getattr(self.masks, name).device))
        if state.get("importance") is not None:
            self.importance.load_state_dict(state["importance"])
        self.density, self.last_step = float(state["density"]), int(state["last_step"])
        self.history = list(state.get("history", []))
        self.importance_source = state.get("importance_source")
        self.dense_metrics = state.get("dense_metrics")
        self._seconds_before_resume = float(state.get("training_seconds", 0.0))


__all__ = ["UNITS", "UNIT_FIELDS", "GrainCallback", "GrainImportance", "GrainLayout", "Units", "check_density",
           "select_units"]
