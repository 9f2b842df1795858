"""Shared fixtures: tiny random BERT / RoBERTa / DistilBERT models (no download) and the real assets.

Real assets come from ``LIT_PRUNE_ASSETS``; when it is unset, ``../shared/assets`` beside the repository is used
if it exists. A test that needs them skips on a developer machine without them, and FAILS in CI (``CI`` set):
there, missing assets are an error, never a silent skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ASSETS = REPO.parent / "shared" / "assets"

if not os.environ.get("LIT_PRUNE_ASSETS") and DEFAULT_ASSETS.is_dir():
    os.environ["LIT_PRUNE_ASSETS"] = str(DEFAULT_ASSETS)
if os.environ.get("LIT_PRUNE_ASSETS"):  # absolute, so tests that change directory still find it
    os.environ["LIT_PRUNE_ASSETS"] = str(Path(os.environ["LIT_PRUNE_ASSETS"]).resolve())

# Keep tests on this machine's two cores predictable, and never reach for a hub.
torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _assets_or_fail(*parts: str) -> Path:
    root = os.environ.get("LIT_PRUNE_ASSETS")
    path = Path(root).joinpath(*parts) if root else None
    if path is None or not path.exists():
        message = f"real assets missing: {path or 'LIT_PRUNE_ASSETS is unset'}"
        if os.environ.get("CI"):
            pytest.fail(message + " (in CI, missing assets are a failure)")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    """The real assets folder (``LIT_PRUNE_ASSETS``)."""
    return _assets_or_fail()


@pytest.fixture(scope="session")
def minilm_l3(assets_dir) -> Path:
    """The real 3-layer paraphrase-MiniLM-L3-v2 (float16 on disk)."""
    return _assets_or_fail("models", "paraphrase-MiniLM-L3-v2")


@pytest.fixture(scope="session")
def minilm_l6(assets_dir) -> Path:
    """The real 6-layer all-MiniLM-L6-v2."""
    return _assets_or_fail("models", "all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def teacher(tmp_path_factory, minilm_l3) -> Path:
    """paraphrase-MiniLM-L3-v2 fine-tuned briefly on SST-2 (a real, if weak, teacher), once per test session."""
    import lightning as L

    from lit_prune.data import GlueDataModule
    from lit_prune.tasks import SequenceClassificationModule

    root = tmp_path_factory.mktemp("teacher")
    L.seed_everything(0)
    module = SequenceClassificationModule(str(minilm_l3), task="sst2", learning_rate=1e-4)
    data = GlueDataModule(task="sst2", tokenizer=str(minilm_l3), max_seq_length=64, batch_size=32,
                          max_train_samples=640)
    trainer = L.Trainer(max_epochs=1, default_root_dir=str(root), logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0, accelerator="cpu", devices=1)
    trainer.fit(module, data)
    return root / "final_model"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session gets its own tokenisation cache, so tests never read a stale entry."""
    cache = tmp_path_factory.getbasetemp() / "lit_prune_cache"
    monkeypatch.setenv("LIT_PRUNE_CACHE", str(cache))


# ------------------------------------------------------------------------------------------- tiny models
TINY = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=64)


MODEL_TYPES = ("bert", "roberta", "distilbert", "xlm-roberta", "electra", "mpnet", "deberta-v2", "modernbert")


def tiny_config(model_type: str, **overrides):
    """A tiny random config of ``model_type`` (one of :data:`MODEL_TYPES`)."""
    from transformers import (BertConfig, DebertaV2Config, DistilBertConfig, ElectraConfig, ModernBertConfig,
                              MPNetConfig, RobertaConfig, XLMRobertaConfig)

    if model_type == "bert":
        return BertConfig(**{**TINY, **overrides})
    if model_type in ("roberta", "xlm-roberta"):
        config = RobertaConfig if model_type == "roberta" else XLMRobertaConfig
        return config(**{**TINY, "max_position_embeddings": TINY["max_position_embeddings"] + 2,
                         "pad_token_id": 1, **overrides})
    if model_type == "mpnet":  # positions start after the padding index, as RoBERTa's
        return MPNetConfig(**{**TINY, "max_position_embeddings": TINY["max_position_embeddings"] + 2,
                              "pad_token_id": 1, **overrides})
    if model_type == "deberta-v2":  # as DeBERTa-v3: relative attention with both terms, shared projections, buckets
        return DebertaV2Config(**{**TINY, "relative_attention": True, "pos_att_type": ["p2c", "c2p"],
                                  "share_att_key": True, "position_buckets": 8, "max_relative_positions": -1,
                                  "norm_rel_ebd": "layer_norm", "type_vocab_size": 0, **overrides})
    if model_type == "modernbert":  # a global layer then a sliding-window one (window 8: narrower than the inputs)
        return ModernBertConfig(**{**TINY, "local_attention": 8, "pad_token_id": 0, "bos_token_id": 1,
                                   "eos_token_id": 2, "cls_token_id": 1, "sep_token_id": 2, **overrides})
    if model_type == "electra":  # embeddings narrower than the hidden size, projected up as ELECTRA-small's are
        return ElectraConfig(**{**TINY, "embedding_size": 16, **overrides})
    if model_type == "distilbert":
        return DistilBertConfig(**{"vocab_size": TINY["vocab_size"], "dim": TINY["hidden_size"], "n_layers": 2,
                                   "n_heads": 4, "hidden_dim": TINY["intermediate_size"],
                                   "max_position_embeddings": 64, **overrides})
    raise ValueError(model_type)


@pytest.fixture(params=MODEL_TYPES)
def tiny_model_type(request) -> str:
    return request.param


def tiny_model(model_type: str, kind: str = "sequence_classification", seed: int = 0, **overrides):
    """A tiny random model in eval mode; ``kind`` is "sequence_classification", "question_answering",
    "token_classification", "base" or "label_words" (its masked-LM head classifying through two label words, ids 7
    and 9; mask token id 4)."""
    from transformers import (AutoModel, AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
                              AutoModelForTokenClassification)

    torch.manual_seed(seed)
    config = tiny_config(model_type, **overrides)
    if kind == "label_words":
        from lit_prune.core.hf_modeling.modeling_lit_pruned import LABEL_WORD_CLASSES, LABEL_WORDS_KEY

        config.num_labels = 2
        setattr(config, LABEL_WORDS_KEY, {"words": ["no", "yes"], "ids": [7, 9], "mask_token_id": 4})
        return LABEL_WORD_CLASSES[model_type](config).eval()
    cls = {"sequence_classification": AutoModelForSequenceClassification,
           "question_answering": AutoModelForQuestionAnswering, "base": AutoModel,
           "token_classification": AutoModelForTokenClassification}[kind]
    return cls.from_config(config).eval()


def tiny_inputs(batch: int = 3, seq: int = 10, vocab: int = TINY["vocab_size"], seed: int = 0, pad_last: int = 3):
    """Random token ids with an attention mask whose last example is padded by ``pad_last`` tokens."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab, (batch, seq), generator=g)
    attention_mask = torch.ones(batch, seq, dtype=torch.long)
    if pad_last:
        attention_mask[-1, -pad_last:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}
