"""SQuAD v1.1 / v2.0 extractive question answering: reading the official JSON files, the article split used when
no training file is available, and the data module (the windowing and the way back from logits to answer text are
in :mod:`lit_prune.data.squad_features`)."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader

from lit_prune.assets import AssetNotFoundError, describe_data_lookup, hub_status, resolve_data_dir
from lit_prune.data.base import TaskDataModule, file_fingerprint, tokenizer_fingerprint
from lit_prune.data.squad_features import MODEL_INPUTS, postprocess_predictions, tokenize_examples

log = logging.getLogger(__name__)

SquadTask = Literal["squad_v1", "squad_v2"]
SQUAD_TASKS: tuple[str, ...] = ("squad_v1", "squad_v2")

#: task -> (folder under data/squad/, file version suffix, hub dataset id)
_SOURCES = {"squad_v1": ("v1.1", "rajpurkar/squad"), "squad_v2": ("v2.0", "rajpurkar/squad_v2")}

#: bump when the feature layout changes, so old cache entries are not reused
_FEATURE_FORMAT = 1



# ------------------------------------------------------------------------------------------------- reading
def read_squad_json(path: Path, task: SquadTask) -> list[dict[str, Any]]:
    """Read an official SQuAD JSON file into flat examples.

    Args:
        path: a ``train-v*.json`` / ``dev-v*.json`` file.
        task: ``"squad_v1"`` (every question must have an answer) or ``"squad_v2"`` (unanswerable questions
            allowed).

    Returns:
        One dict per question: ``id``, ``title``, ``context``, ``question`` and ``answers`` (a dict of the lists
        ``text`` and ``answer_start``, the layout of the hub datasets; empty lists for an unanswerable question).

    Raises:
        ValueError: the file is not JSON, lacks the SQuAD layout (a ``data`` list of articles with ``paragraphs``
            of ``context`` and ``qas``), holds no questions, or holds unanswerable questions under squad_v1.
    """
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"SQuAD file {path} is not valid JSON: {error}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
        raise ValueError(f"SQuAD file {path} has no 'data' list: expected the official layout "
                         "{'version': ..., 'data': [{'title': ..., 'paragraphs': [{'context': ..., 'qas': [...]}]}]}")
    examples: list[dict[str, Any]] = []
    unanswerable = 0
    for a, article in enumerate(raw["data"]):
        where = f"SQuAD file {path}, article {a}"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise ValueError(f"{where}: expected an object with a 'paragraphs' list")
        title = str(article.get("title") or f"article-{a}")
        for p, paragraph in enumerate(article["paragraphs"]):
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("context"), str) \
                    or not isinstance(paragraph.get("qas"), list):
                raise ValueError(f"{where} ({title!r}), paragraph {p}: expected an object with a 'context' string "
                                 "and a 'qas' list")
            context = paragraph["context"]
            for q, qa in enumerate(paragraph["qas"]):
                if not isinstance(qa, dict) or not isinstance(qa.get("question"), str) or "id" not in qa:
                    raise ValueError(f"{where} ({title!r}), paragraph {p}, question {q}: expected an object with "
                                     "'id' and 'question'")
                answers = qa.get("answers") or []
                if qa.get("is_impossible"):
                    answers = []
                try:
                    texts = [str(answer["text"]) for answer in answers]
                    starts = [int(answer["answer_start"]) for answer in answers]
                except (TypeError, KeyError, ValueError):
                    raise ValueError(f"{where} ({title!r}), question id {qa['id']!r}: every answer needs 'text' "
                                     "and an integer 'answer_start'") from None
                unanswerable += not texts
                examples.append({"id": str(qa["id"]), "title": title, "context": context,
                                 "question": qa["question"], "answers": {"text": texts, "answer_start": starts}})
    if not examples:
        raise ValueError(f"SQuAD file {path} holds no questions ({len(raw['data'])} articles)")
    if task == "squad_v1" and unanswerable:
        raise ValueError(f"SQuAD file {path}: {unanswerable} questions have no answer, which task='squad_v1' does "
                         "not allow; use task='squad_v2' for files with unanswerable questions")
    return examples


def split_by_article(examples: Sequence[Mapping[str, Any]], eval_fraction: float,
                     seed: int) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]], list[str], list[str]]:
    """Split examples into a training and an evaluation part by article (``title``), never splitting an article.

    The titles, in order of first appearance, are shuffled with ``seed``; the first
    ``round(eval_fraction * n_articles)`` (at least one, at most all but one) go to evaluation.

    Returns:
        ``(train_examples, eval_examples, train_titles, eval_titles)``, examples in their original order.
    """
    titles = list(dict.fromkeys(example["title"] for example in examples))
    if len(titles) < 2:
        raise ValueError(f"cannot split by article: the data holds {len(titles)} article(s); give a training file "
                         "or data with at least two articles")
    shuffled = titles[:]
    random.Random(seed).shuffle(shuffled)
    n_eval = min(len(titles) - 1, max(1, round(eval_fraction * len(titles))))
    eval_titles = set(shuffled[:n_eval])
    train = [example for example in examples if example["title"] not in eval_titles]
    evaluation = [example for example in examples if example["title"] in eval_titles]
    return (train, evaluation, [t for t in titles if t not in eval_titles], [t for t in titles if t in eval_titles])


def _subsample(examples: list[Mapping[str, Any]], limit: int | None, seed: int) -> list[Mapping[str, Any]]:
    """At most ``limit`` examples drawn with ``seed``, kept in their original order."""
    if limit is None or limit >= len(examples):
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in keep]


# ---------------------------------------------------------------------------------------------- tokenising


# ---------------------------------------------------------------------------------------------- predictions


# ------------------------------------------------------------------------------------------------ data module
class SquadDataModule(TaskDataModule):
    """SQuAD v1.1 / v2.0 for extractive question answering, as sliding-window features.

    Data comes from ``data_dir`` when given, else from ``$LIT_PRUNE_ASSETS/data/squad/v1.1`` (``v2.0``), else from
    the hub datasets ``rajpurkar/squad`` (``rajpurkar/squad_v2``). A folder must hold the official
    ``dev-v1.1.json`` (``dev-v2.0.json``); when it also holds ``train-v1.1.json`` (``train-v2.0.json``) that is
    the training split. Without a training file, the dev file is split by article: ``eval_fraction`` of the
    articles, drawn with ``split_seed``, are held out for evaluation and the rest are trained on.
    ``split_info`` records what went where, for reports.

    The evaluation part serves validation, test and predict. Its features (``eval_features``: example ids and
    offset mappings) and examples (``eval_examples``) are what the QA task module needs to turn logits into
    answer texts.

    Args:
        task: ``"squad_v1"`` (every question answerable) or ``"squad_v2"`` (unanswerable questions too).
        data_dir: a folder with the official JSON files; ``None`` looks in the assets folder, then the hub.
        doc_stride: context tokens shared by consecutive windows of a long context.
        max_seq_length: tokens per window, special tokens included.
        eval_fraction: share of the articles held out for evaluation when the dev file is split.
        split_seed: seed of the article split.
        max_train_samples: train on at most this many questions (drawn with ``seed``); ``None`` uses all.
        max_eval_samples: evaluate on at most this many questions (drawn with ``seed``); ``None`` uses all.
        n_best_size: start and end candidates per window when turning logits into answers.
        max_answer_length: longest predicted answer, in tokens.
        **kwargs: tokenizer (a fast one), batch sizes, workers, cache, seed (of the question subsampling),
            group_by_length: see :class:`~lit_prune.data.base.TaskDataModule`.
    """

    def __init__(
        self,
        task: SquadTask = "squad_v1",
        data_dir: str | None = None,
        doc_stride: int = 128,
        max_seq_length: int = 384,
        eval_fraction: float = 0.2,
        split_seed: int = 0,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        n_best_size: int = 20,
        max_answer_length: int = 30,
        **kwargs: Any,
    ) -> None:
        problems = []
        if task not in SQUAD_TASKS:
            problems.append(f"task={task!r}: expected one of {', '.join(SQUAD_TASKS)}")
        if data_dir is not None and (not isinstance(data_dir, str) or not Path(data_dir).expanduser().is_dir()):
            problems.append(f"data_dir={data_dir!r}: no such folder; expected a folder with the official SQuAD JSON "
                            "files, or None to use the assets folder or the hub")
        for name, value, low in (("doc_stride", doc_stride, 1), ("n_best_size", n_best_size, 1),
                                 ("max_answer_length", max_answer_length, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                problems.append(f"{name}={value!r}: expected an integer >= {low}")
        if isinstance(doc_stride, int) and isinstance(max_seq_length, int) and doc_stride >= max_seq_length:
            problems.append(f"doc_stride={doc_stride!r}: expected fewer than max_seq_length={max_seq_length} tokens")
        if not isinstance(eval_fraction, (int, float)) or isinstance(eval_fraction, bool) \
                or not 0 < eval_fraction < 1:
            problems.append(f"eval_fraction={eval_fraction!r}: expected a number strictly between 0 and 1")
        if not isinstance(split_seed, int) or isinstance(split_seed, bool):
            problems.append(f"split_seed={split_seed!r}: expected an integer")
        for name, value in (("max_train_samples", max_train_samples), ("max_eval_samples", max_eval_samples)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                problems.append(f"{name}={value!r}: expected an integer >= 1, or None for all")
        self._init_reporting(problems, max_seq_length=max_seq_length, **kwargs)
        self._task = task
        self.data_dir = Path(data_dir).expanduser() if data_dir is not None else None
        self.doc_stride = doc_stride
        self.eval_fraction = float(eval_fraction)
        self.split_seed = split_seed
        self.max_train_samples = max_train_samples
        self.max_eval_samples = max_eval_samples
        self.n_best_size = n_best_size
        self.max_answer_length = max_answer_length
        #: where the data came from and which articles / how many questions went to each part
        self.split_info: dict[str, Any] = {}
        #: evaluation questions: ``id``, ``title``, ``context``, ``question``, ``answers``
        self.eval_examples: list[Mapping[str, Any]] = []
        #: evaluation windows with ``example_id`` and ``offset_mapping`` (row i has ``feature_index`` i)
        self.eval_features = None
        self._examples: tuple[list[Mapping[str, Any]], list[Mapping[str, Any]], list[str]] | None = None

    @property
    def task(self) -> str:
        return self._task

    @property
    def version_2_with_negative(self) -> bool:
        """Whether questions may be unanswerable (SQuAD v2.0)."""
        return self._task == "squad_v2"

    # ---------------------------------------------------------------------------------------------- reading
    def load_examples(self) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]], list[str]]:
        """The training and evaluation examples (after the split and the subsampling) and fingerprints of their
        sources; read once, and recorded in ``split_info``."""
        if self._examples is not None:
            return self._examples
        version, hub_id = _SOURCES[self._task]
        dev_name, train_name = f"dev-v{version[1:]}.json", f"train-v{version[1:]}.json"
        folder = self.data_dir
        tried = []
        if folder is None:
            folder = resolve_data_dir("squad", version, required_files=(dev_name,))
            tried.append(describe_data_lookup("squad", version))
        elif not (folder / dev_name).is_file():
            raise AssetNotFoundError(f"data_dir={str(self.data_dir)!r} holds no {dev_name}; expected the official "
                                     f"SQuAD files {dev_name} (and optionally {train_name})")
        info: dict[str, Any] = {"task": self._task}
        if folder is not None:
            dev_file = folder / dev_name
            dev = read_squad_json(dev_file, self._task)
            fingerprints = [file_fingerprint(dev_file)]
            if (folder / train_name).is_file():
                train = read_squad_json(folder / train_name, self._task)
                fingerprints.append(file_fingerprint(folder / train_name))
                evaluation = dev
                info.update(source="files", split="official", train_source=str(folder / train_name),
                            eval_source=str(dev_file))
            else:
                train, evaluation, train_titles, eval_titles = split_by_article(dev, self.eval_fraction,
                                                                                self.split_seed)
                info.update(source="files", split="dev_by_article", train_source=str(dev_file),
                            eval_source=str(dev_file), eval_fraction=self.eval_fraction, split_seed=self.split_seed,
                            train_articles=train_titles, eval_articles=eval_titles)
        else:
            train, evaluation, fingerprints = self._load_hub(hub_id, tried)
            info.update(source="hub", split="official", train_source=f"{hub_id}:train",
                        eval_source=f"{hub_id}:validation")
        info.update(train_examples=len(train), eval_examples=len(evaluation))
        train = _subsample(train, self.max_train_samples, self.seed)
        evaluation = _subsample(evaluation, self.max_eval_samples, self.seed)
        info.update(max_train_samples=self.max_train_samples, max_eval_samples=self.max_eval_samples,
                    seed=self.seed, train_examples_used=len(train), eval_examples_used=len(evaluation))
        self.split_info = info
        self._announce(info)
        self._examples = (train, evaluation, fingerprints)
        return self._examples

    def _load_hub(self, hub_id: str, tried: list[str]) -> tuple[list, list, list[str]]:
        import datasets

        tried.append(f"hub dataset {hub_id}")
        if (status := hub_status()) is not None:
            raise AssetNotFoundError(f"{self._task}: no data found and the hub is {status}. Tried: "
                                     f"data_dir (not given); {'; '.join(tried)}. Give data_dir, or set "
                                     "LIT_PRUNE_ASSETS to a folder with data/squad/<version>/.")
        try:
            hub = datasets.load_dataset(hub_id)
        except Exception as error:  # offline, missing, or no permission: the user needs to know what was tried
            raise AssetNotFoundError(f"{self._task}: no data found. Tried: data_dir (not given); "
                                     f"{'; '.join(tried)} ({type(error).__name__}: {error}).") from error
        columns = ["id", "title", "context", "question", "answers"]
        return (hub["train"].select_columns(columns).to_list(), hub["validation"].select_columns(columns).to_list(),
                [hub["train"]._fingerprint, hub["validation"]._fingerprint])

    @rank_zero_only
    def _announce(self, info: dict[str, Any]) -> None:
        if info["split"] == "dev_by_article":
            message = (f"{self._task}: no training file, so {Path(info['eval_source']).name} is split by article "
                       f"(eval_fraction={info['eval_fraction']}, split_seed={info['split_seed']}): "
                       f"{len(info['train_articles'])} articles / {info['train_examples']} questions for training, "
                       f"{len(info['eval_articles'])} articles / {info['eval_examples']} questions for evaluation")
        else:
            message = (f"{self._task}: training on {info['train_source']} ({info['train_examples']} questions), "
                       f"evaluating on {info['eval_source']} ({info['eval_examples']} questions)")
        if self.max_train_samples or self.max_eval_samples:
            message += (f"; using {info['train_examples_used']} / {info['eval_examples_used']} of them "
                        f"(max_train_samples={self.max_train_samples}, max_eval_samples={self.max_eval_samples}, "
                        f"seed={self.seed})")
        log.info(message)
        print(f"lit_prune: {message}")

    # ----------------------------------------------------------------------------------------------- setup
    def _cache_key(self, part: Literal["train", "eval"], fingerprints: list[str]) -> dict[str, Any]:
        """Everything the features of ``part`` depend on: sources, split, subsampling and tokenisation."""
        return {"kind": "squad", "format": _FEATURE_FORMAT, "part": part, "task": self._task,
                "sources": fingerprints, "split": self.split_info["split"], "eval_fraction": self.eval_fraction,
                "split_seed": self.split_seed, "seed": self.seed,
                "max_samples": self.max_train_samples if part == "train" else self.max_eval_samples,
                "tokenizer": tokenizer_fingerprint(self.tokenizer), "max_seq_length": self.max_seq_length,
                "doc_stride": self.doc_stride}

    def _features(self, part: Literal["train", "eval"]):
        """The tokenised features of ``part``, from the tokenisation cache (built on first use)."""
        import datasets

        train, evaluation, fingerprints = self.load_examples()
        if part == "eval":
            def build():
                columns = tokenize_examples(self.tokenizer, evaluation, self.max_seq_length, self.doc_stride,
                                            labels=False, offsets=True)
                columns["feature_index"] = list(range(len(columns["example_id"])))
                return datasets.Dataset.from_dict(columns)
        else:
            def build():
                return datasets.Dataset.from_dict(tokenize_examples(
                    self.tokenizer, train, self.max_seq_length, self.doc_stride, labels=True, offsets=False))
        return self.cached(self._cache_key(part, fingerprints), build)

    def _fill_cache(self, stage: str) -> None:
        self._features("eval")
        if stage == "fit":
            self._features("train")

    def setup(self, stage: str | None = None) -> None:
        """Tokenise the evaluation part (every stage) and the training part (``fit``, or ``None``)."""
        _, evaluation, _ = self.load_examples()
        if "validation" not in self.datasets:
            self.eval_features = self._features("eval")
            self.eval_examples = evaluation
            # Batches carry only model inputs and the feature index; strings and offsets stay in eval_features.
            inputs = [name for name in (*MODEL_INPUTS, "feature_index") if name in self.eval_features.column_names]
            self.datasets["validation"] = self.datasets["test"] = self.eval_features.select_columns(inputs)
            self.split_info["eval_features"] = len(self.eval_features)
        if stage in (None, "fit") and "train" not in self.datasets:
            train_features = self._features("train")
            inputs = [name for name in (*MODEL_INPUTS, "start_positions", "end_positions")
                      if name in train_features.column_names]
            self.datasets["train"] = train_features.select_columns(inputs)
            self.split_info["train_features"] = len(train_features)

    # ------------------------------------------------------------------------------------------ dataloaders
    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pad a list of features to the longest in the batch (right padding).

        Returns ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the tokenizer makes them), each
        ``[batch, longest]``; training batches add ``start_positions`` / ``end_positions``, evaluation batches
        ``feature_index`` (the row in ``eval_features``), each ``[batch]``.
        """
        width = max(len(feature["input_ids"]) for feature in features)
        pad_values = {"input_ids": self.tokenizer.pad_token_id or 0, "attention_mask": 0,
                      "token_type_ids": self.tokenizer.pad_token_type_id}
        batch = {}
        for name, pad in pad_values.items():
            if name in features[0]:
                batch[name] = torch.tensor([list(feature[name]) + [pad] * (width - len(feature[name]))
                                            for feature in features], dtype=torch.long)
        for name in ("start_positions", "end_positions", "feature_index"):
            if name in features[0]:
                batch[name] = torch.tensor([feature[name] for feature in features], dtype=torch.long)
        return batch

    def test_dataloader(self) -> DataLoader:
        """The evaluation part (it has answers, so test metrics can be computed)."""
        return self._loader(self.split_dataset("test"), self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The evaluation part; predictions carry ``feature_index`` to be matched with ``eval_features``."""
        return self._loader(self.split_dataset("validation"), self.eval_batch_size, shuffle=False)


# postprocess_predictions and tokenize_examples live in squad_features; they belong to this module's public face
__all__ = ["SQUAD_TASKS", "SquadDataModule", "SquadTask", "postprocess_predictions", "read_squad_json",
           "split_by_article", "tokenize_examples"]
