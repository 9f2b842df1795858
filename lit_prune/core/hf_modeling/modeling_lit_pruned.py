"""Structurally pruned BERT, RoBERTa and DistilBERT encoders (written by lit_prune).

This file is copied into every pruned model folder and named in the folder's ``config.json`` ``auto_map``, so
``AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)`` (and ``AutoModel``,
``AutoModelForQuestionAnswering``) rebuild the pruned architecture on a machine without lit_prune. It imports
only ``torch`` and ``transformers``.

The pruned structure lives in the config under ``lit_prune_structure``::

    {"format_version": 1, "model_type": "bert",
     "num_layers": L, "num_heads": H, "head_dim": d_h, "hidden_size": d, "ffn_dim": F,   # the dense shape
     "layers": [{"heads": [[q, v], ...],      # per kept head, in stored order: query/key dims, value/output dims
                 "head_ids": [h, ...],        # the dense model's index of each kept head (for reports)
                 "ffn": n}, ...]}             # FFN neurons kept

Each model class here is the transformers class it extends (``isinstance`` still holds); its ``__init__`` builds
the dense model and then swaps in, layer by layer, a self-attention module with per-head sizes and narrower
Linear layers, so that the weights in ``model.safetensors`` load into the right shapes.

Attention keeps the ORIGINAL scaling 1/sqrt(d_h) whatever the kept query/key size: pruning query/key dims
removes their terms from q·k, it does not renormalise the rest. Heads of equal (q, v) size are stored side by
side and computed with one ``scaled_dot_product_attention`` call per size.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertModel,
    DistilBertForQuestionAnswering,
    DistilBertForSequenceClassification,
    DistilBertModel,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaModel,
)

STRUCTURE_KEY = "lit_prune_structure"
FORMAT_VERSION = 1

# Where each architecture keeps its parts. Paths of modules are relative to one encoder layer, except
# ``layers`` (relative to the base model); the last five entries name config attributes.
LAYOUTS: dict[str, dict[str, str]] = {
    "bert": {
        "layers": "encoder.layer",
        "self_attention": "attention.self",
        "query": "attention.self.query",
        "key": "attention.self.key",
        "value": "attention.self.value",
        "attn_out": "attention.output.dense",
        "attn_norm": "attention.output.LayerNorm",
        "ffn_up": "intermediate.dense",
        "ffn_down": "output.dense",
        "ffn_norm": "output.LayerNorm",
        "attention_style": "bert",
        "num_layers": "num_hidden_layers",
        "num_heads": "num_attention_heads",
        "hidden_size": "hidden_size",
        "ffn_dim": "intermediate_size",
        "attention_dropout": "attention_probs_dropout_prob",
    },
    "distilbert": {
        "layers": "transformer.layer",
        "self_attention": "attention",
        "query": "attention.q_lin",
        "key": "attention.k_lin",
        "value": "attention.v_lin",
        "attn_out": "attention.out_lin",
        "attn_norm": "sa_layer_norm",
        "ffn_up": "ffn.lin1",
        "ffn_down": "ffn.lin2",
        "ffn_norm": "output_layer_norm",
        "attention_style": "distilbert",
        "num_layers": "n_layers",
        "num_heads": "n_heads",
        "hidden_size": "dim",
        "ffn_dim": "hidden_dim",
        "attention_dropout": "attention_dropout",
    },
}
LAYOUTS["roberta"] = dict(LAYOUTS["bert"])

KINDS = ("base", "sequence_classification", "question_answering")
AUTO_CLASSES = {
    "base": "AutoModel",
    "sequence_classification": "AutoModelForSequenceClassification",
    "question_answering": "AutoModelForQuestionAnswering",
}


# ------------------------------------------------------------------------------------------------ attention
def head_groups(head_sizes: list[tuple[int, int]]) -> list[tuple[int, int, int, int, int]]:
    """Runs of consecutive heads with equal (q, v) size.

    Returns:
        One ``(num_heads, q, v, q_offset, v_offset)`` per run: its heads occupy the query/key features
        ``q_offset : q_offset + num_heads * q`` and the value features ``v_offset : v_offset + num_heads * v``.
    """
    groups: list[tuple[int, int, int, int, int]] = []
    q_offset = v_offset = 0
    for q, v in head_sizes:
        if groups and groups[-1][1:3] == (q, v):
            n, _, _, q0, v0 = groups[-1]
            groups[-1] = (n + 1, q, v, q0, v0)
        else:
            groups.append((1, q, v, q_offset, v_offset))
        q_offset += q
        v_offset += v
    return groups


def sdpa_mask(attention_mask: Any, dtype: torch.dtype) -> torch.Tensor | None:
    """The padding mask the model hands its attention modules, in the form ``scaled_dot_product_attention`` takes.

    transformers builds it per attention implementation: ``None`` (no padding), a boolean (B, 1, s, s) mask
    (sdpa: True = attend), an additive float (B, 1, s, s) mask (eager), or a (B, s) 0/1 mask (flash attention).
    sdpa reads the first three exactly as the original attention functions do.
    """
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(
            f"pruned attention received an attention mask of type {type(attention_mask).__name__}; it supports the "
            "'sdpa', 'eager' and flash attention implementations: load the model with attn_implementation='sdpa'."
        )
    if attention_mask.dtype == torch.bool:
        return attention_mask
    if attention_mask.dim() == 2:
        return attention_mask.bool()[:, None, None, :]  # (B, 1, 1, s): True = attend
    return attention_mask.to(dtype)


def attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    groups: list[tuple[int, int, int, int, int]],
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout_p: float,
) -> torch.Tensor:
    """Multi-head attention over heads of possibly different sizes.

    Args:
        query, key: (B, s, Σq) projections, heads side by side in stored order.
        value: (B, s, Σv).
        groups: from :func:`head_groups`.
        attention_mask: from :func:`sdpa_mask`.
        scaling: the dense model's 1/sqrt(d_h).
        dropout_p: attention-probability dropout (0 in eval mode).

    Returns:
        The (B, s, Σv) per-head context vectors, heads side by side in stored order.
    """
    batch, seq = query.shape[:2]
    outputs = []
    for n, q, v, q0, v0 in groups:
        # Slicing the last dim and splitting it into heads keeps a view (no copy). # (B, n, s, q) / (B, n, s, v)
        qh = query[..., q0 : q0 + n * q].view(batch, seq, n, q).transpose(1, 2)
        kh = key[..., q0 : q0 + n * q].view(batch, seq, n, q).transpose(1, 2)
        vh = value[..., v0 : v0 + n * v].view(batch, seq, n, v).transpose(1, 2)
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=attention_mask, dropout_p=dropout_p, scale=scaling)
        outputs.append(out.transpose(1, 2).reshape(batch, seq, n * v))  # (B, s, n·v)
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)


class PrunedBertSelfAttention(nn.Module):
    """BERT/RoBERTa self-attention with per-head sizes; returns the context fed to ``attention.output.dense``.

    Args:
        hidden_size: d.
        head_sizes: (q, v) per kept head, in stored order; may be empty (the sublayer then adds only the
            output projection's bias to the residual).
        scaling: the dense model's 1/sqrt(d_h).
        dropout: attention-probability dropout.
    """

    def __init__(self, hidden_size: int, head_sizes: list[tuple[int, int]], scaling: float, dropout: float,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.head_sizes = [(int(q), int(v)) for q, v in head_sizes]
        self.num_attention_heads = len(self.head_sizes)
        self.groups = head_groups(self.head_sizes)
        self.scaling = scaling
        self.dropout_p = dropout
        qk_dim = sum(q for q, _ in self.head_sizes)
        v_dim = sum(v for _, v in self.head_sizes)
        self.query = _linear(hidden_size, qk_dim, device, dtype)
        self.key = _linear(hidden_size, qk_dim, device, dtype)
        self.value = _linear(hidden_size, v_dim, device, dtype)

    def forward(self, hidden_states: torch.Tensor, attention_mask: Any = None,
                **kwargs: Any) -> tuple[torch.Tensor, None]:
        if not self.head_sizes:
            return hidden_states.new_zeros(*hidden_states.shape[:-1], 0), None  # (B, s, 0)
        context = attend(
            self.query(hidden_states), self.key(hidden_states), self.value(hidden_states), self.groups,
            sdpa_mask(attention_mask, hidden_states.dtype), self.scaling, self.dropout_p if self.training else 0.0,
        )
        return context, None


class PrunedDistilBertSelfAttention(nn.Module):
    """DistilBERT self-attention with per-head sizes; like DistilBERT's, it includes the output projection.

    Args: as :class:`PrunedBertSelfAttention`.
    """

    def __init__(self, hidden_size: int, head_sizes: list[tuple[int, int]], scaling: float, dropout: float,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.head_sizes = [(int(q), int(v)) for q, v in head_sizes]
        self.n_heads = len(self.head_sizes)
        self.groups = head_groups(self.head_sizes)
        self.scaling = scaling
        self.dropout_p = dropout
        qk_dim = sum(q for q, _ in self.head_sizes)
        v_dim = sum(v for _, v in self.head_sizes)
        self.q_lin = _linear(hidden_size, qk_dim, device, dtype)
        self.k_lin = _linear(hidden_size, qk_dim, device, dtype)
        self.v_lin = _linear(hidden_size, v_dim, device, dtype)
        self.out_lin = _linear(v_dim, hidden_size, device, dtype)

    def forward(self, hidden_states: torch.Tensor, attention_mask: Any = None,
                **kwargs: Any) -> tuple[torch.Tensor, None]:
        if not self.head_sizes:
            # No heads: the sublayer's output is the output projection's bias. # (B, s, d)
            return self.out_lin.bias.expand(*hidden_states.shape[:-1], -1), None
        context = attend(
            self.q_lin(hidden_states), self.k_lin(hidden_states), self.v_lin(hidden_states), self.groups,
            sdpa_mask(attention_mask, hidden_states.dtype), self.scaling, self.dropout_p if self.training else 0.0,
        )
        return self.out_lin(context), None


ATTENTION_CLASSES: dict[str, type[nn.Module]] = {
    "bert": PrunedBertSelfAttention,
    "distilbert": PrunedDistilBertSelfAttention,
}


def _linear(in_features: int, out_features: int, device: torch.device | None, dtype: torch.dtype | None) -> nn.Linear:
    with warnings.catch_warnings():
        # A fully pruned sublayer has zero-width Linear layers; their (empty) initialisation warns for nothing.
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        return nn.Linear(in_features, out_features, device=device, dtype=dtype)


# ------------------------------------------------------------------------------------------------ structure
def dense_dims(config: Any) -> dict[str, int]:
    """The dense shape (num_layers, num_heads, head_dim, hidden_size, ffn_dim) read from a config."""
    layout = LAYOUTS[config.model_type]
    dims = {name: int(getattr(config, layout[name])) for name in ("num_layers", "num_heads", "hidden_size", "ffn_dim")}
    # The same expression as the transformers attention modules, so the scaling is bit-identical.
    dims["head_dim"] = int(dims["hidden_size"] / dims["num_heads"])
    return dims


def structure_problems(structure: Any, config: Any) -> list[str]:
    """Every way in which ``structure`` is not a valid pruned structure for ``config`` (empty when valid)."""
    if not isinstance(structure, dict):
        return [f"{STRUCTURE_KEY} is {type(structure).__name__}, expected a dict"]
    version = structure.get("format_version")
    if version != FORMAT_VERSION:
        return [f"{STRUCTURE_KEY}.format_version={version!r} is not a format this code reads (it reads "
                f"{FORMAT_VERSION}); install the lit_prune version that wrote the folder"]
    model_type = getattr(config, "model_type", None)
    if model_type not in LAYOUTS:
        return [f"config model_type={model_type!r} is not one of {sorted(LAYOUTS)}"]
    problems = []
    if structure.get("model_type") != model_type:
        problems.append(f"{STRUCTURE_KEY}.model_type={structure.get('model_type')!r} differs from the config's "
                        f"model_type={model_type!r}")
    dims = dense_dims(config)
    for name, value in dims.items():
        if structure.get(name) != value:
            problems.append(f"{STRUCTURE_KEY}.{name}={structure.get(name)!r} differs from the config's {value}")
    layers = structure.get("layers")
    if not isinstance(layers, list) or len(layers) != dims["num_layers"]:
        problems.append(f"{STRUCTURE_KEY}.layers must be a list of {dims['num_layers']} layers, "
                        f"got {type(layers).__name__} of length {len(layers) if isinstance(layers, list) else '-'}")
        return problems
    for i, layer in enumerate(layers):
        where = f"{STRUCTURE_KEY}.layers[{i}]"
        if not isinstance(layer, dict) or set(layer) != {"heads", "head_ids", "ffn"}:
            problems.append(f"{where} must be a dict with keys heads, head_ids, ffn")
            continue
        heads, head_ids, ffn = layer["heads"], layer["head_ids"], layer["ffn"]
        d_h, num_heads = dims["head_dim"], dims["num_heads"]
        if not isinstance(heads, list) or len(heads) > num_heads or not all(
            isinstance(h, (list, tuple)) and len(h) == 2 and all(type(x) is int and 1 <= x <= d_h for x in h)
            for h in heads
        ):
            problems.append(f"{where}.heads={heads!r}: expected at most {num_heads} [q, v] pairs with "
                            f"1 <= q, v <= {d_h}")
        if not isinstance(head_ids, list) or not isinstance(heads, list) or len(head_ids) != len(heads) or len(
            set(head_ids)
        ) != len(head_ids) or not all(type(h) is int and 0 <= h < num_heads for h in head_ids):
            problems.append(f"{where}.head_ids={head_ids!r}: expected one distinct index in [0, {num_heads}) per head")
        if type(ffn) is not int or not 0 <= ffn <= dims["ffn_dim"]:
            problems.append(f"{where}.ffn={ffn!r}: expected an integer in [0, {dims['ffn_dim']}]")
    return problems


def build_layer_modules(layout: dict[str, str], layer_structure: dict[str, Any], dims: dict[str, int],
                        dropout: float, device: torch.device | None,
                        dtype: torch.dtype | None) -> dict[str, nn.Module]:
    """The modules that replace a dense layer's, keyed by their path in the layer (uninitialised weights).

    Args:
        layout: an entry of :data:`LAYOUTS` (or a layout of the same form).
        layer_structure: ``{"heads": [[q, v], ...], "ffn": n}``.
        dims: the dense ``hidden_size`` and ``head_dim`` (see :func:`dense_dims`).
        dropout: attention-probability dropout.

    The self-attention module comes first: for DistilBERT it owns the output projection.
    """
    heads = [tuple(h) for h in layer_structure["heads"]]
    d, n = dims["hidden_size"], layer_structure["ffn"]
    modules: dict[str, nn.Module] = {
        layout["self_attention"]: ATTENTION_CLASSES[layout["attention_style"]](
            d, heads, dims["head_dim"] ** -0.5, dropout, device=device, dtype=dtype),
    }
    if not layout["attn_out"].startswith(layout["self_attention"] + "."):
        modules[layout["attn_out"]] = _linear(sum(v for _, v in heads), d, device, dtype)
    modules[layout["ffn_up"]] = _linear(d, n, device, dtype)
    modules[layout["ffn_down"]] = _linear(n, d, device, dtype)
    return modules


def set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the submodule of ``root`` at dotted ``path``."""
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def apply_structure(model: nn.Module) -> None:
    """Swap the dense modules of ``model`` for the pruned ones its ``config.lit_prune_structure`` describes."""
    config = model.config
    structure = getattr(config, STRUCTURE_KEY, None)
    problems = structure_problems(structure, config)
    if problems:
        raise ValueError("invalid pruned structure in the config: " + "; ".join(problems))
    layout = LAYOUTS[config.model_type]
    dims = dense_dims(config)
    dropout = float(getattr(config, layout["attention_dropout"]))
    layers = model.base_model.get_submodule(layout["layers"])
    for layer, layer_structure in zip(layers, structure["layers"]):
        reference = layer.get_submodule(layout["query"]).weight
        for path, module in build_layer_modules(layout, layer_structure, dims, dropout,
                                                reference.device, reference.dtype).items():
            set_submodule(layer, path, module.train(layer.training))


# ------------------------------------------------------------------------------------------------ model classes
class _Pruned:
    """Builds the dense model, then the pruned structure from the config (before any weights load)."""

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        apply_structure(self)


class LitPrunedBertModel(_Pruned, BertModel):
    """A pruned :class:`transformers.BertModel`."""


class LitPrunedBertForSequenceClassification(_Pruned, BertForSequenceClassification):
    """A pruned :class:`transformers.BertForSequenceClassification`."""


class LitPrunedBertForQuestionAnswering(_Pruned, BertForQuestionAnswering):
    """A pruned :class:`transformers.BertForQuestionAnswering`."""


class LitPrunedRobertaModel(_Pruned, RobertaModel):
    """A pruned :class:`transformers.RobertaModel`."""


class LitPrunedRobertaForSequenceClassification(_Pruned, RobertaForSequenceClassification):
    """A pruned :class:`transformers.RobertaForSequenceClassification`."""


class LitPrunedRobertaForQuestionAnswering(_Pruned, RobertaForQuestionAnswering):
    """A pruned :class:`transformers.RobertaForQuestionAnswering`."""


class LitPrunedDistilBertModel(_Pruned, DistilBertModel):
    """A pruned :class:`transformers.DistilBertModel`."""


class LitPrunedDistilBertForSequenceClassification(_Pruned, DistilBertForSequenceClassification):
    """A pruned :class:`transformers.DistilBertForSequenceClassification`."""


class LitPrunedDistilBertForQuestionAnswering(_Pruned, DistilBertForQuestionAnswering):
    """A pruned :class:`transformers.DistilBertForQuestionAnswering`."""


PRUNED_CLASSES: dict[tuple[str, str], type[nn.Module]] = {
    ("bert", "base"): LitPrunedBertModel,
    ("bert", "sequence_classification"): LitPrunedBertForSequenceClassification,
    ("bert", "question_answering"): LitPrunedBertForQuestionAnswering,
    ("roberta", "base"): LitPrunedRobertaModel,
    ("roberta", "sequence_classification"): LitPrunedRobertaForSequenceClassification,
    ("roberta", "question_answering"): LitPrunedRobertaForQuestionAnswering,
    ("distilbert", "base"): LitPrunedDistilBertModel,
    ("distilbert", "sequence_classification"): LitPrunedDistilBertForSequenceClassification,
    ("distilbert", "question_answering"): LitPrunedDistilBertForQuestionAnswering,
}
