"""SQuAD v1.1 / v2.0: reading and article split, sliding-window labels, postprocessing, scoring, the metric, and
short Lightning runs of the QA module (the real MiniLM-L3 checkpoint; tiny RoBERTa and DistilBERT models)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from lit_prune.assets import AssetNotFoundError
from lit_prune.data.squad import (SquadDataModule, postprocess_predictions, read_squad_json, split_by_article,
                                  tokenize_examples)
from lit_prune.tasks.squad_metrics import SquadMetric, f1_score, normalize_answer, squad_scores

SMALL = dict(max_seq_length=64, doc_stride=32, batch_size=4, eval_batch_size=4)


# ------------------------------------------------------------------------------------------- synthetic data
ANIMALS = ["fox", "otter", "heron", "badger", "lynx", "crane", "beaver", "falcon", "marten", "stoat", "ibex", "vole"]
NAMES = ["Bramble", "Thistle", "Juniper", "Sorrel", "Hazel", "Rowan", "Alder", "Tansy", "Yarrow", "Sedge"]


def _filler(article: int, count: int) -> str:
    return " ".join(f"Note {k} of article {article} describes the weather over the hills." for k in range(count))


def synthetic_articles(n_articles: int, version: str, seed: int = 0) -> list[dict]:
    """Articles whose contexts span several 64-token windows, with answers at varied positions."""
    rng = random.Random(seed)
    articles = []
    for a in range(n_articles):
        paragraphs = []
        for p in range(2):
            animal, name = ANIMALS[(a + p) % len(ANIMALS)], NAMES[(3 * a + p) % len(NAMES)]
            place, year = f"Glen{a}x{p}", str(1700 + 11 * a + p)
            context = (f"{_filler(a, rng.randint(0, 6))} The {animal} lived in {place} until {year}. "
                       f"{_filler(a, rng.randint(0, 6))} The villagers called it {name}. "
                       f"{_filler(a, rng.randint(1, 3))}")
            qas = [
                {"id": f"a{a}p{p}q0", "question": f"  Where did the {animal} live?",
                 "answers": [{"text": place, "answer_start": context.index(place)},
                             {"text": f"in {place}", "answer_start": context.index(f"in {place}")}]},
                {"id": f"a{a}p{p}q1", "question": f"Until which year did the {animal} live in {place}?",
                 "answers": [{"text": year, "answer_start": context.index(year)}]},
                {"id": f"a{a}p{p}q2", "question": "What did the villagers call it?",
                 "answers": [{"text": name, "answer_start": context.index(name)}]},
            ]
            if version == "v2.0":
                for qa in qas:
                    qa["is_impossible"] = False
                qas.append({"id": f"a{a}p{p}q3", "question": f"What did the {animal} eat?", "answers": [],
                            "is_impossible": True})
            paragraphs.append({"context": context, "qas": qas})
        articles.append({"title": f"Article_{a}", "paragraphs": paragraphs})
    return articles


def write_squad(folder: Path, version: str = "v1.1", n_articles: int = 10, train_articles: int = 0) -> Path:
    """A folder with ``dev-<version>.json`` (and ``train-<version>.json`` when ``train_articles``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"dev-{version}.json").write_text(json.dumps(
        {"version": version, "data": synthetic_articles(n_articles, version)}))
    if train_articles:
        (folder / f"train-{version}.json").write_text(json.dumps(
            {"version": version, "data": synthetic_articles(train_articles, version, seed=1)}))
    return folder


@pytest.fixture
def squad_v1(tmp_path) -> Path:
    return write_squad(tmp_path / "squad_v1", "v1.1")


@pytest.fixture
def squad_v2(tmp_path) -> Path:
    return write_squad(tmp_path / "squad_v2", "v2.0")


@pytest.fixture(scope="module")
def minilm_tokenizer(minilm_l3):
    from lit_prune.data.base import load_tokenizer

    return load_tokenizer(str(minilm_l3))


def roberta_style_tokenizer(texts: list[str]):
    """A byte-level BPE tokenizer with RoBERTa's special tokens and pair layout, trained on ``texts``."""
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=False, trim_offsets=True)
    bpe.train_from_iterator(texts, vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe._tokenizer.post_processor = processors.RobertaProcessing(
        ("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")), trim_offsets=True)
    return RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                sep_token="</s>", cls_token="<s>", pad_token="<pad>", unk_token="<unk>",
                                mask_token="<mask>")


def datamodule(folder: Path, tokenizer: Path, **overrides) -> SquadDataModule:
    task = "squad_v2" if any(folder.glob("*v2.0.json")) else "squad_v1"
    return SquadDataModule(**{"task": task, "data_dir": str(folder), "tokenizer": str(tokenizer), **SMALL,
                              **overrides})


# ------------------------------------------------------------------------------------------------ the split
@pytest.mark.assets
def test_article_split_is_deterministic_disjoint_and_covering(squad_v1, minilm_l3):
    first = datamodule(squad_v1, minilm_l3, eval_fraction=0.3, split_seed=5)
    first.setup("validate")
    again = datamodule(squad_v1, minilm_l3, eval_fraction=0.3, split_seed=5)
    again.setup("validate")
    other = datamodule(squad_v1, minilm_l3, eval_fraction=0.3, split_seed=6)
    other.setup("validate")

    info = first.split_info
    assert info["split"] == "dev_by_article"
    assert info["train_source"] == info["eval_source"] == str(squad_v1 / "dev-v1.1.json")
    assert (info["eval_fraction"], info["split_seed"]) == (0.3, 5)
    assert len(info["eval_articles"]) == 3 and len(info["train_articles"]) == 7
    assert not set(info["eval_articles"]) & set(info["train_articles"])
    assert set(info["eval_articles"]) | set(info["train_articles"]) == {f"Article_{a}" for a in range(10)}
    assert info["eval_examples"] == 3 * 6 and info["train_examples"] == 7 * 6  # 2 paragraphs x 3 questions
    assert {example["title"] for example in first.eval_examples} == set(info["eval_articles"])
    assert again.split_info["eval_articles"] == info["eval_articles"]
    assert [e["id"] for e in again.eval_examples] == [e["id"] for e in first.eval_examples]
    assert other.split_info["eval_articles"] != info["eval_articles"]

    # The pure function agrees, and keeps examples in file order.
    examples = read_squad_json(squad_v1 / "dev-v1.1.json", "squad_v1")
    train, evaluation, train_titles, eval_titles = split_by_article(examples, 0.3, 5)
    assert eval_titles == info["eval_articles"] and train_titles == info["train_articles"]
    assert [e["id"] for e in train] == [e["id"] for e in examples if e["title"] in train_titles]
    assert len(train) + len(evaluation) == len(examples)


@pytest.mark.assets
def test_official_train_file_is_used_when_present(tmp_path, minilm_l3):
    folder = write_squad(tmp_path / "both", "v1.1", n_articles=3, train_articles=4)
    dm = datamodule(folder, minilm_l3)
    dm.setup("fit")
    assert dm.split_info["split"] == "official"
    assert dm.split_info["train_source"] == str(folder / "train-v1.1.json")
    assert dm.split_info["train_examples"] == 4 * 6 and dm.split_info["eval_examples"] == 3 * 6
    assert len(dm.eval_examples) == 3 * 6


@pytest.mark.assets
@pytest.mark.parametrize("task, version, articles, questions", [("squad_v1", "v1.1", 48, 10570),
                                                                 ("squad_v2", "v2.0", 35, 11873)])
def test_real_dev_file_split(assets_dir, minilm_l3, minilm_tokenizer, task, version, articles, questions):
    dm = SquadDataModule(task=task, tokenizer=str(minilm_l3), max_seq_length=128, doc_stride=64,
                         max_train_samples=6, max_eval_samples=5, seed=1)
    dm.setup("fit")
    info = dm.split_info
    expected = assets_dir / "data" / "squad" / version / f"dev-{version}.json"
    assert Path(info["eval_source"]).resolve() == expected.resolve()
    assert len(info["train_articles"]) + len(info["eval_articles"]) == articles
    assert len(info["eval_articles"]) == round(0.2 * articles)
    assert not set(info["train_articles"]) & set(info["eval_articles"])
    assert info["train_examples"] + info["eval_examples"] == questions
    assert (info["train_examples_used"], info["eval_examples_used"]) == (6, 5)
    assert len(dm.eval_examples) == 5
    assert {e["title"] for e in dm.eval_examples} <= set(info["eval_articles"])
    assert len(dm.datasets["train"]) >= 6 and len(dm.eval_features) >= 5
    assert set(dm.eval_features["example_id"]) == {e["id"] for e in dm.eval_examples}
    assert 0 < dm.average_sequence_length() <= 128

    # The subsample is a pure function of the seed.
    again = SquadDataModule(task=task, tokenizer=str(minilm_l3), max_seq_length=128, doc_stride=64,
                            max_train_samples=6, max_eval_samples=5, seed=1)
    again.setup("validate")
    assert [e["id"] for e in again.eval_examples] == [e["id"] for e in dm.eval_examples]

    # Real answers map back through the windows' offsets (the training part's questions).
    train_examples = dm.load_examples()[0]
    _assert_offsets_recover_answers(minilm_tokenizer, train_examples, 128, 64)


# ------------------------------------------------------------------------------------------- tokenisation
def _assert_offsets_recover_answers(tokenizer, examples, max_seq_length: int, doc_stride: int) -> tuple[int, int]:
    """Every window that labels an answer decodes, through its offsets, to the exact answer text.

    Returns how many windows label an answer and how many label CLS."""
    features = tokenize_examples(tokenizer, examples, max_seq_length, doc_stride, labels=True, offsets=True)
    by_id = {example["id"]: example for example in examples}
    inside = outside = 0
    for i, example_id in enumerate(features["example_id"]):
        example = by_id[example_id]
        start, end = features["start_positions"][i], features["end_positions"][i]
        assert len(features["input_ids"][i]) <= max_seq_length
        if start == 0:
            assert end == 0
            outside += 1
            continue
        offsets = features["offset_mapping"][i]
        assert offsets[start] != [-1, -1] and offsets[end] != [-1, -1] and start <= end
        assert example["context"][offsets[start][0]:offsets[end][1]] == example["answers"]["text"][0]
        inside += 1
    return inside, outside


@pytest.mark.assets
def test_windowed_answer_offsets_map_back(squad_v2, minilm_l3, minilm_tokenizer):
    examples = read_squad_json(squad_v2 / "dev-v2.0.json", "squad_v2")
    inside, outside = _assert_offsets_recover_answers(minilm_tokenizer, examples, 64, 32)
    answerable = sum(bool(e["answers"]["text"]) for e in examples)
    # Long contexts make several windows per question: some hold the answer, some do not.
    assert inside >= answerable and outside > len(examples) - answerable

    # The data module's training labels are exactly these.
    dm = datamodule(squad_v2, minilm_l3)
    dm.setup("fit")
    train_examples = dm.load_examples()[0]
    features = tokenize_examples(minilm_tokenizer, train_examples, 64, 32, labels=True, offsets=False)
    assert dm.datasets["train"]["start_positions"] == features["start_positions"]
    assert dm.datasets["train"]["end_positions"] == features["end_positions"]
    # Unanswerable questions label CLS in every window.
    impossible = {e["id"] for e in train_examples if not e["answers"]["text"]}
    assert impossible and all(s == 0 for s, i in zip(features["start_positions"], features["example_id"])
                              if i in impossible)


def test_roberta_style_pairs_map_back(squad_v1):
    examples = read_squad_json(squad_v1 / "dev-v1.1.json", "squad_v1")
    tokenizer = roberta_style_tokenizer([e["context"] for e in examples] + [e["question"] for e in examples])
    inside, outside = _assert_offsets_recover_answers(tokenizer, examples, 64, 32)
    assert inside >= len(examples) and outside > 0
    features = tokenize_examples(tokenizer, examples[:3], 64, 32, labels=False, offsets=True)
    assert "token_type_ids" not in features
    assert features["input_ids"][0][0] == tokenizer.cls_token_id  # question first, after <s>


@pytest.mark.assets
def test_long_questions_are_shortened_to_fit_the_stride(minilm_tokenizer):
    context = "Word " * 200 + "answer here."
    example = {"id": "q", "title": "t", "context": context, "question": "why " * 80,
               "answers": {"text": ["answer"], "answer_start": [context.index("answer")]}}
    with pytest.warns(UserWarning, match="1 questions were longer than the 28 tokens"):
        features = tokenize_examples(minilm_tokenizer, [example], 64, 32, labels=True, offsets=True)
    assert all(len(ids) <= 64 for ids in features["input_ids"])
    assert any(start > 0 for start in features["start_positions"])


@pytest.mark.assets
def test_prepare_data_fills_the_cache_setup_loads(squad_v1, minilm_l3, tmp_path, monkeypatch):
    import lit_prune.data.squad as squad

    data = datamodule(squad_v1, minilm_l3, cache_dir=str(tmp_path / "c"))
    data.prepare_data()                                   # outside a trainer: what `fit` needs
    assert data.datasets == {} and len(list((tmp_path / "c" / "tokenized").iterdir())) == 2
    other = datamodule(squad_v1, minilm_l3, cache_dir=str(tmp_path / "c"))
    monkeypatch.setattr(squad, "tokenize_examples", lambda *args, **kwargs: pytest.fail("setup tokenised again"))
    other.setup("fit")
    assert len(other.split_dataset("train")) == other.split_info["train_features"] > 0
    assert len(other.eval_features) == other.split_info["eval_features"] > 0


@pytest.mark.assets
def test_collate_pads_dynamically_and_keeps_strings_out(squad_v1, minilm_l3):
    dm = datamodule(squad_v1, minilm_l3)
    dm.setup("fit")
    eval_batch = next(iter(dm.val_dataloader()))
    assert set(eval_batch) == {"input_ids", "attention_mask", "token_type_ids", "feature_index"}
    lengths = [len(ids) for ids in dm.eval_features["input_ids"][:4]]
    assert eval_batch["input_ids"].shape == (4, max(lengths))
    assert eval_batch["attention_mask"].sum(1).tolist() == lengths
    assert eval_batch["feature_index"].tolist() == [0, 1, 2, 3]
    assert (eval_batch["input_ids"][eval_batch["attention_mask"] == 0] == 0).all()
    train_batch = next(iter(dm.train_dataloader()))
    assert set(train_batch) == {"input_ids", "attention_mask", "token_type_ids", "start_positions",
                                "end_positions"}
    test_batch = next(iter(dm.test_dataloader()))
    assert torch.equal(test_batch["input_ids"], eval_batch["input_ids"])
    all_lengths = [len(ids) for ids in dm.eval_features["input_ids"]]
    assert dm.average_sequence_length() == pytest.approx(sum(all_lengths) / len(all_lengths))
    assert dm.split_info["eval_features"] == len(dm.eval_features) > len(dm.eval_examples)


@pytest.mark.assets
def test_calibration_sample_is_seeded(squad_v1, minilm_l3):
    dm = datamodule(squad_v1, minilm_l3)
    loader = dm.calibration_dataloader(6, seed=3, batch_size=4)
    again = datamodule(squad_v1, minilm_l3).calibration_dataloader(6, seed=3, batch_size=4)
    other = dm.calibration_dataloader(6, seed=4, batch_size=4)
    assert len(loader.dataset) == 6
    assert loader.dataset.indices == again.dataset.indices != other.dataset.indices
    batches = list(loader)
    assert [len(b["input_ids"]) for b in batches] == [4, 2]
    assert all("start_positions" in b for b in batches)


# ------------------------------------------------------------------------------------------- postprocessing
def _feature(example_id: str, context_offsets: list[list[int]], question_tokens: int = 2) -> dict:
    """[CLS] question... [SEP] context... [SEP] with -1 offsets outside the context."""
    offsets = [[-1, -1]] * (1 + question_tokens + 1) + context_offsets + [[-1, -1]]
    return {"example_id": example_id, "offset_mapping": offsets}


CONTEXT = "The quick brown fox jumps"
WORDS = [[0, 3], [4, 9], [10, 15], [16, 19], [20, 25]]  # The / quick / brown / fox / jumps


def _logits(length: int, high: dict[int, float]) -> list[float]:
    row = [0.0] * length
    for index, value in high.items():
        row[index] = value
    return row


def test_postprocess_picks_best_valid_span_over_windows():
    examples = [{"id": "e", "context": CONTEXT}]
    # 8 tokens per window: [CLS] q q [SEP] (indices 0-3), three context words (4-6), [SEP] (7).
    # Window 0 holds "The quick brown", window 1 "brown fox jumps".
    features = [_feature("e", WORDS[:3]), _feature("e", WORDS[2:])]
    start = [_logits(8, {1: 9.0, 4: 1.0, 5: 3.0}),  # a question token (1) scores highest: never a span
             _logits(8, {4: -5.0, 5: 2.0})]
    end = [_logits(8, {2: 9.0, 6: 2.0}),
           _logits(8, {4: 6.0, 6: 1.0})]  # window 1's best end (brown) comes before its best start (fox)
    # window 0: quick..brown = 3 + 2 = 5; window 1: fox..jumps = 2 + 1 = 3 (fox..brown = 8 is not a span).
    predictions = postprocess_predictions(examples, features, start, end, n_best_size=3, max_answer_length=30)
    assert predictions == {"e": "quick brown"}

    end[1][6] = 4.0  # now fox..jumps = 6 beats window 0
    assert postprocess_predictions(examples, features, start, end)["e"] == "fox jumps"
    # One-token answers only: quick = 3 (window 0), jumps = 0 + 4 = 4 (window 1).
    assert postprocess_predictions(examples, features, start, end, max_answer_length=1)["e"] == "jumps"


def test_postprocess_v2_prefers_null_when_it_wins():
    examples = [{"id": "e", "context": CONTEXT}, {"id": "f", "context": CONTEXT}]
    features = [_feature("e", WORDS), _feature("f", WORDS)]
    # 10 tokens: [CLS] q q [SEP] The quick brown fox jumps [SEP]; the null score is CLS start + CLS end.
    start = [_logits(10, {0: 6.0, 7: 2.0}), _logits(10, {0: 1.0, 7: 2.0})]
    end = [_logits(10, {0: 6.0, 8: 2.0}), _logits(10, {0: 1.0, 8: 2.0})]
    v2 = postprocess_predictions(examples, features, start, end, version_2_with_negative=True)
    assert v2 == {"e": "", "f": "fox jumps"}  # null 12 > span 4 for e; null 2 < span 4 for f
    assert postprocess_predictions(examples, features, start, end, version_2_with_negative=True,
                                   null_score_diff_threshold=10.0)["e"] == "fox jumps"
    assert postprocess_predictions(examples, features, start, end)["e"] == "fox jumps"  # v1: never empty


# --------------------------------------------------------------------------------------------------- scores
def test_official_normalisation_and_scores():
    assert normalize_answer("  The Cat, sat!  ") == "cat sat"
    assert f1_score("the cat sat", "cat sat on") == pytest.approx(0.8)  # P = 2/2, R = 2/3
    scores = squad_scores({"q1": "The cat sat", "q2": "Paris", "q3": "a dog"},
                          {"q1": ["cat sat on", "mat"], "q2": ["London", "paris."], "q3": ["the cat"]})
    assert scores == pytest.approx({"exact_match": 100 / 3, "f1": 100 * (0.8 + 1.0 + 0.0) / 3})

    v2 = squad_scores({"a": "the cat sat", "b": "", "c": "something", "d": "paris"},
                      {"a": ["cat sat on"], "b": [], "c": [""], "d": ["Paris"]}, version_2_with_negative=True)
    assert v2 == pytest.approx({"exact_match": 50.0, "f1": 100 * (0.8 + 1 + 0 + 1) / 4,
                                "HasAns_exact": 50.0, "HasAns_f1": 90.0, "NoAns_exact": 50.0, "NoAns_f1": 50.0})
    only_answerable = squad_scores({"d": "paris"}, {"d": ["Paris"]}, version_2_with_negative=True)
    assert set(only_answerable) == {"exact_match", "f1", "HasAns_exact", "HasAns_f1"}
    with pytest.raises(ValueError, match="no reference"):
        squad_scores({"zzz": "x"}, {"d": ["Paris"]})


def test_metric_pads_batches_and_dedups_feature_indices():
    examples = [{"id": "e", "context": CONTEXT, "answers": {"text": ["quick brown"], "answer_start": [4]}},
                {"id": "f", "context": CONTEXT, "answers": {"text": ["fox"], "answer_start": [16]}}]
    features = [_feature("e", WORDS), _feature("f", WORDS, question_tokens=4)]  # 10 and 12 tokens
    right_e = torch.tensor([_logits(10, {5: 5.0}), _logits(10, {6: 5.0})])    # quick..brown
    right_f = torch.tensor([_logits(12, {9: 5.0}), _logits(12, {9: 5.0})])    # fox..fox
    wrong_f = torch.tensor([_logits(12, {6: 9.0}), _logits(12, {7: 9.0})])    # The..quick

    metric = SquadMetric(examples, features, max_seq_length=16)
    metric.update(right_e[0:1], right_e[1:2], torch.tensor([0]))  # a batch 10 tokens wide
    metric.update(right_f[0:1], right_f[1:2], torch.tensor([1]))  # a batch 12 tokens wide
    metric.update(wrong_f[0:1], wrong_f[1:2], torch.tensor([1]))  # a duplicate of window 1: ignored
    assert {k: float(v) for k, v in metric.compute().items()} == {"exact_match": 100.0, "f1": 100.0}
    metric.reset()
    metric.update(right_e[0:1], right_e[1:2], torch.tensor([0]))
    assert {k: float(v) for k, v in metric.compute().items()} == {"exact_match": 100.0, "f1": 100.0}

    # Under DDP every process gathers every process's states; a fake gather of two identical ranks (the
    # DistributedSampler's padding duplicates) must give the same scores as one.
    synced = SquadMetric(examples, features, max_seq_length=16, distributed_available_fn=lambda: True,
                         dist_sync_fn=lambda tensor, group=None: [tensor, tensor.clone()])
    synced.update(right_e[0:1], right_e[1:2], torch.tensor([0]))
    synced.update(wrong_f[0:1], wrong_f[1:2], torch.tensor([1]))
    assert {k: float(v) for k, v in synced.compute().items()} == {"exact_match": 50.0, "f1": 50.0}


@pytest.mark.assets
def test_metric_reads_a_datasets_table_like_a_list(squad_v1, minilm_l3):
    dm = datamodule(squad_v1, minilm_l3)
    dm.setup("validate")
    as_table = SquadMetric(dm.eval_examples, dm.eval_features, max_seq_length=64)
    as_list = SquadMetric(dm.eval_examples, dm.eval_features.to_list(), max_seq_length=64)
    generator = torch.Generator().manual_seed(0)
    n = len(dm.eval_features)
    start, end = torch.randn(n, 64, generator=generator), torch.randn(n, 64, generator=generator)
    for metric in (as_table, as_list):
        metric.update(start, end, torch.arange(n))
    assert {k: float(v) for k, v in as_table.compute().items()} == \
        {k: float(v) for k, v in as_list.compute().items()}


# ---------------------------------------------------------------------------------------------- bad inputs
def test_bad_settings_are_reported_together(squad_v1):
    with pytest.raises(ValueError, match=r"task='squad_v3': expected one of squad_v1, squad_v2"):
        SquadDataModule(task="squad_v3", data_dir=str(squad_v1))
    with pytest.raises(ValueError) as error:
        SquadDataModule(task="squad", data_dir=str(squad_v1), doc_stride=400, eval_fraction=1.5, batch_size=0,
                        max_train_samples=0)
    message = str(error.value)
    for fragment in ("batch_size=0", "task='squad'", "doc_stride=400: expected fewer than max_seq_length=384",
                     "eval_fraction=1.5", "max_train_samples=0"):
        assert fragment in message
    with pytest.raises(ValueError, match=r"data_dir='.*nowhere': no such folder"):
        SquadDataModule(data_dir=str(squad_v1 / "nowhere"))


@pytest.mark.assets
def test_missing_files_and_offline_hub_name_what_was_tried(tmp_path, monkeypatch, minilm_l3):
    (tmp_path / "empty_dir").mkdir()
    dm = SquadDataModule(data_dir=str(tmp_path / "empty_dir"), tokenizer=str(minilm_l3))
    with pytest.raises(AssetNotFoundError, match="holds no dev-v1.1.json"):
        dm.setup("validate")
    monkeypatch.setenv("LIT_PRUNE_ASSETS", str(tmp_path))
    with pytest.raises(AssetNotFoundError, match=r"Tried: .*no local copy at .*squad.*v2\.0.*hub dataset "
                                                 r"rajpurkar/squad_v2"):
        SquadDataModule(task="squad_v2", tokenizer=str(minilm_l3)).setup("validate")


@pytest.mark.assets
@pytest.mark.parametrize("content, problem", [
    ("", "not valid JSON"),
    ("{}", "has no 'data' list"),
    ('{"data": []}', "holds no questions"),
    ('{"data": [{"title": "x", "paragraphs": [{"context": "c", "qas": []}]}]}', "holds no questions"),
    ('{"data": [{"title": "x"}]}', "article 0: expected an object with a 'paragraphs' list"),
    ('{"data": [{"title": "x", "paragraphs": [{"context": "c", "qas": [{"id": "1", "question": "q?", '
     '"answers": [{"text": "c"}]}]}]}]}', "needs 'text' and an integer 'answer_start'"),
    ('{"data": [{"title": "x", "paragraphs": [{"context": "c", "qas": [{"id": "1", "question": "q?", '
     '"answers": [], "is_impossible": true}]}]}]}', "1 questions have no answer, which task='squad_v1'"),
])
def test_malformed_json_names_the_file_and_problem(tmp_path, minilm_l3, content, problem):
    (tmp_path / "dev-v1.1.json").write_text(content)
    dm = SquadDataModule(data_dir=str(tmp_path), tokenizer=str(minilm_l3))
    with pytest.raises(ValueError, match=problem) as error:
        dm.setup("validate")
    assert str(tmp_path / "dev-v1.1.json") in str(error.value)


@pytest.mark.assets
def test_qa_module_rejects_an_unknown_task(minilm_l3):
    from lit_prune.tasks.qa import QuestionAnsweringModule

    with pytest.raises(ValueError, match=r"task='glue': expected one of squad_v1, squad_v2, or None"):
        QuestionAnsweringModule(str(minilm_l3), task="glue")
    with pytest.raises(ValueError, match=r"learning_rate=0.*task='glue'"):
        QuestionAnsweringModule(str(minilm_l3), task="glue", learning_rate=0)


# ----------------------------------------------------------------------------------------------- lightning
@pytest.mark.assets
def test_qa_module_trains_and_validates_on_minilm(tmp_path, squad_v1, squad_v2, minilm_l3):
    import lightning as L

    from lit_prune.tasks.qa import QuestionAnsweringModule

    model = QuestionAnsweringModule(str(minilm_l3), save_final_model=False)
    assert next(model.model.parameters()).dtype == torch.float32  # float16 on disk
    assert model.model.training  # from_pretrained returns eval mode; Lightning keeps a module's mode
    # limit_train_batches=2 ends the epoch at max_steps, so the epoch-end validation runs.
    trainer = L.Trainer(max_steps=2, limit_train_batches=2, limit_val_batches=2, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path))
    dm = datamodule(squad_v1, minilm_l3)
    trainer.fit(model, datamodule=dm)
    metrics = trainer.callback_metrics
    assert model.task == "squad_v1"
    assert torch.isfinite(metrics["train/loss"])
    assert 0.0 <= float(metrics["val/f1"]) <= 100.0 and 0.0 <= float(metrics["val/exact_match"]) <= 100.0
    assert float(metrics["val/exact_match"]) <= float(metrics["val/f1"])
    assert not any(key.startswith("val/HasAns") for key in metrics)

    # v2.0 test on a few held-out questions, answerable and unanswerable.
    v2_model = QuestionAnsweringModule(str(minilm_l3), task="squad_v2", save_final_model=False)
    v2_data = datamodule(squad_v2, minilm_l3, max_eval_samples=6)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path))
    (scores,) = trainer.test(v2_model, datamodule=v2_data, verbose=False)
    assert {"test/exact_match", "test/f1", "test/HasAns_exact", "test/HasAns_f1", "test/NoAns_exact",
            "test/NoAns_f1"} <= set(scores)
    n_no = sum(not e["answers"]["text"] for e in v2_data.eval_examples)
    n_has = len(v2_data.eval_examples) - n_no
    assert n_has and n_no
    assert scores["test/exact_match"] == pytest.approx(
        (n_has * scores["test/HasAns_exact"] + n_no * scores["test/NoAns_exact"]) / (n_has + n_no), abs=1e-3)

    with pytest.raises(ValueError, match="task='squad_v1', but the data module's task is 'squad_v2'"):
        model.attach_data(v2_data)  # what setup() does under a Trainer


@pytest.mark.assets
@pytest.mark.parametrize("model_type", ["roberta", "distilbert"])
def test_qa_module_runs_roberta_and_distilbert(tmp_path, squad_v2, minilm_tokenizer, model_type):
    import lightning as L
    from transformers import AutoModelForQuestionAnswering, DistilBertConfig

    from conftest import tiny_config
    from lit_prune.tasks.qa import QuestionAnsweringModule

    if model_type == "roberta":  # RoBERTa's pair layout and no token_type_ids
        examples = read_squad_json(squad_v2 / "dev-v2.0.json", "squad_v2")
        tokenizer = roberta_style_tokenizer([e["context"] for e in examples] + [e["question"] for e in examples])
        config = tiny_config("roberta", vocab_size=len(tokenizer))
    else:  # a BERT tokenizer makes token_type_ids, which DistilBERT's forward does not take
        tokenizer = minilm_tokenizer
        config = DistilBertConfig(vocab_size=len(tokenizer), dim=32, n_layers=1, n_heads=4, hidden_dim=48,
                                  max_position_embeddings=64)
    folder = tmp_path / f"tiny-{model_type}"
    torch.manual_seed(0)
    AutoModelForQuestionAnswering.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    dm = datamodule(squad_v2, folder)
    model = QuestionAnsweringModule(str(folder), save_final_model=False)
    trainer = L.Trainer(max_steps=1, limit_train_batches=1, limit_val_batches=2, num_sanity_val_steps=0,
                        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=dm)
    assert ("token_type_ids" in next(iter(dm.val_dataloader()))) == (model_type == "distilbert")
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert 0.0 <= float(trainer.callback_metrics["val/HasAns_f1"]) <= 100.0
