"""GLUE: the nine tasks, read from the standard GLUE TSV distribution or from the hub.

Local files are looked for in ``data_dir`` or ``$LIT_PRUNE_ASSETS/data/glue/<FOLDER>/`` (``SST-2``, ``MRPC``, ...),
laid out as the GLUE distribution ships them: ``train.tsv``, ``dev.tsv`` (MNLI: ``dev_matched.tsv`` and
``dev_mismatched.tsv``) and unlabelled ``test.tsv``. When no local copy exists, the hub dataset ``nyu-mll/glue``
is used. Labels follow the hub's order (MNLI: entailment, neutral, contradiction), so both sources agree.
"""

from __future__ import annotations

import csv
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from lit_prune.assets import AssetNotFoundError, describe_data_lookup, hub_status, resolve_data_dir
from lit_prune.data.base import TaskDataModule, file_fingerprint, tokenizer_fingerprint

log = logging.getLogger(__name__)

GlueTaskName = Literal["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"]
HUB_DATASET = "nyu-mll/glue"
#: the share of malformed rows (wrong field count) tolerated in a file before it is rejected
MAX_MALFORMED_FRACTION = 0.01


@dataclass(frozen=True)
class GlueTask:
    """How one GLUE task is stored and scored.

    ``text_columns`` / ``label_column`` name TSV header columns, or are integer positions for header-less files
    (CoLA's train and dev). ``label_names`` maps text labels to indices (empty: labels are already integers;
    regression: floats). ``main_metric`` is the metric the task is usually reported by.
    """

    name: str
    folder: str
    text_columns: tuple[str | int, ...]
    label_column: str | int
    num_labels: int
    metrics: tuple[str, ...]
    main_metric: str
    hub_text_columns: tuple[str, ...]
    label_names: tuple[str, ...] = ()
    header: bool = True
    test_text_columns: tuple[str, ...] | None = None
    eval_files: dict[str, str] = field(default_factory=lambda: {"validation": "dev.tsv"})
    test_file: str = "test.tsv"

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1


GLUE_TASKS: dict[str, GlueTask] = {
    task.name: task
    for task in (
        GlueTask("cola", "CoLA", (3,), 1, 2, ("mcc", "accuracy"), "mcc", ("sentence",), header=False,
                 test_text_columns=("sentence",)),
        GlueTask("sst2", "SST-2", ("sentence",), "label", 2, ("accuracy",), "accuracy", ("sentence",)),
        GlueTask("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", 2, ("accuracy", "f1"), "f1",
                 ("sentence1", "sentence2")),
        GlueTask("stsb", "STS-B", ("sentence1", "sentence2"), "score", 1, ("pearson", "spearman"), "pearson",
                 ("sentence1", "sentence2")),
        GlueTask("qqp", "QQP", ("question1", "question2"), "is_duplicate", 2, ("accuracy", "f1"), "f1",
                 ("question1", "question2")),
        GlueTask("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label", 3, ("accuracy",), "accuracy",
                 ("premise", "hypothesis"), label_names=("entailment", "neutral", "contradiction"),
                 eval_files={"validation_matched": "dev_matched.tsv", "validation_mismatched": "dev_mismatched.tsv"},
                 test_file="test_matched.tsv"),
        GlueTask("qnli", "QNLI", ("question", "sentence"), "label", 2, ("accuracy",), "accuracy",
                 ("question", "sentence"), label_names=("entailment", "not_entailment")),
        GlueTask("rte", "RTE", ("sentence1", "sentence2"), "label", 2, ("accuracy",), "accuracy",
                 ("sentence1", "sentence2"), label_names=("entailment", "not_entailment")),
        GlueTask("wnli", "WNLI", ("sentence1", "sentence2"), "label", 2, ("accuracy",), "accuracy",
                 ("sentence1", "sentence2")),
    )
}
assert set(GLUE_TASKS) == set(get_args(GlueTaskName))


def get_glue_task(name: str, setting: str = "task") -> GlueTask:
    """The :class:`GlueTask` called ``name``; a clear error for anything else."""
    if name not in GLUE_TASKS:
        raise ValueError(f"{setting}={name!r} is not a GLUE task; allowed: {', '.join(GLUE_TASKS)}.")
    return GLUE_TASKS[name]


# ------------------------------------------------------------------------------------------------ reading
def read_glue_tsv(path: Path, task: GlueTask, labelled: bool) -> dict[str, list]:
    """Read one GLUE TSV file into columns ``text_a`` (, ``text_b``) and, if ``labelled``, ``label``.

    GLUE files are read with quoting off: sentences contain unbalanced quotes. Rows whose field count differs
    from the header's are skipped with a warning (QQP ships a few); more than 1% of them is an error.

    Raises:
        ValueError: empty file, missing columns, unknown labels, or too many malformed rows.
    """
    # utf-8-sig: MRPC's files start with a byte-order mark that would otherwise stick to the first header name
    with open(path, encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    rows = [row for row in rows if row and any(cell.strip() for cell in row)]
    has_header = task.header or not labelled  # unlabelled test files always have a header
    if len(rows) <= int(has_header):
        raise ValueError(f"GLUE {task.name}: {path} holds no data rows.")

    if has_header:
        header, body = rows[0], rows[1:]
        text_columns = task.test_text_columns if not labelled and task.test_text_columns else task.text_columns
        wanted = list(text_columns) + ([task.label_column] if labelled else [])
        missing = [name for name in wanted if name not in header]
        if missing:
            raise ValueError(f"GLUE {task.name}: {path} lacks the column(s) {missing}; it has {header}. "
                             f"Expected the standard GLUE layout for {task.folder}.")
        index = {name: header.index(name) for name in wanted}
        width = len(header)
    else:
        body = rows
        index = {name: name for name in [*task.text_columns, task.label_column]}
        width = len(body[0])
        if width <= max(int(i) for i in index.values()):
            raise ValueError(f"GLUE {task.name}: {path} has {width} columns per row; expected at least "
                             f"{max(int(i) for i in index.values()) + 1} (header-less GLUE layout).")

    good = [row for row in body if len(row) == width]
    malformed = len(body) - len(good)
    if malformed:
        message = f"GLUE {task.name}: {path}: {malformed} of {len(body)} rows have a field count other than {width}"
        if malformed > MAX_MALFORMED_FRACTION * len(body):
            raise ValueError(message + f" (more than {MAX_MALFORMED_FRACTION:.0%}); the file looks malformed.")
        warnings.warn(message + "; skipping them")
    if not good:
        raise ValueError(f"GLUE {task.name}: {path} holds no well-formed rows.")

    text_columns = task.test_text_columns if not labelled and task.test_text_columns else task.text_columns
    columns: dict[str, list] = {"text_a": [row[index[text_columns[0]]] for row in good]}
    if len(text_columns) > 1:
        columns["text_b"] = [row[index[text_columns[1]]] for row in good]
    if labelled:
        columns["label"] = [_parse_label(row[index[task.label_column]], task, path) for row in good]
    return columns


def _parse_label(value: str, task: GlueTask, path: Path) -> int | float:
    value = value.strip()
    try:
        if task.is_regression:
            return float(value)
        if task.label_names:
            return task.label_names.index(value)
        label = int(value)
    except ValueError:
        allowed = task.label_names or ("a number" if task.is_regression else range(task.num_labels))
        raise ValueError(f"GLUE {task.name}: {path}: label {value!r} is not one of {list(allowed)}.") from None
    if not 0 <= label < task.num_labels:
        raise ValueError(f"GLUE {task.name}: {path}: label {label} is outside 0..{task.num_labels - 1}.")
    return label


def _hub_split(task: GlueTask, split: str) -> dict[str, list]:
    import datasets

    hub_split = {"validation": "validation", "test": "test"}.get(split, split)
    if task.name == "mnli" and split == "test":
        hub_split = "test_matched"
    data = datasets.load_dataset(HUB_DATASET, task.name, split=hub_split)
    columns = {"text_a": list(data[task.hub_text_columns[0]])}
    if len(task.hub_text_columns) > 1:
        columns["text_b"] = list(data[task.hub_text_columns[1]])
    if split != "test":
        columns["label"] = list(data["label"])
    return columns


# ----------------------------------------------------------------------------------------------- module
class GlueDataModule(TaskDataModule):
    """A GLUE task, tokenised with the model's tokenizer, with dynamic padding.

    Args:
        task: the GLUE task.
        data_dir: folder with the task's TSV files; default: ``$LIT_PRUNE_ASSETS/data/glue/<FOLDER>/``, else the
            hub dataset ``nyu-mll/glue``.
        max_train_samples: use a random subset of this many training examples (drawn with ``seed``), e.g. to
            keep a recipe within a time budget; ``None`` uses all.
        **kwargs: tokenizer (train.py links it to ``model.name_or_path``), max_seq_length (longer pairs are
            truncated), batch sizes, workers, cache, seed (of the training subsample), group_by_length: see
            :class:`~lit_prune.data.base.TaskDataModule`.
    """

    def __init__(
        self,
        task: GlueTaskName = "sst2",
        data_dir: str | None = None,
        max_train_samples: int | None = None,
        **kwargs: Any,
    ) -> None:
        problems = []
        if task not in GLUE_TASKS:
            problems.append(f"task={task!r} is not a GLUE task; allowed: {', '.join(GLUE_TASKS)}")
        if max_train_samples is not None and (not isinstance(max_train_samples, int) or max_train_samples < 1):
            problems.append(f"max_train_samples={max_train_samples!r}: expected an integer >= 1 or null")
        if data_dir is not None and not Path(data_dir).expanduser().is_dir():
            problems.append(f"data_dir={data_dir!r}: no such folder")
        if problems:
            raise ValueError("GlueDataModule: " + "; ".join(problems))
        super().__init__(**kwargs)
        self.spec = GLUE_TASKS[task]
        self.val_split_names = tuple(self.spec.eval_files)
        self.max_train_samples = max_train_samples
        self.data_dir = self._find_data_dir(data_dir)
        self.save_hyperparameters()

    @property
    def task(self) -> str:
        return self.spec.name

    def _find_data_dir(self, data_dir: str | None) -> Path | None:
        required = ("train.tsv", *self.spec.eval_files.values())
        if data_dir is not None:
            folder = Path(data_dir).expanduser()
            missing = [name for name in required if not (folder / name).is_file()]
            if missing:
                raise FileNotFoundError(f"data_dir={data_dir!r} lacks {', '.join(missing)} for GLUE "
                                        f"{self.spec.name}; expected {', '.join(required)} (+ optional test file).")
            return folder
        folder = resolve_data_dir("glue", self.spec.folder, required_files=required)
        if folder is None and (status := hub_status()) is not None:
            raise AssetNotFoundError(f"GLUE {self.spec.name}: {describe_data_lookup('glue', self.spec.folder)} and "
                                     f"the hub ({HUB_DATASET}) is {status}; set data_dir or LIT_PRUNE_ASSETS.")
        return folder

    @property
    def source(self) -> str:
        """Where the data comes from: a local folder or the hub dataset."""
        return str(self.data_dir) if self.data_dir is not None else f"hub:{HUB_DATASET}/{self.spec.name}"

    # ---------------------------------------------------------------------------------------- loading
    def _raw(self, split: str) -> dict[str, list]:
        labelled = split != "test"
        if self.data_dir is None:
            return _hub_split(self.spec, split)
        name = {"train": "train.tsv", "test": self.spec.test_file}.get(split) or self.spec.eval_files[split]
        return read_glue_tsv(self.data_dir / name, self.spec, labelled=labelled)

    def _tokenized(self, split: str):
        import datasets

        if self.data_dir is not None:
            name = {"train": "train.tsv", "test": self.spec.test_file}.get(split) or self.spec.eval_files[split]
            origin = file_fingerprint(self.data_dir / name)
        else:
            origin = f"{HUB_DATASET}/{self.spec.name}/{split}"
        subsample = self.max_train_samples if split == "train" else None
        key = {"kind": "glue", "task": self.spec.name, "split": split, "origin": origin,
               "tokenizer": tokenizer_fingerprint(self.tokenizer), "max_seq_length": self.max_seq_length,
               "subsample": subsample, "seed": self.seed if subsample else None, "version": 1}

        def build():
            columns = self._raw(split)
            n = len(columns["text_a"])
            if subsample is not None and subsample < n:
                keep = sorted(torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))[:subsample].tolist())
                columns = {name: [values[i] for i in keep] for name, values in columns.items()}
            texts = [columns["text_a"]] + ([columns["text_b"]] if "text_b" in columns else [])
            encoded = self.tokenizer(*texts, truncation=True, max_length=self.max_seq_length)
            data = {name: encoded[name] for name in ("input_ids", "attention_mask", "token_type_ids")
                    if name in encoded}
            if "label" in columns:
                data["labels"] = columns["label"]
            return datasets.Dataset.from_dict(data)

        return self.cached(key, build)

    def _wanted_splits(self, stage: str | None) -> list[str]:
        if stage == "test":
            raise ValueError(f"GLUE {self.spec.name}: test labels are not public, so `test` has nothing to score. "
                             "Use `validate` for dev-set metrics, or `predict` for test-set predictions.")
        return {"fit": ["train", *self.val_split_names], "validate": list(self.val_split_names),
                "predict": ["test"]}.get(stage or "fit", ["train", *self.val_split_names])

    def setup(self, stage: str | None = None) -> None:
        for split in self._load_splits(stage):
            log.info("GLUE %s %s: %d examples from %s", self.spec.name, split, len(self.datasets[split]), self.source)
        if self.max_train_samples is not None and "train" in self.datasets:
            log.info("GLUE %s: training on a subsample of %d examples (seed %d)", self.spec.name,
                     len(self.datasets["train"]), self.seed)

    def predict_dataloader(self):
        return self._loader(self.split_dataset("test"), self.eval_batch_size, shuffle=False)

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pad ids and masks to the longest example of the batch (dynamic padding)."""
        longest = max(len(f["input_ids"]) for f in features)
        pad_id = self.tokenizer.pad_token_id or 0
        batch: dict[str, torch.Tensor] = {}
        for name, pad in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0)):
            if name in features[0]:
                batch[name] = torch.tensor([f[name] + [pad] * (longest - len(f[name])) for f in features])
        if "labels" in features[0]:
            dtype = torch.float32 if self.spec.is_regression else torch.long
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=dtype)
        return batch
