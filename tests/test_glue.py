"""GLUE reading and the GLUE data module, on synthetic files and on the real SST-2 / MRPC / STS-B / CoLA."""

from __future__ import annotations

import pytest
import torch

from lit_prune.data.glue import GLUE_TASKS, GlueDataModule, read_glue_tsv

SENTENCES = ["a fine film .", "a dull , \"boring\" mess", "it works", "nothing at all", "great fun", "bad"]


def write_tsv(path, rows, bom=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join("\t".join(map(str, row)) for row in rows) + "\n"
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return path


def write_rte(folder, n=12):
    """A synthetic RTE folder in the standard GLUE layout (text labels)."""
    header = ["index", "sentence1", "sentence2", "label"]
    labels = ["entailment", "not_entailment"]
    for split, count in (("train", n), ("dev", n // 2)):
        write_tsv(folder / f"{split}.tsv", [header] + [[i, SENTENCES[i % 6], SENTENCES[(i + 1) % 6], labels[i % 2]]
                                                       for i in range(count)])
    write_tsv(folder / "test.tsv", [["index", "sentence1", "sentence2"]] + [[i, "x y", "y z"] for i in range(4)])
    return folder


def test_read_header_layout_with_text_labels(tmp_path):
    folder = write_rte(tmp_path / "RTE")
    columns = read_glue_tsv(folder / "train.tsv", GLUE_TASKS["rte"], labelled=True)
    assert columns["label"][:4] == [0, 1, 0, 1]
    assert columns["text_a"][1] == SENTENCES[1]  # quotes kept verbatim: quoting is off
    test = read_glue_tsv(folder / "test.tsv", GLUE_TASKS["rte"], labelled=False)
    assert "label" not in test and len(test["text_a"]) == 4


def test_read_cola_without_header(tmp_path):
    path = write_tsv(tmp_path / "train.tsv", [["gj04", 1, "", "the cat sat ."], ["gj04", 0, "*", "cat the sat"]])
    columns = read_glue_tsv(path, GLUE_TASKS["cola"], labelled=True)
    assert columns == {"text_a": ["the cat sat .", "cat the sat"], "label": [1, 0]}


def test_read_mrpc_with_byte_order_mark(tmp_path):
    header = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    path = write_tsv(tmp_path / "train.tsv", [header, [1, 10, 11, "a b", "a c"], [0, 12, 13, "d", "e"]], bom=True)
    columns = read_glue_tsv(path, GLUE_TASKS["mrpc"], labelled=True)
    assert columns["label"] == [1, 0] and columns["text_b"] == ["a c", "e"]


def test_read_stsb_regression(tmp_path):
    header = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
              "score"]
    path = write_tsv(tmp_path / "dev.tsv", [header, [0, "g", "f", "y", "o", "s", "s", "a", "b", "3.800"]])
    assert read_glue_tsv(path, GLUE_TASKS["stsb"], labelled=True)["label"] == [pytest.approx(3.8)]


def test_malformed_rows_skipped_with_warning_or_rejected(tmp_path):
    header = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    good = [[i, 1, 2, "q a", "q b", i % 2] for i in range(200)]
    path = write_tsv(tmp_path / "a.tsv", [header, *good, [999, "broken row"]])
    with pytest.warns(UserWarning, match="1 of 201 rows have a field count other than 6; skipping"):
        assert len(read_glue_tsv(path, GLUE_TASKS["qqp"], labelled=True)["label"]) == 200
    path = write_tsv(tmp_path / "b.tsv", [header, *good[:10], *[[1, "x"]] * 5])
    with pytest.raises(ValueError, match="5 of 15 rows .* looks malformed"):
        read_glue_tsv(path, GLUE_TASKS["qqp"], labelled=True)


@pytest.mark.parametrize("content, message", [
    ("", "holds no data rows"),
    ("sentence\tlabel\n", "holds no data rows"),
    ("text\tlabel\nfoo\t1\n", r"lacks the column\(s\) \['sentence'\]"),
    ("sentence\tlabel\nfoo\tpositive\n", r"label 'positive' is not one of \[0, 1\]"),
    ("sentence\tlabel\nfoo\t7\n", r"label 7 is outside 0..1"),
])
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "train.tsv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_glue_tsv(path, GLUE_TASKS["sst2"], labelled=True)


def test_settings_are_validated_together(tmp_path):
    with pytest.raises(ValueError, match=r"task='sst5' is not a GLUE task; allowed: cola, sst2.*"
                                         r"max_train_samples=0: expected an integer >= 1.*data_dir=.*no such folder"):
        GlueDataModule(task="sst5", max_train_samples=0, data_dir=str(tmp_path / "nope"))


def test_data_dir_missing_files(tmp_path):
    (tmp_path / "RTE").mkdir()
    with pytest.raises(FileNotFoundError, match=r"lacks train.tsv, dev.tsv for GLUE rte"):
        GlueDataModule(task="rte", data_dir=str(tmp_path / "RTE"))


def test_no_local_copy_and_hub_off(tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_PRUNE_ASSETS", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"GLUE qnli: no local copy at .*glue/QNLI \(LIT_PRUNE_ASSETS=.*\) "
                                                r"and the hub \(nyu-mll/glue\) is switched off \(HF_HUB_OFFLINE=1\)"):
        GlueDataModule(task="qnli")


def test_rte_from_data_dir(tmp_path, minilm_l3):
    data = GlueDataModule(task="rte", data_dir=str(write_rte(tmp_path / "RTE")), tokenizer=str(minilm_l3),
                          batch_size=4)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["input_ids"].shape[0] == 4 and batch["labels"].dtype == torch.long
    assert len(data.datasets["train"]) == 12 and len(data.datasets["validation"]) == 6
    data.setup("predict")
    assert len(data.datasets["test"]) == 4 and "labels" not in data.datasets["test"].column_names
    with pytest.raises(ValueError, match="test labels are not public"):
        data.setup("test")


def test_mnli_has_two_dev_splits(tmp_path, minilm_l3):
    header = ["index", "sentence1", "sentence2", "gold_label"]
    labels = ["entailment", "neutral", "contradiction"]
    rows = [header] + [[i, "a b", "b c", labels[i % 3]] for i in range(6)]
    for name in ("train", "dev_matched", "dev_mismatched"):
        write_tsv(tmp_path / f"{name}.tsv", rows)
    data = GlueDataModule(task="mnli", data_dir=str(tmp_path), tokenizer=str(minilm_l3))
    data.setup("validate")
    assert data.val_split_names == ("validation_matched", "validation_mismatched")
    assert len(data.val_dataloader()) == 2
    assert data.datasets["validation_matched"]["labels"] == [0, 1, 2, 0, 1, 2]


# ------------------------------------------------------------------------------------------ real data
@pytest.mark.parametrize("task, train, dev, labels", [
    ("sst2", 67349, 872, {0, 1}), ("mrpc", 3668, 408, {0, 1}), ("cola", 8551, 1043, {0, 1}),
])
def test_real_glue_counts(task, train, dev, labels, minilm_l3):
    data = GlueDataModule(task=task, tokenizer=str(minilm_l3), max_seq_length=64)
    data.setup("fit")
    assert len(data.datasets["train"]) == train and len(data.datasets["validation"]) == dev
    assert set(data.datasets["validation"]["labels"]) == labels
    assert max(len(ids) for ids in data.datasets["train"]["input_ids"]) <= 64


def test_real_stsb_and_sequence_length(minilm_l3):
    data = GlueDataModule(task="stsb", tokenizer=str(minilm_l3), max_train_samples=500, seed=3)
    data.setup("fit")
    assert len(data.datasets["train"]) == 500 and len(data.datasets["validation"]) == 1500
    scores = torch.tensor(data.datasets["validation"]["labels"])
    assert 0.0 <= scores.min() and scores.max() <= 5.0
    # s of the FLOPs accounting: average unpadded dev length (Kwon et al. report 31.47 for BERT-base uncased,
    # whose vocabulary this model shares)
    assert data.average_sequence_length() == pytest.approx(31.47, abs=0.3)


def test_calibration_sample(minilm_l3):
    data = GlueDataModule(task="mrpc", tokenizer=str(minilm_l3), batch_size=16)
    first = data.calibration_dataloader(100, seed=1)
    again = data.calibration_dataloader(100, seed=1)
    other = data.calibration_dataloader(100, seed=2)
    assert len(first.dataset) == 100 and first.dataset.indices == again.dataset.indices
    assert first.dataset.indices != other.dataset.indices
    assert len(set(first.dataset.indices)) == 100  # without replacement by default
    assert sum(batch["input_ids"].shape[0] for batch in first) == 100
    with pytest.warns(UserWarning, match="num_samples=5000 exceeds the 3668 training examples of mrpc; using all"):
        assert len(data.calibration_dataloader(5000).dataset) == 3668
    with pytest.warns(UserWarning, match="using all 3668"):
        assert len(data.calibration_dataloader(5000, replacement=True).dataset) == 3668
    assert len(data.calibration_dataloader(3000, replacement=True).dataset) == 3000


def test_calibration_sample_by_tokens(minilm_l3):
    data = GlueDataModule(task="mrpc", tokenizer=str(minilm_l3), batch_size=16)
    sample = data.calibration_sample(num_tokens=5000, seed=0)
    lengths = [len(ids) for ids in data.datasets["train"][sample.dataset.indices]["input_ids"]]
    assert sample.num_tokens == sum(lengths) >= 5000 and sum(lengths[:-1]) < 5000  # just enough examples
    assert sample.num_samples == len(set(sample.dataset.indices)) and sample.note is None
    with pytest.warns(UserWarning, match="num_tokens=100000000 exceeds"):
        everything = data.calibration_sample(num_tokens=100_000_000)
    assert everything.num_samples == 3668 and "using all" in everything.note
    with pytest.raises(ValueError, match="give exactly one"):
        data.calibration_sample(num_samples=10, num_tokens=10)
    with pytest.raises(ValueError, match=r"num_samples=0: expected an integer >= 1"):
        data.calibration_sample(num_samples=0)


def test_tokenisation_is_cached(minilm_l3, tmp_path):
    data = GlueDataModule(task="mrpc", tokenizer=str(minilm_l3), cache_dir=str(tmp_path))
    data.setup("validate")
    entries = list((tmp_path / "tokenized").iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith(".")
    again = GlueDataModule(task="mrpc", tokenizer=str(minilm_l3), cache_dir=str(tmp_path))
    again.setup("validate")
    assert again.datasets["validation"]["input_ids"] == data.datasets["validation"]["input_ids"]
    assert len(list((tmp_path / "tokenized").iterdir())) == 1


def test_prepare_data_tokenises_once_for_setup(tmp_path, minilm_l3, monkeypatch):
    """prepare_data (one process per machine) fills the cache for the trainer's stage and keeps nothing; setup on
    every process then loads the cache without reading or tokenising again."""
    from types import SimpleNamespace

    from lightning.pytorch.trainer.states import TrainerFn

    folder = write_rte(tmp_path / "RTE")
    data = GlueDataModule(task="rte", data_dir=str(folder), tokenizer=str(minilm_l3), cache_dir=str(tmp_path / "c"))
    data.trainer = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.VALIDATING))
    data.prepare_data()
    assert data.datasets == {} and len(list((tmp_path / "c" / "tokenized").iterdir())) == 1   # dev only
    data.trainer = None
    data.prepare_data()                                                  # outside a trainer: what `fit` needs
    assert len(list((tmp_path / "c" / "tokenized").iterdir())) == 2

    other = GlueDataModule(task="rte", data_dir=str(folder), tokenizer=str(minilm_l3), cache_dir=str(tmp_path / "c"))
    monkeypatch.setattr(other, "_raw", lambda split: pytest.fail(f"setup re-read the {split} file"))
    other.setup("fit")
    assert len(other.split_dataset("train")) == 12 and len(other.split_dataset("validation")) == 6
    other.trainer = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.TESTING))
    with pytest.raises(ValueError, match="test labels are not public"):   # before any work, as setup would
        other.prepare_data()


def test_tokenizer_fingerprint_ignores_the_last_call(minilm_l3):
    """A fast tokenizer's backend remembers the truncation and padding of its last call; the cache key must not."""
    from lit_prune.data.base import load_tokenizer, tokenizer_fingerprint

    tokenizer = load_tokenizer(str(minilm_l3))
    before = tokenizer_fingerprint(tokenizer)
    tokenizer(["a b c"], truncation=True, max_length=16)
    tokenizer(["a b c", "d"], padding=True)
    assert tokenizer_fingerprint(tokenizer) == before
    tokenizer.truncation_side = "left"
    assert tokenizer_fingerprint(tokenizer) != before


def test_hub_fallback_maps_columns(tmp_path, monkeypatch, minilm_l3):
    """Without a local copy the hub dataset is used; its column names map onto the same fields."""
    import datasets

    calls = []

    def fake_load_dataset(name, config, split):
        calls.append((name, config, split))
        rows = {"premise": ["a b", "c d"], "hypothesis": ["b", "d"], "idx": [0, 1]}
        rows["label"] = [-1, -1] if split.startswith("test") else [2, 0]
        return datasets.Dataset.from_dict(rows)

    monkeypatch.setenv("LIT_PRUNE_ASSETS", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr("lit_prune.data.glue.hub_status", lambda: None)  # the hub answers (this machine has none)
    data = GlueDataModule(task="mnli", tokenizer=str(minilm_l3), cache_dir=str(tmp_path / "cache"))
    assert data.source == "hub:nyu-mll/glue/mnli"
    data.setup("fit")
    data.setup("predict")
    assert [c[2] for c in calls] == ["train", "validation_matched", "validation_mismatched", "test_matched"]
    assert data.datasets["train"]["labels"] == [2, 0]
    assert "labels" not in data.datasets["test"].column_names


def test_length_grouped_sampler():
    from lit_prune.data.base import LengthGroupedSampler

    lengths = [int(x) for x in torch.randint(5, 120, (1000,), generator=torch.Generator().manual_seed(0))]
    sampler = LengthGroupedSampler(lengths, batch_size=10, seed=3, group_size=5)
    sampler.set_epoch(0)
    first = list(sampler)
    assert sorted(first) == list(range(1000))  # a permutation: every example once
    sampler.set_epoch(0)
    assert list(sampler) == first  # deterministic for (seed, epoch)
    sampler.set_epoch(1)
    assert list(sampler) != first  # a new order each epoch

    def padded(order):  # tokens a batch of 10 pads to, summed over batches
        return sum(10 * max(lengths[i] for i in order[k:k + 10]) for k in range(0, len(order), 10))

    shuffled = torch.randperm(1000, generator=torch.Generator().manual_seed(3)).tolist()
    assert padded(first) < 0.8 * padded(shuffled)
    with pytest.raises(ValueError, match="no examples"):
        LengthGroupedSampler([], batch_size=4)


def test_group_by_length_loader(tmp_path, minilm_l3):
    data = GlueDataModule(task="rte", data_dir=str(write_rte(tmp_path / "RTE")), tokenizer=str(minilm_l3),
                          batch_size=4, group_by_length=True)
    loader = data.train_dataloader()
    assert type(loader.sampler).__name__ == "LengthGroupedSampler"
    assert sum(batch["input_ids"].shape[0] for batch in loader) == 12
