"""Physical removal of masked units: a smaller model whose outputs equal the masked model's.

For every layer, :func:`compact` keeps the effectively kept heads (see :mod:`lit_prune.core.masks`), each with its
own sizes: the rows of W_Q and W_K of its nonzero query/key dims, the rows of W_V and columns of W_O of its nonzero
value/output dims; and the rows of W_up and columns of W_down of the nonzero FFN neurons. Real-valued masks are
folded into the weights (query scales into W_Q's rows and bias, head × value scales into W_O's columns, neuron
scales into W_down's columns), so the compacted model computes what the masked model computes.

A layer left without heads keeps W_O's bias: its attention sublayer outputs LayerNorm(x + b_O), exactly as the
masked model does; likewise an FFN without neurons outputs LayerNorm(x + b_down). Attention keeps the dense
scaling 1/sqrt(d_h). Kept heads are stored largest first, so heads of similar size run in one batched
``scaled_dot_product_attention`` call.

The new modules are the classes of the modelling file that pruned folders carry (``hf_modeling``), and the
structure is written to ``model.config.lit_prune_structure``: the compacted model saves and reloads as is.

Gated FFNs (GeGLU) keep a neuron's row and gate row of the up projection together; fused query/key/value
projections (ModernBERT's ``Wqkv``) are compacted part by part into a narrower fused projection; Linear layers
without biases stay without. A ModernBERT layer left without heads outputs x + 0 (it has no output bias).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from lit_prune.core.arch import STRUCTURE_KEY, ArchAdapter, LinearPart, get_adapter
from lit_prune.core.hf_modeling import modeling_lit_pruned as hf
from lit_prune.core.masks import PruningMasks


def compact(model: nn.Module, masks: PruningMasks) -> nn.Module:
    """Remove the units that ``masks`` prune from ``model``, in place.

    Args:
        model: a dense model of a supported encoder (base, sequence classification, QA, ...). Copy it first
            (``copy.deepcopy``) to keep the dense model.
        masks: masks of the model's shape; real values are folded into the weights.

    Returns:
        ``model`` itself, same class, with pruned modules and ``config.lit_prune_structure`` set.

    Raises:
        ValueError: the masks do not fit the model, or the model is already compacted.
        UnsupportedArchitectureError: the model has no adapter.
    """
    adapter = get_adapter(model)
    adapter.require_dense("compact it")
    masks.check_shape(adapter.num_layers, adapter.num_heads, adapter.head_dim, adapter.ffn_dim,
                      what=type(model).__name__)
    adapter.check_masks(masks)
    effective = masks.effective().to("cpu").clone()
    layout = asdict(adapter.spec)
    dims = {"hidden_size": adapter.hidden_size, "head_dim": adapter.head_dim}
    layers = []
    with torch.no_grad():
        for index in range(adapter.num_layers):
            layers.append(_compact_layer(adapter, index, effective, layout, dims))
    structure = {
        "format_version": hf.FORMAT_VERSION, "model_type": adapter.model_type, "num_layers": adapter.num_layers,
        "num_heads": adapter.num_heads, "head_dim": adapter.head_dim, "hidden_size": adapter.hidden_size,
        "ffn_dim": adapter.ffn_dim, "layers": layers,
    }
    embeddings = model.base_model.get_input_embeddings()
    if isinstance(embeddings, hf.FactorizedEmbedding):  # factorised word embeddings (GRAIN's option)
        structure.update(format_version=hf.FACTORIZED_FORMAT_VERSION, embedding_rank=embeddings.rank)
    setattr(model.config, STRUCTURE_KEY, structure)
    return model


def _compact_layer(adapter: ArchAdapter, index: int, masks: PruningMasks, layout: dict[str, str],
                   dims: dict[str, int]) -> dict[str, Any]:
    """Replace layer ``index``'s modules by pruned ones holding the kept weights; return its structure."""
    d_h = adapter.head_dim
    old = adapter.layer(index)
    # Kept heads, largest first (stable in head order): heads of one size class sit side by side and run in one
    # attention call (head_layout in the modelling file).
    kept = []
    for head in torch.nonzero(masks.head[index]).flatten().tolist():
        q_dims = torch.nonzero(masks.qk[index, head]).flatten()
        v_dims = torch.nonzero(masks.vo[index, head]).flatten()
        kept.append((head, q_dims, v_dims))
    kept.sort(key=lambda item: (-max(len(item[1]), len(item[2])), -len(item[1]), -len(item[2])))
    empty = torch.zeros(0, dtype=torch.long)
    qk_rows = torch.cat([head * d_h + q for head, q, _ in kept]) if kept else empty
    v_rows = torch.cat([head * d_h + v for head, _, v in kept]) if kept else empty
    q_scale = torch.cat([masks.qk[index, head, q] for head, q, _ in kept]) if kept else empty.float()
    o_scale = torch.cat([masks.head[index, head] * masks.vo[index, head, v] for head, _, v in kept]) if kept \
        else empty.float()
    neurons = torch.nonzero(masks.ffn[index]).flatten()
    structure = {"heads": [[len(q), len(v)] for _, q, v in kept], "head_ids": [head for head, _, _ in kept],
                 "ffn": len(neurons)}

    reference = old.attn_out.weight
    layer = adapter.layers[index]
    for path, module in hf.build_layer_modules(layout, structure, dims, adapter.attention_dropout,
                                               adapter.model.config, reference.device, reference.dtype).items():
        hf.set_submodule(layer, path, module.train(layer.training))
    new = adapter.layer(index, structure)

    def rows(linear: nn.Linear | LinearPart, index_: torch.Tensor,
             scale: torch.Tensor | None = None) -> dict[str, torch.Tensor | None]:
        index_ = index_.to(linear.weight.device)
        weight, bias = linear.weight[index_], None if linear.bias is None else linear.bias[index_]
        if scale is not None:
            scale = scale.to(weight)
            weight, bias = weight * scale[:, None], None if bias is None else bias * scale
        return {"weight": weight, "bias": bias}

    def columns(linear: nn.Linear, index_: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor | None]:
        weight = linear.weight[:, index_.to(linear.weight.device)] * scale.to(linear.weight)[None, :]
        return {"weight": weight, "bias": linear.bias}

    # a gated FFN's neuron j is row j of the up projection and its gate row F + j
    up_rows = torch.cat([neurons, neurons + adapter.ffn_dim]) if adapter.ffn_gated else neurons

    _fill(new.query, old.query, rows(old.query, qk_rows, q_scale))
    _fill(new.key, old.key, rows(old.key, qk_rows))
    if old.pos_query is not None:  # DeBERTa's unshared relative projections: the query's and key's rows
        _fill(new.pos_query, old.pos_query, rows(old.pos_query, qk_rows, q_scale))
    if old.pos_key is not None:
        _fill(new.pos_key, old.pos_key, rows(old.pos_key, qk_rows))
    _fill(new.value, old.value, rows(old.value, v_rows))
    _fill(new.attn_out, old.attn_out, columns(old.attn_out, v_rows, o_scale))
    _fill(new.ffn_up, old.ffn_up, rows(old.ffn_up, up_rows))
    _fill(new.ffn_down, old.ffn_down, columns(old.ffn_down, neurons, masks.ffn[index, neurons]))
    return structure


def _fill(new: nn.Linear | LinearPart, old: nn.Linear | LinearPart, tensors: dict[str, torch.Tensor | None]) -> None:
    """Copy the kept weights into a new Linear (or its part of a fused one), which inherits the old one's
    ``requires_grad``."""
    for name, value in tensors.items():
        if value is None:  # a Linear without bias
            continue
        target = getattr(new, name)  # a part's weight is a view into the fused parameter
        assert target.shape == value.shape, (name, target.shape, value.shape)
        target.copy_(value)
        source = getattr(old.linear if isinstance(old, LinearPart) else old, name)
        getattr(new.linear if isinstance(new, LinearPart) else new, name).requires_grad_(source.requires_grad)
