"""Structurally pruned BERT, RoBERTa, DistilBERT, XLM-RoBERTa, ELECTRA, MPNet, DeBERTa-v2/v3 and ModernBERT encoders
(written by lit_prune).

This file is copied into every pruned model folder and named in the folder's ``config.json`` ``auto_map``, so
``AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)`` (and ``AutoModel``,
``AutoModelForQuestionAnswering``, ``AutoModelForTokenClassification``) rebuild the pruned architecture on a machine
without lit_prune. It imports only ``torch`` and ``transformers``. A model that classifies through its masked-LM
head's label words (SMP's classifier, :class:`BertForLabelWordClassification` and kin) is saved as such, and
``AutoModelForSequenceClassification`` loads it as that classifier. A sentence-embedding model
(:class:`BertForSentenceEmbedding` and kin: the encoder plus its pooling) is saved as such, and ``AutoModel`` loads
it with its pooling (sentence-transformers loads the folder through ``AutoModel`` too).

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
removes their terms from q·k, it does not renormalise the rest. Heads are stored largest first; heads whose
sizes lie within a factor of two run in one ``scaled_dot_product_attention`` call, padded with zero dims (see
:func:`head_layout`), and a layer whose heads all have q = v = the same size runs in one call without padding.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput

STRUCTURE_KEY = "lit_prune_structure"
FORMAT_VERSION = 1
# Version 2 adds ``embedding_rank`` (factorised word embeddings); folders without it keep writing version 1, so
# that older readers still load them.
FACTORIZED_FORMAT_VERSION = 2
READABLE_VERSIONS = (FORMAT_VERSION, FACTORIZED_FORMAT_VERSION)

# Where each architecture keeps its parts. Paths of modules are relative to one encoder layer, except
# ``layers`` (relative to the base model); ``num_layers`` to ``attention_dropout`` name config attributes;
# ``pos_query`` / ``pos_key`` (optional) name projections of relative position embeddings that share the query /
# key head layout (present in a layer only for some configs). A path ending in ``[i]`` names part i of a fused
# projection (ModernBERT's ``Wqkv``: queries, keys, values side by side). Optional, with their defaults:
# ``norm_position`` ("post": a LayerNorm after each residual sum, BERT's; "pre": before each sublayer, ModernBERT's),
# ``ffn_gated`` (False; True: a neuron is a row of the up projection's first half, its gate row in the second half and
# a column of the down projection, as in GeGLU), ``rotary`` (False; True: rotary position embeddings rotate each
# head's query/key dims in pairs, so a kept head keeps all of them), ``attention_bias`` / ``ffn_bias`` (None: the
# Linear layers have biases; else the config attribute that says whether they do).
LAYOUTS: dict[str, dict[str, Any]] = {
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
LAYOUTS["deberta-v2"] = {  # DeBERTa-v2 and v3 (their checkpoints say model_type deberta-v2)
    "layers": "encoder.layer",
    "self_attention": "attention.self",
    "query": "attention.self.query_proj",
    "key": "attention.self.key_proj",
    "value": "attention.self.value_proj",
    "attn_out": "attention.output.dense",
    "attn_norm": "attention.output.LayerNorm",
    "ffn_up": "intermediate.dense",
    "ffn_down": "output.dense",
    "ffn_norm": "output.LayerNorm",
    "attention_style": "deberta",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "hidden_size": "hidden_size",
    "ffn_dim": "intermediate_size",
    "attention_dropout": "attention_probs_dropout_prob",
    # the relative embeddings' own projections, when the config does not share the content ones
    "pos_query": "attention.self.pos_query_proj",
    "pos_key": "attention.self.pos_key_proj",
}
LAYOUTS["mpnet"] = {
    "layers": "encoder.layer",
    "self_attention": "attention.attn",
    "query": "attention.attn.q",
    "key": "attention.attn.k",
    "value": "attention.attn.v",
    "attn_out": "attention.attn.o",
    "attn_norm": "attention.LayerNorm",
    "ffn_up": "intermediate.dense",
    "ffn_down": "output.dense",
    "ffn_norm": "output.LayerNorm",
    "attention_style": "mpnet",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "hidden_size": "hidden_size",
    "ffn_dim": "intermediate_size",
    "attention_dropout": "attention_probs_dropout_prob",
}
LAYOUTS["modernbert"] = {
    "layers": "layers",
    "self_attention": "attn",
    "query": "attn.Wqkv[0]",
    "key": "attn.Wqkv[1]",
    "value": "attn.Wqkv[2]",
    "attn_out": "attn.Wo",
    "attn_norm": "attn_norm",
    "ffn_up": "mlp.Wi",
    "ffn_down": "mlp.Wo",
    "ffn_norm": "mlp_norm",
    "attention_style": "modernbert",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "hidden_size": "hidden_size",
    "ffn_dim": "intermediate_size",
    "attention_dropout": "attention_dropout",
    "norm_position": "pre",
    "ffn_gated": True,
    "rotary": True,
    "attention_bias": "attention_bias",
    "ffn_bias": "mlp_bias",
}
# BERT-shaped encoders under their own model types (ELECTRA's discriminator also projects its smaller embeddings up
# to the hidden size before the first layer; that projection is not pruned)
for _model_type in ("roberta", "xlm-roberta", "electra"):
    LAYOUTS[_model_type] = dict(LAYOUTS["bert"])

#: the transformers class-name prefix of each family (``<Prefix>Model``, ``<Prefix>ForSequenceClassification``, ...)
FAMILIES = {"bert": "Bert", "roberta": "Roberta", "distilbert": "DistilBert", "xlm-roberta": "XLMRoberta",
            "electra": "Electra", "mpnet": "MPNet", "deberta-v2": "DebertaV2", "modernbert": "ModernBert"}
#: the families whose checkpoints carry a masked-LM head (ELECTRA's and DeBERTa-v3's discriminators do not): they
#: have a label-word classifier (SMP's); the others classify through a trained head
LABEL_WORD_FAMILIES = ("bert", "roberta", "distilbert", "xlm-roberta", "mpnet", "modernbert")
KINDS = ("base", "sequence_classification", "question_answering", "token_classification", "label_words",
         "sentence_embedding")
AUTO_CLASSES = {
    "base": "AutoModel",
    "sequence_classification": "AutoModelForSequenceClassification",
    "question_answering": "AutoModelForQuestionAnswering",
    "token_classification": "AutoModelForTokenClassification",
    # a classifier too: a folder saved as this kind gives it for AutoModelForSequenceClassification
    "label_words": "AutoModelForSequenceClassification",
    # an encoder too: a folder saved as this kind gives it (with its pooling) for AutoModel
    "sentence_embedding": "AutoModel",
}
#: the kind each Auto class loads from a folder, unless the folder was saved as another kind of that Auto class
DEFAULT_KINDS = {auto: kind for kind, auto in reversed(AUTO_CLASSES.items())}
LABEL_WORDS_KEY = "lit_prune_label_words"
SENTENCE_EMBEDDING_KEY = "lit_prune_sentence_embedding"
POOLING_MODES = ("mean", "cls", "max")


# ------------------------------------------------------------------------------------------------ attention
@dataclass(frozen=True)
class HeadGroup:
    """Heads computed by one ``scaled_dot_product_attention`` call, all of size ``width``.

    Attributes:
        num_heads: heads in the group.
        width: the head size of the call (the largest max(q, v) among them; smaller heads are padded).
        start, stop: the group's features in the layer's (padded) query, key and value layout.
    """

    num_heads: int
    width: int
    start: int
    stop: int


@dataclass(frozen=True)
class HeadLayout:
    """How a layer's heads of different sizes are computed (see :func:`head_layout`).

    Attributes:
        groups: the batched attention calls.
        padded: False when every head has q = v = its group's width: the projections are then used as they are.
        q_index: when padded, for each padded query/key feature, the row of W_Q / W_K it takes; Σq takes an
            appended zero row.
        v_index: likewise for W_V (Σv: the zero row).
        out_index: when padded, for each value dim in stored order, its feature in the padded attention output.
    """

    groups: tuple[HeadGroup, ...]
    padded: bool
    q_index: tuple[int, ...] = ()
    v_index: tuple[int, ...] = ()
    out_index: tuple[int, ...] = ()


def _size_class(q: int, v: int) -> int:
    return (max(q, v) - 1).bit_length()  # ceil(log2(max(q, v))): widths within a factor of 2 share a class


def head_layout(head_sizes: list[tuple[int, int]]) -> HeadLayout:
    """Batch consecutive heads whose max(q, v) lies in the same power-of-two class, padded to a common width.

    Why: one batched attention call costs far less than one call per head, and CPU attention kernels want equal
    query, key and value head sizes (mixed sizes fall back to a slow path). A padded dim changes nothing: a zero
    query/key dim adds 0 to every q·k, a zero value dim gives an output dim that is dropped. The padding is done on
    the WEIGHTS (zero rows gathered into W_Q, W_K, W_V at each forward pass, a copy of a few kB), so the
    projections produce the padded layout directly and no activation is copied except the final gather of the
    value dims. Within a power-of-two class a head's padded work is less than twice its own. Heads stored largest
    first (as compaction stores them) give at most log2(d_h) + 1 calls per layer, and a single call with no padding
    at all when every head has q = v = the same size.
    """
    runs: list[list[tuple[int, int]]] = []
    for size in head_sizes:
        if runs and _size_class(*runs[-1][-1]) == _size_class(*size):
            runs[-1].append(size)
        else:
            runs.append([size])
    groups, start = [], 0
    for run in runs:
        width = max(max(q, v) for q, v in run)
        groups.append(HeadGroup(len(run), width, start, start + len(run) * width))
        start += len(run) * width
    if all(q == v == group.width for group, run in zip(groups, runs) for q, v in run):
        return HeadLayout(tuple(groups), padded=False)
    q_total, v_total = sum(q for q, _ in head_sizes), sum(v for _, v in head_sizes)
    q_index: list[int] = []
    v_index: list[int] = []
    out_index: list[int] = []
    q_offset = v_offset = 0
    for group, run in zip(groups, runs):
        for q, v in run:
            out_index += [len(v_index) + t for t in range(v)]
            q_index += [q_offset + t if t < q else q_total for t in range(group.width)]
            v_index += [v_offset + t if t < v else v_total for t in range(group.width)]
            q_offset, v_offset = q_offset + q, v_offset + v
    return HeadLayout(tuple(groups), padded=True, q_index=tuple(q_index), v_index=tuple(v_index),
                      out_index=tuple(out_index))


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


class PrunedAttentionCore(nn.Module):
    """Multi-head attention over heads of different sizes, with the dense model's scaling.

    Args:
        head_sizes: (q, v) per kept head, in stored order.
        scaling: the dense model's 1/sqrt(d_h).
        dropout: attention-probability dropout (applied in training mode only).
    """

    def __init__(self, head_sizes: list[tuple[int, int]], scaling: float, dropout: float) -> None:
        super().__init__()
        self.head_sizes = [(int(q), int(v)) for q, v in head_sizes]
        self.layout = head_layout(self.head_sizes)
        self.scaling = scaling
        self.dropout_p = dropout
        # The layout's index tensors, built on first use on each device (not buffers: they derive from the
        # structure, are never stored, and must not stay on the meta device while from_pretrained loads).
        self._indices: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _projections(self, hidden_size: int, names: tuple[str, str, str], output: str | None,
                     device: torch.device | None, dtype: torch.dtype | None) -> None:
        """Create the query, key and value Linear layers (named ``names``) for the kept heads, and the output
        projection (named ``output``) where the module holds it."""
        qk_dim = sum(q for q, _ in self.head_sizes)
        v_dim = sum(v for _, v in self.head_sizes)
        for name, width in zip(names, (qk_dim, qk_dim, v_dim)):
            setattr(self, name, _linear(hidden_size, width, device, dtype))
        if output is not None:
            setattr(self, output, _linear(v_dim, hidden_size, device, dtype))

    def _layout_indices(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if device not in self._indices:
            self._indices[device] = tuple(
                torch.tensor(index, dtype=torch.long, device=device)
                for index in (self.layout.q_index, self.layout.v_index, self.layout.out_index))
        return self._indices[device]

    def project(self, hidden_states: torch.Tensor, query: nn.Linear, key: nn.Linear,
                value: nn.Linear) -> list[torch.Tensor]:
        """The queries, keys and values of every kept head, in the (padded) layout the attention calls take.

        In a padded layout they are computed from the Linear layers' weights, so forward hooks on those Linear
        layers do not run.
        """
        if self.layout.padded:
            q_index, v_index, _ = self._layout_indices(hidden_states.device)
            return [F.linear(hidden_states, *_padded_rows(linear, index))
                    for linear, index in ((query, q_index), (key, q_index), (value, v_index))]
        return [query(hidden_states), key(hidden_states), value(hidden_states)]

    def attend(self, hidden_states: torch.Tensor, query: nn.Linear | None, key: nn.Linear | None,
               value: nn.Linear | None, attention_mask: Any, bias: ScoreBias | None = None,
               rotate: Rotation | None = None) -> torch.Tensor:
        """Attention of every kept head.

        Args:
            hidden_states: (B, s, d).
            query, key, value: the projections; heads side by side in stored order in their output features (see
                :meth:`project`, which a module with fused projections overrides and which then ignores them).
            attention_mask: the mask the model passes to its attention modules (see :func:`sdpa_mask`).
            bias: an additive score bias added to the scaled scores before the softmax (MPNet's relative position
                bias, DeBERTa's disentangled terms): called per group of heads as ``bias(first, group, q, k)``
                with the index of the group's first kept head, the group, and its (B, n, s, w) queries and keys;
                returns (B or 1, n, s, s).
            rotate: a position rotation of each group's (B, n, s, w) queries and keys before their product
                (ModernBERT's rotary embeddings), ``rotate(q, k) -> (q, k)``.

        Returns:
            The (B, s, Σv) per-head context vectors, heads side by side in stored order.
        """
        batch, seq = hidden_states.shape[:2]
        projections = self.project(hidden_states, query, key, value)
        out_index = self._layout_indices(hidden_states.device)[2] if self.layout.padded else None
        mask = sdpa_mask(attention_mask, hidden_states.dtype)
        if bias is not None and mask is not None and mask.dtype == torch.bool:
            mask = additive_mask(mask, hidden_states.dtype)  # to sum with the bias
        dropout_p = self.dropout_p if self.training else 0.0
        outputs = []
        first_head = 0
        for group in self.layout.groups:
            n, w = group.num_heads, group.width
            # Splitting a slice of the last dim into heads is a view. # (B, n, s, w)
            q, k, v = (x[..., group.start:group.stop].view(batch, seq, n, w).transpose(1, 2) for x in projections)
            if rotate is not None:
                q, k = rotate(q, k)
            group_mask = mask
            if bias is not None:
                group_bias = bias(first_head, group, q, k)  # (B, n, s, s)
                group_mask = group_bias if mask is None else group_bias + mask
                first_head += n
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=group_mask, dropout_p=dropout_p,
                                                 scale=self.scaling)
            outputs.append(out.transpose(1, 2).reshape(batch, seq, n * w))  # (B, s, n·w)
        context = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
        return context.index_select(-1, out_index) if self.layout.padded else context  # (B, s, Σv)


#: ``bias(first_head, group, queries, keys)``: see :meth:`PrunedAttentionCore.attend`
ScoreBias = Callable[[int, HeadGroup, torch.Tensor, torch.Tensor], torch.Tensor]
#: ``rotate(queries, keys) -> (queries, keys)``: see :meth:`PrunedAttentionCore.attend`
Rotation = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean attention mask (True = attend) as an additive one: 0 where attended, the dtype's minimum elsewhere
    (as transformers' eager attention fills it, so that a fully masked row softmaxes to uniform, not NaN)."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def _padded_rows(linear: nn.Linear, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight and bias of ``linear`` with rows gathered by ``index``, where index = out_features is zero."""
    weight = F.pad(linear.weight, (0, 0, 0, 1)).index_select(0, index)
    bias = None if linear.bias is None else F.pad(linear.bias, (0, 1)).index_select(0, index)
    return weight, bias


class LinearPart:
    """Rows ``[start, stop)`` of a Linear layer: one of the query, key and value projections fused in one Linear
    (ModernBERT's ``Wqkv``), read, called and hooked as if it were a Linear of its own.

    Attributes:
        linear: the fused Linear; ``start``, ``stop``: the part's output features in it.
    """

    def __init__(self, linear: nn.Linear, start: int, stop: int) -> None:
        self.linear, self.start, self.stop = linear, start, stop

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight[self.start:self.stop]

    @property
    def bias(self) -> torch.Tensor | None:
        return None if self.linear.bias is None else self.linear.bias[self.start:self.stop]

    @property
    def in_features(self) -> int:
        return self.linear.in_features

    @property
    def out_features(self) -> int:
        return self.stop - self.start

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.weight, self.bias)

    def register_forward_hook(self, hook: Callable[[Any, tuple, torch.Tensor], torch.Tensor | None]) -> Any:
        """A forward hook on the fused Linear that sees this part's output only; what it returns replaces it."""

        def on_output(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            part = hook(self, args, output[..., self.start:self.stop])
            if part is None:
                return None
            return torch.cat([output[..., :self.start], part, output[..., self.stop:]], dim=-1)

        return self.linear.register_forward_hook(on_output)


def fused_path(path: str) -> tuple[str, int | None]:
    """``"attn.Wqkv[1]"`` → ``("attn.Wqkv", 1)``: a layout path and the part it names (``None``: the whole module)."""
    if path.endswith("]") and "[" in path:
        module, _, part = path[:-1].rpartition("[")
        return module, int(part)
    return path, None


def get_linear(layer: nn.Module, path: str, part_sizes: tuple[int, ...] = ()) -> nn.Linear | LinearPart:
    """The Linear layer at layout ``path`` in ``layer``; for a fused path, its part, the parts having the output
    widths ``part_sizes`` in order."""
    module_path, part = fused_path(path)
    module = layer.get_submodule(module_path)
    if part is None:
        return module
    start = sum(part_sizes[:part])
    return LinearPart(module, start, start + part_sizes[part])


def layer_biases(layout: dict[str, Any], config: Any) -> dict[str, bool]:
    """Whether the attention's and the FFN's Linear layers have biases, for ``layout`` and ``config``."""
    return {kind: True if layout.get(f"{kind}_bias") is None else bool(getattr(config, layout[f"{kind}_bias"]))
            for kind in ("attention", "ffn")}


class PrunedBertSelfAttention(PrunedAttentionCore):
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
        super().__init__(head_sizes, scaling, dropout)
        self.num_attention_heads = len(self.head_sizes)
        self._projections(hidden_size, ("query", "key", "value"), None, device, dtype)

    def forward(self, hidden_states: torch.Tensor, attention_mask: Any = None,
                **kwargs: Any) -> tuple[torch.Tensor, None]:
        if not self.head_sizes:
            return hidden_states.new_zeros(*hidden_states.shape[:-1], 0), None  # (B, s, 0)
        context = self.attend(hidden_states, self.query, self.key, self.value, attention_mask)
        return context, None


class PrunedDistilBertSelfAttention(PrunedAttentionCore):
    """DistilBERT self-attention with per-head sizes; like DistilBERT's, it includes the output projection.

    Args: as :class:`PrunedBertSelfAttention`.
    """

    def __init__(self, hidden_size: int, head_sizes: list[tuple[int, int]], scaling: float, dropout: float,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(head_sizes, scaling, dropout)
        self.n_heads = len(self.head_sizes)
        self._projections(hidden_size, ("q_lin", "k_lin", "v_lin"), "out_lin", device, dtype)

    def forward(self, hidden_states: torch.Tensor, attention_mask: Any = None,
                **kwargs: Any) -> tuple[torch.Tensor, None]:
        if not self.head_sizes:
            # No heads: the sublayer's output is the output projection's bias. # (B, s, d)
            return self.out_lin.bias.expand(*hidden_states.shape[:-1], -1), None
        context = self.attend(hidden_states, self.q_lin, self.k_lin, self.v_lin, attention_mask)
        return self.out_lin(context), None


class PrunedMPNetSelfAttention(PrunedAttentionCore):
    """MPNet self-attention with per-head sizes. Like DistilBERT's it includes the output projection (``o``); each
    kept head adds its own slice of the relative position bias, which the encoder computes for every dense head
    once per forward pass (its bucket table is shared by all layers and kept whole).

    Args: as :class:`PrunedBertSelfAttention`, plus ``head_ids``: the dense index of each kept head, in stored order.
    """

    def __init__(self, hidden_size: int, head_sizes: list[tuple[int, int]], scaling: float, dropout: float,
                 head_ids: list[int] = (), device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(head_sizes, scaling, dropout)
        if len(head_ids) != len(self.head_sizes):
            raise ValueError(f"head_ids={list(head_ids)!r}: expected one dense index per kept head "
                             f"({len(self.head_sizes)})")
        self.head_ids = [int(h) for h in head_ids]
        self.num_attention_heads = len(self.head_sizes)
        self._projections(hidden_size, ("q", "k", "v"), "o", device, dtype)

    def forward(self, hidden_states: torch.Tensor, attention_mask: Any = None, position_bias: Any = None,
                output_attentions: bool = False, **kwargs: Any) -> tuple[torch.Tensor]:
        if not self.head_sizes:
            # No heads: the sublayer's output is the output projection's bias. # (B, s, d)
            return (self.o.bias.expand(*hidden_states.shape[:-1], -1),)
        bias = None
        if position_bias is not None:  # (B, H, s, s) for the dense heads: the kept ones, in stored order
            kept = position_bias[:, self.head_ids].to(hidden_states.dtype)

            def bias(first: int, group: HeadGroup, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
                return kept[:, first:first + group.num_heads]

        context = self.attend(hidden_states, self.q, self.k, self.v, attention_mask, bias=bias)
        return (self.o(context),)


class PrunedDebertaV2SelfAttention(PrunedAttentionCore):
    """DeBERTa-v2/v3 disentangled self-attention with per-head sizes; returns the context fed to
    ``attention.output.dense``, as :class:`PrunedBertSelfAttention` does.

    Each kept head's score is its content term q·k plus its content-to-position term q·k_r (``c2p``) and its
    position-to-content term k·q_r (``p2c``), all scaled by the dense 1/sqrt(d_h · (1 + number of terms)). The
    relative embeddings stay whole; their key and query projections (``key_proj`` / ``query_proj`` when the config
    shares them, ``pos_key_proj`` / ``pos_query_proj`` otherwise) keep each head's kept query/key dims, so removing
    a head or a dim removes it from all three terms.

    Args:
        hidden_size, head_sizes, scaling, dropout: as :class:`PrunedBertSelfAttention` (``scaling``: 1/sqrt(d_h)).
        settings: the config's ``relative_attention``, ``share_att_key``, ``pos_att_type``, ``position_buckets``,
            ``max_relative_positions`` and ``hidden_dropout_prob`` (see :func:`deberta_settings`).
    """

    def __init__(self, hidden_size: int, head_sizes: list[tuple[int, int]], scaling: float, dropout: float,
                 settings: dict[str, Any] | None = None, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        settings = settings or {}
        self.relative_attention = bool(settings.get("relative_attention", False))
        self.share_att_key = bool(settings.get("share_att_key", False))
        self.pos_att_type = list(settings.get("pos_att_type") or []) if self.relative_attention else []
        scale_factor = 1 + ("c2p" in self.pos_att_type) + ("p2c" in self.pos_att_type)
        super().__init__(head_sizes, scaling / scale_factor ** 0.5, dropout)
        self.position_buckets = int(settings.get("position_buckets", -1))
        self.max_relative_positions = int(settings.get("max_relative_positions", -1))
        self.pos_ebd_size = self.position_buckets if self.position_buckets > 0 else self.max_relative_positions
        self.num_attention_heads = len(self.head_sizes)
        self._projections(hidden_size, ("query_proj", "key_proj", "value_proj"), None, device, dtype)
        qk_dim = sum(q for q, _ in self.head_sizes)
        if self.relative_attention:
            self.pos_dropout = nn.Dropout(float(settings.get("hidden_dropout_prob", 0.0)))
            if not self.share_att_key:
                if "c2p" in self.pos_att_type:
                    self.pos_key_proj = _linear(hidden_size, qk_dim, device, dtype)
                if "p2c" in self.pos_att_type:
                    self.pos_query_proj = _linear(hidden_size, qk_dim, device, dtype)

    def _relative_projection(self, linear: nn.Linear, rel_embeddings: torch.Tensor) -> torch.Tensor:
        """``linear`` applied to the relative embeddings, heads laid out as the queries are: (2k, Σq, padded)."""
        if self.layout.padded:
            q_index = self._layout_indices(rel_embeddings.device)[0]
            return F.linear(rel_embeddings, *_padded_rows(linear, q_index))
        return linear(rel_embeddings)

    def forward(self, hidden_states: torch.Tensor, attention_mask: Any = None, output_attentions: bool = False,
                query_states: torch.Tensor | None = None, relative_pos: torch.Tensor | None = None,
                rel_embeddings: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        if query_states is not None:
            raise ValueError("pruned DeBERTa attention takes its queries from hidden_states only (query_states is "
                             "used by DeBERTa's masked-LM pre-training decoder, not by encoders)")
        if not self.head_sizes:
            return hidden_states.new_zeros(*hidden_states.shape[:-1], 0), None  # (B, s, 0)
        mask = None
        if attention_mask is not None:  # (B, 1, s, s) 0/1; padded query rows too, as DeBERTa's own masks are
            mask = additive_mask(attention_mask.bool(), hidden_states.dtype)
        bias = None
        if self.pos_att_type:
            bias = self._disentangled_bias(hidden_states, relative_pos, rel_embeddings)
        context = self.attend(hidden_states, self.query_proj, self.key_proj, self.value_proj, mask, bias=bias)
        return context, None

    def _disentangled_bias(self, hidden_states: torch.Tensor, relative_pos: torch.Tensor | None,
                           rel_embeddings: torch.Tensor) -> ScoreBias:
        """The c2p and p2c terms of each group of heads, as DeBERTa-v2 computes them for the dense heads."""
        from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position

        seq = hidden_states.shape[1]
        if relative_pos is None:
            relative_pos = build_relative_position(hidden_states, hidden_states, bucket_size=self.position_buckets,
                                                   max_position=self.max_relative_positions)
        relative_pos = relative_pos.to(device=hidden_states.device, dtype=torch.long)
        relative_pos = relative_pos.reshape(-1, seq, seq)[:, None]  # (1 or B, 1, s, s)
        span = self.pos_ebd_size
        rel = self.pos_dropout(rel_embeddings)[:2 * span].to(hidden_states.dtype)  # (2k, d)
        pos_key = pos_query = None
        if "c2p" in self.pos_att_type:
            pos_key = self._relative_projection(self.key_proj if self.share_att_key else self.pos_key_proj, rel)
        if "p2c" in self.pos_att_type:
            pos_query = self._relative_projection(self.query_proj if self.share_att_key else self.pos_query_proj, rel)
        c2p_index = torch.clamp(relative_pos + span, 0, 2 * span - 1)
        p2c_index = torch.clamp(-relative_pos + span, 0, 2 * span - 1)

        def bias(first: int, group: HeadGroup, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            n, w = group.num_heads, group.width
            batch = q.shape[0]
            score = 0
            if pos_key is not None:  # content → position: q_i · k_r(δ(i, j))
                keys = pos_key[:, group.start:group.stop].view(-1, n, w).transpose(0, 1)  # (n, 2k, w)
                c2p = q @ keys.transpose(-1, -2)  # (B, n, s, 2k)
                score = score + torch.gather(c2p, -1, c2p_index.expand(batch, n, seq, seq))
            if pos_query is not None:  # position → content: k_j · q_r(δ(j, i))
                queries = pos_query[:, group.start:group.stop].view(-1, n, w).transpose(0, 1)  # (n, 2k, w)
                p2c = k @ queries.transpose(-1, -2)  # (B, n, s, 2k)
                score = score + torch.gather(p2c, -1, p2c_index.expand(batch, n, seq, seq)).transpose(-1, -2)
            return score * self.scaling

        return bias


class PrunedModernBertAttention(PrunedAttentionCore):
    """ModernBERT attention with per-head value sizes; like ModernBERT's it includes the output projection (``Wo``)
    and keeps the queries, keys and values fused in one projection (``Wqkv``: Σq query rows, Σq key rows, Σv value
    rows).

    Rotary position embeddings rotate each query/key dim i with dim i + d_h/2 of its head, so a kept head keeps all
    d_h of its query/key dims (q = d_h) and the rotation is the dense one; its value dims are pruned freely. The layer
    hands in its own attention mask, global or sliding-window, as for the dense module.

    Args:
        hidden_size, head_sizes, scaling, dropout: as :class:`PrunedBertSelfAttention` (every q = d_h).
        bias: whether ``Wqkv`` and ``Wo`` have biases (the config's ``attention_bias``).
    """

    def __init__(self, hidden_size: int, head_sizes: list[tuple[int, int]], scaling: float, dropout: float,
                 bias: bool = False, device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(head_sizes, scaling, dropout)
        self.num_heads = len(self.head_sizes)
        self.parts = (sum(q for q, _ in self.head_sizes),) * 2 + (sum(v for _, v in self.head_sizes),)
        self.Wqkv = _linear(hidden_size, sum(self.parts), device, dtype, bias=bias)
        self.Wo = _linear(self.parts[2], hidden_size, device, dtype, bias=bias)
        self.out_drop = nn.Dropout(dropout) if dropout > 0.0 else nn.Identity()
        self._fused_index: dict[torch.device, torch.Tensor] = {}

    def project(self, hidden_states: torch.Tensor, *unused: Any) -> list[torch.Tensor]:
        """One product with ``Wqkv`` (its rows gathered into the padded layout when heads differ in size); the
        Linear layers :meth:`PrunedAttentionCore.project` takes are not needed."""
        if not self.layout.padded:
            return list(self.Wqkv(hidden_states).split(self.parts, dim=-1))
        device = hidden_states.device
        if device not in self._fused_index:
            q_index, v_index = self.layout.q_index, self.layout.v_index
            q, total = self.parts[0], sum(self.parts)  # index q (Σq) / v (Σv) is the zero row: index ``total`` here
            self._fused_index[device] = torch.tensor(
                [i if i < q else total for i in q_index] + [q + i if i < q else total for i in q_index]
                + [2 * q + i if i < self.parts[2] else total for i in v_index], dtype=torch.long, device=device)
        index = self._fused_index[device]
        projected = F.linear(hidden_states, *_padded_rows(self.Wqkv, index))
        return list(projected.split(len(index) // 3, dim=-1))

    def forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                attention_mask: Any = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
        if not self.head_sizes:  # no heads: the output projection's bias, or nothing
            out = hidden_states.new_zeros(hidden_states.shape) if self.Wo.bias is None else \
                self.Wo.bias.expand(*hidden_states.shape[:-1], -1)
            return out, None
        if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2:
            # flash attention's (B, s) padding mask leaves the sliding window to the kernel; this module runs sdpa
            raise TypeError("pruned ModernBERT attention received a (batch, seq) attention mask (flash attention), "
                            "which carries no sliding window: load the model with attn_implementation='sdpa'")
        from transformers.models.modernbert.modeling_modernbert import apply_rotary_pos_emb

        cos, sin = position_embeddings  # (B or 1, s, d_h): every kept head has q = d_h, so they apply as they are
        context = self.attend(hidden_states, None, None, None, attention_mask,
                              rotate=lambda q, k: apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1))
        return self.out_drop(self.Wo(context)), None


ATTENTION_CLASSES: dict[str, type[nn.Module]] = {
    "bert": PrunedBertSelfAttention,
    "distilbert": PrunedDistilBertSelfAttention,
    "mpnet": PrunedMPNetSelfAttention,
    "deberta": PrunedDebertaV2SelfAttention,
    "modernbert": PrunedModernBertAttention,
}


def deberta_settings(config: Any) -> dict[str, Any]:
    """What :class:`PrunedDebertaV2SelfAttention` reads of a DeBERTa-v2 config, with DeBERTa's own defaults."""
    max_relative_positions = getattr(config, "max_relative_positions", -1)
    if max_relative_positions < 1:
        max_relative_positions = config.max_position_embeddings
    return {"relative_attention": getattr(config, "relative_attention", False),
            "share_att_key": getattr(config, "share_att_key", False),
            "pos_att_type": list(config.pos_att_type or []),
            "position_buckets": getattr(config, "position_buckets", -1),
            "max_relative_positions": max_relative_positions,
            "hidden_dropout_prob": config.hidden_dropout_prob}


def attention_settings(layout: dict[str, Any], config: Any, layer_structure: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments a pruned attention module of ``layout``'s style takes beyond the common ones."""
    style = layout["attention_style"]
    if style == "mpnet":
        return {"head_ids": layer_structure["head_ids"]}
    if style == "deberta":
        return {"settings": deberta_settings(config)}
    if style == "modernbert":
        return {"bias": layer_biases(layout, config)["attention"]}
    return {}


def _linear(in_features: int, out_features: int, device: torch.device | None, dtype: torch.dtype | None,
            bias: bool = True) -> nn.Linear:
    with warnings.catch_warnings():
        # A fully pruned sublayer has zero-width Linear layers; their (empty) initialisation warns for nothing.
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        return nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)


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
    if version not in READABLE_VERSIONS:
        return [f"{STRUCTURE_KEY}.format_version={version!r} is not a format this code reads (it reads "
                f"{', '.join(map(str, READABLE_VERSIONS))}); install the lit_prune version that wrote the folder"]
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
    rank = structure.get("embedding_rank")
    if rank is not None and (version != FACTORIZED_FORMAT_VERSION or type(rank) is not int
                             or not 1 <= rank <= dims["hidden_size"]):
        problems.append(f"{STRUCTURE_KEY}.embedding_rank={rank!r}: expected an integer in [1, {dims['hidden_size']}] "
                        f"in format_version {FACTORIZED_FORMAT_VERSION}")
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
        if LAYOUTS[model_type].get("rotary") and isinstance(heads, list) and any(
                isinstance(h, (list, tuple)) and h and h[0] != d_h for h in heads):
            problems.append(f"{where}.heads={heads!r}: rotary position embeddings need every kept head's q = {d_h}")
    return problems


def build_layer_modules(layout: dict[str, str], layer_structure: dict[str, Any], dims: dict[str, int],
                        dropout: float, config: Any, device: torch.device | None,
                        dtype: torch.dtype | None) -> dict[str, nn.Module]:
    """The modules that replace a dense layer's, keyed by their path in the layer (uninitialised weights).

    Args:
        layout: an entry of :data:`LAYOUTS` (or a layout of the same form).
        layer_structure: ``{"heads": [[q, v], ...], "head_ids": [h, ...], "ffn": n}``.
        dims: the dense ``hidden_size`` and ``head_dim`` (see :func:`dense_dims`).
        dropout: attention-probability dropout.
        config: the model's config (what an attention style reads beyond the common settings).

    The self-attention module comes first: for DistilBERT and MPNet it owns the output projection.
    """
    heads = [tuple(h) for h in layer_structure["heads"]]
    d, n = dims["hidden_size"], layer_structure["ffn"]
    extra = attention_settings(layout, config, layer_structure)
    bias = layer_biases(layout, config)
    modules: dict[str, nn.Module] = {
        layout["self_attention"]: ATTENTION_CLASSES[layout["attention_style"]](
            d, heads, dims["head_dim"] ** -0.5, dropout, device=device, dtype=dtype, **extra),
    }
    if not layout["attn_out"].startswith(layout["self_attention"] + "."):
        modules[layout["attn_out"]] = _linear(sum(v for _, v in heads), d, device, dtype, bias=bias["attention"])
    # a gated FFN's up projection holds each neuron's row and its gate row
    modules[layout["ffn_up"]] = _linear(d, n * (2 if layout.get("ffn_gated") else 1), device, dtype, bias=bias["ffn"])
    modules[layout["ffn_down"]] = _linear(n, d, device, dtype, bias=bias["ffn"])
    return modules


class FactorizedEmbedding(nn.Module):
    """Word embeddings stored as a product: a (V, r) table and an r → d projection without bias, E ≈ table ·
    projectionᵀ (the factorisation GRAIN applies to the word embeddings, by SVD).

    Attributes:
        table: ``nn.Embedding(V, r)`` (padding index kept).
        projection: ``nn.Linear(r, d, bias=False)``.
    """

    def __init__(self, num_embeddings: int, rank: int, dim: int, padding_idx: int | None = None,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.table = nn.Embedding(num_embeddings, rank, padding_idx=padding_idx, device=device, dtype=dtype)
        self.projection = nn.Linear(rank, dim, bias=False, device=device, dtype=dtype)

    @property
    def rank(self) -> int:
        return self.table.embedding_dim

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.projection(self.table(input_ids))  # (B, s, r) → (B, s, d)


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
    rank = structure.get("embedding_rank")
    if rank is not None:
        dense = model.base_model.get_input_embeddings()
        model.base_model.set_input_embeddings(FactorizedEmbedding(
            dense.num_embeddings, rank, dense.embedding_dim, dense.padding_idx, dense.weight.device,
            dense.weight.dtype))
    layers = model.base_model.get_submodule(layout["layers"])
    for layer, layer_structure in zip(layers, structure["layers"]):
        reference = layer.get_submodule(fused_path(layout["query"])[0]).weight
        for path, module in build_layer_modules(layout, layer_structure, dims, dropout, config,
                                                reference.device, reference.dtype).items():
            set_submodule(layer, path, module.train(layer.training))


# ------------------------------------------------------------------------------------------------ model classes
def _derived(name: str, bases: tuple[type, ...], doc: str) -> type[nn.Module]:
    """A class ``name`` of ``bases``, registered under its name in this module (``auto_map`` entries name it)."""
    cls = type(name, bases, {"__doc__": doc, "__module__": __name__, "__qualname__": name})
    globals()[name] = cls
    return cls


class _Pruned:
    """Builds the dense model, then the pruned structure from the config (before any weights load)."""

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        apply_structure(self)


# ------------------------------------------------------------------------------------------------ label words
class _LabelWordClassification:
    """A masked-LM model used as a sequence classifier through label words (SMP's classifier): the logits are the
    MLM head's scores of one vocabulary word per class, at each input's first mask token (at its first token when it
    has none, as in SMP's code, whose GLUE inputs carry no mask token).

    ``config.lit_prune_label_words`` is ``{"words": [...], "ids": [...], "mask_token_id": id}`` with one word per
    label (``config.num_labels``); a regression task (one label) reads its one word's score. The loss is the
    cross-entropy over the label words (mean squared error for regression). Returns a ``SequenceClassifierOutput``.
    """

    def label_word_ids(self) -> list[int]:
        words = getattr(self.config, LABEL_WORDS_KEY, None)
        if not words or len(words.get("ids", [])) != self.config.num_labels:
            raise ValueError(f"{type(self).__name__}: config.{LABEL_WORDS_KEY} must give one word id per label "
                             f"(num_labels={self.config.num_labels}); got {words!r}")
        return list(words["ids"])

    def _label_scores(self, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The MLM head's scores of the vocabulary entries ``ids`` only: its transform, then those rows of the
        decoder (a pruned small model would otherwise spend much of its time scoring the whole vocabulary)."""
        if hasattr(self, "cls"):  # BERT
            hidden = self.cls.predictions.transform(hidden)
        elif hasattr(self, "lm_head"):  # RoBERTa, XLM-RoBERTa
            head = self.lm_head
            hidden = head.layer_norm(F.gelu(head.dense(hidden)))
        elif hasattr(self, "head"):  # ModernBERT
            hidden = self.head(hidden)
        else:  # DistilBERT
            hidden = self.vocab_layer_norm(self.activation(self.vocab_transform(hidden)))
        decoder = self.get_output_embeddings()
        bias = None if decoder.bias is None else decoder.bias.index_select(0, ids)
        return F.linear(hidden, decoder.weight.index_select(0, ids), bias)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                **kwargs: Any) -> SequenceClassifierOutput:
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        outputs = self.base_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        hidden = outputs[0]
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        position = torch.zeros_like(rows)
        mask_token_id = getattr(self.config, LABEL_WORDS_KEY, {}).get("mask_token_id")
        if input_ids is not None and mask_token_id is not None:
            is_mask = input_ids == mask_token_id
            position = torch.where(is_mask.any(1), is_mask.int().argmax(1), position)
        ids = torch.tensor(self.label_word_ids(), device=hidden.device)
        logits = self._label_scores(hidden[rows, position], ids)
        loss = None
        if labels is not None:
            if self.config.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).view(-1))
            else:
                loss = F.cross_entropy(logits, labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=getattr(outputs, "hidden_states", None),
                                        attentions=getattr(outputs, "attentions", None))


#: a label-word classifier per family of :data:`LABEL_WORD_FAMILIES`: ``<Prefix>ForLabelWordClassification``
LABEL_WORD_CLASSES: dict[str, type[nn.Module]] = {
    model_type: _derived(f"{FAMILIES[model_type]}ForLabelWordClassification",
                         (_LabelWordClassification, getattr(transformers, f"{FAMILIES[model_type]}ForMaskedLM")),
                         f":class:`transformers.{FAMILIES[model_type]}ForMaskedLM` classifying through label words "
                         "(see :class:`_LabelWordClassification`).")
    for model_type in LABEL_WORD_FAMILIES
}


# ------------------------------------------------------------------------------------------ sentence embeddings
def pool_tokens(hidden: torch.Tensor, attention_mask: torch.Tensor | None, mode: str) -> torch.Tensor:
    """One vector per input from the token states ``hidden`` (B, S, d), as sentence-transformers' ``Pooling`` does:
    ``mean`` over the non-padding tokens, the first (``cls``) token, or the ``max`` over non-padding tokens."""
    if mode == "cls":
        return hidden[:, 0]
    mask = (torch.ones(hidden.shape[:2], device=hidden.device) if attention_mask is None
            else attention_mask).unsqueeze(-1).to(hidden.dtype)
    if mode == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    if mode == "max":
        return hidden.masked_fill(mask == 0, -1e9).max(1).values
    raise ValueError(f"pooling mode {mode!r} is not one of {list(POOLING_MODES)}")


@dataclass
class SentenceEmbeddingOutput(BaseModelOutputWithPooling):
    """The encoder's outputs plus ``embeddings`` (B, d): one pooled (and, where the model normalises, unit-length)
    vector per input. ``outputs[0]`` stays the token states, as sentence-transformers reads them."""

    embeddings: torch.FloatTensor | None = None


class _SentenceEmbedding:
    """An encoder that also pools its token states into sentence embeddings (a sentence-transformers model's
    Transformer, Pooling and Normalize modules in one).

    ``config.lit_prune_sentence_embedding`` is ``{"pooling": "mean" | "cls" | "max", "normalize": bool,
    "max_seq_length": int}``. Built without the encoder's pooler layer (sentence embeddings do not use it).
    """

    def __init__(self, config: Any, **kwargs: Any) -> None:
        encoder = next(c for c in type(self).__mro__ if c.__module__.startswith("transformers."))
        if "add_pooling_layer" in inspect.signature(encoder.__init__).parameters:  # BERT, RoBERTa, MPNet, ...
            kwargs.setdefault("add_pooling_layer", False)
        super().__init__(config, **kwargs)

    def embedding_settings(self) -> dict[str, Any]:
        settings = getattr(self.config, SENTENCE_EMBEDDING_KEY, None)
        if not settings or settings.get("pooling") not in POOLING_MODES:
            raise ValueError(f"{type(self).__name__}: config.{SENTENCE_EMBEDDING_KEY} must give the pooling, one of "
                             f"{list(POOLING_MODES)}; got {settings!r}")
        return settings

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None) -> SentenceEmbeddingOutput:
        settings = self.embedding_settings()
        extra = {name: value for name, value in (("token_type_ids", token_type_ids), ("position_ids", position_ids),
                                                 ("output_attentions", output_attentions),
                                                 ("output_hidden_states", output_hidden_states))
                 if value is not None}
        outputs = super().forward(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                                  return_dict=True, **extra)
        embeddings = pool_tokens(outputs.last_hidden_state, attention_mask, settings["pooling"])
        if settings.get("normalize"):
            embeddings = F.normalize(embeddings, p=2, dim=1)
        return SentenceEmbeddingOutput(last_hidden_state=outputs.last_hidden_state, embeddings=embeddings,
                                       hidden_states=getattr(outputs, "hidden_states", None),
                                       attentions=getattr(outputs, "attentions", None))


#: the encoder with its pooling, per family: ``<Prefix>ForSentenceEmbedding``
SENTENCE_EMBEDDING_CLASSES: dict[str, type[nn.Module]] = {
    model_type: _derived(f"{prefix}ForSentenceEmbedding",
                         (_SentenceEmbedding, getattr(transformers, f"{prefix}Model")),
                         f":class:`transformers.{prefix}Model` with sentence pooling (see "
                         ":class:`_SentenceEmbedding`).")
    for model_type, prefix in FAMILIES.items()
}


#: the transformers (or label-word / sentence-embedding) class of every (model type, kind) a pruned folder can hold
DENSE_CLASSES: dict[str, dict[str, type[nn.Module]]] = {
    model_type: {
        **{kind: getattr(transformers, prefix + suffix) for kind, suffix in (
            ("base", "Model"), ("sequence_classification", "ForSequenceClassification"),
            ("question_answering", "ForQuestionAnswering"), ("token_classification", "ForTokenClassification"))},
        **({"label_words": LABEL_WORD_CLASSES[model_type]} if model_type in LABEL_WORD_CLASSES else {}),
        "sentence_embedding": SENTENCE_EMBEDDING_CLASSES[model_type],
    }
    for model_type, prefix in FAMILIES.items()
}


#: ``LitPruned<Name>`` for each of them: the class that builds the pruned structure of its config (see
#: :class:`_Pruned`); ``isinstance(model, <Name>)`` holds
PRUNED_CLASSES: dict[tuple[str, str], type[nn.Module]] = {
    (model_type, kind): _derived(f"LitPruned{dense.__name__}", (_Pruned, dense),
                                 f"A pruned :class:`{dense.__name__}`.")
    for model_type, classes in DENSE_CLASSES.items() for kind, dense in classes.items()
}
