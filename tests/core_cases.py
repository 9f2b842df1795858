"""Mask cases shared by the core tests: every situation compaction and masking must agree on."""

from __future__ import annotations

import torch

from lit_prune.core.arch import get_adapter
from lit_prune.core.masks import PruningMasks

MASK_CASES = (
    "ones",             # the dense model
    "heads_ffn",        # Kwon-style: whole heads and neurons
    "intra_head",       # GRAIN-style: heads of different (q, v) sizes, some emptied through qk or vo only
    "empty_attention",  # layer 0 keeps no head
    "empty_ffn",        # layer 1 keeps no neuron
    "empty_layer",      # layer 1 keeps neither
    "scales",           # real-valued head / ffn / qk / vo scales (Kwon's tuned masks), some negative
    "all_pruned",       # nothing left but embeddings, biases and LayerNorms
)


def make_masks(case: str, num_layers: int = 2, num_heads: int = 4, head_dim: int = 8, ffn_dim: int = 48,
               seed: int = 0, model=None) -> PruningMasks:
    """Masks of one of :data:`MASK_CASES` (L layers; at least 2 layers for the per-layer cases), as ``model``'s
    architecture can apply them when one is given (rotary embeddings keep a head's query/key dims whole)."""
    masks = _case_masks(case, num_layers, num_heads, head_dim, ffn_dim, seed)
    return masks if model is None else get_adapter(model).conform_masks(masks)


def _case_masks(case: str, num_layers: int, num_heads: int, head_dim: int, ffn_dim: int, seed: int) -> PruningMasks:
    g = torch.Generator().manual_seed(seed)
    masks = PruningMasks.ones(num_layers, num_heads, head_dim, ffn_dim)

    def bernoulli(shape: tuple[int, ...], p: float) -> torch.Tensor:
        return (torch.rand(shape, generator=g) < p).float()

    if case == "ones":
        pass
    elif case == "heads_ffn":
        masks.head = bernoulli((num_layers, num_heads), 0.6)
        masks.head[:, 0] = 1
        masks.ffn = bernoulli((num_layers, ffn_dim), 0.5)
    elif case == "intra_head":
        masks.qk = bernoulli((num_layers, num_heads, head_dim), 0.6)
        masks.vo = bernoulli((num_layers, num_heads, head_dim), 0.6)
        masks.qk[0, 1] = 0  # a head emptied through its query/key dims only
        masks.vo[-1, 2] = 0  # a head emptied through its value dims only
        masks.qk[0, 0] = 1  # and one full head beside smaller ones
        masks.vo[0, 0] = 1
        masks.ffn = bernoulli((num_layers, ffn_dim), 0.7)
    elif case == "empty_attention":
        masks.head[0] = 0
        masks.ffn = bernoulli((num_layers, ffn_dim), 0.5)
    elif case == "empty_ffn":
        masks.ffn[1] = 0
        masks.vo = bernoulli((num_layers, num_heads, head_dim), 0.7)
    elif case == "empty_layer":
        masks.head[1] = 0
        masks.ffn[1] = 0
    elif case == "scales":
        def scales(shape: tuple[int, ...]) -> torch.Tensor:
            return (torch.rand(shape, generator=g) * 3 - 1) * bernoulli(shape, 0.8)

        masks.head, masks.ffn = scales((num_layers, num_heads)), scales((num_layers, ffn_dim))
        masks.qk, masks.vo = scales((num_layers, num_heads, head_dim)), scales((num_layers, num_heads, head_dim))
    elif case == "all_pruned":
        masks.head.zero_()
        masks.ffn.zero_()
    else:
        raise ValueError(case)
    return masks
