"""Named-entity recognition: seqeval scores, the EntityF1 metric (batches, padding, DDP gathering) and the
token classification module (loading, steps, evaluation, label checks)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config, tiny_model
from seqeval.metrics import f1_score, precision_score, recall_score
from seqeval.scheme import IOB2
from torch.utils.data import DataLoader
from torchmetrics.utilities import dim_zero_cat

from lit_prune.tasks.ner_metrics import EntityF1, check_iob2, entity_scores
from lit_prune.tasks.token_classification import CONLL2003_LABELS, TokenClassificationModule, first_subtokens

LABEL = {name: i for i, name in enumerate(CONLL2003_LABELS)}

# Gold: PER (0-1), LOC (3) | ORG (0-1), MISC (4): 4 entities. Predicted, strict IOB2: "I-PER I-PER" starts no
# entity, so LOC, ORG, MISC: 3 entities, all right. 8 of 9 tags right.
Y_TRUE = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "O", "O", "B-MISC"]]
Y_PRED = [["I-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "O", "O", "B-MISC"]]
EXPECTED = {"precision": 1.0, "recall": 0.75, "f1": 2 * 0.75 / 1.75, "accuracy": 8 / 9}


def test_entity_scores_by_hand_strict_iob2():
    assert entity_scores(Y_TRUE, Y_PRED) == pytest.approx(EXPECTED)
    settings = {"mode": "strict", "scheme": IOB2}
    assert precision_score(Y_TRUE, Y_PRED, **settings) == pytest.approx(EXPECTED["precision"])
    assert recall_score(Y_TRUE, Y_PRED, **settings) == pytest.approx(EXPECTED["recall"])
    assert f1_score(Y_TRUE, Y_PRED, **settings) == pytest.approx(EXPECTED["f1"])
    # conlleval's lenient mode would take "I-PER I-PER" as the PER entity: strictness is what separates them
    assert f1_score(Y_TRUE, Y_PRED) == pytest.approx(1.0)
    # a wrong type or a wrong span is a miss; no predicted entity at all gives 0, not a division by zero
    scores = entity_scores([["B-PER", "I-PER", "B-LOC"]], [["B-PER", "O", "B-ORG"]])
    assert (scores["precision"], scores["recall"], scores["f1"]) == (0.0, 0.0, 0.0)
    assert entity_scores([["O", "O"]], [["O", "O"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                                         "accuracy": 1.0}
    assert entity_scores([[], []], [[], []]) == dict.fromkeys(("precision", "recall", "f1", "accuracy"), 0.0)


def test_check_iob2():
    assert check_iob2(CONLL2003_LABELS) == CONLL2003_LABELS
    with pytest.raises(ValueError, match=r"not IOB2 tags: \['PER'\].*repeated: \['B-PER'\]; no 'O' tag"):
        check_iob2(["B-PER", "B-PER", "PER"])


def _padded(sentences: list[list[str]], width: int, offset: int = 1) -> torch.Tensor:
    """Tag ids ``[batch, width]`` placed from ``offset`` on every other position (as first sub-tokens are), -100
    elsewhere (special tokens, later sub-tokens, padding)."""
    labels = torch.full((len(sentences), width), -100)
    for row, tags in enumerate(sentences):
        for k, tag in enumerate(tags):
            labels[row, offset + 2 * k] = LABEL[tag]
    return labels


def _predictions(labels: torch.Tensor, sentences: list[list[str]], seed: int = 0) -> torch.Tensor:
    """Predicted ids: ``sentences`` at the labelled positions, anything elsewhere."""
    preds = torch.randint(0, len(CONLL2003_LABELS), labels.shape, generator=torch.Generator().manual_seed(seed))
    preds[labels != -100] = _padded(sentences, labels.shape[1])[labels != -100]
    return preds


# three sentences: the middle one has no labelled position (a sentence of special tokens only)
SENTENCES_TRUE = [Y_TRUE[0], [], Y_TRUE[1]]
SENTENCES_PRED = [Y_PRED[0], [], Y_PRED[1]]


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric EntityF1 was called before")
def test_metric_ignores_unlabelled_positions_and_splits_over_batches():
    labels = _padded(SENTENCES_TRUE, width=13)
    preds = _predictions(labels, SENTENCES_PRED)
    whole = EntityF1(CONLL2003_LABELS)
    whole.update(preds, labels)
    expected = pytest.approx(EXPECTED)
    assert {name: float(value) for name, value in whole.compute().items()} == expected

    split = EntityF1(CONLL2003_LABELS)
    split.update(preds[:0], labels[:0])  # an empty batch
    split.update(preds[:1, :9], labels[:1, :9])  # batches padded to their own widths
    split.update(preds[1:2], labels[1:2])
    split.update(preds[2:], labels[2:])
    assert {name: float(value) for name, value in split.compute().items()} == expected
    split.reset()
    with pytest.raises(ValueError, match="no batch was added"):
        split.compute()
    with pytest.raises(ValueError, match="one shape"):
        split.update(preds[:, :5], labels)


class _OtherRank:
    """A ``dist_sync_fn`` gathering this process's states with another process's, in rank order (this one first),
    as ``torch.distributed.all_gather`` does; it insists on one dtype for all, as all_gather needs."""

    def __init__(self, other: EntityF1) -> None:
        self.states = iter([dim_zero_cat(getattr(other, name)) if getattr(other, name) else
                            torch.zeros(0, dtype=torch.long) for name in other._reductions])

    def __call__(self, tensor: torch.Tensor, group=None) -> list[torch.Tensor]:
        other = next(self.states)
        assert tensor.dtype == other.dtype, "all_gather needs the same dtype on every process"
        return [tensor, other]


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric EntityF1 was called before")
@pytest.mark.parametrize("split_at", [0, 1, 2, 3])
def test_metric_gathers_processes_like_one(split_at):
    """Under DDP compute() sees every process's states concatenated; a process may have seen no batch at all."""
    labels = _padded(SENTENCES_TRUE, width=13)
    preds = _predictions(labels, SENTENCES_PRED)
    other = EntityF1(CONLL2003_LABELS)
    if split_at < 3:
        other.update(preds[split_at:], labels[split_at:])
    this = EntityF1(CONLL2003_LABELS, dist_sync_fn=_OtherRank(other), distributed_available_fn=lambda: True)
    if split_at > 0:
        this.update(preds[:split_at], labels[:split_at])
    assert {name: float(value) for name, value in this.compute().items()} == pytest.approx(EXPECTED)
    assert isinstance(this.lengths, list)  # the process's own states are back after compute


# ------------------------------------------------------------------------------------------------ module
@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory):
    """A tiny random BERT encoder without a head (as a pre-trained checkpoint is)."""
    folder = tmp_path_factory.mktemp("bert")
    tiny_model("bert", kind="base").save_pretrained(folder)
    return folder


def _ner_batches(n_batches: int = 2, batch_size: int = 3, seq: int = 12, seed: int = 0) -> list[dict]:
    """Batches as the CoNLL data module makes them: words of 1-2 sub-tokens between [CLS] and [SEP], padding."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        word_ids = torch.full((batch_size, seq), -1)
        labels = torch.full((batch_size, seq), -100)
        attention_mask = torch.zeros(batch_size, seq, dtype=torch.long)
        for row in range(batch_size):
            position, word = 1, 0
            length = seq - 1 - 2 * row  # later rows are padded
            while position < length - 1:
                pieces = min(int(torch.randint(1, 3, (1,), generator=g)), length - 1 - position)
                word_ids[row, position:position + pieces] = word
                labels[row, position] = int(torch.randint(0, len(CONLL2003_LABELS), (1,), generator=g))
                position, word = position + pieces, word + 1
            attention_mask[row, :length] = 1
        input_ids = torch.randint(5, 100, (batch_size, seq), generator=g) * attention_mask
        batches.append({"input_ids": input_ids, "attention_mask": attention_mask,
                        "token_type_ids": torch.zeros_like(input_ids), "labels": labels, "word_ids": word_ids})
    return batches


def test_module_builds_the_head(encoder_folder):
    module = TokenClassificationModule(str(encoder_folder), classifier_dropout=0.2)
    config = module.model.config
    assert module.label_names == CONLL2003_LABELS and module.main_metric == "f1"
    assert (config.num_labels, config.finetuning_task, config.classifier_dropout) == (9, "conll2003", 0.2)
    assert config.id2label == dict(enumerate(CONLL2003_LABELS)) and config.label2id["I-PER"] == 8
    assert module.model.training and any("classifier" in name for name in module.newly_initialized)


def test_evaluate_and_predict(encoder_folder):
    module = TokenClassificationModule(str(encoder_folder), label_names=CONLL2003_LABELS)
    seen = []
    module.model.register_forward_pre_hook(lambda model, args, kwargs: seen.append(set(kwargs)), with_kwargs=True)
    batches = _ner_batches()
    calls = []
    scores = module.evaluate(DataLoader(batches, batch_size=None), progress=lambda: calls.append(1))
    assert set(scores) == {"precision", "recall", "f1", "accuracy"} and len(calls) == 2
    assert all(0.0 <= value <= 1.0 for value in scores.values())
    assert all("word_ids" not in keys and "labels" not in keys for keys in seen)
    assert module.model.training, "evaluate restores train mode"
    # data that labels later sub-tokens too (label_all_tokens) is scored on the words all the same
    all_tokens = [{**batch, "labels": torch.where((batch["word_ids"] >= 0) & (batch["labels"] == -100), 0,
                                                  batch["labels"])} for batch in batches]
    assert any((b["labels"] != -100).sum() > (a["labels"] != -100).sum() for a, b in zip(batches, all_tokens))
    assert module.evaluate(DataLoader(all_tokens, batch_size=None)) == scores

    # the same scores by hand: the predicted tags of each word's first sub-token against the gold ones
    module.model.eval()
    y_true, y_pred = [], []
    for batch in batches:
        words = module.predict_step(batch, 0)
        with torch.no_grad():
            predicted = module.model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits.argmax(-1)
        for row, labels in enumerate(batch["labels"]):
            keep = labels != -100
            y_true.append([CONLL2003_LABELS[i] for i in labels[keep].tolist()])
            y_pred.append([CONLL2003_LABELS[i] for i in predicted[row][keep].tolist()])
            assert words[row] == y_pred[-1]
    assert scores == pytest.approx(entity_scores(y_true, y_pred))


def test_model_inputs(encoder_folder, tmp_path):
    batch = _ner_batches(n_batches=1)[0]
    module = TokenClassificationModule(str(encoder_folder))
    assert set(module._inputs(batch)) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    tiny_model("distilbert", kind="base").save_pretrained(tmp_path)
    module = TokenClassificationModule(str(tmp_path))  # DistilBERT takes no token_type_ids
    assert set(module._inputs(batch, labels=False)) == {"input_ids", "attention_mask"}
    assert torch.isfinite(module(**batch).loss)


def test_first_subtokens():
    word_ids = torch.tensor([[-1, 0, 0, 1, 2, 2, -1, -1], [-1, 0, 1, 1, 1, -1, -1, -1]])
    assert first_subtokens(word_ids).nonzero().tolist() == [[0, 1], [0, 3], [0, 4], [1, 1], [1, 2]]


def test_training_step_ignores_unlabelled_positions(encoder_folder):
    module = TokenClassificationModule(str(encoder_folder))
    module.model.eval()  # no dropout: the loss must equal the hand computation
    batch = _ner_batches(n_batches=1)[0]
    with pytest.warns(UserWarning, match="self.trainer"):  # logging without a Trainer is a warning
        loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)
    logits = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    keep = batch["labels"] != -100
    torch.testing.assert_close(loss, F.cross_entropy(logits[keep], batch["labels"][keep]))


class _NerData(L.LightningDataModule):
    def __init__(self, label_names: list[str]) -> None:
        super().__init__()
        self.label_names, self.task = label_names, "conll2003"

    def val_dataloader(self):
        return DataLoader(_ner_batches(), batch_size=None)


def _trainer(tmp_path) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)


def test_validate_logs_the_metrics_and_checks_label_names(encoder_folder, tmp_path):
    module = TokenClassificationModule(str(encoder_folder))
    metrics = _trainer(tmp_path).validate(module, datamodule=_NerData(CONLL2003_LABELS), verbose=False)[0]
    assert set(metrics) == {"val/precision", "val/recall", "val/f1", "val/accuracy", "val/loss"}
    assert 0 <= metrics["val/f1"] <= 1

    swapped = ["O", "B-PER", "B-ORG", "B-LOC", "B-MISC", "I-PER", "I-ORG", "I-LOC", "I-MISC"]
    with pytest.raises(ValueError, match=r"_NerData has label_names \['O', 'B-PER'.*but the model's labels are "
                                         r"\['O', 'B-LOC'"):
        _trainer(tmp_path).validate(module, datamodule=_NerData(swapped), verbose=False)


def test_label_names_of_a_finetuned_checkpoint(encoder_folder, tmp_path):
    labels = ["O", "B-PER", "I-PER"]
    module = TokenClassificationModule(str(encoder_folder), label_names=labels)
    module.model.save_pretrained(tmp_path / "ner")
    # fine-tuned for this task: its tags are the default
    assert TokenClassificationModule(str(tmp_path / "ner")).label_names == labels
    with pytest.raises(ValueError, match=r"has a token-classification head with 3 labels \(\['O', 'B-PER', "
                                         r"'I-PER'\]\); the labels \['O', 'B-LOC'.*need 9"):
        TokenClassificationModule(str(tmp_path / "ner"), label_names=CONLL2003_LABELS)
    with pytest.raises(ValueError, match=r"head for the labels \['O', 'B-PER', 'I-PER'\], not \['O', 'I-PER', "
                                         r"'B-PER'\]"):
        TokenClassificationModule(str(tmp_path / "ner"), label_names=["O", "I-PER", "B-PER"])
    with pytest.raises(ValueError, match=r"model.label_names=\['PER'\]: not IOB2 tags"):
        TokenClassificationModule(str(encoder_folder), label_names=["PER"])
    with pytest.raises(ValueError, match="task='wnut17' has no default label names"):
        TokenClassificationModule(str(encoder_folder), task="wnut17")


def test_refuses_a_classifier_finetuned_for_another_task(tmp_path):
    from transformers import BertForSequenceClassification

    config = tiny_config("bert", num_labels=2, finetuning_task="sst2")
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"was fine-tuned for 'sst2' with 2 labels; task 'conll2003' needs 9"):
        TokenClassificationModule(str(tmp_path))
