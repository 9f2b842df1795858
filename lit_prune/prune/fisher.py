"""Fisher statistics of the head and neuron masks: stage 1 of Kwon et al.'s framework (used by Kwon and G-Pruner).

Kwon et al. 2022, "A Fast Post-Training Pruning Framework for Transformers" (NeurIPS 2022); reference code:
WoosukKwon/retraining-free-pruning (``prune/fisher.py``). Plain PyTorch; the weights are never changed.

Per calibration batch, the gradient of the task loss w.r.t. the (L, H) head mask and the (L, F) FFN-neuron mask, at
the all-ones mask (:func:`~lit_prune.prune.importance.mask_gradients`). A unit's importance is the diagonal of the
empirical Fisher: the sum over batches of its squared mask gradient. The per-batch gradients themselves are kept,
since the mask rearrangement (:mod:`~lit_prune.prune.rearrange`) needs them, not only their squares.

Departures from the paper and the reference code: gradients come from ``torch.autograd.grad`` on copies of the masks
(no ``.grad`` accumulation anywhere), and the masks act through :func:`~lit_prune.core.masking.apply_masks` hooks
(transformers 5 has no ``head_mask``).

Sentence-embedding models have no labels, hence no task loss; and a distillation loss to the dense model's own
embeddings is at its minimum on the dense model, where its gradient (and so the empirical Fisher) is zero. Their
Fisher is therefore the model's own, sampled (:func:`embedding_fisher_loss`): the embedding read as the mean of a
unit Gaussian, a target drawn from it per sentence (y = e + z, z ~ N(0, I), seeded by the batch's position in the
sample, so every process and every run draws the same), and the negative log-likelihood ½‖e − y‖² averaged over the
batch as the loss. Its squared mask gradients estimate the diagonal of the Fisher information Σ_k (∂e_k/∂m)², which
is what the empirical Fisher of a task loss estimates for a classifier's softmax.

Driving this from a calibration loop (every statistic is a plain tensor): one pass over the calibration data
(forward + backward per batch), ``stats.add(*mask_gradients(...))``, or :func:`fisher_pass` for a whole list of
batches. Under DDP, all-gather ``head_grads`` and ``ffn_grads`` (equal batch counts per rank) and rebuild with
:meth:`FisherStatistics.from_gathered`; importances and the rearrangement objective do not depend on the order of
the batches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lit_prune.core.arch import get_adapter
from lit_prune.core.masks import PruningMasks
from lit_prune.prune.importance import mask_gradients
from lit_prune.prune.types import Progress, Reduce


@dataclass(eq=False)
class FisherStatistics:
    """Per-batch mask gradients of the calibration data (Kwon's ``collect_mask_grads``).

    Plain tensors, so a DDP loop can all-gather them; the batch order does not matter to any stage.

    Attributes:
        head_grads: (N, L, H) head-mask gradient of each of N batches.
        ffn_grads: (N, L, F) FFN-mask gradient of each batch.

    Raises:
        ValueError: on construction, for tensors of the wrong rank or mismatched N or L.
    """

    head_grads: torch.Tensor
    ffn_grads: torch.Tensor

    def __post_init__(self) -> None:
        problems = []
        if self.head_grads.dim() != 3:
            problems.append(f"head_grads has shape {tuple(self.head_grads.shape)}, expected (N, L, H)")
        if self.ffn_grads.dim() != 3:
            problems.append(f"ffn_grads has shape {tuple(self.ffn_grads.shape)}, expected (N, L, F)")
        if not problems and self.head_grads.shape[:2] != self.ffn_grads.shape[:2]:
            problems.append(f"head_grads {tuple(self.head_grads.shape)} and ffn_grads {tuple(self.ffn_grads.shape)} "
                            "disagree on (N, L)")
        if problems:
            raise ValueError("invalid FisherStatistics: " + "; ".join(problems))

    @classmethod
    def empty(cls, num_layers: int, num_heads: int, ffn_dim: int,
              device: torch.device | str | None = None) -> FisherStatistics:
        """Statistics of zero batches, shaped for an (L, H, F) model."""
        return cls(torch.zeros(0, num_layers, num_heads, device=device),
                   torch.zeros(0, num_layers, ffn_dim, device=device))

    @property
    def num_batches(self) -> int:
        """N."""
        return self.head_grads.shape[0]

    def add(self, head_grad: torch.Tensor, ffn_grad: torch.Tensor) -> None:
        """Append one batch's gradients: ``head_grad`` (L, H) and ``ffn_grad`` (L, F)."""
        expected = (tuple(self.head_grads.shape[1:]), tuple(self.ffn_grads.shape[1:]))
        if (tuple(head_grad.shape), tuple(ffn_grad.shape)) != expected:
            raise ValueError(f"FisherStatistics.add: got head_grad {tuple(head_grad.shape)} and ffn_grad "
                             f"{tuple(ffn_grad.shape)}, expected {expected[0]} and {expected[1]}")
        device, dtype = self.head_grads.device, self.head_grads.dtype
        self.head_grads = torch.cat([self.head_grads, head_grad.detach().to(device, dtype)[None]])  # (N+1, L, H)
        self.ffn_grads = torch.cat([self.ffn_grads, ffn_grad.detach().to(device, dtype)[None]])  # (N+1, L, F)

    def head_importance(self) -> torch.Tensor:
        """(L, H) float64: Σ over batches of grad² (the empirical Fisher diagonal)."""
        return self.head_grads.double().pow(2).sum(0)

    def ffn_importance(self) -> torch.Tensor:
        """(L, F) float64: Σ over batches of grad²."""
        return self.ffn_grads.double().pow(2).sum(0)

    @classmethod
    def merge(cls, stats: Sequence[FisherStatistics]) -> FisherStatistics:
        """The statistics of all the batches of ``stats``, concatenated in order (on the first one's device)."""
        if not stats:
            raise ValueError("FisherStatistics.merge: nothing to merge")
        device = stats[0].head_grads.device
        return cls(torch.cat([s.head_grads.to(device) for s in stats]),
                   torch.cat([s.ffn_grads.to(device) for s in stats]))

    @classmethod
    def from_gathered(cls, head_grads: torch.Tensor, ffn_grads: torch.Tensor) -> FisherStatistics:
        """Statistics from all-gathered tensors: ``head_grads`` (W, N, L, H) and ``ffn_grads`` (W, N, L, F)."""
        if head_grads.dim() != 4 or ffn_grads.dim() != 4:
            raise ValueError(f"FisherStatistics.from_gathered: got {tuple(head_grads.shape)} and "
                             f"{tuple(ffn_grads.shape)}, expected (W, N, L, H) and (W, N, L, F)")
        return cls(head_grads.flatten(0, 1), ffn_grads.flatten(0, 1))  # (W·N, L, H), (W·N, L, F)

    def to_dict(self) -> dict[str, torch.Tensor]:
        """``{"head_grads", "ffn_grads"}`` (for a ``state_dict``)."""
        return {"head_grads": self.head_grads, "ffn_grads": self.ffn_grads}

    @classmethod
    def from_dict(cls, tensors: Mapping[str, torch.Tensor]) -> FisherStatistics:
        """Statistics from :meth:`to_dict`'s output."""
        if set(tensors) != {"head_grads", "ffn_grads"}:
            raise ValueError(f"FisherStatistics.from_dict: expected keys ['ffn_grads', 'head_grads'], got "
                             f"{sorted(tensors)}")
        return cls(tensors["head_grads"], tensors["ffn_grads"])



#: a per-batch loss for the Fisher pass: ``loss_fn(outputs, position)``, position: the batch's place in the sample
BatchLoss = Callable[[Any, int], torch.Tensor]


def embedding_fisher_loss(seed: int) -> BatchLoss:
    """The Fisher pass's loss for a sentence-embedding model (see the module docstring): ½‖e − (e + z)‖² with
    z ~ N(0, I) drawn per sentence from ``seed`` and the batch's position, averaged over the batch."""
    def loss(outputs: Any, position: int) -> torch.Tensor:
        embeddings = outputs.embeddings.float()
        generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(position))
        noise = torch.randn(embeddings.shape, generator=generator).to(embeddings.device)
        return 0.5 * (embeddings - (embeddings.detach() + noise)).pow(2).sum(-1).mean()

    return loss


def fisher_pass(model: nn.Module, batches: Sequence[Mapping[str, torch.Tensor]], *,
                batch_ids: Sequence[int] | None = None, num_batches: int | None = None, reduce: Reduce | None = None,
                progress: Progress | None = None, loss_fn: BatchLoss | None = None) -> FisherStatistics:
    """The Fisher pass: one forward and backward pass per calibration batch, at the all-ones masks.

    Args:
        model: a fine-tuned dense task model whose output has ``.loss`` given labels (its weights are not changed).
        batches: this process's labelled calibration batches.
        batch_ids: the positions of ``batches`` in the whole calibration sample (DDP: the batches of every process
            together); default ``0..len(batches)-1``.
        num_batches: how many batches the whole sample has (default ``len(batches)``).
        reduce: sums a dict of tensors over processes; ``None`` in a single process.
        progress: called as ``progress(description, done, total)`` after each batch.
        loss_fn: the loss differentiated, ``loss_fn(outputs, position)``; ``None``: the task loss the model returns
            given labels (a sentence-embedding model: :func:`embedding_fisher_loss`).

    Returns:
        The statistics of the whole sample (every process's batches, in sample order), on the CPU.

    Raises:
        ValueError: no batches, or ``batch_ids`` that do not place each batch in ``[0, num_batches)``.
    """
    adapter = get_adapter(model)
    if not batches:
        raise ValueError("Kwon: no calibration batches")
    batch_ids = list(range(len(batches))) if batch_ids is None else list(batch_ids)
    num_batches = len(batches) if num_batches is None else num_batches
    if len(batch_ids) != len(batches) or any(not 0 <= i < num_batches for i in batch_ids):
        raise ValueError(f"batch_ids must give each of the {len(batches)} batches a position in [0, {num_batches})")
    device = next(model.parameters()).device
    ones = PruningMasks.ones(adapter.num_layers, adapter.num_heads, adapter.head_dim, adapter.ffn_dim, device=device)
    # Each batch's gradients go to its row of the whole sample's table; summing the tables over processes (zeros
    # elsewhere) gathers every process's rows exactly, in the same order as a single process would have them.
    # float32 whatever the activations' dtype (mask gradients are float32: the masks are)
    head_grads = torch.zeros(num_batches, adapter.num_layers, adapter.num_heads, dtype=torch.float32, device=device)
    ffn_grads = torch.zeros(num_batches, adapter.num_layers, adapter.ffn_dim, dtype=torch.float32, device=device)
    for i, (position, batch) in enumerate(zip(batch_ids, batches)):
        batch_loss = None if loss_fn is None else (lambda outputs, position=position: loss_fn(outputs, position))
        head_grads[position], ffn_grads[position] = mask_gradients(model, ones, batch, loss_fn=batch_loss)
        if progress is not None:
            progress("Kwon Fisher", i + 1, len(batches))
    if reduce is not None:
        gathered = reduce({"head_grads": head_grads, "ffn_grads": ffn_grads})
        head_grads, ffn_grads = gathered["head_grads"], gathered["ffn_grads"]
    return FisherStatistics(head_grads.cpu(), ffn_grads.cpu())


__all__ = ["BatchLoss", "FisherStatistics", "embedding_fisher_loss", "fisher_pass"]
