"""Factorised word embeddings: E (V × d) ≈ A (V × r) · B (r × d) by truncated SVD, GRAIN's optional compression of
the embedding table (the paper uses r = 192 for BERT-base's d = 768).

The factorised table is a :class:`~lit_prune.core.hf_modeling.modeling_lit_pruned.FactorizedEmbedding`; compacting a
model that has one records ``embedding_rank`` in its structure, so the pruned folder loads with the same layout
(format version 2), with or without lit_prune installed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lit_prune.core.arch import get_adapter
from lit_prune.core.hf_modeling import modeling_lit_pruned as hf

FactorizedEmbedding = hf.FactorizedEmbedding


def factorize_embeddings(model: nn.Module, rank: int) -> dict[str, Any]:
    """Replace ``model``'s word embeddings by their best rank-``rank`` factorisation (truncated SVD), in place.

    Args:
        model: a dense model of a supported encoder (any head) with plain word embeddings.
        rank: r, in [1, d).

    Returns:
        ``rank``, ``relative_error`` (‖E − AB‖_F / ‖E‖_F), ``parameters`` (``before``, ``after``).

    Raises:
        ValueError: a rank outside [1, d), embeddings already factorised, or a compacted model.
    """
    adapter = get_adapter(model)
    adapter.require_dense("factorise its embeddings")
    embeddings = model.base_model.get_input_embeddings()
    if isinstance(embeddings, FactorizedEmbedding):
        raise ValueError(f"the word embeddings of this {type(model).__name__} are already factorised "
                         f"(rank {embeddings.rank})")
    vocab, dim = embeddings.weight.shape
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank < dim:
        raise ValueError(f"embedding_rank={rank!r}: expected an integer in [1, {dim}) (the word embeddings' width is "
                         f"{dim})")
    weight = embeddings.weight.detach()
    u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)  # (V, d), (d,), (d, d)
    table = u[:, :rank] * s[:rank]  # (V, r)
    projection = vh[:rank]  # (r, d)
    factorized = FactorizedEmbedding(vocab, rank, dim, embeddings.padding_idx, weight.device, weight.dtype)
    with torch.no_grad():
        factorized.table.weight.copy_(table.to(weight.dtype))
        factorized.projection.weight.copy_(projection.t().to(weight.dtype))  # Linear(r, d) holds (d, r)
    factorized.requires_grad_(embeddings.weight.requires_grad)
    factorized.train(embeddings.training)
    model.base_model.set_input_embeddings(factorized)
    error = torch.linalg.norm(weight.double() - table @ projection) / torch.linalg.norm(weight.double())
    return {"rank": rank, "relative_error": float(error),
            "parameters": {"before": vocab * dim, "after": vocab * rank + rank * dim}}


__all__ = ["FactorizedEmbedding", "factorize_embeddings"]
