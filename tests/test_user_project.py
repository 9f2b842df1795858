"""The callback contract, from a user's side: a project of their own (their LightningModule around a Hugging Face
model, their data module or plain dataloaders, dict batches, a validation_step that logs metrics) prunes with each
of the five methods by adding one callback with only its budget; every mistake is refused before training starts.

The models are tiny random BERTs with the real uncased WordPiece tokenizer of the bundled MiniLM, so the pruned
folder's tokenizer is a real one; the data is a few made-up sentences.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lit_prune.methods import GPrunerCallback, GrainCallback, KPruneCallback, KwonCallback, SMPCallback
from lit_prune.core.io import read_pruned_config
from lit_prune.methods.contract import rebuild_pruned
from lit_prune.report import read_report

WORDS = "the a good bad film movie plot acting was is great terrible boring fun not very".split()

#: each method with only its budget, as the README shows it
CALLBACKS = {
    "kwon": lambda: KwonCallback(flops_kept=0.5),
    "kprune": lambda: KPruneCallback(flops_kept=0.5),
    "gpruner": lambda: GPrunerCallback(flops_kept=0.5),
    "grain": lambda: GrainCallback(params_kept=0.5),
    "smp": lambda: SMPCallback(params_kept=0.5),
}


@pytest.fixture(scope="module")
def tokenizer(minilm_l3):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_l3))


@pytest.fixture(scope="module")
def user_model_folder(tmp_path_factory, tokenizer):
    """A user's fine-tuned model as it sits on their disk: a tiny BERT with the real vocabulary, and its tokenizer."""
    from transformers import AutoModelForSequenceClassification, BertConfig

    folder = tmp_path_factory.mktemp("user_model")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=64, num_labels=2)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def sentences(count: int, seed: int) -> list[tuple[str, int]]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(count):
        words = [WORDS[int(i)] for i in torch.randint(len(WORDS), (int(torch.randint(4, 12, (1,), generator=g)),),
                                                      generator=g)]
        rows.append((" ".join(words), int("good" in words or "great" in words or "fun" in words)))
    return rows


class Encoded(torch.utils.data.Dataset):
    def __init__(self, tokenizer, rows):
        self.items = [{**tokenizer(text, truncation=True, max_length=24), "labels": label} for text, label in rows]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def loaders(tokenizer, batch_size: int = 8) -> tuple[DataLoader, DataLoader]:
    from transformers import DataCollatorWithPadding

    collate = DataCollatorWithPadding(tokenizer)
    return (DataLoader(Encoded(tokenizer, sentences(64, 0)), batch_size=batch_size, collate_fn=collate),
            DataLoader(Encoded(tokenizer, sentences(32, 1)), batch_size=16, collate_fn=collate))


class UserModule(L.LightningModule):
    """A user's own module: the Hugging Face model under their own name, their steps, their optimiser."""

    def __init__(self, folder) -> None:
        super().__init__()
        from transformers import AutoModelForSequenceClassification

        self.net = AutoModelForSequenceClassification.from_pretrained(str(folder))

    def training_step(self, batch, batch_idx):
        return self.net(**batch).loss

    def validation_step(self, batch, batch_idx):
        outputs = self.net(**batch)
        accuracy = (outputs.logits.argmax(-1) == batch["labels"]).float().mean()
        self.log("val_acc", accuracy, batch_size=len(batch["labels"]))
        self.log("val_loss", outputs.loss, batch_size=len(batch["labels"]))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


class UserData(L.LightningDataModule):
    """A user's data module: its tokenizer under a name of its own."""

    def __init__(self, folder) -> None:
        super().__init__()
        from transformers import AutoTokenizer

        self.text_encoder = AutoTokenizer.from_pretrained(str(folder))

    def train_dataloader(self):
        return loaders(self.text_encoder)[0]

    def val_dataloader(self):
        return loaders(self.text_encoder)[1]


def fit(callback, module, tmp_path, *data, max_epochs: int = 2):
    callback.output_dir = str(tmp_path)
    trainer = L.Trainer(max_epochs=max_epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        accelerator="cpu", devices=1, callbacks=[callback], num_sanity_val_steps=0)
    trainer.fit(module, *data)
    return trainer


def check_pruned_folder(module, report, tmp_path, tokenizer):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = tmp_path / "pruned_model"
    loaded = AutoModelForSequenceClassification.from_pretrained(str(folder), trust_remote_code=True).eval()
    saved_tokenizer = AutoTokenizer.from_pretrained(str(folder))
    text = ["a good film with great acting", "the plot was boring"]
    assert saved_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]  # a working tokenizer, no [UNK]s
    inputs = saved_tokenizer(text, padding=True, return_tensors="pt")
    module.net.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, module.net(**inputs).logits, rtol=1e-4, atol=1e-5)
    # structured methods remove units; SMP's unstructured masks remove only the rows and columns they empty
    assert report["params"]["pruned"]["encoder_linear"] <= report["params"]["dense"]["encoder_linear"]
    assert set(report["metrics"]["pruned"]) >= {"acc", "loss"}  # the user's own validation metrics


@pytest.mark.parametrize("method", sorted(CALLBACKS))
def test_one_callback_with_only_its_budget_prunes_a_users_project(method, user_model_folder, tokenizer, tmp_path):
    module = UserModule(user_model_folder)
    trainer = fit(CALLBACKS[method](), module, tmp_path, UserData(user_model_folder))
    assert trainer.global_step > 0
    report = read_report(tmp_path)
    assert report["method"] == method and report["tokenizer"] == "UserData.text_encoder"
    if method in ("kwon", "kprune", "gpruner"):
        assert report["flops"]["kept"] <= 0.5 and report["flops"]["seq_len_from"] == "calibration batches"
    else:
        assert report["params"]["kept"] <= 0.5 + 1e-3 and report["flops"]["seq_len_from"] == "training batches"
    if method != "smp":  # units physically removed
        assert report["params"]["pruned"]["encoder_linear"] < report["params"]["dense"]["encoder_linear"]
    check_pruned_folder(module, report, tmp_path, tokenizer)


#: each method with small calibration and search settings: the families test runs 5 methods × 2 families
QUICK = {
    "kwon": lambda: KwonCallback(flops_kept=0.5, num_samples=32, latency_repeats=2),
    "kprune": lambda: KPruneCallback(flops_kept=0.5, num_tokens=None, num_samples=32, latency_repeats=2),
    "gpruner": lambda: GPrunerCallback(flops_kept=0.5, num_samples=32, reward_samples=16, ppo_iterations=2,
                                       ppo_rollouts=4, ppo_epochs=1, latency_repeats=2),
    "grain": lambda: GrainCallback(params_kept=0.5, latency_repeats=2),
    "smp": lambda: SMPCallback(params_kept=0.5, latency_repeats=2),
}


@pytest.mark.parametrize("model_type", ["xlm-roberta", "electra", "mpnet", "deberta-v2", "modernbert"])
@pytest.mark.parametrize("method", sorted(QUICK))
def test_each_method_prunes_each_family(method, model_type, tokenizer, tmp_path):
    """The BERT tests above, on the other families' classes (through the architecture adapters only)."""
    from transformers import AutoModelForSequenceClassification

    from conftest import tiny_config

    folder = tmp_path / "user_model"
    torch.manual_seed(0)
    # the BERT tokenizer's vocabulary and its two token types (XLM-RoBERTa's own tokenizer has one)
    config = tiny_config(model_type, vocab_size=tokenizer.vocab_size, type_vocab_size=2, num_labels=2)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    module = UserModule(folder)
    fit(QUICK[method](), module, tmp_path, *loaders(tokenizer), max_epochs=1)
    report = read_report(tmp_path)
    assert read_pruned_config(tmp_path / "pruned_model").model_type == model_type
    check_pruned_folder(module, report, tmp_path, tokenizer)
    if method != "smp":
        assert report["params"]["pruned"]["encoder_linear"] < report["params"]["dense"]["encoder_linear"]


@pytest.mark.parametrize("method", sorted(CALLBACKS))
def test_plain_dataloaders_work_too(method, user_model_folder, tokenizer, tmp_path):
    module = UserModule(user_model_folder)
    fit(CALLBACKS[method](), module, tmp_path, *loaders(tokenizer))
    report = read_report(tmp_path)
    assert report["tokenizer"].startswith("the model's folder")  # found beside the weights the user loaded
    check_pruned_folder(module, report, tmp_path, tokenizer)


def test_the_pruned_folder_rebuilds_the_users_module_and_its_checkpoint(user_model_folder, tokenizer, tmp_path):
    module = UserModule(user_model_folder)
    trainer = fit(KwonCallback(flops_kept=0.5), module, tmp_path, *loaders(tokenizer), max_epochs=1)
    trainer.save_checkpoint(tmp_path / "after.ckpt")
    fresh = rebuild_pruned(UserModule(user_model_folder), tmp_path / "pruned_model")
    state = torch.load(tmp_path / "after.ckpt", weights_only=True)["state_dict"]
    fresh.load_state_dict(state)  # the pruned shapes: no size mismatch
    inputs = tokenizer(["a fun movie"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(fresh.net.eval()(**inputs).logits, module.net.eval()(**inputs).logits)


# ------------------------------------------------------------------------------------------------ mistakes
class Counting(UserModule):
    steps = 0

    def training_step(self, batch, batch_idx):
        Counting.steps += 1
        return super().training_step(batch if isinstance(batch, dict) else tuple_to_dict(batch), batch_idx)

    def validation_step(self, batch, batch_idx):
        return super().validation_step(batch if isinstance(batch, dict) else tuple_to_dict(batch), batch_idx)


def tuple_to_dict(batch):
    input_ids, attention_mask, labels = batch
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def tuple_loader(tokenizer, split: int = 0) -> DataLoader:
    """Batches as tuples ``(input_ids, attention_mask, labels)``: padded once to one length, then split."""
    loader = loaders(tokenizer, batch_size=64)[split]
    rows = [(b["input_ids"][i], b["attention_mask"][i], b["labels"][i]) for b in loader for i in range(len(b["labels"]))]
    return DataLoader(rows[:48] if split == 0 else rows[:16], batch_size=8)


class Headless(Counting):
    def __init__(self, folder) -> None:
        super().__init__(folder)
        from transformers import AutoModel

        self.net = AutoModel.from_pretrained(str(folder))


def unlabelled(tokenizer) -> DataLoader:
    train, _ = loaders(tokenizer)
    return DataLoader([{k: v for k, v in b.items() if k != "labels"} for b in train], batch_size=None)


MISTAKES = {
    "tuple batches": (KwonCallback, Counting, lambda tok: (tuple_loader(tok), loaders(tok)[1]),
                      r"the dataloader gives a list, not a dict of model inputs; pass batch_to_inputs="),
    "no labels for Kwon": (KwonCallback, Counting, lambda tok: (unlabelled(tok), loaders(tok)[1]),
                           r"the method needs the task loss, but the batches hold no labels"),
    "a headless model": (KPruneCallback, Headless, lambda tok: loaders(tok),
                         r"BertModel has no task head .*AutoModelForSequenceClassification"),
    "no validation set": (GrainCallback, Counting, lambda tok: (loaders(tok)[0],),
                          r"evaluate=True, but Counting has no validation loop.*set evaluate=False"),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_mistakes_are_refused_before_training_starts(mistake, user_model_folder, tokenizer, tmp_path):
    callback_class, module_class, data, message = MISTAKES[mistake]
    budget = {"params_kept": 0.5} if callback_class is GrainCallback else {"flops_kept": 0.5}
    Counting.steps = 0
    with pytest.raises(ValueError, match=message):
        fit(callback_class(**budget), module_class(user_model_folder), tmp_path, *data(tokenizer))
    assert Counting.steps == 0 and not (tmp_path / "pruned_model").exists()


def test_tuple_batches_work_with_batch_to_inputs(user_model_folder, tokenizer, tmp_path):
    module = Counting(user_model_folder)
    fit(KwonCallback(flops_kept=0.5, batch_to_inputs=tuple_to_dict), module, tmp_path, tuple_loader(tokenizer),
        tuple_loader(tokenizer, 1), max_epochs=1)
    assert read_report(tmp_path)["flops"]["kept"] <= 0.5


def test_a_failure_while_pruning_leaves_the_model_whole(user_model_folder, tokenizer, tmp_path, monkeypatch):
    module = UserModule(user_model_folder)
    before = {k: v.clone() for k, v in module.net.state_dict().items()}

    def broken_latency(*args, **kwargs):
        raise RuntimeError("the latency comparison failed")

    monkeypatch.setattr("lit_prune.methods.run.latency_comparison", broken_latency)
    with pytest.raises(RuntimeError, match="the latency comparison failed"):
        fit(KPruneCallback(flops_kept=0.5), module, tmp_path, *loaders(tokenizer), max_epochs=0)
    after = module.net.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert getattr(module.net.config, "lit_prune_structure", None) is None
