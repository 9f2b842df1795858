"""The named-entity (CoNLL-2003) data module: reading CoNLL column files, IOB1 → IOB2 conversion, the label list,
first-sub-token labelling, dynamic padding, the checks every setting and data file gets at construction, the hub
fallback, and the real CoNLL-2003 files."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

from lit_prune.data.conll import (
    IGNORE_INDEX,
    TokenClassificationDataModule,
    detect_tag_scheme,
    iob1_to_iob2,
    label_list,
    read_conll,
    starts_inside,
)

# IOB2, with -DOCSTART- lines, runs of blank lines and no blank line at the end
TRAIN_IOB2 = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O


Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- -X- O


Schwarzenegger NNP B-NP B-PER
visited VBD B-VP O
the DT B-NP O
Bundesbank NNP I-NP B-ORG
in IN B-PP O
New NNP B-NP B-LOC
York NNP I-NP I-LOC"""
TRAIN_SENTENCES = [
    (["EU", "rejects", "German", "call", "."], ["B-ORG", "O", "B-MISC", "O", "O"]),
    (["Peter", "Blackburn"], ["B-PER", "I-PER"]),
    (["Schwarzenegger", "visited", "the", "Bundesbank", "in", "New", "York"],
     ["B-PER", "O", "O", "B-ORG", "O", "B-LOC", "I-LOC"]),
]
TRAIN_LABELS = ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-PER"]

# IOB1: I- at a sentence start, after O, after another type; B- only between adjacent entities of one type
TRAIN_IOB1 = """-DOCSTART- -X- -X- O

EU NNP B-NP I-ORG
rejects VBZ B-VP O
German JJ B-NP I-MISC
call NN I-NP O

Peter NNP B-NP I-PER
Blackburn NNP I-NP I-PER
Smith NNP I-NP B-PER
Jones NNP I-NP I-PER
Paris NNP I-NP I-LOC
"""
IOB1_AS_IOB2 = [["B-ORG", "O", "B-MISC", "O"], ["B-PER", "I-PER", "B-PER", "I-PER", "B-LOC"]]

VALID = """-DOCSTART- -X- -X- O

Feyenoord NNP B-NP B-ORG
beat VBD B-VP O
Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
.\t.\tO\tO

"""


def write_conll(folder, train=TRAIN_IOB2, valid=VALID, test=None):
    """A data folder holding train.txt, valid.txt and, when given, test.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("train.txt", train), ("valid.txt", valid), ("test.txt", test)):
        if text is not None:
            (folder / name).write_text(text, encoding="utf-8")
    return folder


def module(tmp_path, tokenizer=None, data=None, **settings) -> TokenClassificationDataModule:
    folder = data if data is not None else write_conll(tmp_path / "conll")
    return TokenClassificationDataModule(tokenizer=str(tokenizer) if tokenizer else None, data_dir=str(folder),
                                         cache_dir=str(tmp_path / "cache"), **settings)


# -------------------------------------------------------------------------------------------------- reading
def test_read_conll_splits_sentences_at_blank_and_docstart_lines(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(TRAIN_IOB2, encoding="utf-8")
    assert read_conll(path) == TRAIN_SENTENCES
    # a -DOCSTART- line right after a token ends the sentence too; tabs, CRLF and a byte-order mark are read
    path.write_bytes(b"\xef\xbb\xbfa\tB-X\r\n-DOCSTART- -X- -X- O\r\nb  x  I-Y\r\n\r\n\r\n")
    assert read_conll(path) == [(["a"], ["B-X"]), (["b"], ["I-Y"])]


@pytest.mark.parametrize("tags, iob2", [
    (["I-PER", "I-PER"], ["B-PER", "I-PER"]),                               # I- at the sentence start
    (["O", "I-LOC", "O"], ["O", "B-LOC", "O"]),                             # I- after O
    (["I-ORG", "I-LOC", "I-LOC"], ["B-ORG", "B-LOC", "I-LOC"]),             # I- after another type
    (["I-PER", "I-PER", "B-PER", "I-PER"], ["B-PER", "I-PER", "B-PER", "I-PER"]),  # continuing; adjacent entities
    (["B-MISC", "I-MISC", "O", "B-PER"], ["B-MISC", "I-MISC", "O", "B-PER"]),  # IOB2 stays as it is
    (["O", "O"], ["O", "O"]),
])
def test_iob1_to_iob2(tags, iob2):
    assert iob1_to_iob2(tags) == iob2
    assert iob1_to_iob2(iob2) == iob2  # converting IOB2 changes nothing
    assert detect_tag_scheme([(["w"] * len(tags), tags)]) == ("IOB2" if tags == iob2 else "IOB1")
    assert starts_inside(iob2) == []


def test_label_list_puts_o_first_then_sorts():
    assert label_list(TRAIN_SENTENCES) == TRAIN_LABELS
    assert label_list([(["a"], ["I-X"]), (["b"], ["B-X"])]) == ["O", "B-X", "I-X"]  # O even when unseen


def test_iob2_files(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="lit_prune.data.conll"):
        data = module(tmp_path)
    assert data.task == "conll2003" and data.tag_scheme == "IOB2"
    assert data.tag_schemes == {"train": "IOB2", "validation": "IOB2"}
    assert data.tagged_sentences("train") == TRAIN_SENTENCES
    assert len(data.tagged_sentences("validation")) == 1
    assert data.label_names == TRAIN_LABELS and data.num_labels == 7
    assert data.label2id["O"] == 0 and data.id2label[4] == "B-PER"
    assert "conll2003 train: 3 sentences from" in caplog.text and "tags in IOB2" in caplog.text
    assert not data.has_split("test")


def test_iob1_files_are_converted(tmp_path, caplog):
    folder = write_conll(tmp_path / "iob1", train=TRAIN_IOB1)
    with caplog.at_level(logging.INFO, logger="lit_prune.data.conll"):
        data = module(tmp_path, data=folder)
    assert data.tag_scheme == "IOB1" and data.tag_schemes == {"train": "IOB1", "validation": "IOB2"}
    assert [tags for _, tags in data.tagged_sentences("train")] == IOB1_AS_IOB2
    assert data.label_names == ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-PER"]
    assert "train: 2 sentences" in caplog.text and "tags in IOB1 (converted to IOB2)" in caplog.text


# --------------------------------------------------------------------------------------------- tokenising
def test_first_sub_token_carries_the_word_label(tmp_path, minilm_l6):
    data = module(tmp_path, minilm_l6, batch_size=2)
    data.setup("fit")
    train = data.datasets["train"]
    assert set(train.column_names) == {"input_ids", "attention_mask", "token_type_ids", "labels", "word_ids"}
    assert len(train) == 3 and len(data.datasets["validation"]) == 1
    tokenizer = data.tokenizer
    words, tags = TRAIN_SENTENCES[2]
    pieces = [tokenizer.tokenize(word) for word in words]
    assert len(pieces[0]) == 3 and len(pieces[3]) == 3  # Schwarzenegger, Bundesbank: 3 sub-tokens each
    example = train[2]
    assert tokenizer.convert_ids_to_tokens(example["input_ids"]) == ["[CLS]", *(t for piece in pieces for t in piece), "[SEP]"]
    expected_words = [-1] + [i for i, piece in enumerate(pieces) for _ in piece] + [-1]
    assert example["word_ids"] == expected_words
    label2id = data.label2id
    expected = [IGNORE_INDEX]
    for piece, tag in zip(pieces, tags):
        expected += [label2id[tag]] + [IGNORE_INDEX] * (len(piece) - 1)
    assert example["labels"] == expected + [IGNORE_INDEX]
    # one scored position per word, holding the word's tag
    scored = [data.id2label[label] for label in example["labels"] if label != IGNORE_INDEX]
    assert scored == tags
    assert data.split_stats["train"]["truncated_words"] == 0 and data.split_stats["train"]["words"] == 14


def test_label_all_tokens(tmp_path, minilm_l6):
    data = module(tmp_path, minilm_l6, label_all_tokens=True)
    data.setup("fit")
    example = data.datasets["train"][2]
    names = [None if label == IGNORE_INDEX else data.id2label[label] for label in example["labels"]]
    # Schwarzenegger: B-PER then I-PER on its later sub-tokens; Bundesbank: B-ORG throughout, as the training
    # labels have no I-ORG; special tokens stay ignored
    assert names == [None, "B-PER", "I-PER", "I-PER", "O", "O", "B-ORG", "B-ORG", "B-ORG", "O", "B-LOC", "I-LOC", None]
    default = module(tmp_path, minilm_l6)
    default.setup("fit")
    assert default.datasets["train"][2]["labels"] != example["labels"]  # its own cache entry
    assert len(list((tmp_path / "cache" / "tokenized").iterdir())) == 4


def test_collate_pads_to_the_longest_in_the_batch(tmp_path, minilm_l6):
    data = module(tmp_path, minilm_l6, batch_size=3)
    data.setup("fit")
    train = data.datasets["train"]
    features = [train[i] for i in range(3)]
    lengths = [len(f["input_ids"]) for f in features]
    batch = data.collate(features)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels", "word_ids"}
    assert all(tensor.dtype == torch.int64 and tensor.shape == (3, max(lengths)) for tensor in batch.values())
    assert batch["attention_mask"].sum(1).tolist() == lengths
    row = lengths.index(min(lengths))
    assert (batch["input_ids"][row, min(lengths):] == data.tokenizer.pad_token_id).all()
    assert (batch["attention_mask"][row, min(lengths):] == 0).all()
    assert (batch["token_type_ids"][row, min(lengths):] == 0).all()
    assert (batch["labels"][row, min(lengths):] == IGNORE_INDEX).all()
    assert (batch["word_ids"][row, min(lengths):] == -1).all()
    for name in batch:
        assert batch[name][row, :min(lengths)].tolist() == features[row][name]
    loaded = next(iter(data.train_dataloader()))
    assert loaded["labels"].shape == batch["labels"].shape
    assert sorted((loaded["labels"] != IGNORE_INDEX).sum(1).tolist()) == [2, 5, 7]  # one label per word


def test_average_sequence_length(tmp_path, minilm_l6):
    data = module(tmp_path, minilm_l6)
    lengths = [len(data.tokenizer(words, is_split_into_words=True)["input_ids"]) for words, _ in TRAIN_SENTENCES]
    assert data.average_sequence_length("train") == pytest.approx(sum(lengths) / 3)
    words = data.tagged_sentences("validation")[0][0]
    assert data.average_sequence_length() == len(data.tokenizer(words, is_split_into_words=True)["input_ids"])


def test_truncated_words_are_counted_and_warned_about_once_per_split(tmp_path, minilm_l6):
    long = "\n".join(f"word{i} NN I-NP O" for i in range(20))
    folder = write_conll(tmp_path / "long", train=TRAIN_IOB2 + "\n\n" + long)
    data = module(tmp_path, minilm_l6, data=folder, max_seq_length=12)
    with pytest.warns(UserWarning, match=r"conll2003 train: \d+ of 34 words, in 2 sentences, lie beyond "
                                         r"max_seq_length=12 tokens"):
        data.setup("fit")
    stats = data.split_stats["train"]
    kept = sum(max(ids) + 1 for ids in data.datasets["train"]["word_ids"])
    assert stats["truncated_words"] == 34 - kept > 0 and stats["truncated_sentences"] == 2
    assert all(len(ids) <= 12 for ids in data.datasets["train"]["input_ids"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.setup("fit")  # already set up: no second warning
    again = module(tmp_path, minilm_l6, data=folder, max_seq_length=12)
    with pytest.warns(UserWarning, match=r"\d+ of 34 words"):  # from the cache, the count is still known
        again.setup("fit")
    assert again.split_stats["train"] == stats


def test_max_train_examples_keeps_a_seeded_subset_in_order(tmp_path, minilm_l6):
    data = module(tmp_path, minilm_l6, max_train_examples=2, seed=3)
    chosen = data.tagged_sentences("train")
    assert len(chosen) == 2 and [TRAIN_SENTENCES.index(s) for s in chosen] == sorted(TRAIN_SENTENCES.index(s)
                                                                                      for s in chosen)
    assert data.label_names == TRAIN_LABELS  # the labels come from the whole file
    data.setup("fit")
    assert len(data.datasets["train"]) == 2
    assert module(tmp_path, minilm_l6, max_train_examples=2, seed=3).tagged_sentences("train") == chosen
    assert module(tmp_path, minilm_l6, max_train_examples=10).tagged_sentences("train") == TRAIN_SENTENCES


def test_test_split_and_stages(tmp_path, minilm_l6):
    data = module(tmp_path, minilm_l6)
    with pytest.raises(ValueError, match=r"no test split: .* holds no test\.txt"):
        data.setup("test")
    folder = write_conll(tmp_path / "with_test", test=VALID)
    data = module(tmp_path, minilm_l6, data=folder)
    data.setup("test")
    assert set(data.datasets) == {"test"} and data.tag_schemes["test"] == "IOB2"
    assert next(iter(data.test_dataloader()))["labels"].shape[0] == 1
    assert len(data.split_dataset("train")) == 3


def test_prepare_data_fills_the_cache_that_setup_reads(tmp_path, minilm_l6, monkeypatch):
    folder = write_conll(tmp_path / "conll")
    module(tmp_path, minilm_l6, data=folder).prepare_data()
    other = module(tmp_path, minilm_l6, data=folder)
    monkeypatch.setattr(other, "tagged_sentences", lambda split: pytest.fail(f"setup re-tokenised {split}"))
    other.setup("fit")
    assert len(other.datasets["train"]) == 3


def test_byte_level_tokenizer_gets_a_prefix_space(tmp_path):
    """RoBERTa-style tokenizers read split words as running text only with add_prefix_space=True."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([" ".join(words) for words, _ in TRAIN_SENTENCES] * 3, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    folder = tmp_path / "bpe"
    RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                         cls_token="<s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
                         ).save_pretrained(folder)
    RobertaConfig(vocab_size=300).save_pretrained(folder)
    data = module(tmp_path, folder)
    data.setup("fit")
    tokens = data.tokenizer.convert_ids_to_tokens(data.datasets["train"][1]["input_ids"])
    assert tokens[0] == "<s>" and tokens[-1] == "</s>"
    assert all(tokens[i].startswith("Ġ") for i in (1, data.datasets["train"][1]["word_ids"].index(1)))
    assert "token_type_ids" not in data.datasets["train"].column_names
    assert set(data.collate([data.datasets["train"][0]])) == {"input_ids", "attention_mask", "labels", "word_ids"}


# ------------------------------------------------------------------------------------------ bad settings
@pytest.mark.parametrize("train, message", [
    ("", r"CoNLL file .*train\.txt holds no sentences"),
    ("-DOCSTART- -X- -X- O\n\n\n", r"CoNLL file .*train\.txt holds no sentences"),
    ("EU NNP B-NP B-ORG\nrejects\n", r"CoNLL file .*train\.txt, line 2: 1 column \('rejects'\); expected at least 2"),
    ("EU NNP B-NP B-ORG\n\nrejects VBZ B-VP E-PER\n",
     r"CoNLL file .*train\.txt, line 3: NER tag 'E-PER' \(the last column\) is not O, B-<type> or I-<type>"),
    ("EU NNP B-NP B-\n", r"train\.txt, line 1: NER tag 'B-'"),
    (b"EU NNP B-NP B-ORG\n\n\xe9t\xe9 NN O O\n", r"CoNLL file .*train\.txt, line 3: not valid UTF-8"),
])
def test_bad_data_file(tmp_path, train, message):
    folder = write_conll(tmp_path / "bad", train=train if isinstance(train, str) else None)
    if isinstance(train, bytes):
        (folder / "train.txt").write_bytes(train)
    with pytest.raises(ValueError, match=message):
        TokenClassificationDataModule(data_dir=str(folder))
    with pytest.raises(ValueError, match=message):
        read_conll(folder / "train.txt")


def test_validation_tag_missing_from_training(tmp_path):
    # the test file is IOB1: its I-EVENT starts an entity, so it is checked as B-EVENT
    folder = write_conll(tmp_path / "unseen", valid=VALID + "Euro NNP B-NP B-CURRENCY\nzone NN I-NP I-CURRENCY\n",
                         test="-DOCSTART- -X- -X- O\n\nfoo NN B-NP I-EVENT\n")
    with pytest.raises(ValueError, match=r"valid\.txt: tag\(s\) 'B-CURRENCY' \(first at line 9\), 'I-CURRENCY' "
                                         r"\(first at line 10\) are not among the labels of .*train\.txt "
                                         r"\(O, B-LOC, B-MISC, B-ORG, B-PER, I-LOC, I-PER\).*"
                                         r"test\.txt: tag\(s\) 'B-EVENT' \(first at line 3\)"):
        TokenClassificationDataModule(data_dir=str(folder))


@pytest.mark.parametrize("settings, message", [
    ({"task": "ontonotes"}, r"task='ontonotes' is not a named-entity task; allowed: conll2003"),
    ({"max_train_examples": 0}, r"max_train_examples=0: expected an integer >= 1"),
    ({"max_train_examples": True}, r"max_train_examples=True: expected an integer >= 1"),
    ({"max_train_examples": 2.5}, r"max_train_examples=2\.5: expected an integer >= 1"),
    ({"label_all_tokens": "yes"}, r"label_all_tokens='yes': expected true or false"),
    ({"max_seq_length": 4}, r"max_seq_length=4: expected an integer >= 8"),
])
def test_bad_setting(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        TokenClassificationDataModule(data_dir=str(write_conll(tmp_path / "conll")), **settings)


def test_bad_data_dir(tmp_path):
    with pytest.raises(ValueError, match=r"data_dir='.*nowhere': no such folder; expected a folder holding train\.txt, "
                                         r"valid\.txt"):
        TokenClassificationDataModule(data_dir=str(tmp_path / "nowhere"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "train.txt").write_text(TRAIN_IOB2)
    with pytest.raises(ValueError, match=r"data_dir='.*half' lacks valid\.txt; expected a folder"):
        TokenClassificationDataModule(data_dir=str(tmp_path / "half"))


def test_problems_are_reported_together_before_tokenising(tmp_path, monkeypatch):
    from lit_prune.data import base

    monkeypatch.setattr(base, "load_tokenizer", lambda *args, **kwargs: pytest.fail("tokenizer loaded"))
    folder = write_conll(tmp_path / "bad", valid="a B-X\nb\n")
    with pytest.raises(ValueError, match=r"batch_size=0.*max_train_examples=-1.*valid\.txt, line 2: 1 column"):
        TokenClassificationDataModule(tokenizer="any", data_dir=str(folder), max_train_examples=-1, batch_size=0,
                                      cache_dir=str(tmp_path))


# -------------------------------------------------------------------------------------------------- hub
def test_no_local_copy_and_hub_off(tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_PRUNE_ASSETS", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"conll2003: no local copy at .*conll2003 \(LIT_PRUNE_ASSETS=.*\) and "
                                                r"the hub \(eriktks/conll2003\) is switched off \(HF_HUB_OFFLINE=1\)"):
        TokenClassificationDataModule()


def test_hub_fallback_maps_class_label_names(tmp_path, monkeypatch, minilm_l6):
    import datasets

    names = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    calls = []

    def fake_load_dataset(name, split, **kwargs):
        calls.append((name, split))
        features = datasets.Features({"tokens": datasets.List(datasets.Value("string")),
                                      "ner_tags": datasets.List(datasets.ClassLabel(names=names))})
        return datasets.Dataset.from_dict({"tokens": [["Peter", "Blackburn", "in", "Paris"], ["EU", "said"]],
                                           "ner_tags": [[1, 2, 0, 5], [3, 0]]}, features=features)

    monkeypatch.setenv("LIT_PRUNE_ASSETS", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr("lit_prune.data.conll.hub_status", lambda: None)  # the hub answers (this machine has none)
    data = TokenClassificationDataModule(tokenizer=str(minilm_l6), cache_dir=str(tmp_path / "cache"))
    assert data.source == "hub:eriktks/conll2003" and calls == [] and data.tag_scheme is None
    assert data.label_names == ["O", "B-LOC", "B-ORG", "B-PER", "I-PER"] and data.tag_scheme == "IOB2"
    assert data.tagged_sentences("train")[0] == (["Peter", "Blackburn", "in", "Paris"], ["B-PER", "I-PER", "O", "B-LOC"])
    data.setup("fit")
    data.setup("test")
    assert calls == [("eriktks/conll2003", "train"), ("eriktks/conll2003", "validation"),
                     ("eriktks/conll2003", "test")]
    assert len(data.datasets["validation"]) == 2


# ---------------------------------------------------------------------------------------------- real data
def test_real_conll2003(tmp_path, assets_dir, minilm_l6):
    folder = assets_dir / "data" / "conll2003"
    assert len(read_conll(folder / "train.txt")) == 14041
    data = TokenClassificationDataModule(tokenizer=str(minilm_l6), cache_dir=str(tmp_path / "cache"))
    assert data.data_dir == folder.resolve()
    assert [len(data.tagged_sentences(split)) for split in ("train", "validation", "test")] == [14041, 3250, 3453]
    # this copy is already IOB2: no I- tag starts an entity
    assert data.tag_schemes == {"train": "IOB2", "validation": "IOB2", "test": "IOB2"}
    assert data.label_names == ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER"]
    assert data.tagged_sentences("train")[0] == (["EU", "rejects", "German", "call", "to", "boycott", "British",
                                                  "lamb", "."], ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC",
                                                                 "O", "O"])
    with pytest.warns(UserWarning, match=r"conll2003 validation: 19 of 51362 words, in 3 sentences"):
        data.setup("validate")
    validation = data.datasets["validation"]
    assert len(validation) == 3250
    scored = sum(sum(label != IGNORE_INDEX for label in labels) for labels in validation["labels"])
    assert scored == 51362 - 19  # one scored position per word kept
    assert 15 < data.average_sequence_length() < 30
