"""Mask gradients: the gradient of a loss with respect to mask variables on the pruning units, weights frozen.

Every importance score in lit_prune starts here: Kwon et al.'s Fisher information (task loss, head and neuron
masks), KPrune's predictive knowledge (distillation loss, value dims and neurons), G-Pruner's Fisher ranking. The
masks act through :func:`~lit_prune.core.masking.apply_masks`'s hooks (transformers 5 has no ``head_mask``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lit_prune.core.arch import get_adapter
from lit_prune.core.masking import apply_masks
from lit_prune.core.masks import PruningMasks


def _check_labels(batch: Mapping[str, torch.Tensor]) -> None:
    if "labels" in batch:
        return
    missing = [key for key in ("start_positions", "end_positions") if key not in batch]
    if len(missing) == 1:
        raise ValueError(f"mask_gradients: the batch has start/end positions but no {missing[0]!r}; question "
                         f"answering needs both 'start_positions' and 'end_positions' (batch keys: {sorted(batch)})")
    if missing:
        raise ValueError("mask_gradients needs the task loss, but the batch has no labels: missing 'labels' "
                         "(sequence classification / regression) or 'start_positions' and 'end_positions' "
                         f"(question answering); batch keys: {sorted(batch)}")


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def mask_gradients(model: nn.Module, masks: PruningMasks, batch: Mapping[str, Any],
                   loss_fn: Callable[[Any], torch.Tensor] | None = None,
                   fields: Sequence[str] = ("head", "ffn")) -> tuple[torch.Tensor, ...]:
    """One forward and backward pass of a loss under ``masks``: the gradients of the mask ``fields``.

    The weights do not accumulate gradients: their ``requires_grad`` is switched off for the call and restored
    after, and the gradients are taken with ``torch.autograd.grad`` on copies of the masks (``masks`` itself is
    not modified). The pass runs in eval mode (no dropout); every module's mode is restored after. Works inside
    ``torch.no_grad`` / ``torch.inference_mode`` (as in a Lightning validation or predict loop).

    Args:
        model: a dense task model of a supported encoder.
        masks: masks of the model's shape (Kwon: all ones).
        batch: model inputs, moved to the model's device. Without ``loss_fn`` it must carry labels: ``labels``
            (classification, regression) or ``start_positions`` and ``end_positions`` (question answering).
        loss_fn: the loss of the model's outputs (e.g. a distillation loss against a teacher's predictions);
            ``None``: the task loss the model returns given labels (``outputs.loss``).
        fields: the mask fields to differentiate (``head`` (L, H), ``qk`` / ``vo`` (L, H, d_h), ``ffn`` (L, F)).

    Returns:
        d loss / d ``masks.<field>`` for each of ``fields``, in order, float32.

    Raises:
        ValueError: the batch has no labels while ``loss_fn`` is ``None`` (naming what is missing), the masks do not
            fit the model, or the model returned no loss.
    """
    if loss_fn is None:
        _check_labels(batch)
    adapter = get_adapter(model)
    masks.check_shape(adapter.num_layers, adapter.num_heads, adapter.head_dim, adapter.ffn_dim,
                      what=type(model).__name__)
    device = _model_device(model)
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    modes = [(module, module.training) for module in model.modules()]
    try:
        for p in params:
            p.requires_grad_(False)
        model.eval()
        # Outside inference mode, and with fresh (non-inference) tensors: the loss keeps its labels for backward.
        with torch.inference_mode(False), torch.enable_grad():
            work = masks.clone().to(device).requires_grad_(True, fields=tuple(fields))
            inputs = {k: v.to(device).clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            with apply_masks(model, work):
                outputs = model(**inputs)
            loss = outputs.loss if loss_fn is None else loss_fn(outputs)
            if loss is None:
                raise ValueError(f"{type(model).__name__} returned no loss for a batch with keys {sorted(batch)}")
            grads = torch.autograd.grad(loss, [getattr(work, name) for name in fields])
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        for module, training in modes:
            module.training = training
    return tuple(grad.detach().float() for grad in grads)


__all__ = ["mask_gradients"]
