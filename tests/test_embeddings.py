"""Sentence-embedding models pruned without labels: pooling as sentence-transformers does it, the embedding
distillation loss and sampled Fisher, KPrune and Kwon end to end through the callbacks, and the pruned folder loaded
by sentence-transformers and by plain transformers."""

from __future__ import annotations

import json
import shutil

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from lit_prune.core.compact import compact
from lit_prune.core.hf_modeling.modeling_lit_pruned import SENTENCE_EMBEDDING_KEY, pool_tokens
from lit_prune.core.io import load_pruned, save_pruned
from lit_prune.core.masks import PruningMasks
from lit_prune.core.pooling import embedding_settings, read_pooling
from lit_prune.data.sentences import SentenceDataModule
from lit_prune.methods import GPrunerCallback, KPruneCallback, KwonCallback
from lit_prune.prune.distill import distillation_loss, prediction_kind, reads_first_token_only, teacher_targets
from lit_prune.prune.fisher import fisher_pass
from lit_prune.tasks import SentenceEmbeddingModule

SENTENCES = ["A man is playing a guitar.", "Two dogs run across a snowy field.", "The cat sleeps on the warm sofa.",
             "Stock markets fell sharply on Monday.", "A woman slices an onion.", "The train was late again.",
             "Children are playing football in the park.", "He reads the newspaper every morning."] * 3
PAIRS = [("A man plays the guitar.", "A man is playing a guitar.", 4.8), ("A dog runs.", "The market fell.", 0.2),
         ("A woman cuts an onion.", "A woman slices an onion.", 4.6), ("Kids play football.", "The train is late.", 0.4),
         ("The cat sleeps.", "A cat is sleeping on a sofa.", 4.0), ("He reads.", "Markets fell on Monday.", 0.6)]


@pytest.fixture
def st_folder(tmp_path, minilm_l3):
    """MiniLM-L3 as a sentence-transformers folder (mean pooling, normalised): the L6 model's files on L3 weights."""
    folder = tmp_path / "st_model"
    shutil.copytree(minilm_l3, folder)
    (folder / "1_Pooling").mkdir()
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 384,
                                                                  "pooling_mode_mean_tokens": True}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    return folder


@pytest.fixture
def data_files(tmp_path):
    text = tmp_path / "sentences.txt"
    text.write_text("\n".join(SENTENCES) + "\n")
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("sentence1\tsentence2\tscore\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in PAIRS))
    return text, pairs


def data_module(folder, files, tmp_path) -> SentenceDataModule:
    text, pairs = files
    return SentenceDataModule(tokenizer=str(folder), sentences=str(text), evaluation=str(pairs), batch_size=8,
                              eval_batch_size=4, cache_dir=str(tmp_path / "cache"))


# ------------------------------------------------------------------------------------------------ pooling
def test_pool_tokens_matches_the_sentence_transformers_modes():
    hidden = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert torch.allclose(pool_tokens(hidden, mask, "mean")[0], hidden[0, :3].mean(0), atol=1e-6)
    assert torch.equal(pool_tokens(hidden, mask, "cls"), hidden[:, 0])
    assert torch.equal(pool_tokens(hidden, mask, "max")[0], hidden[0, :3].max(0).values)
    with pytest.raises(ValueError, match="pooling mode 'sum'"):
        pool_tokens(hidden, mask, "sum")


def test_pooling_is_read_from_the_sentence_transformers_files(minilm_l6, minilm_l3, st_folder):
    assert read_pooling(minilm_l6) == {"pooling": "mean", "normalize": True, "max_seq_length": 256}
    assert read_pooling(minilm_l3) is None
    assert embedding_settings(st_folder, "cls", False)["pooling"] == "cls"
    with pytest.raises(ValueError, match=r"model\.pooling=None, and .* has no sentence-transformers pooling"):
        SentenceEmbeddingModule(str(minilm_l3))
    with pytest.raises(ValueError, match=r"model\.pooling='avg': expected one of \['mean', 'cls', 'max'\]"):
        SentenceEmbeddingModule(str(minilm_l3), pooling="avg")
    config = json.loads((st_folder / "1_Pooling" / "config.json").read_text())
    (st_folder / "1_Pooling" / "config.json").write_text(json.dumps({**config, "pooling_mode_lasttoken": True}))
    with pytest.raises(ValueError, match="pooling_mode_lasttoken"):
        read_pooling(st_folder)


def test_the_module_gives_sentence_transformers_embeddings(minilm_l6):
    from sentence_transformers import SentenceTransformer

    module = SentenceEmbeddingModule(str(minilm_l6)).eval()
    tokenizer = AutoTokenizer.from_pretrained(minilm_l6)
    with torch.no_grad():
        ours = module.embed(dict(tokenizer(SENTENCES[:4], padding=True, return_tensors="pt")))
    theirs = SentenceTransformer(str(minilm_l6), device="cpu").encode(SENTENCES[:4], convert_to_tensor=True)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(4), atol=1e-5)


# ------------------------------------------------------------------------------------- losses, Fisher
def test_embedding_distillation_is_the_squared_distance(minilm_l3):
    module = SentenceEmbeddingModule(str(minilm_l3), pooling="mean", normalize=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(minilm_l3)
    with torch.no_grad():
        outputs = module.model(**tokenizer(SENTENCES[:3], padding=True, return_tensors="pt"))
    assert prediction_kind(outputs, module.model) == "embedding"
    assert not reads_first_token_only(module.model)
    targets = teacher_targets(outputs, module.model, temperature=2.0)
    assert float(distillation_loss(outputs, targets, 2.0)) == pytest.approx(0.0, abs=1e-10)
    other = torch.nn.functional.normalize(torch.randn_like(outputs.embeddings), dim=-1)
    expected = (2 - 2 * F.cosine_similarity(outputs.embeddings, other)).mean()
    assert float(distillation_loss(outputs, {"embeddings": other}, 2.0)) == pytest.approx(float(expected), rel=1e-5)


def test_the_sampled_fisher_of_an_embedding_model_is_seeded_and_informative(minilm_l3):
    from lit_prune.prune.fisher import embedding_fisher_loss

    module = SentenceEmbeddingModule(str(minilm_l3), pooling="mean").eval()
    tokenizer = AutoTokenizer.from_pretrained(minilm_l3)
    batches = [dict(tokenizer(SENTENCES[i:i + 4], padding=True, return_tensors="pt")) for i in (0, 4)]
    first = fisher_pass(module.model, batches, loss_fn=embedding_fisher_loss(0))
    again = fisher_pass(module.model, batches, loss_fn=embedding_fisher_loss(0))
    other_seed = fisher_pass(module.model, batches, loss_fn=embedding_fisher_loss(1))
    assert torch.equal(first.head_grads, again.head_grads)
    assert not torch.equal(first.head_grads, other_seed.head_grads)
    assert (first.head_importance() > 0).all() and (first.ffn_importance() > 0).float().mean() > 0.99
    # the same draw for a batch wherever it sits in a process's list: its position in the whole sample seeds it
    alone = fisher_pass(module.model, batches[1:], batch_ids=[1], num_batches=2, loss_fn=embedding_fisher_loss(0))
    assert torch.equal(alone.head_grads[1], first.head_grads[1])


# -------------------------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("method", ["kprune", "kwon", "gpruner"])
def test_label_free_pruning_gives_a_sentence_transformers_folder(method, st_folder, data_files, tmp_path):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / method
    callback = {"kprune": lambda: KPruneCallback(flops_kept=0.5, num_tokens=150, output_dir=str(out)),
                "kwon": lambda: KwonCallback(flops_kept=0.5, num_samples=16, output_dir=str(out)),
                "gpruner": lambda: GPrunerCallback(flops_kept=0.5, num_samples=16, reward_samples=8, ppo_iterations=2,
                                                   ppo_rollouts=2, output_dir=str(out))}[method]()
    module = SentenceEmbeddingModule(str(st_folder))
    trainer = L.Trainer(max_epochs=0, callbacks=[callback], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, num_sanity_val_steps=0, accelerator="cpu")
    trainer.fit(module, datamodule=data_module(st_folder, data_files, tmp_path))

    report = json.loads((out / "pruning_report.json").read_text())
    assert report["metrics"]["main"] == "spearman"
    assert set(report["metrics"]["dense"]) == {"spearman", "pearson"}
    assert 0.0 < report["metrics"]["pruned"]["cosine_to_dense"] <= 1.0
    assert report["flops"]["kept"] <= 0.5 + 1e-9

    folder = out / "pruned_model"
    assert json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"] == 64
    module.model.eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    inputs = dict(tokenizer(SENTENCES[:5], padding=True, return_tensors="pt"))
    with torch.no_grad():
        ours = module.model(**inputs).embeddings
        plain = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()(**inputs)
    encoded = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu").encode(
        SENTENCES[:5], convert_to_tensor=True)
    assert torch.allclose(encoded, ours, atol=1e-5)
    assert torch.allclose(plain.embeddings, ours, atol=1e-5)
    assert torch.allclose(plain.last_hidden_state, plain[0])


def test_a_pruned_embedding_folder_loads_as_either_kind(tmp_path, minilm_l3):
    module = SentenceEmbeddingModule(str(minilm_l3), pooling="cls", normalize=False)
    model = module.model.eval()
    masks = PruningMasks.ones(3, 12, 32, 1536)
    masks.head[1, :6] = 0
    masks.ffn[2, 100:] = 0
    compact(model, masks)
    folder = save_pruned(model, tmp_path / "pruned")
    assert json.loads((folder / "1_Pooling" / "config.json").read_text())["pooling_mode_cls_token"] is True
    assert "Normalize" not in (folder / "modules.json").read_text()
    as_base = load_pruned(folder, kind="base")
    assert getattr(as_base.config, SENTENCE_EMBEDDING_KEY)["pooling"] == "cls"
    assert type(as_base).__name__ == "LitPrunedBertForSentenceEmbedding"
    reloaded = SentenceEmbeddingModule(str(folder))  # the pooling comes from the pruned folder's files
    ids = torch.tensor([[101, 2023, 2003, 102]])
    with torch.no_grad():
        assert torch.allclose(reloaded.model.eval()(input_ids=ids).embeddings, model(input_ids=ids).embeddings,
                              atol=1e-5)


def test_an_embedding_module_refuses_to_train(st_folder, data_files, tmp_path):
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        accelerator="cpu")
    with pytest.raises(ValueError, match="has no training objective.*max_epochs=1"):
        trainer.fit(SentenceEmbeddingModule(str(st_folder)), datamodule=data_module(st_folder, data_files, tmp_path))


@pytest.mark.parametrize("method", ["GRAIN", "SMP"])
def test_training_methods_refuse_an_embedding_model_before_any_work(method, st_folder, data_files, tmp_path):
    from lit_prune.methods import GrainCallback, SMPCallback

    callback = GrainCallback(params_kept=0.5) if method == "GRAIN" else SMPCallback(params_kept=0.5)
    trainer = L.Trainer(max_epochs=1, callbacks=[callback], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, accelerator="cpu")
    with pytest.raises(ValueError, match=f"{method} trains the model with its task loss.*KPruneCallback, KwonCallback"):
        trainer.fit(SentenceEmbeddingModule(str(st_folder)), datamodule=data_module(st_folder, data_files, tmp_path))


def test_grain_prunes_an_embedding_model_while_it_distils_from_itself(st_folder, data_files, tmp_path):
    from sentence_transformers import SentenceTransformer

    from lit_prune.methods import GrainCallback
    from lit_prune.tasks import DistilledSentenceEmbeddingModule

    module = DistilledSentenceEmbeddingModule(str(st_folder), learning_rate=1e-4)
    out = tmp_path / "grain"
    trainer = L.Trainer(max_epochs=2, callbacks=[GrainCallback(params_kept=0.5, output_dir=str(out))], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0,
                        accelerator="cpu")
    trainer.fit(module, datamodule=data_module(st_folder, data_files, tmp_path))
    report = json.loads((out / "pruning_report.json").read_text())
    assert report["params"]["kept"] <= 0.5 + 1e-3 and "cosine_to_dense" in report["metrics"]["pruned"]
    module.model.eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "pruned_model")
    with torch.no_grad():
        ours = module.model(**tokenizer(SENTENCES[:3], padding=True, return_tensors="pt")).embeddings
    encoded = SentenceTransformer(str(out / "pruned_model"), trust_remote_code=True, device="cpu").encode(
        SENTENCES[:3], convert_to_tensor=True)
    assert torch.allclose(encoded, ours, atol=1e-5)
