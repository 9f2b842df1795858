"""Unlabelled sentences for pruning sentence-embedding models (all-MiniLM-L6-v2 and the like) without labels, and
the sentence-pair similarity set their embeddings are evaluated on.

Two inputs, each given by name or by file:

* ``sentences``, the calibration sentences the "train" split holds (one example per sentence, no labels): a UTF-8
  text file with one sentence per line, or a GLUE task whose training split gives its sentences (both sentence
  columns of a pair task, first then second per example, exact duplicates dropped).
* ``evaluation``, the sentence pairs with gold similarity scores the "validation" split holds: ``"stsb"`` (GLUE
  STS-B dev, 1,500 pairs scored 0..5) or a TSV file laid out like STS-B's ``dev.tsv`` (a tab-separated header with
  ``sentence1``, ``sentence2`` and ``score``, quoting off).

GLUE data is looked for in ``data_dir/<FOLDER>/`` or ``$LIT_PRUNE_ASSETS/data/glue/<FOLDER>/`` (``STS-B``, ``MRPC``,
...), else in the hub dataset ``nyu-mll/glue``; files given by path never need the hub.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch

from lit_prune.assets import AssetNotFoundError, describe_data_lookup, hub_status, resolve_data_dir
from lit_prune.data.base import TaskDataModule, file_fingerprint, tokenizer_fingerprint
from lit_prune.data.glue import GLUE_TASKS, HUB_DATASET, GlueTask, _hub_split, get_glue_task, read_glue_tsv

log = logging.getLogger(__name__)

#: the columns an evaluation TSV must have (STS-B's dev.tsv names them so)
SIMILARITY_COLUMNS: tuple[str, str, str] = ("sentence1", "sentence2", "score")
#: bump when the tokenised layout changes, so old cache entries are not reused
_CACHE_VERSION = 1


# ------------------------------------------------------------------------------------------------ reading
def _names_a_file(value: str, suffix: str) -> bool:
    """Whether a setting's value is read as a file: it exists as one, holds a path separator or ends in ``suffix``."""
    separators = {"/", os.sep, os.altsep} - {None}
    return Path(value).expanduser().is_file() or any(s in value for s in separators) or value.endswith(suffix)


def _read_text(path: Path, setting: str, expected: str) -> str:
    """The UTF-8 text of the file a setting names (a leading byte-order mark dropped).

    Raises:
        ValueError: no such file, a folder, or not valid UTF-8 (the message gives the byte offset).
    """
    if not path.exists():
        raise ValueError(f"{setting}={str(path)!r}: no such file ({path.resolve()}); expected {expected}")
    if not path.is_file():
        raise ValueError(f"{setting}={str(path)!r} is a folder; expected {expected}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{setting}={str(path)!r} is not valid UTF-8: byte offset {error.start} "
                         f"(0x{data[error.start]:02x}: {error.reason}); expected {expected}") from None
    return text.removeprefix("\ufeff")


def read_sentence_file(path: str | os.PathLike, setting: str = "sentences") -> list[str]:
    """The sentences of a UTF-8 text file, one per line: surrounding whitespace stripped, blank lines skipped.

    Lines end at ``\\n``, ``\\r\\n`` or ``\\r`` only (not at the other characters ``str.splitlines`` breaks on, which
    may sit inside a sentence). Duplicates are kept: the file is taken as given.

    Args:
        path: the text file.
        setting: the name of the setting the path came from, for error messages.

    Raises:
        ValueError: no such file, not valid UTF-8 (the message gives the byte offset), or no non-blank line.
    """
    expected = "a UTF-8 text file with one sentence per line"
    file = Path(path).expanduser()
    text = _read_text(file, setting, expected)
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    sentences = [line.strip() for line in lines if line.strip()]
    if not sentences:
        raise ValueError(f"{setting}={str(path)!r} holds no sentences (no non-blank line); expected {expected}")
    return sentences


def read_similarity_tsv(path: str | os.PathLike, setting: str = "evaluation") -> dict[str, list]:
    """Read a sentence-pair similarity TSV laid out like STS-B's ``dev.tsv`` into ``text_a``, ``text_b`` and
    ``label`` (the float ``score``).

    The file is UTF-8 and tab-separated with quoting off (sentences hold unbalanced quotes); its first non-blank
    line is a header naming at least ``sentence1``, ``sentence2`` and ``score``; other columns are ignored. Every
    non-blank row must have the header's field count (a stray tab in a sentence shifts the columns) and a finite
    number as its score; the score's range is not checked (a correlation does not depend on it).

    Args:
        path: the TSV file.
        setting: the name of the setting the path came from, for error messages.

    Raises:
        ValueError: no such file, not valid UTF-8, no header with the three columns, a row with another field count
            or a score that is not a number (the message gives the line number), or no rows.
    """
    expected = f"a tab-separated file whose header names {', '.join(SIMILARITY_COLUMNS)} (STS-B's dev.tsv layout)"
    file = Path(path).expanduser()
    name = f"{setting}={str(path)!r}"
    reader = csv.reader(io.StringIO(_read_text(file, setting, expected), newline=""), delimiter="\t",
                        quoting=csv.QUOTE_NONE)
    header: list[str] | None = None
    columns: dict[str, list] = {"text_a": [], "text_b": [], "label": []}
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip() for cell in row]
            missing = [column for column in SIMILARITY_COLUMNS if column not in header]
            if missing:
                raise ValueError(f"{name}: the header (line {reader.line_num}) lacks the column(s) {missing}; "
                                 f"it has {header}. Expected {expected}")
            first, second, score = (header.index(column) for column in SIMILARITY_COLUMNS)
            continue
        if len(row) != len(header):
            raise ValueError(f"{name}: line {reader.line_num} has {len(row)} fields, the header {len(header)} "
                             "(a tab inside a sentence?); expected one tab-separated field per header column")
        try:
            value = float(row[score])
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ValueError(f"{name}: line {reader.line_num}: score {row[score]!r} is not a finite number")
        columns["text_a"].append(row[first])
        columns["text_b"].append(row[second])
        columns["label"].append(value)
    if header is None:
        raise ValueError(f"{name} is empty; expected {expected}")
    if not columns["label"]:
        raise ValueError(f"{name} holds a header but no rows; expected one sentence pair per line after it")
    return columns


def glue_sentences(columns: dict[str, list]) -> list[str]:
    """The sentences of GLUE columns (``text_a`` and, for pair tasks, ``text_b``), first then second sentence of
    each example, surrounding whitespace stripped, blank ones skipped, exact duplicates dropped (the first kept)."""
    sides = [columns["text_a"]] + ([columns["text_b"]] if "text_b" in columns else [])
    sentences = (sentence.strip() for example in zip(*sides) for sentence in example)
    return list(dict.fromkeys(sentence for sentence in sentences if sentence))


# ----------------------------------------------------------------------------------------------- module
class SentenceDataModule(TaskDataModule):
    """Calibration sentences and a similarity evaluation set for sentence-embedding models, tokenised with the
    model's tokenizer, with dynamic padding.

    Splits: "train" holds one example per calibration sentence (``input_ids``, ``attention_mask``, and
    ``token_type_ids`` where the tokenizer makes them; no labels), so :meth:`calibration_sample` draws from it as
    from any training split. "validation" holds one example per sentence pair: the first sentence's ``input_ids``,
    ``attention_mask`` (, ``token_type_ids``), the second's as ``pair_input_ids``, ``pair_attention_mask``
    (, ``pair_token_type_ids``), and the gold score as ``labels``. Each sentence is tokenised on its own (a
    bi-encoder embeds them separately), truncated to ``max_seq_length``.

    Args:
        tokenizer: tokenizer folder, assets name or hub id. Usually linked to the model's ``name_or_path``.
        sentences: the calibration sentences: a path to a UTF-8 text file with one sentence per line (blank lines
            skipped, whitespace stripped, duplicates kept), or a GLUE task name, whose training split gives its
            sentences (pair tasks: both columns, first then second per example; exact duplicates dropped). A value
            that is an existing file, holds a path separator or ends in ``.txt`` is a file; any other a task name.
        evaluation: the similarity set: ``"stsb"`` (GLUE STS-B dev) or a path to a TSV file laid out like STS-B's
            ``dev.tsv`` (see :func:`read_similarity_tsv`). A value that is an existing file, holds a path separator
            or ends in ``.tsv`` is a file.
        max_train_sentences: keep a random subset of this many calibration sentences (drawn with ``seed``, kept in
            their original order); ``None`` keeps all.
        data_dir: the GLUE folder, laid out as ``<FOLDER>/train.tsv``, ``<FOLDER>/dev.tsv`` (``STS-B``, ``MRPC``,
            ...); default: ``$LIT_PRUNE_ASSETS/data/glue/``, else the hub dataset ``nyu-mll/glue``. Only read for
            the settings that name GLUE tasks.
        max_seq_length, batch_size, eval_batch_size, num_workers, cache_dir, seed, group_by_length: see
            :class:`~lit_prune.data.base.TaskDataModule` (``seed`` also draws the ``max_train_sentences`` subset).

    Raises:
        ValueError: a bad setting, checked here, before anything is tokenised: a text or evaluation file that is
            missing, not UTF-8, empty or malformed; an unknown GLUE task; a bad ``max_train_sentences``; a
            ``data_dir`` that is not a folder or lacks a file the settings need.
        AssetNotFoundError: a GLUE task with no local copy while the hub is switched off or unreachable.
    """

    def __init__(
        self,
        tokenizer: str | None = None,
        sentences: str = "stsb",
        evaluation: str = "stsb",
        max_train_sentences: int | None = None,
        data_dir: str | None = None,
        max_seq_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        cache_dir: str | None = None,
        seed: int = 0,
        group_by_length: bool = False,
    ) -> None:
        problems: list[str] = []
        if max_train_sentences is not None and (isinstance(max_train_sentences, bool)
                                                or not isinstance(max_train_sentences, int) or max_train_sentences < 1):
            problems.append(f"max_train_sentences={max_train_sentences!r}: expected an integer >= 1, or None for all")
        if not isinstance(seed, int) or isinstance(seed, bool):
            problems.append(f"seed={seed!r}: expected an integer")
        glue_root = None
        if data_dir is not None:
            if not isinstance(data_dir, (str, os.PathLike)) or not Path(data_dir).expanduser().is_dir():
                problems.append(f"data_dir={data_dir!r}: no such folder; expected the GLUE folder (<FOLDER>/train.tsv, "
                                "<FOLDER>/dev.tsv, ...), or None to use the assets folder or the hub")
            else:
                glue_root = Path(data_dir).expanduser()

        self.sentences_file: Path | None = None
        self.sentences_task: GlueTask | None = None
        self.evaluation_file: Path | None = None
        if isinstance(sentences, os.PathLike) or (isinstance(sentences, str) and _names_a_file(sentences, ".txt")):
            try:
                read_sentence_file(os.fspath(sentences), setting="sentences")
                self.sentences_file = Path(sentences).expanduser()
            except ValueError as error:
                problems.append(str(error) + ("" if Path(sentences).expanduser().exists() else
                                              " (a value with a path separator or ending in .txt is read as a "
                                              "text file; anything else names a GLUE task)"))
        elif isinstance(sentences, str):
            try:
                self.sentences_task = get_glue_task(sentences, setting="sentences")
            except ValueError as error:
                problems.append(str(error).rstrip(".") + "; or a path to a UTF-8 text file with one sentence per line "
                                "(a value with a path separator or ending in .txt)")
        else:
            problems.append(f"sentences={sentences!r}: expected a GLUE task name or a path to a UTF-8 text file")

        if isinstance(evaluation, os.PathLike) or (isinstance(evaluation, str) and _names_a_file(evaluation, ".tsv")):
            try:
                read_similarity_tsv(os.fspath(evaluation), setting="evaluation")
                self.evaluation_file = Path(evaluation).expanduser()
            except ValueError as error:
                problems.append(str(error))
        elif evaluation != "stsb":
            problems.append(f"evaluation={evaluation!r}: expected 'stsb' (GLUE STS-B dev) or a path to a TSV file "
                            f"with {', '.join(SIMILARITY_COLUMNS)} columns (a value with a path separator or ending "
                            "in .tsv)")

        # GLUE folders: data_dir's, checked with the other settings; the assets folder's, checked below
        if glue_root is not None:
            for setting, task, file in self._glue_needs():
                if not (glue_root / task.folder / file).is_file():
                    problems.append(f"data_dir={data_dir!r} lacks {task.folder}/{file}, which {setting}="
                                    f"{task.name!r} needs; expected the GLUE folder layout <FOLDER>/{file}")
        self._init_reporting(problems, tokenizer=tokenizer, max_seq_length=max_seq_length, batch_size=batch_size,
                             eval_batch_size=eval_batch_size, num_workers=num_workers, cache_dir=cache_dir, seed=seed,
                             group_by_length=group_by_length)
        self.max_train_sentences = max_train_sentences
        self.data_dir = glue_root
        #: the folder each GLUE task in use is read from (``None``: the hub)
        self.glue_dirs: dict[str, Path | None] = {task.name: self._find_glue_dir(task, glue_root, setting, file)
                                                  for setting, task, file in self._glue_needs()}
        self.save_hyperparameters()

    @property
    def task(self) -> str:
        return "embedding"

    def _glue_needs(self) -> list[tuple[str, GlueTask, str]]:
        """The GLUE files the settings read: (setting, task, file name)."""
        needs = []
        if self.sentences_task is not None:
            needs.append(("sentences", self.sentences_task, "train.tsv"))
        if self.evaluation_file is None:
            needs.append(("evaluation", GLUE_TASKS["stsb"], "dev.tsv"))
        return needs

    @staticmethod
    def _find_glue_dir(task: GlueTask, root: Path | None, setting: str, file: str) -> Path | None:
        if root is not None:
            return root / task.folder
        folder = resolve_data_dir("glue", task.folder, required_files=(file,))
        if folder is None and (status := hub_status()) is not None:
            raise AssetNotFoundError(f"{setting}={task.name!r}: GLUE {task.name}: "
                                     f"{describe_data_lookup('glue', task.folder)} and the hub ({HUB_DATASET}) is "
                                     f"{status}; set data_dir or LIT_PRUNE_ASSETS, or give a file.")
        return folder

    def _glue_origin(self, task: GlueTask, file: str, split: str) -> str:
        folder = self.glue_dirs[task.name]
        return file_fingerprint(folder / file) if folder is not None else f"{HUB_DATASET}/{task.name}/{split}"

    @property
    def source(self) -> str:
        """Where the data comes from: the sentences' and the evaluation pairs' file, GLUE folder or hub dataset."""
        def glue(task: GlueTask) -> str:
            folder = self.glue_dirs[task.name]
            return f"GLUE {task.name} ({folder if folder is not None else f'hub:{HUB_DATASET}'})"

        sentences = str(self.sentences_file) if self.sentences_file is not None else glue(self.sentences_task)
        evaluation = str(self.evaluation_file) if self.evaluation_file is not None else glue(GLUE_TASKS["stsb"])
        return f"sentences: {sentences}; evaluation: {evaluation}"

    # ---------------------------------------------------------------------------------------- loading
    def train_sentences(self) -> list[str]:
        """The calibration sentences, untokenised: the file's or the GLUE task's, then the ``max_train_sentences``
        subset (drawn with ``seed``, in the original order)."""
        if self.sentences_file is not None:
            sentences = read_sentence_file(self.sentences_file, setting="sentences")
        else:
            task = self.sentences_task
            folder = self.glue_dirs[task.name]
            columns = (read_glue_tsv(folder / "train.tsv", task, labelled=True) if folder is not None
                       else _hub_split(task, "train"))
            sentences = glue_sentences(columns)
        n, keep = len(sentences), self.max_train_sentences
        if keep is not None and keep < n:
            chosen = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))[:keep]
            sentences = [sentences[i] for i in sorted(chosen.tolist())]
        return sentences

    def evaluation_pairs(self) -> dict[str, list]:
        """The evaluation pairs, untokenised: ``text_a``, ``text_b`` and ``label`` (the float gold score)."""
        if self.evaluation_file is not None:
            return read_similarity_tsv(self.evaluation_file, setting="evaluation")
        stsb = GLUE_TASKS["stsb"]
        folder = self.glue_dirs[stsb.name]
        columns = read_glue_tsv(folder / "dev.tsv", stsb, labelled=True) if folder is not None \
            else _hub_split(stsb, "validation")
        return {**columns, "label": [float(value) for value in columns["label"]]}

    def _encode(self, texts: list[str], prefix: str = "") -> dict[str, list]:
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_seq_length)
        return {prefix + name: encoded[name] for name in ("input_ids", "attention_mask", "token_type_ids")
                if name in encoded}

    def _tokenized(self, split: str):
        import datasets

        if split == "train":
            origin = (file_fingerprint(self.sentences_file) if self.sentences_file is not None
                      else self._glue_origin(self.sentences_task, "train.tsv", "train"))
            source = "file" if self.sentences_file is not None else f"glue:{self.sentences_task.name}"
            subsample = self.max_train_sentences
        else:
            origin = (file_fingerprint(self.evaluation_file) if self.evaluation_file is not None
                      else self._glue_origin(GLUE_TASKS["stsb"], "dev.tsv", "validation"))
            source = "file" if self.evaluation_file is not None else "glue:stsb"
            subsample = None
        key = {"kind": "sentences", "split": split, "source": source, "origin": origin,
               "tokenizer": tokenizer_fingerprint(self.tokenizer), "max_seq_length": self.max_seq_length,
               "subsample": subsample, "seed": self.seed if subsample else None, "version": _CACHE_VERSION}

        def build():
            if split == "train":
                return datasets.Dataset.from_dict(self._encode(self.train_sentences()))
            pairs = self.evaluation_pairs()
            data = {**self._encode(pairs["text_a"]), **self._encode(pairs["text_b"], prefix="pair_"),
                    "labels": [float(value) for value in pairs["label"]]}
            return datasets.Dataset.from_dict(data)

        return self.cached(key, build)

    def _wanted_splits(self, stage: str | None) -> list[str]:
        if stage in ("test", "predict"):
            raise ValueError(f"{type(self).__name__}: no test split: the embedding data has 'train' (calibration "
                             f"sentences) and 'validation' (similarity pairs); use `validate` for the similarity "
                             f"scores, not {stage!r}.")
        return {"validate": list(self.val_split_names)}.get(stage or "fit", ["train", *self.val_split_names])

    def setup(self, stage: str | None = None) -> None:
        for split in self._load_splits(stage):
            what = "sentences" if split == "train" else "sentence pairs"
            log.info("embedding %s: %d %s (%s)", split, len(self.datasets[split]), what, self.source)
        if self.max_train_sentences is not None and "train" in self.datasets:
            log.info("embedding: calibrating on a subset of %d sentences (max_train_sentences=%d, seed %d)",
                     len(self.datasets["train"]), self.max_train_sentences, self.seed)

    # ---------------------------------------------------------------------------------------- batches
    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pad ids and masks to the longest sentence of the batch (dynamic padding), each side of a pair to its own
        longest; ``labels`` (pairs only) as float32."""
        pad_id = self.tokenizer.pad_token_id
        pad_id = 0 if pad_id is None else pad_id
        batch: dict[str, torch.Tensor] = {}
        for prefix in ("", "pair_"):
            if prefix + "input_ids" not in features[0]:
                continue
            longest = max(len(f[prefix + "input_ids"]) for f in features)
            for name, pad in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0)):
                name = prefix + name
                if name in features[0]:
                    batch[name] = torch.tensor([list(f[name]) + [pad] * (longest - len(f[name])) for f in features],
                                               dtype=torch.long)
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.float32)
        return batch

    def average_sequence_length(self, split: str | None = None) -> float:
        """Average tokenised length (no padding) of a split's sentences: the ``s`` of the FLOPs accounting.

        Defaults to the evaluation split, where both sentences of every pair count (a bi-encoder encodes each on
        its own); "train" averages its sentences.
        """
        dataset = self.split_dataset(split or self.val_split_names[0])
        lengths = [len(ids) for ids in dataset["input_ids"]]
        if "pair_input_ids" in dataset.column_names:
            lengths += [len(ids) for ids in dataset["pair_input_ids"]]
        if not lengths:
            raise ValueError(f"{self.task}: split {split or self.val_split_names[0]!r} is empty")
        return float(sum(lengths) / len(lengths))


__all__ = ["SIMILARITY_COLUMNS", "SentenceDataModule", "glue_sentences", "read_sentence_file", "read_similarity_tsv"]
