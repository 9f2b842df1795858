"""Architecture adapters: where an encoder keeps its layers, its Q/K/V/O projections and its FFN.

Everything in the core that touches a model goes through :func:`get_adapter`, so supporting a new encoder means
describing its layout once with :func:`register_architecture`. BERT, RoBERTa, XLM-RoBERTa, ELECTRA, DistilBERT,
MPNet and DeBERTa-v2/v3 are built in; their layouts are read from the modelling file that pruned folders carry, so the
two cannot disagree.

Example::

    adapter = get_adapter(model)
    adapter.num_layers, adapter.num_heads, adapter.head_dim, adapter.ffn_dim
    adapter.layer(0).query          # the nn.Linear producing the layer's queries
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from lit_prune.core.hf_modeling import modeling_lit_pruned as hf

STRUCTURE_KEY = hf.STRUCTURE_KEY

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
    attention_style: Literal["bert", "distilbert", "mpnet", "deberta"]
    num_layers: str
    num_heads: str
    hidden_size: str
    ffn_dim: str
    attention_dropout: str
    pos_query: str | None = None
    pos_key: str | None = None


_REGISTRY: dict[str, ArchSpec] = {}


def register_architecture(model_type: str, spec: ArchSpec, overwrite: bool = False) -> None:
    """Teach the core a new encoder architecture (masking, FLOPs and compaction then work on it).

    Args:
        model_type: the ``config.model_type`` it applies to.
        spec: the layout. Compaction replaces ``spec.self_attention`` with lit_prune's pruned module of
            ``spec.attention_style``, whose Linear layers are named like BERT's (query, key, value),
            DistilBERT's (q_lin, k_lin, v_lin, out_lin), MPNet's (q, k, v, o) or DeBERTa's (query_proj,
            key_proj, value_proj); the spec's paths must use the same names.
        overwrite: replace an existing registration.

    Raises:
        ValueError: the model type is already registered, or the spec's paths do not fit its attention style.
    """
    if model_type in _REGISTRY and not overwrite:
        raise ValueError(f"model_type={model_type!r} already has an adapter; pass overwrite=True to replace it")
    names = {"bert": ("query", "key", "value", None), "distilbert": ("q_lin", "k_lin", "v_lin", "out_lin"),
             "mpnet": ("q", "k", "v", "o"), "deberta": ("query_proj", "key_proj", "value_proj", None)}
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
    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
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
        self.layers: nn.ModuleList = model.base_model.get_submodule(spec.layers)
        if len(self.layers) != self.num_layers:
            raise ValueError(f"{type(model).__name__} has {len(self.layers)} layers at {spec.layers!r} but its config "
                             f"says {spec.num_layers}={self.num_layers}")

    def layer(self, index: int) -> LayerModules:
        """The modules of encoder layer ``index``."""
        layer = self.layers[index]
        optional = {role: _optional_submodule(layer, getattr(self.spec, role)) for role in ("pos_query", "pos_key")}
        return LayerModules(**{role: layer.get_submodule(getattr(self.spec, role)) for role in MODULE_ROLES},
                            **optional)

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
    "MODULE_ROLES",
    "UnsupportedArchitectureError",
    "get_adapter",
    "register_architecture",
    "supported_model_types",
]
