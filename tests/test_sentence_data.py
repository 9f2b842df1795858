"""The sentence-embedding data module: calibration sentences from a text file or a GLUE task, similarity pairs from
STS-B dev or a TSV file, pair-wise dynamic padding, and the checks every setting gets at construction."""

from __future__ import annotations

import pytest
import torch

from lit_prune.data.glue import GLUE_TASKS, read_glue_tsv
from lit_prune.data.sentences import SentenceDataModule, glue_sentences

SENTENCES = ["A man is playing a guitar.", "Two dogs run across a snowy field.", "The cat sleeps.",
             "Stock markets fell sharply on Monday after the announcement of new tariffs."]
STSB_HEADER = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
               "score"]


def write_lines(path, lines, encoding="utf-8"):
    path.write_text("\n".join(lines) + "\n", encoding=encoding)
    return path


def write_pairs(path, pairs, header=("sentence1", "sentence2", "score")):
    """An evaluation TSV: ``header``, then one row per (sentence1, sentence2, score)."""
    rows = ["\t".join(header)] + ["\t".join(map(str, pair)) for pair in pairs]
    return write_lines(path, rows)


@pytest.fixture
def files(tmp_path):
    """A small sentence file (with a blank line and stray whitespace) and a small evaluation TSV."""
    text = write_lines(tmp_path / "calibration.txt", [SENTENCES[0], "", f"  {SENTENCES[1]}\t", *SENTENCES[2:], "  "])
    pairs = write_pairs(tmp_path / "pairs.tsv", [("a dog", "A dog is running through the long grass of a meadow.", 4.2),
                                                 ("A man cuts bread.", "bread", "0.5"),
                                                 ("The sky is blue.", "The sky is grey.", 2)])
    return text, pairs


def module(tmp_path, tokenizer, **settings) -> SentenceDataModule:
    return SentenceDataModule(tokenizer=str(tokenizer), cache_dir=str(tmp_path / "cache"), **settings)


# ---------------------------------------------------------------------------------------------- splits
def test_text_file_gives_one_unlabelled_example_per_sentence(tmp_path, files, minilm_l6):
    text, pairs = files
    data = module(tmp_path, minilm_l6, sentences=str(text), evaluation=str(pairs), batch_size=2)
    assert data.task == "embedding"
    assert data.train_sentences() == SENTENCES  # blank lines skipped, whitespace stripped
    data.setup("fit")
    train = data.datasets["train"]
    assert len(train) == 4 and "labels" not in train.column_names
    assert set(train.column_names) == {"input_ids", "attention_mask", "token_type_ids"}
    assert train["input_ids"][2] == data.tokenizer(SENTENCES[2])["input_ids"]
    batch = next(iter(data.train_dataloader()))
    assert batch["input_ids"].shape[0] == 2 and "labels" not in batch and "pair_input_ids" not in batch
    sample = data.calibration_sample(num_samples=3, seed=1)
    assert sample.num_samples == 3 and sample.num_tokens == sum(len(train["input_ids"][i])
                                                                for i in sample.dataset.indices)


def test_text_file_with_byte_order_mark_and_crlf(tmp_path, files):
    _, pairs = files
    path = tmp_path / "windows.txt"
    path.write_bytes(b"\xef\xbb\xbffirst line\r\n\r\nsecond line\r\n")
    data = SentenceDataModule(sentences=str(path), evaluation=str(pairs))
    assert data.train_sentences() == ["first line", "second line"]


def test_stsb_dev_pairs(tmp_path, files, minilm_l6):
    text, _ = files
    data = module(tmp_path, minilm_l6, sentences=str(text))
    data.setup("validate")
    validation = data.datasets["validation"]
    assert len(validation) == 1500 and "train" not in data.datasets
    assert {"input_ids", "attention_mask", "pair_input_ids", "pair_attention_mask", "labels"} \
        <= set(validation.column_names)
    scores = validation["labels"]
    assert all(isinstance(score, float) for score in scores) and 0.0 <= min(scores) and max(scores) <= 5.0
    assert len(set(scores)) > 2  # real, graded scores
    first = data.evaluation_pairs()
    assert (first["text_a"][0], first["text_b"][0], first["label"][0]) == (
        "A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.", 5.0)
    assert validation["pair_input_ids"][0] == data.tokenizer(first["text_b"][0])["input_ids"]
    with pytest.raises(ValueError, match="no test split"):
        data.setup("test")


def test_collate_pads_each_side_of_a_pair_to_its_own_longest(tmp_path, files, minilm_l6):
    text, pairs = files
    data = module(tmp_path, minilm_l6, sentences=str(text), evaluation=str(pairs))
    data.setup("validate")
    validation = data.datasets["validation"]
    features = [validation[i] for i in range(len(validation))]
    batch = data.collate(features)
    first = [len(f["input_ids"]) for f in features]
    second = [len(f["pair_input_ids"]) for f in features]
    assert max(first) != max(second)  # the sides really differ
    assert batch["input_ids"].shape == (3, max(first)) and batch["pair_input_ids"].shape == (3, max(second))
    assert batch["token_type_ids"].shape == batch["input_ids"].shape
    assert batch["pair_token_type_ids"].shape == batch["pair_input_ids"].shape
    assert batch["attention_mask"].sum(1).tolist() == first and batch["pair_attention_mask"].sum(1).tolist() == second
    pad = data.tokenizer.pad_token_id
    row = second.index(min(second))
    assert (batch["pair_input_ids"][row, min(second):] == pad).all()
    assert batch["pair_input_ids"][row, :min(second)].tolist() == features[row]["pair_input_ids"]
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == pytest.approx([4.2, 0.5, 2.0])
    loader = data.val_dataloader()
    assert next(iter(loader))["pair_input_ids"].shape == batch["pair_input_ids"].shape


def test_custom_evaluation_tsv(tmp_path, files, minilm_l6):
    text, _ = files
    path = tmp_path / "sick.tsv"  # STS-B's layout: extra columns, a byte-order mark, quotes kept verbatim
    rows = [STSB_HEADER, ["0", "g", "f", "y", "o", "s", "s", 'He said "hi', "He greeted them.", "3.25"],
            ["1", "g", "f", "y", "o", "s", "s", "A b c.", "D e.", "1"], [""]]
    path.write_text("\ufeff" + "\n".join("\t".join(row) for row in rows), encoding="utf-8")
    data = module(tmp_path, minilm_l6, sentences=str(text), evaluation=str(path), max_seq_length=16)
    assert data.evaluation_pairs() == {"text_a": ['He said "hi', "A b c."], "text_b": ["He greeted them.", "D e."],
                                       "label": [3.25, 1.0]}
    data.setup("validate")
    assert data.datasets["validation"]["labels"] == [3.25, 1.0]
    assert all(len(ids) <= 16 for ids in data.datasets["validation"]["input_ids"])


def test_average_sequence_length_counts_both_sides(tmp_path, files, minilm_l6):
    text, pairs = files
    data = module(tmp_path, minilm_l6, sentences=str(text), evaluation=str(pairs))
    columns = data.evaluation_pairs()
    lengths = [len(data.tokenizer(sentence)["input_ids"]) for sentence in columns["text_a"] + columns["text_b"]]
    assert len(lengths) == 6
    assert data.average_sequence_length() == pytest.approx(sum(lengths) / 6)
    train = [len(data.tokenizer(sentence)["input_ids"]) for sentence in SENTENCES]
    assert data.average_sequence_length("train") == pytest.approx(sum(train) / 4)


# ----------------------------------------------------------------------------------------- GLUE sentences
def test_glue_pair_task_takes_both_columns_and_drops_duplicates(tmp_path, files):
    _, pairs = files
    header = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    rows = [header, [1, 1, 2, "a b", "c d"], [0, 3, 4, " c d ", "e f"], [1, 5, 6, "a b", "g h"], [0, 7, 8, "i", ""]]
    (tmp_path / "glue" / "MRPC").mkdir(parents=True)
    write_lines(tmp_path / "glue" / "MRPC" / "train.tsv", ["\t".join(map(str, row)) for row in rows])
    data = SentenceDataModule(sentences="mrpc", evaluation=str(pairs), data_dir=str(tmp_path / "glue"))
    assert data.train_sentences() == ["a b", "c d", "e f", "g h", "i"]
    assert glue_sentences({"text_a": ["x", "y"]}) == ["x", "y"]  # single-sentence tasks: the one column


def test_real_mrpc_sentences(tmp_path, files, assets_dir):
    _, pairs = files
    data = SentenceDataModule(sentences="mrpc", evaluation=str(pairs))
    sentences = data.train_sentences()
    columns = read_glue_tsv(assets_dir / "data" / "glue" / "MRPC" / "train.tsv", GLUE_TASKS["mrpc"], labelled=True)
    both = [sentence for example in zip(columns["text_a"], columns["text_b"]) for sentence in example]
    assert sentences[:2] == both[:2]
    assert len(sentences) == len(set(sentences)) == len(set(both)) < len(both) == 2 * 3668


def test_max_train_sentences_keeps_a_seeded_subset_in_order(tmp_path, files, minilm_l6):
    _, pairs = files
    lines = [f"sentence number {i}." for i in range(30)]
    text = write_lines(tmp_path / "many.txt", lines)

    def subset(seed, keep=5):
        data = module(tmp_path, minilm_l6, sentences=str(text), evaluation=str(pairs), max_train_sentences=keep,
                      seed=seed)
        data.setup("fit")
        decoded = [data.tokenizer.decode(ids, skip_special_tokens=True) for ids in data.datasets["train"]["input_ids"]]
        assert decoded == [sentence.lower() for sentence in data.train_sentences()]
        return data.train_sentences()

    first = subset(0)
    positions = [lines.index(sentence) for sentence in first]
    assert len(first) == 5 and positions == sorted(positions)
    assert subset(0) == first  # deterministic (and the cache entry is the same)
    assert subset(1) != first  # the seed is part of the draw and of the cache key
    assert subset(0, keep=100) == lines  # more than there are: all


# ------------------------------------------------------------------------------------------ bad settings
@pytest.mark.parametrize("content, message", [
    (None, r"sentences='.*missing\.txt': no such file"),
    (b"\n  \n\t\n", r"sentences='.*bad\.txt' holds no sentences \(no non-blank line\)"),
    (b"good line\n\xff bad\n", r"sentences='.*bad\.txt' is not valid UTF-8: byte offset 10"),
])
def test_bad_sentence_file(tmp_path, files, content, message):
    _, pairs = files
    path = tmp_path / ("missing.txt" if content is None else "bad.txt")
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        SentenceDataModule(sentences=str(path), evaluation=str(pairs))


def test_unknown_glue_task(files):
    _, pairs = files
    with pytest.raises(ValueError, match=r"sentences='sts' is not a GLUE task; allowed: cola, sst2, mrpc, stsb.*"
                                         r"or a path to a UTF-8 text file"):
        SentenceDataModule(sentences="sts", evaluation=str(pairs))


@pytest.mark.parametrize("content, message", [
    (None, r"evaluation='.*missing\.tsv': no such file"),
    ("", r"evaluation='.*bad\.tsv' is empty"),
    ("sentence1\tsentence2\tlabel\na\tb\t1\n", r"evaluation=.*lacks the column\(s\) \['score'\]"),
    ("sentence1\tsentence2\tscore\na\tb\t1\nc\td\thigh\n", r"evaluation=.*line 3: score 'high' is not a finite"),
    ("sentence1\tsentence2\tscore\na\tb\t1\nc\td\n", r"evaluation=.*line 3 has 2 fields, the header 3"),
    ("sentence1\tsentence2\tscore\n\n", r"evaluation=.*holds a header but no rows"),
    (b"sentence1\tsentence2\tscore\n\xe9t\xe9\tb\t1\n", r"evaluation=.*not valid UTF-8: byte offset 26"),
    ("x", r"evaluation='sick': expected 'stsb'"),
])
def test_bad_evaluation(tmp_path, files, content, message):
    text, _ = files
    if content == "x":
        evaluation = "sick"
    else:
        path = tmp_path / ("missing.tsv" if content is None else "bad.tsv")
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            path.write_text(content, encoding="utf-8")
        evaluation = str(path)
    with pytest.raises(ValueError, match=message):
        SentenceDataModule(sentences=str(text), evaluation=evaluation)


@pytest.mark.parametrize("value", [0, -3, 2.5, "10", True])
def test_bad_max_train_sentences(files, value):
    text, pairs = files
    with pytest.raises(ValueError, match=rf"max_train_sentences={value!r}: expected an integer >= 1"):
        SentenceDataModule(sentences=str(text), evaluation=str(pairs), max_train_sentences=value)


def test_problems_are_reported_together_before_tokenising(tmp_path, monkeypatch):
    from lit_prune.data import base

    monkeypatch.setattr(base, "load_tokenizer", lambda *args, **kwargs: pytest.fail("tokenizer loaded"))
    with pytest.raises(ValueError, match=r"batch_size=0.*max_train_sentences=0.*sentences='nope/a\.txt'.*"
                                         r"evaluation='nope\.tsv'"):
        SentenceDataModule(tokenizer="any", sentences="nope/a.txt", evaluation="nope.tsv", max_train_sentences=0,
                           batch_size=0, cache_dir=str(tmp_path))
