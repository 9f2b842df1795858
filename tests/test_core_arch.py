"""Architecture adapters: dims and modules of every supported family, and clear errors for anything else."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import tiny_model
from lit_prune.core.arch import (
    ArchSpec,
    LinearPart,
    UnsupportedArchitectureError,
    get_adapter,
    register_architecture,
    supported_model_types,
)


@pytest.mark.parametrize("kind", ["sequence_classification", "question_answering", "base"])
def test_adapter_dims_and_modules(tiny_model_type, kind):
    model = tiny_model(tiny_model_type, kind)
    adapter = get_adapter(model)
    assert (adapter.num_layers, adapter.num_heads, adapter.head_dim, adapter.hidden_size, adapter.ffn_dim) == (
        2, 4, 8, 32, 48)
    assert not adapter.is_compacted
    modernbert = tiny_model_type == "modernbert"  # fused Wqkv, gated FFN, pre-LayerNorm (layer 0 has none)
    for index in range(2):
        m = adapter.layer(index)
        up = (96 if modernbert else 48, 32)  # a gated FFN's up projection holds the gate rows
        for linear, shape in ((m.query, (32, 32)), (m.key, (32, 32)), (m.value, (32, 32)), (m.attn_out, (32, 32)),
                              (m.ffn_up, up), (m.ffn_down, (32, 48))):
            assert isinstance(linear, LinearPart if modernbert and linear in (m.query, m.key, m.value) else nn.Linear)
            assert tuple(linear.weight.shape) == shape
        expected_attn_norm = nn.Identity if modernbert and index == 0 else nn.LayerNorm
        assert isinstance(m.attn_norm, expected_attn_norm) and isinstance(m.ffn_norm, nn.LayerNorm)
        assert m.attn_norm is not m.ffn_norm
        if tiny_model_type in ("mpnet", "deberta-v2", "modernbert"):  # sqrt(d_h) from the head size
            assert (m.self_attention.head_dim if modernbert else m.self_attention.attention_head_size) == 8
        else:
            assert m.self_attention.scaling == 8 ** -0.5
        # The adapter finds the very modules the model runs.
        query = {"distilbert": f"transformer.layer.{index}.attention.q_lin",
                 "mpnet": f"encoder.layer.{index}.attention.attn.q",
                 "deberta-v2": f"encoder.layer.{index}.attention.self.query_proj",
                 "modernbert": f"layers.{index}.attn.Wqkv"}.get(
            tiny_model_type, f"encoder.layer.{index}.attention.self.query")
        if modernbert:  # the three parts of the fused projection, side by side
            fused = model.base_model.get_submodule(query)
            assert all(part.linear is fused for part in (m.query, m.key, m.value))
            assert [(part.start, part.stop) for part in (m.query, m.key, m.value)] == [(0, 32), (32, 64), (64, 96)]
        else:
            assert m.query is model.base_model.get_submodule(query)


def test_distilbert_output_projection_is_inside_attention():
    adapter = get_adapter(tiny_model("distilbert"))
    layer = adapter.layer(0)
    assert layer.attn_out is layer.self_attention.out_lin
    assert adapter.spec.attention_style == "distilbert"


def test_real_minilm_dims(minilm_l6):
    from transformers import AutoModel

    adapter = get_adapter(AutoModel.from_pretrained(minilm_l6))
    assert (adapter.num_layers, adapter.num_heads, adapter.head_dim, adapter.hidden_size, adapter.ffn_dim) == (
        6, 12, 32, 384, 1536)


def test_unsupported_architecture_names_type_supported_and_how_to_add():
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    gpt2 = GPT2Model(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=16))
    with pytest.raises(UnsupportedArchitectureError,
                       match=r"model type 'gpt2' \(GPT2Model\) is not supported; supported model types: bert, "
                             r"deberta-v2, distilbert, electra, modernbert, mpnet, roberta, xlm-roberta\. "
                             r"To add one.*register_architecture"):
        get_adapter(gpt2)
    assert supported_model_types() == ["bert", "deberta-v2", "distilbert", "electra", "modernbert", "mpnet",
                                       "roberta", "xlm-roberta"]


def test_decoder_configuration_is_refused():
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=8, is_decoder=True)
    with pytest.raises(UnsupportedArchitectureError, match="decoder"):
        get_adapter(BertModel(config))


def test_register_architecture_validates_and_refuses_duplicates():
    bert_like = ArchSpec(**{**get_adapter(tiny_model("bert")).spec.__dict__})
    with pytest.raises(ValueError, match="model_type='bert' already has an adapter"):
        register_architecture("bert", bert_like)
    wrong = ArchSpec(**{**bert_like.__dict__, "query": "attention.self.q_proj"})
    with pytest.raises(ValueError, match=r"query='attention.self.q_proj' must be 'attention.self.query'"):
        register_architecture("my-encoder", wrong)
    wrong_style = ArchSpec(**{**bert_like.__dict__, "attention_style": "gpt"})
    with pytest.raises(ValueError, match="attention_style='gpt' is not one of"):
        register_architecture("my-encoder", wrong_style)
    assert "my-encoder" not in supported_model_types()
