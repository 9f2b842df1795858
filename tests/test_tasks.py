"""The sequence classification / regression module: model loading, metrics, saving the final model."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from conftest import tiny_config
from lit_prune.data.glue import GlueDataModule
from lit_prune.tasks.classification import SequenceClassificationModule
from test_glue import write_rte


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory, minilm_l3):
    """Tiny random BERT / RoBERTa / DistilBERT folders that share the real MiniLM tokenizer."""
    from transformers import AutoModel

    tokenizer = AutoTokenizer.from_pretrained(minilm_l3)
    folders = {}
    for model_type in ("bert", "roberta", "distilbert"):
        overrides = {"vocab_size": tokenizer.vocab_size}
        if model_type == "roberta":
            overrides["type_vocab_size"] = 2  # the BERT tokenizer emits segment ids 0/1
        folder = tmp_path_factory.mktemp(model_type)
        torch.manual_seed(0)
        AutoModel.from_config(tiny_config(model_type, **overrides)).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[model_type] = folder
    return folders


def _trainer(tmp_path, **kwargs):
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, **kwargs)


@pytest.mark.parametrize("model_type", ["bert", "roberta", "distilbert"])
def test_fit_validate_and_save(model_type, tiny_folders, tmp_path):
    folder = tiny_folders[model_type]
    module = SequenceClassificationModule(str(folder), task="rte", learning_rate=1e-3)
    assert module.model.training, "the wrapped model must train with dropout on"
    data = GlueDataModule(task="rte", data_dir=str(write_rte(tmp_path / "RTE")), tokenizer=str(folder),
                          batch_size=4)
    trainer = _trainer(tmp_path, max_steps=3)
    trainer.fit(module, datamodule=data)
    metrics = trainer.validate(module, datamodule=data, verbose=False)[0]
    assert set(metrics) == {"val/accuracy", "val/loss"} and 0 <= metrics["val/accuracy"] <= 1

    saved = tmp_path / "final_model"
    assert (saved / "model.safetensors").is_file() and (saved / "tokenizer.json").is_file()
    summary = json.loads((tmp_path / "fit_summary.json").read_text())
    assert (summary["task"], summary["steps"], summary["world_size"]) == ("rte", 3, 1)
    assert summary["seconds"] > 0 and summary["hardware"]["device"] == "cpu"
    reloaded = AutoModelForSequenceClassification.from_pretrained(saved).eval()
    assert reloaded.config.id2label == {0: "entailment", 1: "not_entailment"}
    assert reloaded.config.finetuning_task == "rte"
    batch = next(iter(data.val_dataloader()))
    inputs = {name: value for name, value in batch.items() if name != "labels"}
    module.model.eval()
    torch.testing.assert_close(reloaded(**inputs).logits, module.model(**inputs).logits)


def test_regression_metrics(tiny_folders, tmp_path, minilm_l3):
    module = SequenceClassificationModule(str(tiny_folders["bert"]), task="stsb")
    assert module.model.config.problem_type == "regression" and module.model.config.num_labels == 1
    assert set(module.val_metrics["val"]) == {"pearson", "spearman"}


def test_metrics_are_the_tasks(tiny_folders):
    module = SequenceClassificationModule(str(tiny_folders["bert"]), task="cola")
    preds, target = torch.tensor([1, 1, 0, 0, 1, 0]), torch.tensor([1, 0, 0, 0, 1, 1])
    module.val_metrics["val"].update(preds, target)
    values = module.val_metrics["val"].compute()
    # hand computation: TP=2 TN=2 FP=1 FN=1 → MCC = (4 - 1) / sqrt(3·3·3·3) = 1/3
    assert values["mcc"].item() == pytest.approx(1 / 3, abs=1e-6)
    assert values["accuracy"].item() == pytest.approx(4 / 6)


def test_float16_checkpoint_loads_as_float32(minilm_l3):
    module = SequenceClassificationModule(str(minilm_l3), task="sst2")
    assert {p.dtype for p in module.parameters()} == {torch.float32}


def test_bad_settings(tiny_folders, tmp_path):
    with pytest.raises(ValueError, match=r"model.task='sst5' is not a GLUE task; allowed: cola, sst2"):
        SequenceClassificationModule(str(tiny_folders["bert"]), task="sst5")
    with pytest.raises(FileNotFoundError, match=r"model.name_or_path='/nonexistent/model': no such folder"):
        SequenceClassificationModule("/nonexistent/model", task="sst2")
    with pytest.raises(ValueError, match=r"learning_rate=-1: expected a number > 0; warmup_ratio=1.5"):
        SequenceClassificationModule(str(tiny_folders["bert"]), task="sst2", learning_rate=-1, warmup_ratio=1.5)


def test_unsupported_model_type(tmp_path):
    from transformers import WhisperConfig

    WhisperConfig(d_model=16, encoder_layers=1, decoder_layers=1).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"is a 'whisper' model, which AutoModelForSequenceClassification cannot "
                                         r"wrap\. Supported model types: .*bert"):
        SequenceClassificationModule(str(tmp_path), task="sst2")


def test_label_count_mismatch_is_explained(tiny_folders, tmp_path):
    module = SequenceClassificationModule(str(tiny_folders["bert"]), task="stsb")
    module.save_pretrained(tmp_path / "stsb_model")
    with pytest.raises(ValueError, match=r"was fine-tuned for 'stsb' with 1 labels; task 'sst2' needs 2"):
        SequenceClassificationModule(str(tmp_path / "stsb_model"), task="sst2")


def test_pruned_folder_loads_into_the_task_module(tiny_folders, tmp_path):
    """`--model.name_or_path <pruned folder>` validates a pruned model with a recipe's data and metrics."""
    from lit_prune.core.compact import compact
    from lit_prune.core.io import is_pruned_folder, save_pruned
    from lit_prune.core.masks import PruningMasks

    dense = SequenceClassificationModule(str(tiny_folders["bert"]), task="rte")
    masks = PruningMasks.from_model(dense.model)
    masks.head[0, 1] = 0
    masks.ffn[1, :20] = 0
    model = compact(dense.model.eval(), masks)
    save_pruned(model, tmp_path / "pruned", tokenizer=AutoTokenizer.from_pretrained(tiny_folders["bert"]))

    module = SequenceClassificationModule(str(tmp_path / "pruned"), task="rte")
    assert module.model.training
    inputs = {"input_ids": torch.randint(5, 100, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    torch.testing.assert_close(module.model.eval()(**inputs).logits, model(**inputs).logits)
    # saving a module that holds a compacted model keeps it a pruned folder
    module.save_pretrained(tmp_path / "again")
    assert is_pruned_folder(tmp_path / "again")
    with pytest.raises(ValueError, match=r"fine-tuned for 'rte' with 2 labels; task 'stsb' needs 1"):
        SequenceClassificationModule(str(tmp_path / "pruned"), task="stsb")
