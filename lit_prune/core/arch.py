"""Architecture adapters: where an encoder keeps its layers, its Q/K/V/O projections and its FFN.

Everything in the core that touches a model goes through :func:`get_adapter`, so supporting a new encoder means
describing its layout once with :func:`register_architecture`. BERT, RoBERTa, XLM-RoBERTa, ELECTRA, DistilBERT,
MPNet, DeBERTa-v2/v3 and ModernBERT are built in; their layouts are read from the modelling file that pruned folders
carry, so the two cannot disagree.

Example::

    adapter = get_adapter(model)
    adapter.num_layers, adapter.num_heads, adapter.head_dim, adapter.ffn_dim
    adapter.layer(0).query          # the nn.Linear producing the layer's queries
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from lit_prune.core.hf_modeling import modeling_lit_pruned as hf

STRUCTURE_KEY = hf.STRUCTURE_KEY
LinearPart = hf.LinearPart

MODULE_ROLES = ("self_attention", "query", "key", "value", "attn_out", "attn_norm", "ffn_up", "ffn_down", "ffn_norm")


class UnsupportedArchitectureError(ValueError):
    """A model whose architecture has no adapter."""


@dataclass(frozen=True)
class ArchSpec:
    """Where an encoder architecture keeps its parts.

    Attributes:
        layers: path of the ``nn.ModuleList`` of encoder layers, relative to ``model.base_model``.
        self_attention: path of the self-attention module within a layer (replaced on compaction).
        query, key, value, attn_out: paths of the Q/K/V and attention-output ``nn.Linear`` within a layer.
        attn_norm, ffn_norm: paths of the LayerNorms after the attention and the FFN sublayers.
        ffn_up, ffn_down: paths of the FFN's ``nn.Linear`` (d → F and F → d).
        attention_style: "bert" when the self-attention module returns the per-head context and ``attn_out``
            sits outside it (BERT, RoBERTa, ELECTRA); "distilbert" when the module applies ``attn_out`` itself;
            "mpnet" as "distilbert", with the relative position bias the encoder hands every layer; "deberta" as
            "bert", with DeBERTa's disentangled (content and relative position) attention.
        num_layers, num_heads, hidden_size, ffn_dim, attention_dropout: config attribute names.
        pos_query, pos_key: paths of Linear layers that project relative position embeddings with the queries' /
            keys' head layout (DeBERTa's ``pos_query_proj`` / ``pos_key_proj``), where a layer has them: masked and
            compacted as the query / key projection are (``None``: the architecture has none).
        norm_position: "post" when a LayerNorm follows each sublayer's residual sum (``attn_norm`` and ``ffn_norm``
            take the sums); "pre" when it precedes each sublayer (ModernBERT: the attention's sum is the input of
            ``ffn_norm``, the FFN's sum the layer's output).
        ffn_gated: the FFN is gated (GeGLU): ``ffn_up`` has 2F rows, neuron j being row j and its gate row F + j.
        rotary: rotary position embeddings rotate each head's query/key dims in pairs: a kept head keeps all of its
            query/key dims (masks prune them by whole heads only).
        attention_bias, ffn_bias: config attributes saying whether the attention's / FFN's Linear layers have
            biases (``None``: they always do).

    A ``query`` / ``key`` / ``value`` path ending in ``[i]`` names part i of a fused projection (queries, keys,
    values side by side, as ModernBERT's ``Wqkv``); the adapter hands out a :class:`LinearPart` for it.
    """

    layers: str
    self_attention: str
    query: str
    key: str
    value: str
    attn_out: str
    attn_norm: str
    ffn_up: str
    ffn_down: str
    ffn_norm: str
    attention_style: Literal["bert", "distilbert", "mpnet", "deberta", "modernbert"]
    num_layers: str
    num_heads: str
    hidden_size: str
    ffn_dim: str
    attention_dropout: str
    pos_query: str | None = None
    pos_key: str | None = None
    norm_position: Literal["post", "pre"] = "post"
    ffn_gated: bool = False
    rotary: bool = False
    attention_bias: str | None = None
    ffn_bias: str | None = None


_REGISTRY: dict[str, ArchSpec] = {}


def register_architecture(model_type: str, spec: ArchSpec, overwrite: bool = False) -> None:
    """Teach the core a new encoder architecture (masking, FLOPs and compaction then work on it).

    Args:
        model_type: the ``config.model_type`` it applies to.
        spec: the layout. Compaction replaces ``spec.self_attention`` with lit_prune's pruned module of
            ``spec.attention_style``, whose Linear layers are named like BERT's (query, key, value),
            DistilBERT's (q_lin, k_lin, v_lin, out_lin), MPNet's (q, k, v, o), DeBERTa's (query_proj,
            key_proj, value_proj) or ModernBERT's (Wqkv[0], Wqkv[1], Wqkv[2], Wo); the spec's paths must use the same
            names.
        overwrite: replace an existing registration.

    Raises:
        ValueError: the model type is already registered, or the spec's paths do not fit its attention style.
    """
    if model_type in _REGISTRY and not overwrite:
        raise ValueError(f"model_type={model_type!r} already has an adapter; pass overwrite=True to replace it")
    names = {"bert": ("query", "key", "value", None), "distilbert": ("q_lin", "k_lin", "v_lin", "out_lin"),
             "mpnet": ("q", "k", "v", "o"), "deberta": ("query_proj", "key_proj", "value_proj", None),
             "modernbert": ("Wqkv[0]", "Wqkv[1]", "Wqkv[2]", "Wo")}
    if spec.attention_style not in names:
        raise ValueError(f"attention_style={spec.attention_style!r} is not one of {sorted(names)}")
    expected = dict(zip(("query", "key", "value", "attn_out"), names[spec.attention_style]))
    problems = [
        f"{role}={getattr(spec, role)!r} must be '{spec.self_attention}.{name}' for attention_style="
        f"{spec.attention_style!r}"
        for role, name in expected.items()
        if name is not None and getattr(spec, role) != f"{spec.self_attention}.{name}"
    ]
    if names[spec.attention_style][3] is None and spec.attn_out.startswith(spec.self_attention + "."):
        problems.append(f"attn_out={spec.attn_out!r} must lie outside self_attention for attention_style="
                        f"{spec.attention_style!r}")
    if spec.norm_position not in ("post", "pre"):
        problems.append(f"norm_position={spec.norm_position!r} must be 'post' or 'pre'")
    if problems:
        raise ValueError(f"ArchSpec for model_type={model_type!r}: " + "; ".join(problems))
    _REGISTRY[model_type] = spec


for _model_type, _layout in hf.LAYOUTS.items():
    register_architecture(_model_type, ArchSpec(**_layout))


def supported_model_types() -> list[str]:
    """The ``config.model_type`` values that have an adapter."""
    return sorted(_REGISTRY)


@dataclass(frozen=True)
class LayerModules:
    """The modules of one encoder layer (see :class:`ArchSpec` for what each is)."""

    self_attention: nn.Module
    query: nn.Linear | hf.LinearPart
    key: nn.Linear | hf.LinearPart
    value: nn.Linear | hf.LinearPart
    attn_out: nn.Linear
    attn_norm: nn.LayerNorm
    ffn_up: nn.Linear
    ffn_down: nn.Linear
    ffn_norm: nn.LayerNorm
    pos_query: nn.Linear | None = None
    pos_key: nn.Linear | None = None


def _optional_submodule(layer: nn.Module, path: str | None) -> nn.Module | None:
    if path is None:
        return None
    try:
        return layer.get_submodule(path)
    except AttributeError:  # this config has no such module (DeBERTa shares the content projections)
        return None


class ArchAdapter:
    """A view of one model through its :class:`ArchSpec`; holds no state of its own.

    Attributes:
        model_type: ``config.model_type``.
        spec: the layout.
        num_layers, num_heads, head_dim, hidden_size, ffn_dim: the dense shape (L, H, d_h, d, F).
        is_compacted: whether the model has been physically pruned (its config carries a structure).
    """

    def __init__(self, model: nn.Module, spec: ArchSpec) -> None:
        config = model.config
        self.model = model
        self.model_type: str = config.model_type
        self.spec = spec
        self.num_layers = int(getattr(config, spec.num_layers))
        self.num_heads = int(getattr(config, spec.num_heads))
        self.hidden_size = int(getattr(config, spec.hidden_size))
        self.ffn_dim = int(getattr(config, spec.ffn_dim))
        # As transformers computes it, so that 1/sqrt(head_dim) is the model's own scaling.
        self.head_dim = int(self.hidden_size / self.num_heads)
        self.attention_dropout = float(getattr(config, spec.attention_dropout))
        self.is_compacted = getattr(config, STRUCTURE_KEY, None) is not None
        self.norm_position = spec.norm_position
        self.ffn_gated = spec.ffn_gated
        #: whether masks may prune single query/key dims of a head (not under rotary embeddings: whole heads only)
        self.qk_dims_prunable = not spec.rotary
        #: weight matrices a neuron spans: up and down, plus the gate of a gated FFN
        self.ffn_matrices = 3 if spec.ffn_gated else 2
        biases = hf.layer_biases({"attention_bias": spec.attention_bias, "ffn_bias": spec.ffn_bias}, config)
        self.attention_bias, self.ffn_bias = biases["attention"], biases["ffn"]
        self.layers: nn.ModuleList = model.base_model.get_submodule(spec.layers)
        if len(self.layers) != self.num_layers:
            raise ValueError(f"{type(model).__name__} has {len(self.layers)} layers at {spec.layers!r} but its config "
                             f"says {spec.num_layers}={self.num_layers}")

    def layer(self, index: int, layer_structure: dict[str, Any] | None = None) -> LayerModules:
        """The modules of encoder layer ``index``.

        Args:
            layer_structure: the layer's pruned structure, when its modules were just replaced by pruned ones and
                the config does not say so yet (compaction): it gives the parts of a fused projection.
        """
        layer = self.layers[index]
        optional = {role: _optional_submodule(layer, getattr(self.spec, role)) for role in ("pos_query", "pos_key")}
        parts = self._part_sizes(index, layer_structure)
        qkv = {role: hf.get_linear(layer, getattr(self.spec, role), parts) for role in ("query", "key", "value")}
        return LayerModules(**{role: layer.get_submodule(getattr(self.spec, role)) for role in MODULE_ROLES
                               if role not in qkv}, **qkv, **optional)

    def _part_sizes(self, index: int, layer_structure: dict[str, Any] | None = None) -> tuple[int, int, int]:
        """The widths of the query, key and value parts of layer ``index``'s fused projection (if it has one)."""
        structure = getattr(self.model.config, STRUCTURE_KEY, None)
        if layer_structure is None and structure is None:
            return (self.num_heads * self.head_dim,) * 3
        heads = (layer_structure or structure["layers"][index])["heads"]
        return (sum(q for q, _ in heads),) * 2 + (sum(v for _, v in heads),)

    @property
    def accounting(self) -> dict[str, Any]:
        """What parameter counts of a structure need beyond its sizes (the keywords of
        :func:`lit_prune.core.flops.structure_parameters`)."""
        return {"ffn_matrices": self.ffn_matrices, "attention_bias": self.attention_bias, "ffn_bias": self.ffn_bias}

    def conform_masks(self, masks: Any) -> Any:
        """``masks`` as this architecture can apply them: under rotary embeddings, a head's query/key dims are kept
        whole (all 1) where any is kept and removed where none is; other architectures take masks as they are."""
        if self.qk_dims_prunable:
            return masks
        whole = (masks.qk != 0).any(-1, keepdim=True).to(masks.qk.dtype).expand_as(masks.qk).clone()
        return type(masks)(head=masks.head, qk=whole, vo=masks.vo, ffn=masks.ffn)

    def check_masks(self, masks: Any) -> None:
        """Raise when ``masks`` prune what this architecture cannot: single query/key dims of a head under rotary
        embeddings (masks must keep all or none of a kept head's query/key dims)."""
        if self.qk_dims_prunable:
            return
        effective = masks.effective()
        half = self.head_dim // 2
        with torch.no_grad():
            unpaired = (effective.qk[..., :half] != effective.qk[..., half:]).any(-1)  # (L, H)
        if unpaired.any():
            layer, head = torch.nonzero(unpaired)[0].tolist()
            raise ValueError(
                f"masks.qk of layer {layer} head {head} scales query dim i and its rotary partner i + {half} "
                f"differently: {self.model_type}'s rotary position embeddings rotate them together, so their masks "
                "must be equal")
        kept = (effective.qk != 0).sum(-1)  # (L, H)
        partial = torch.nonzero((kept > 0) & (kept < self.head_dim)).tolist()
        if partial:
            layer, head = partial[0]
            raise ValueError(
                f"masks.qk keeps {int(kept[layer, head])} of the {self.head_dim} query/key dims of layer {layer} head "
                f"{head} (and {len(partial) - 1} other heads keep some): {self.model_type}'s rotary position "
                "embeddings rotate a head's query/key dims in pairs across the whole head, so its masks keep all "
                "or none of a kept head's query/key dims (value dims may be pruned one by one)")

    def require_dense(self, action: str) -> None:
        """Raise when the model is already compacted: masks index the dense model's units.

        Args:
            action: what was attempted, for the message.
        """
        if self.is_compacted:
            raise ValueError(f"cannot {action}: this {type(self.model).__name__} is already compacted "
                             f"(its config has {STRUCTURE_KEY}); masks index the units of the dense model, so "
                             "combine all masks on the dense model and compact once.")


def get_adapter(model: nn.Module) -> ArchAdapter:
    """The adapter of ``model`` (a base, sequence-classification, QA, ... model of a supported encoder).

    Raises:
        UnsupportedArchitectureError: the model type has no adapter, or the model is a decoder.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in _REGISTRY:
        raise UnsupportedArchitectureError(
            f"model type {model_type!r} ({type(model).__name__}) is not supported; supported model types: "
            f"{', '.join(supported_model_types())}. To add one, describe where its layers keep their modules with "
            "lit_prune.core.arch.register_architecture(model_type, ArchSpec(layers=..., query=..., ...))."
        )
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} is configured as a decoder (is_decoder / add_cross_attention); lit_prune "
            "prunes encoders only."
        )
    return ArchAdapter(model, _REGISTRY[model_type])


__all__ = [
    "ArchAdapter",
    "ArchSpec",
    "LayerModules",
    "LinearPart",
    "MODULE_ROLES",
    "UnsupportedArchitectureError",
    "get_adapter",
    "register_architecture",
    "supported_model_types",
]
