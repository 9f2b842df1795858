"""Named-entity recognition on CoNLL-2003: reading the CoNLL column files, IOB1 → IOB2 tag conversion, and the
token-classification data module (word labels on first sub-tokens, dynamic padding).

Local files are looked for in ``data_dir`` or ``$LIT_PRUNE_ASSETS/data/conll2003/``: ``train.txt``, ``valid.txt``
and, optionally, ``test.txt``, in the CoNLL-2003 column format (``token POS chunk NER`` per line, the NER tag in the
last column; blank lines between sentences, ``-DOCSTART-`` lines between documents). When no local copy exists,
the hub dataset ``eriktks/conll2003`` is used (its ``tokens`` and ``ner_tags`` columns, the tags named by the
column's class names).

Tags are read as IOB1 or IOB2 and always used as IOB2: a file is IOB1 when any ``I-X`` tag starts an entity (it
follows ``O``, the start of the sentence or a tag of another type); such tags become ``B-X``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from lit_prune.assets import AssetNotFoundError, describe_data_lookup, hub_status, resolve_data_dir
from lit_prune.data.base import TaskDataModule, file_fingerprint, tokenizer_fingerprint

log = logging.getLogger(__name__)

#: the named-entity tasks this module reads
CONLL_TASKS: tuple[str, ...] = ("conll2003",)
HUB_DATASET = "eriktks/conll2003"
#: the hub dataset's Parquet conversion: its main branch holds a loading script, which ``datasets`` >= 4 refuses
HUB_REVISION = "convert/parquet"
#: the hub dataset's ``ner_tags`` class names, used should its Parquet files not carry them
HUB_TAG_NAMES: tuple[str, ...] = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
#: split -> file name in the data folder ("test" is optional)
SPLIT_FILES: dict[str, str] = {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"}
REQUIRED_FILES: tuple[str, ...] = (SPLIT_FILES["train"], SPLIT_FILES["validation"])
DOCSTART = "-DOCSTART-"
#: the label id of positions that are neither trained on nor scored (PyTorch's cross-entropy ignore index)
IGNORE_INDEX = -100
#: the ``word_ids`` entry of special tokens and padding
NO_WORD = -1
#: bump when the tokenised layout changes, so old cache entries are not reused
_CACHE_VERSION = 1

_TAG = re.compile(r"O|[BI]-\S+")
_COLUMN_SEPARATOR = re.compile(r"[ \t]+")
_EXPECTED = ("CoNLL column format: one token per line with its NER tag (O, B-<type> or I-<type>) in the last of at "
             "least 2 whitespace-separated columns, blank lines between sentences, -DOCSTART- lines between documents")

Sentence = tuple[list[str], list[str]]


# ------------------------------------------------------------------------------------------------ reading
def _parse_conll(path: Path) -> tuple[list[Sentence], list[int]]:
    """The sentences of a CoNLL file and the line number of each sentence's first token (see :func:`read_conll`)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise ValueError(f"CoNLL file {path}, line {line}: not valid UTF-8 (byte offset {error.start}, "
                         f"0x{data[error.start]:02x}: {error.reason})") from None
    lines = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    sentences: list[Sentence] = []
    starts: list[int] = []
    words: list[str] = []
    tags: list[str] = []
    for number, line in enumerate(lines, start=1):
        columns = [column for column in _COLUMN_SEPARATOR.split(line) if column]
        if not columns or columns[0] == DOCSTART:
            if words:
                sentences.append((words, tags))
                words, tags = [], []
            continue
        if len(columns) < 2:
            raise ValueError(f"CoNLL file {path}, line {number}: {len(columns)} column ({line.strip()!r}); expected "
                             f"at least 2, the token first and its NER tag last ({_EXPECTED})")
        tag = columns[-1]
        if not _TAG.fullmatch(tag):
            raise ValueError(f"CoNLL file {path}, line {number}: NER tag {tag!r} (the last column) is not O, "
                             "B-<type> or I-<type>")
        if not words:
            starts.append(number)
        words.append(columns[0])
        tags.append(tag)
    if words:
        sentences.append((words, tags))
    if not sentences:
        raise ValueError(f"CoNLL file {path} holds no sentences (it is empty, or holds only blank and -DOCSTART- "
                         f"lines); expected {_EXPECTED}")
    return sentences, starts


def read_conll(path: str | os.PathLike) -> list[Sentence]:
    """Read a CoNLL column file (CoNLL-2003: ``token POS chunk NER``) into sentences of ``(words, tags)``.

    The file is UTF-8 (a leading byte-order mark dropped; ``\\n``, ``\\r\\n`` or ``\\r`` line ends). Columns are
    separated by spaces or tabs; the first is the token, the last the NER tag, as written (IOB1 or IOB2: see
    :func:`iob1_to_iob2`). Blank lines and ``-DOCSTART-`` lines separate sentences and are never sentences
    themselves; several in a row are one separator.

    Raises:
        ValueError: not valid UTF-8, a line with fewer than 2 columns, a tag that is not ``O``, ``B-<type>`` or
            ``I-<type>`` (the message names the file and the line), or no sentence at all.
    """
    return _parse_conll(Path(path).expanduser())[0]


def starts_inside(tags: list[str]) -> list[int]:
    """The positions of ``I-X`` tags that start an entity: after ``O``, at the start, or after a tag of another
    type. IOB2 never has one; IOB1 has one at the start of every entity not directly after one of its type."""
    return [i for i, tag in enumerate(tags)
            if tag.startswith("I-") and (i == 0 or tags[i - 1] == "O" or tags[i - 1][2:] != tag[2:])]


def detect_tag_scheme(sentences: list[Sentence]) -> str:
    """``"IOB1"`` when any ``I-X`` tag of the sentences starts an entity (:func:`starts_inside`), else ``"IOB2"``."""
    return "IOB1" if any(starts_inside(tags) for _, tags in sentences) else "IOB2"


def iob1_to_iob2(tags: list[str]) -> list[str]:
    """One sentence's tags in IOB2: every ``I-X`` that starts an entity (:func:`starts_inside`) becomes ``B-X``.

    IOB2 tags come back unchanged, so converting is always safe.
    """
    converted = list(tags)
    for i in starts_inside(tags):
        converted[i] = "B-" + tags[i][2:]
    return converted


def label_list(sentences: list[Sentence]) -> list[str]:
    """The labels of a training split: ``"O"`` first (always), then every other tag seen, sorted."""
    seen = {tag for _, tags in sentences for tag in tags}
    return ["O", *sorted(seen - {"O"})]


def _hub_split(split: str) -> list[Sentence]:
    """A split ("train", "validation", "test") of the hub dataset, as sentences of ``(words, tags)``."""
    import datasets

    data = datasets.load_dataset(HUB_DATASET, split=split, revision=HUB_REVISION)
    names = getattr(getattr(data.features["ner_tags"], "feature", None), "names", None) or HUB_TAG_NAMES
    return [(list(words), [names[tag] for tag in tags]) for words, tags in zip(data["tokens"], data["ner_tags"])]


def _token_labels(word_ids: list[int | None], word_labels: list[int], continuation: dict[int, int] | None) -> list[int]:
    """The label of each token: its word's on the first sub-token of the word; on later sub-tokens
    ``continuation[label]`` (``label_all_tokens``) or, when ``continuation`` is ``None``, ``IGNORE_INDEX``;
    ``IGNORE_INDEX`` on special tokens."""
    labels = []
    previous = None
    for word in word_ids:
        if word is None:
            labels.append(IGNORE_INDEX)
        elif word != previous:
            labels.append(word_labels[word])
        else:
            labels.append(IGNORE_INDEX if continuation is None else continuation[word_labels[word]])
        previous = word
    return labels


def _byte_level_without_prefix_space(tokenizer) -> bool:
    """Whether a tokenizer's pre-tokenizer is byte-level BPE's without a prefix space (RoBERTa, GPT-2 as saved):
    given split words, it would read every word as if it followed no space."""
    def walk(node: Any) -> bool:
        if isinstance(node, dict):
            if node.get("type") == "ByteLevel" and node.get("add_prefix_space") is False:
                return True
            return any(walk(value) for value in node.values())
        return isinstance(node, list) and any(walk(value) for value in node)

    return walk(json.loads(tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer"))


# ----------------------------------------------------------------------------------------------- module
class TokenClassificationDataModule(TaskDataModule):
    """Named-entity recognition (CoNLL-2003) for token classification, tokenised with the model's tokenizer, with
    dynamic padding.

    Splits: "train" (``train.txt``), "validation" (``valid.txt``) and, where there is one, "test" (``test.txt``);
    one example per sentence. Each example holds ``input_ids``, ``attention_mask`` (, ``token_type_ids`` where the
    tokenizer makes them), ``labels`` and ``word_ids``. The words are tokenised as given (``is_split_into_words``),
    truncated to ``max_seq_length`` tokens. ``labels`` holds the word's label id on the first sub-token of each
    word and -100 (ignored by the loss and the scores) on special tokens and on a word's later sub-tokens (or,
    with ``label_all_tokens``, the word's label there too, ``B-X`` turned into ``I-X``). ``word_ids`` gives the
    index of each token's word in the sentence (-1 for special tokens), so predictions map back to words; it is
    not a model input.

    Tags are used as IOB2: files in IOB1 are converted (see :func:`iob1_to_iob2`); ``tag_scheme`` says what was
    found. The labels (``label_names``) are the IOB2 tags of the training file, ``"O"`` first, then sorted; the
    validation and test files may use no other. Words cut off by truncation are counted (``split_stats``) and a
    warning gives their number, once per split.

    Args:
        tokenizer: tokenizer folder, assets name or hub id. Usually linked to the model's ``name_or_path``.
            A byte-level BPE tokenizer (RoBERTa) is loaded with ``add_prefix_space=True``, as split words need.
        task: the named-entity task: ``"conll2003"``.
        data_dir: a folder holding ``train.txt`` and ``valid.txt`` (``test.txt`` optional) in CoNLL column format;
            default: ``$LIT_PRUNE_ASSETS/data/conll2003/``, else the hub dataset ``eriktks/conll2003``.
        label_all_tokens: label every sub-token of a word (later ones ``I-X`` for a ``B-X`` word, or the word's own
            label where the training labels lack that ``I-X``), not only the first.
        max_train_examples: train on a random subset of this many sentences (drawn with ``seed``, kept in file
            order); ``None`` uses all. The labels still come from the whole training file.
        max_seq_length, batch_size, eval_batch_size, num_workers, cache_dir, seed, group_by_length: see
            :class:`~lit_prune.data.base.TaskDataModule` (``seed`` also draws the ``max_train_examples`` subset).

    Raises:
        ValueError: a bad setting, checked here, before anything is tokenised: an unknown task, a ``data_dir`` that
            is not a folder or lacks ``train.txt`` / ``valid.txt``, a bad ``max_train_examples``, or a data file
            that is not valid UTF-8, holds no sentence, a line with fewer than 2 columns or a malformed tag (the
            message names the file and the line), or a validation or test tag the training file lacks.
        AssetNotFoundError: no ``data_dir``, no local copy, and the hub switched off or unreachable.
    """

    def __init__(
        self,
        tokenizer: str | None = None,
        task: str = "conll2003",
        data_dir: str | None = None,
        label_all_tokens: bool = False,
        max_train_examples: int | None = None,
        max_seq_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        cache_dir: str | None = None,
        seed: int = 0,
        group_by_length: bool = False,
    ) -> None:
        problems: list[str] = []
        if task not in CONLL_TASKS:
            problems.append(f"task={task!r} is not a named-entity task; allowed: {', '.join(CONLL_TASKS)}")
        if not isinstance(label_all_tokens, bool):
            problems.append(f"label_all_tokens={label_all_tokens!r}: expected true or false")
        if max_train_examples is not None and (isinstance(max_train_examples, bool)
                                               or not isinstance(max_train_examples, int) or max_train_examples < 1):
            problems.append(f"max_train_examples={max_train_examples!r}: expected an integer >= 1, or None for all")
        if not isinstance(seed, int) or isinstance(seed, bool):
            problems.append(f"seed={seed!r}: expected an integer")
        expected = (f"a folder holding {', '.join(REQUIRED_FILES)} (and optionally {SPLIT_FILES['test']}) in CoNLL "
                    "column format, or None to use the assets folder or the hub")
        folder: Path | None = None
        if data_dir is not None:
            if not isinstance(data_dir, (str, os.PathLike)) or not Path(data_dir).expanduser().is_dir():
                problems.append(f"data_dir={data_dir!r}: no such folder; expected {expected}")
            else:
                missing = [name for name in REQUIRED_FILES if not (Path(data_dir).expanduser() / name).is_file()]
                if missing:
                    problems.append(f"data_dir={data_dir!r} lacks {', '.join(missing)}; expected {expected}")
                else:
                    folder = Path(data_dir).expanduser()
        elif task in CONLL_TASKS:
            folder = resolve_data_dir(task, required_files=REQUIRED_FILES)

        sentences: dict[str, list[Sentence]] = {}
        schemes: dict[str, str] = {}
        if folder is not None:
            sentences, schemes, file_problems = _read_folder(folder)
            problems += file_problems
        self._init_reporting(problems, tokenizer=tokenizer, max_seq_length=max_seq_length, batch_size=batch_size,
                             eval_batch_size=eval_batch_size, num_workers=num_workers, cache_dir=cache_dir, seed=seed,
                             group_by_length=group_by_length)
        if folder is None and (status := hub_status()) is not None:
            raise AssetNotFoundError(f"{task}: {describe_data_lookup(task)} and the hub ({HUB_DATASET}) is {status}; "
                                     "set data_dir or LIT_PRUNE_ASSETS.")
        self._task = task
        self.data_dir = folder
        self.label_all_tokens = label_all_tokens
        self.max_train_examples = max_train_examples
        #: the tag scheme each split was found in ("IOB1" or "IOB2"), as splits are read
        self.tag_schemes: dict[str, str] = schemes
        #: per split: sentences, words, truncated words and sentences, words without a sub-token (set by setup)
        self.split_stats: dict[str, dict[str, Any]] = {}
        self._sentences = sentences  # IOB2, whole files; hub splits are read on first use
        self._labels: list[str] | None = label_list(sentences["train"]) if "train" in sentences else None
        for split in sentences:
            self._announce(split)
        self.save_hyperparameters()

    @property
    def task(self) -> str:
        return self._task

    @property
    def source(self) -> str:
        """Where the data comes from: the local folder or the hub dataset."""
        return str(self.data_dir) if self.data_dir is not None else f"hub:{HUB_DATASET}"

    @property
    def tokenizer(self):
        """The tokenizer; a byte-level BPE one (RoBERTa) is reloaded with ``add_prefix_space=True``, so that each
        given word is read as a word of running text."""
        if self._tokenizer is None:
            tokenizer = super().tokenizer
            if _byte_level_without_prefix_space(tokenizer):
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(tokenizer.name_or_path, add_prefix_space=True)
                log.info("%s: loaded the tokenizer with add_prefix_space=True (words are given split)", self.task)
            self._tokenizer = tokenizer
        return self._tokenizer

    # ----------------------------------------------------------------------------------------- labels
    @property
    def label_names(self) -> list[str]:
        """The labels, by id: the IOB2 tags of the training file, ``"O"`` first, the others sorted."""
        if self._labels is None:
            self._labels = label_list(self._split_sentences("train"))
        return list(self._labels)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.label_names)}

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))

    @property
    def tag_scheme(self) -> str | None:
        """``"IOB1"`` when a split read so far was IOB1 (all are used as IOB2), ``"IOB2"`` when none was, ``None``
        before any was read (hub data is read on first use)."""
        if not self.tag_schemes:
            return None
        return "IOB1" if "IOB1" in self.tag_schemes.values() else "IOB2"

    # ---------------------------------------------------------------------------------------- loading
    def has_split(self, split: str) -> bool:
        """Whether the data has ``split`` ("train", "validation", "test"); the hub dataset has all three."""
        return split in SPLIT_FILES and (self.data_dir is None or (self.data_dir / SPLIT_FILES[split]).is_file())

    def _split_sentences(self, split: str) -> list[Sentence]:
        """A whole split's sentences with IOB2 tags (hub splits are read, converted and checked on first use)."""
        if split not in self._sentences:
            if self.data_dir is not None:
                raise ValueError(f"{self.task}: no {split!r} split: {self.data_dir} holds no {SPLIT_FILES[split]}")
            sentences = _hub_split(split)
            self.tag_schemes[split] = detect_tag_scheme(sentences)
            sentences = [(words, iob1_to_iob2(tags)) for words, tags in sentences]
            if split != "train":
                labels = set(self.label_names)
                unknown = sorted({tag for _, tags in sentences for tag in tags} - labels)
                if unknown:
                    raise ValueError(f"{self.task}: hub {HUB_DATASET} {split}: tag(s) {', '.join(unknown)} are not "
                                     f"among the training labels ({', '.join(self.label_names)})")
            self._sentences[split] = sentences
            self._announce(split)
        return self._sentences[split]

    def tagged_sentences(self, split: str) -> list[Sentence]:
        """The sentences of a split, as ``(words, IOB2 tags)``, in file order: what the split's examples are made
        of (one each; for "train", the ``max_train_examples`` subset)."""
        sentences = self._split_sentences(split)
        keep = self.max_train_examples if split == "train" else None
        if keep is not None and keep < len(sentences):
            chosen = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(self.seed))[:keep]
            sentences = [sentences[i] for i in sorted(chosen.tolist())]
        return sentences

    def _announce(self, split: str) -> None:
        scheme = self.tag_schemes[split]
        where = self.data_dir / SPLIT_FILES[split] if self.data_dir is not None else f"hub:{HUB_DATASET}/{split}"
        log.info("%s %s: %d sentences from %s; tags in %s%s", self.task, split, len(self._sentences[split]), where,
                 scheme, " (converted to IOB2)" if scheme == "IOB1" else "")

    def _tokenized(self, split: str):
        import datasets

        if self.data_dir is not None:
            origin = file_fingerprint(self.data_dir / SPLIT_FILES[split])
        else:
            origin = f"{HUB_DATASET}@{HUB_REVISION}/{split}"
        subsample = self.max_train_examples if split == "train" else None
        key = {"kind": "conll", "task": self.task, "split": split, "origin": origin,
               "tokenizer": tokenizer_fingerprint(self.tokenizer), "max_seq_length": self.max_seq_length,
               "label_all_tokens": self.label_all_tokens, "labels": self.label_names, "subsample": subsample,
               "seed": self.seed if subsample else None, "version": _CACHE_VERSION}

        def build():
            sentences = self.tagged_sentences(split)
            label2id = self.label2id
            continuation = None
            if self.label_all_tokens:  # B-X -> I-X where the labels have it; every other label stays
                continuation = {i: label2id.get("I-" + name[2:], i) if name.startswith("B-") else i
                                for name, i in label2id.items()}
            encoded = self.tokenizer([words for words, _ in sentences], is_split_into_words=True, truncation=True,
                                     max_length=self.max_seq_length)
            data = {name: encoded[name] for name in ("input_ids", "attention_mask", "token_type_ids") if name in encoded}
            data["labels"], data["word_ids"] = [], []
            stats = {"sentences": len(sentences), "words": 0, "truncated_words": 0, "truncated_sentences": 0,
                     "words_without_tokens": 0, "examples_without_tokens": []}
            for i, (words, tags) in enumerate(sentences):
                word_ids = encoded.word_ids(i)
                data["labels"].append(_token_labels(word_ids, [label2id[tag] for tag in tags], continuation))
                data["word_ids"].append([NO_WORD if word is None else word for word in word_ids])
                kept = {word for word in word_ids if word is not None}
                last = max(kept, default=-1)
                cut = len(encoded["input_ids"][i]) >= self.max_seq_length
                truncated = len(words) - 1 - last if cut else 0
                stats["words"] += len(words)
                stats["truncated_words"] += truncated
                stats["truncated_sentences"] += truncated > 0
                empty = [words[j] for j in range(len(words) - truncated) if j not in kept]
                stats["words_without_tokens"] += len(empty)
                stats["examples_without_tokens"] += empty[:max(0, 5 - len(stats["examples_without_tokens"]))]
            info = datasets.DatasetInfo(description=json.dumps({"lit_prune_conll_stats": stats}))
            return datasets.Dataset.from_dict(data, info=info)

        return self.cached(key, build)

    def _wanted_splits(self, stage: str | None) -> list[str]:
        if stage in ("test", "predict"):
            if not self.has_split("test"):
                raise ValueError(f"{self.task}: no test split: {self.data_dir} holds no {SPLIT_FILES['test']}; use "
                                 f"`validate` for the validation scores, not {stage!r}.")
            return ["test"]
        return {"validate": list(self.val_split_names)}.get(stage or "fit", ["train", *self.val_split_names])

    def setup(self, stage: str | None = None) -> None:
        for split in self._load_splits(stage):
            dataset = self.datasets[split]
            stats = json.loads(dataset.info.description or "{}").get("lit_prune_conll_stats", {})
            self.split_stats[split] = stats
            log.info("%s %s: %d sentences (%s)", self.task, split, len(dataset), self.source)
            if stats.get("truncated_words"):
                sentences = stats["truncated_sentences"]
                warnings.warn(f"{self.task} {split}: {stats['truncated_words']} of {stats['words']} words, in "
                              f"{sentences} sentence{'s' if sentences != 1 else ''}, lie beyond max_seq_length="
                              f"{self.max_seq_length} tokens and were truncated away: they are neither trained on "
                              "nor scored (raise max_seq_length to keep them)")
            if stats.get("words_without_tokens"):
                log.info("%s %s: %d words give no token with this tokenizer and carry no label (e.g. %s)", self.task,
                         split, stats["words_without_tokens"], stats["examples_without_tokens"])
        if self.max_train_examples is not None and "train" in self.datasets:
            log.info("%s: training on a subset of %d sentences (max_train_examples=%d, seed %d)", self.task,
                     len(self.datasets["train"]), self.max_train_examples, self.seed)

    # ---------------------------------------------------------------------------------------- batches
    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pad to the longest example of the batch (dynamic padding, on the right), all as int64 ``[batch, longest]``:
        ``input_ids`` with the pad id, ``attention_mask`` and ``token_type_ids`` with 0, ``labels`` with -100,
        ``word_ids`` with -1."""
        longest = max(len(f["input_ids"]) for f in features)
        pad_id = self.tokenizer.pad_token_id
        pad_id = 0 if pad_id is None else pad_id
        batch: dict[str, torch.Tensor] = {}
        for name, pad in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0),
                          ("labels", IGNORE_INDEX), ("word_ids", NO_WORD)):
            if name in features[0]:
                batch[name] = torch.tensor([list(f[name]) + [pad] * (longest - len(f[name])) for f in features],
                                           dtype=torch.long)
        return batch

    def test_dataloader(self) -> DataLoader:
        """The test split (``test.txt``; it has labels, so test scores can be computed)."""
        return self._loader(self.split_dataset("test"), self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.split_dataset("test"), self.eval_batch_size, shuffle=False)


def _read_folder(folder: Path) -> tuple[dict[str, list[Sentence]], dict[str, str], list[str]]:
    """Read a data folder's files: IOB2 sentences and the tag scheme found, per split, and the problems found (a
    file that does not parse; a validation or test tag that the training file lacks)."""
    sentences: dict[str, list[Sentence]] = {}
    schemes: dict[str, str] = {}
    starts: dict[str, list[int]] = {}
    problems: list[str] = []
    for split, name in SPLIT_FILES.items():
        path = folder / name
        if split == "test" and not path.is_file():
            continue
        try:
            raw, starts[split] = _parse_conll(path)
        except ValueError as error:
            problems.append(str(error))
            continue
        schemes[split] = detect_tag_scheme(raw)
        sentences[split] = [(words, iob1_to_iob2(tags)) for words, tags in raw]
    if "train" in sentences:
        labels = set(label_list(sentences["train"]))
        for split in ("validation", "test"):
            unknown: dict[str, int] = {}  # tag -> line of its first use
            for (_, tags), start in zip(sentences.get(split, []), starts.get(split, [])):
                for offset, tag in enumerate(tags):
                    if tag not in labels:
                        unknown.setdefault(tag, start + offset)
            if unknown:
                found = ", ".join(f"{tag!r} (first at line {line})" for tag, line in unknown.items())
                problems.append(f"CoNLL file {folder / SPLIT_FILES[split]}: tag(s) {found} are not among the labels "
                                f"of {folder / SPLIT_FILES['train']} ({', '.join(sorted(labels, key=_label_order))}); "
                                "a model trained on it could never predict them")
    return sentences, schemes, problems


def _label_order(tag: str) -> tuple[bool, str]:
    return tag != "O", tag


__all__ = ["CONLL_TASKS", "HUB_DATASET", "IGNORE_INDEX", "TokenClassificationDataModule", "detect_tag_scheme",
           "iob1_to_iob2", "label_list", "read_conll", "starts_inside"]
