"""Apply :class:`PruningMasks` to a dense model with forward hooks, as a context manager.

transformers 5 has no ``head_mask`` (a head mask passed to forward is silently ignored), so masks act through hooks:

* ``qk``: multiplies the output of the query projection, dim by dim. A zero removes that dim's term from every
  q·k product (the same as removing the row of W_Q and of W_K); a real value scales it. DeBERTa's relative terms
  follow: their query-side projection (the query projection itself, or ``pos_query_proj``) is scaled alike.
* ``head`` and ``vo``: multiply the per-head context vectors at the input of the attention output projection W_O,
  viewed as (B, s, H, d_h). A head that is effectively pruned (see :mod:`lit_prune.core.masks`) is zeroed as a whole.
* ``ffn``: multiplies the input of the FFN down projection (for a gated FFN, the product of the activation and
  its gate).

A fused query/key/value projection (ModernBERT's) is hooked on its query part only. Under rotary embeddings the
``qk`` masks keep all or none of a kept head's dims (:meth:`~lit_prune.core.arch.ArchAdapter.check_masks`), so
scaling the queries before the rotation is the same as after it.

The hooks read the mask tensors themselves at every forward pass (no copies), so gradients reach masks that
require grad (Kwon et al.'s Fisher information) and in-place edits of the masks take effect at once. On exit
every hook is removed and the model is exactly as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lit_prune.core.arch import get_adapter
from lit_prune.core.masks import PruningMasks


def _scale_queries(masks: PruningMasks, layer: int, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    qk = masks.qk[layer].to(output.dtype).reshape(-1)  # (H·d_h,) in the query projection's feature order
    return output * qk


def _scale_context(masks: PruningMasks, layer: int, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    context, *rest = args
    alive = (masks.qk[layer] != 0).any(-1) & (masks.vo[layer] != 0).any(-1)  # (H,)
    scale = (masks.head[layer] * alive)[:, None] * masks.vo[layer]  # (H, d_h)
    heads, head_dim = scale.shape
    per_head = context.view(*context.shape[:-1], heads, head_dim)  # (B, s, H, d_h)
    return ((per_head * scale.to(context.dtype)).view(context.shape), *rest)


def _scale_neurons(masks: PruningMasks, layer: int, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    hidden, *rest = args  # (B, s, F)
    return (hidden * masks.ffn[layer].to(hidden.dtype), *rest)


@contextlib.contextmanager
def apply_masks(model: nn.Module, masks: PruningMasks) -> Iterator[PruningMasks]:
    """Mask ``model`` with ``masks`` inside the ``with`` block.

    Args:
        model: a dense model of a supported encoder (any head).
        masks: masks of the model's shape; may require grad, may hold real values.

    Yields:
        ``masks`` (the same object).

    Raises:
        ValueError: the masks do not fit the model, or the model is already compacted.
        UnsupportedArchitectureError: the model has no adapter.

    Example::

        masks = PruningMasks.from_model(model).requires_grad_(True, fields=("head", "ffn"))
        with apply_masks(model, masks):
            model(**batch, labels=labels).loss.backward()
        fisher_head = masks.head.grad ** 2
    """
    adapter = get_adapter(model)
    adapter.require_dense("apply masks")
    masks.check_shape(adapter.num_layers, adapter.num_heads, adapter.head_dim, adapter.ffn_dim,
                      what=type(model).__name__)
    adapter.check_masks(masks)
    handles: list[RemovableHandle] = []
    try:
        for index in range(adapter.num_layers):
            modules = adapter.layer(index)
            # DeBERTa's own projection of the relative embeddings into query space, where it has one (otherwise
            # the query projection makes those too, and its hook scales them)
            for query_like in (modules.query, modules.pos_query):
                if query_like is not None:
                    handles.append(query_like.register_forward_hook(
                        lambda m, a, o, i=index: _scale_queries(masks, i, m, a, o)))
            handles.append(modules.attn_out.register_forward_pre_hook(
                lambda m, a, i=index: _scale_context(masks, i, m, a)))
            handles.append(modules.ffn_down.register_forward_pre_hook(
                lambda m, a, i=index: _scale_neurons(masks, i, m, a)))
        yield masks
    finally:
        for handle in handles:
            handle.remove()
