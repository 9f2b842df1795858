"""Token classification (named entities) through every method: the pruned token-classification folder, the
distillation losses over token logits that skip the positions the task loss ignores, and a user's own NER project
pruned by each of the five callbacks with only its budget."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lit_prune.core.compact import compact
from lit_prune.core.io import load_pruned, save_pruned, saved_kind
from lit_prune.core.masks import PruningMasks
from lit_prune.methods import GPrunerCallback, GrainCallback, KPruneCallback, KwonCallback, SMPCallback
from lit_prune.prune.distill import distillation_loss, prediction_kind, reads_first_token_only, teacher_targets
from lit_prune.report import read_report
from tests.conftest import tiny_config, tiny_inputs

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
NAMES, PLACES = ["anna", "peter", "maria"], ["paris", "berlin", "rome"]
FILLER = ["the", "a", "went", "to", "met", "saw", "in", "with", "and", "from"]

CALLBACKS = {
    "kwon": lambda: KwonCallback(flops_kept=0.5),
    "kprune": lambda: KPruneCallback(flops_kept=0.5),
    "gpruner": lambda: GPrunerCallback(flops_kept=0.5, ppo_iterations=2),
    "grain": lambda: GrainCallback(params_kept=0.5),
    "smp": lambda: SMPCallback(params_kept=0.5),
}


def token_model(model_type: str, seed: int = 0):
    from transformers import AutoModelForTokenClassification

    torch.manual_seed(seed)
    return AutoModelForTokenClassification.from_config(tiny_config(model_type, num_labels=len(TAGS))).eval()


@pytest.mark.parametrize("model_type", ["bert", "roberta", "distilbert"])
def test_a_pruned_token_classifier_loads_with_plain_transformers(model_type, tmp_path):
    from transformers import AutoModelForTokenClassification

    model = token_model(model_type)
    masks = PruningMasks.ones(2, 4, 8, 48)
    masks.head[0, 1:3] = 0
    masks.ffn[1, 10:30] = 0
    inputs = tiny_inputs()
    with torch.no_grad():
        compact(model, masks)
        expected = model(**inputs).logits
    folder = save_pruned(model, tmp_path / "pruned")
    assert saved_kind(load_pruned(folder).config) == "token_classification"
    loaded = AutoModelForTokenClassification.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, expected, rtol=1e-4, atol=1e-5)


def test_token_distillation_counts_only_the_labelled_tokens():
    model = token_model("bert")
    inputs = tiny_inputs()
    labels = torch.full(inputs["input_ids"].shape, -100)
    labels[:, 1:4] = 1
    with torch.no_grad():
        outputs = model(**inputs)
    assert prediction_kind(outputs, model) == "token_classification"
    assert not reads_first_token_only(model)
    targets = teacher_targets(outputs, model, 2.0, {**inputs, "labels": labels})
    assert targets["token_mask"].sum() == labels.ne(-100).sum()
    other = outputs.logits.clone()
    other[:, 5:] = torch.randn_like(other[:, 5:]) * 10  # only ignored positions change
    changed = type(outputs)(logits=other)
    assert float(distillation_loss(changed, targets, 2.0)) == pytest.approx(0.0, abs=1e-6)
    other[:, 2, 0] += 3.0  # a labelled position
    assert float(distillation_loss(type(outputs)(logits=other), targets, 2.0)) > 1e-3
    # without labels: the non-padding tokens count
    assert torch.equal(teacher_targets(outputs, model, 2.0, inputs)["token_mask"], inputs["attention_mask"].bool())


# ------------------------------------------------------------------------------------------ a user's NER project
@pytest.fixture(scope="module")
def tokenizer(minilm_l3):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_l3))


def tagged_sentences(count: int, seed: int) -> list[tuple[list[str], list[int]]]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(count):
        words, tags = [], []
        for _ in range(int(torch.randint(4, 10, (1,), generator=g))):
            pick = int(torch.randint(10, (1,), generator=g))
            if pick < 2:
                words.append(NAMES[pick % 3])
                tags.append(1)
            elif pick < 4:
                words.append(PLACES[pick % 3])
                tags.append(3)
            else:
                words.append(FILLER[pick])
                tags.append(0)
        rows.append((words, tags))
    return rows


def encode(tokenizer, rows):
    items = []
    for words, tags in rows:
        encoded = tokenizer(words, is_split_into_words=True, truncation=True, max_length=32)
        previous, labels = None, []
        for word in encoded.word_ids():
            labels.append(-100 if word is None or word == previous else tags[word])
            previous = word
        items.append({**encoded, "labels": labels})
    return items


def loaders(tokenizer):
    from transformers import DataCollatorForTokenClassification

    collate = DataCollatorForTokenClassification(tokenizer)
    return (DataLoader(encode(tokenizer, tagged_sentences(64, 0)), batch_size=8, collate_fn=collate),
            DataLoader(encode(tokenizer, tagged_sentences(32, 1)), batch_size=16, collate_fn=collate))


class UserNER(L.LightningModule):
    def __init__(self, tokenizer) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        vocab_size = tokenizer.vocab_size
        from transformers import AutoModelForTokenClassification, BertConfig

        torch.manual_seed(0)
        config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=48, max_position_embeddings=64, num_labels=len(TAGS))
        self.net = AutoModelForTokenClassification.from_config(config)

    def training_step(self, batch, batch_idx):
        return self.net(**batch).loss

    def validation_step(self, batch, batch_idx):
        outputs = self.net(**batch)
        keep = batch["labels"] != -100
        accuracy = (outputs.logits.argmax(-1)[keep] == batch["labels"][keep]).float().mean()
        self.log("val_acc", accuracy, batch_size=len(batch["labels"]))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


@pytest.mark.parametrize("method", sorted(CALLBACKS))
def test_each_method_prunes_a_users_ner_project(method, tokenizer, tmp_path):
    from transformers import AutoModelForTokenClassification

    module = UserNER(tokenizer)
    callback = CALLBACKS[method]()
    callback.output_dir = str(tmp_path)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        accelerator="cpu", callbacks=[callback], num_sanity_val_steps=0)
    trainer.fit(module, *loaders(tokenizer))
    report = read_report(tmp_path)
    assert "acc" in report["metrics"]["pruned"]
    if method != "smp":
        assert report["params"]["pruned"]["encoder_linear"] < report["params"]["dense"]["encoder_linear"]
    loaded = AutoModelForTokenClassification.from_pretrained(tmp_path / "pruned_model", trust_remote_code=True).eval()
    inputs = tokenizer([["anna", "went", "to", "paris"], ["the", "berlin"]], is_split_into_words=True, padding=True,
                       return_tensors="pt")
    module.net.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, module.net(**inputs).logits, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------- lit_prune's own CoNLL stack, end to end
def conll_files(folder, seed: int = 0):
    """Train and valid files in CoNLL column format, IOB2 tags, from the made-up sentences above."""
    folder.mkdir()
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    for split, count in (("train", 48), ("valid", 16)):
        lines = ["-DOCSTART- -X- -X- O", ""]
        for words, tags in tagged_sentences(count, seed + (split == "valid")):
            lines += [f"{word} NN O {names[tag]}" for word, tag in zip(words, tags)] + [""]
        (folder / f"{split}.txt").write_text("\n".join(lines))
    return folder


@pytest.mark.parametrize("method", ["grain", "kprune"])
def test_the_conll_modules_prune_end_to_end(method, tokenizer, minilm_l3, tmp_path):
    from transformers import AutoModelForTokenClassification, BertConfig

    from lit_prune.data import TokenClassificationDataModule
    from lit_prune.tasks import DistilledTokenClassificationModule, TokenClassificationModule

    teacher = tmp_path / "teacher"
    torch.manual_seed(0)
    labels = ["O", "B-LOC", "B-PER"]  # the tags the made-up sentences use, in the data module's order
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=64, num_labels=len(labels),
                        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
                        finetuning_task="conll2003")
    AutoModelForTokenClassification.from_config(config).save_pretrained(teacher)
    tokenizer.save_pretrained(teacher)
    data = TokenClassificationDataModule(tokenizer=str(teacher), data_dir=str(conll_files(tmp_path / "conll")),
                                         batch_size=8, eval_batch_size=16, cache_dir=str(tmp_path / "cache"))
    assert data.label_names == labels
    if method == "grain":
        module = DistilledTokenClassificationModule(str(teacher), save_final_model=False)
        callback, epochs = GrainCallback(params_kept=0.5, output_dir=str(tmp_path / "out")), 2
    else:
        module = TokenClassificationModule(str(teacher), save_final_model=False)
        callback, epochs = KPruneCallback(flops_kept=0.5, output_dir=str(tmp_path / "out")), 0
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        accelerator="cpu", callbacks=[callback], num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    report = read_report(tmp_path / "out")
    assert report["metrics"]["main"] == "f1" and set(report["metrics"]["pruned"]) >= {"f1", "precision", "accuracy"}
    loaded = AutoModelForTokenClassification.from_pretrained(tmp_path / "out" / "pruned_model",
                                                            trust_remote_code=True).eval()
    assert loaded.config.id2label[2] == "B-PER"
    batch = next(iter(data.val_dataloader()))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    module.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, module.model(**inputs).logits, rtol=1e-4, atol=1e-5)
