"""What every lit_prune data module shares: tokenizer loading, a tokenisation cache, dataloaders, and the
calibration sample that retraining-free pruning methods draw from the training split."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from lit_prune.assets import resolve_model

log = logging.getLogger(__name__)

CACHE_ENV = "LIT_PRUNE_CACHE"


def default_cache_dir() -> Path:
    """``$LIT_PRUNE_CACHE``, else ``~/.cache/lit_prune``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lit_prune").expanduser()


def file_fingerprint(path: Path) -> str:
    """Cheap identity of a data file for cache keys: resolved path, size and modification time."""
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def load_tokenizer(name_or_path: str, setting: str = "tokenizer"):
    """Load a fast tokenizer from a folder, an assets name or a hub id."""
    from transformers import AutoTokenizer

    resolved = resolve_model(name_or_path, setting=setting)
    tokenizer = AutoTokenizer.from_pretrained(resolved.location)
    if not tokenizer.is_fast:
        raise ValueError(f"{setting}={name_or_path!r} loads a slow (Python) tokenizer; lit_prune needs a fast "
                         "tokenizer (offset mappings for QA, speed for GLUE). Provide a tokenizer.json.")
    return tokenizer


def tokenizer_fingerprint(tokenizer) -> str:
    """A stable digest of a tokenizer's vocabulary and settings, for cache keys.

    The backend's ``truncation`` and ``padding`` entries are left out: every call sets them (lit_prune's calls
    give the truncation length, which the cache keys hold, and never pad), so they record the previous call, not
    the tokenizer; the sides that calls truncate from are kept.
    """
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    backend.pop("truncation", None)
    backend.pop("padding", None)
    backend["lit_prune_sides"] = [getattr(tokenizer, "truncation_side", None), getattr(tokenizer, "padding_side", None)]
    return hashlib.sha256(json.dumps(backend, sort_keys=True).encode()).hexdigest()[:16]


class LengthGroupedSampler(Sampler[int]):
    """A random order in which neighbouring examples have similar lengths.

    Each epoch: shuffle all indices, cut them into mega-batches of ``group_size × batch_size``, and sort each
    mega-batch by length, longest first. Consecutive ``batch_size`` indices then form batches of similar length,
    so dynamic padding pads little, while the batches still come in a random order (the HF Trainer's
    ``group_by_length`` does the same). Lightning calls :meth:`set_epoch`; without it, every pass over the sampler
    moves on to the next epoch's order.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, group_size: int = 50) -> None:
        if not lengths:
            raise ValueError("LengthGroupedSampler: no examples")
        self.lengths = torch.tensor(lengths)
        self.mega_batch = batch_size * group_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        order = torch.randperm(len(self.lengths), generator=generator)
        for start in range(0, len(order), self.mega_batch):
            chunk = order[start:start + self.mega_batch]
            # stable sort, longest first: the largest batch comes first, so memory peaks early
            yield from chunk[torch.argsort(-self.lengths[chunk], stable=True)].tolist()


@dataclass(frozen=True)
class CalibrationSample:
    """A calibration sample drawn from a training split.

    Attributes:
        dataset: the drawn examples, in draw order (a ``Subset`` of the tokenised training split).
        num_samples, num_tokens: what was drawn (tokens: non-padding).
        requested: the settings of the draw (``num_samples``, ``num_tokens``, ``replacement``, ``seed``).
        note: set when the split held less than asked for (the whole split was used).
    """

    dataset: Subset
    num_samples: int
    num_tokens: int
    requested: dict[str, Any]
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """For reports: everything but the dataset."""
        return {"num_samples": self.num_samples, "num_tokens": self.num_tokens, "requested": self.requested,
                "note": self.note}


class TaskDataModule(L.LightningDataModule):
    """Base class of lit_prune data modules.

    Subclasses fill ``self.datasets`` in ``setup()`` with tokenised ``datasets.Dataset`` objects keyed by split
    name ("train", the names in ``val_split_names``, "test"), and define ``task`` (a string that also names the
    task module's task) and ``collate``.

    Args:
        tokenizer: tokenizer folder, assets name or hub id. Usually linked to the model's ``name_or_path``.
        max_seq_length: longest tokenised input; longer inputs are truncated (GLUE) or windowed (SQuAD).
        batch_size: training batch size (per device).
        eval_batch_size: evaluation batch size (per device).
        num_workers: dataloader worker processes.
        cache_dir: where tokenised datasets are cached; ``None`` uses ``$LIT_PRUNE_CACHE`` or
            ``~/.cache/lit_prune``.
        seed: seed of every random choice the data module makes (subsampling, splits).
        group_by_length: draw training batches of similar length (see :class:`LengthGroupedSampler`), which
            cuts the padding that dynamic padding still leaves; the order stays random.
    """

    #: names of the evaluation splits, in dataloader order
    val_split_names: tuple[str, ...] = ("validation",)

    def __init__(
        self,
        tokenizer: str | None = None,
        max_seq_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        cache_dir: str | None = None,
        seed: int = 0,
        group_by_length: bool = False,
    ) -> None:
        super().__init__()
        problems = []
        if tokenizer is not None and (not isinstance(tokenizer, str) or not tokenizer.strip()):
            problems.append(f"tokenizer={tokenizer!r}: expected a folder, an assets name or a hub id")
        for name, value, low in (("max_seq_length", max_seq_length, 8), ("batch_size", batch_size, 1),
                                 ("eval_batch_size", eval_batch_size, 1), ("num_workers", num_workers, 0)):
            if not isinstance(value, int) or value < low:
                problems.append(f"{name}={value!r}: expected an integer >= {low}")
        if problems:
            raise ValueError(f"{type(self).__name__}: " + "; ".join(problems))
        self.tokenizer_name = tokenizer
        self.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.seed = seed
        self.group_by_length = group_by_length
        self.datasets: dict[str, Any] = {}
        self._tokenizer = None

    def _init_reporting(self, problems: list[str], **settings: Any) -> None:
        """:class:`TaskDataModule`'s ``__init__`` for a subclass that checked its own settings first: one
        ``ValueError`` lists the subclass's ``problems`` together with the base settings' (raised when any)."""
        try:
            TaskDataModule.__init__(self, **settings)
        except ValueError as error:
            if not problems:
                raise
            raise ValueError(f"{error}; " + "; ".join(problems)) from None
        if problems:
            raise ValueError(f"{type(self).__name__}: " + "; ".join(problems))

    # ----------------------------------------------------------------------------------------- tokenizer
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            if self.tokenizer_name is None:
                raise ValueError(f"{type(self).__name__}: tokenizer is not set; give `tokenizer` (train.py links "
                                 "it to model.name_or_path).")
            self._tokenizer = load_tokenizer(self.tokenizer_name)
        return self._tokenizer

    @property
    def task(self) -> str:
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------- caching
    def cached(self, key: dict[str, Any], build: Callable[[], Any]):
        """Return the ``datasets.Dataset`` built by ``build()``, cached on disk under a digest of ``key``.

        The cache entry is written to a temporary folder and renamed into place, so an interrupted run never
        leaves a half-written entry behind.
        """
        import datasets

        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
        folder = self.cache_dir / "tokenized" / digest
        if (folder / "dataset_info.json").is_file():
            try:
                return datasets.load_from_disk(str(folder))
            except Exception as error:  # a corrupt entry is rebuilt, and we say so
                warnings.warn(f"tokenisation cache entry {folder} is unreadable ({error}); rebuilding it")
                shutil.rmtree(folder, ignore_errors=True)
        dataset = build()
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{digest}.", dir=folder.parent))
        bars_were_on = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            dataset.save_to_disk(str(tmp))
            (tmp / "lit_prune_key.json").write_text(json.dumps(key, indent=1, sort_keys=True, default=str))
            try:
                os.replace(tmp, folder)
            except OSError:  # another process (a DDP rank) won the race: use its entry
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            if bars_were_on:
                datasets.enable_progress_bars()
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        log.info("cached tokenised %s at %s", key.get("kind", "data"), folder)
        return datasets.load_from_disk(str(folder))

    # ------------------------------------------------------------------------------------------ preparing
    def prepare_data(self) -> None:
        """Read (or download) and tokenise what the trainer's stage needs, into the tokenisation cache.

        Lightning calls this on one process per machine before ``setup`` runs on every process, so a DDP run reads,
        downloads and tokenises once per machine and its other processes load the cached result. Nothing is kept
        on the data module here (``setup`` fills ``self.datasets``). Outside a trainer it prepares for ``fit``.
        """
        trainer = getattr(self, "trainer", None)
        function = getattr(getattr(trainer, "state", None), "fn", None)
        self._fill_cache(function.value if function is not None else "fit")

    def _fill_cache(self, stage: str) -> None:
        """Build the tokenisation cache entries that ``setup(stage)`` will load: every split ``_wanted_splits``
        names (a subclass whose splits are built otherwise overrides it)."""
        for split in self._wanted_splits(stage):
            self._tokenized(split)

    def _load_splits(self, stage: str | None) -> list[str]:
        """Set up the splits ``stage`` needs that ``self.datasets`` does not hold yet; return their names."""
        new = [split for split in self._wanted_splits(stage) if split not in self.datasets]
        for split in new:
            self.datasets[split] = self._tokenized(split)
        return new

    def _wanted_splits(self, stage: str | None) -> list[str]:
        """The splits ``stage`` ("fit", "validate", "test", "predict"; ``None``: "fit") reads."""
        raise NotImplementedError

    def _tokenized(self, split: str):
        """The tokenised ``datasets.Dataset`` of ``split``, from the cache when it holds it."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------- dataloaders
    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def split_dataset(self, name: str):
        """The tokenised ``datasets.Dataset`` of split ``name`` ("train", a name in ``val_split_names``, "test"),
        set up on first use.

        Raises:
            ValueError: the data module has no such split.
        """
        if name not in self.datasets:
            self.setup({"train": "fit", "test": "predict"}.get(name, "validate"))
        if name not in self.datasets:
            raise ValueError(f"{type(self).__name__}({self.task}): no {name!r} split; "
                             f"available: {sorted(self.datasets)}")
        return self.datasets[name]

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool, **kwargs) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=self.collate,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0, **kwargs)

    def train_dataloader(self) -> DataLoader:
        train = self.split_dataset("train")
        if self.group_by_length:
            sampler = LengthGroupedSampler([len(ids) for ids in train["input_ids"]], self.batch_size, seed=self.seed)
            return self._loader(train, self.batch_size, shuffle=False, sampler=sampler)
        return self._loader(train, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        loaders = [self._loader(self.split_dataset(name), self.eval_batch_size, shuffle=False)
                   for name in self.val_split_names]
        return loaders[0] if len(loaders) == 1 else loaders

    def calibration_sample(self, num_samples: int | None = None, num_tokens: int | None = None, seed: int = 0,
                           replacement: bool = False) -> CalibrationSample:
        """A fixed random sample of the training split, for the calibration passes of retraining-free pruning.

        Give exactly one of ``num_samples`` (Kwon et al.: 2,048 examples) and ``num_tokens`` (KPrune: about 100,000
        non-padding tokens; examples are drawn without replacement until their tokens reach it).

        Args:
            num_samples: how many training examples (SQuAD: windows) to draw.
            num_tokens: how many tokens the drawn examples should hold at least.
            seed: seed of the draw; the same seed gives the same sample on every rank and every run.
            replacement: draw ``num_samples`` with replacement (Kwon et al.), else without.

        When the split holds fewer examples (or tokens) than asked for, the whole split is used, once each, a
        warning says so, and :attr:`CalibrationSample.note` records it.

        Raises:
            ValueError: both or neither of ``num_samples`` and ``num_tokens``, or a count < 1.
        """
        problems = []
        if (num_samples is None) == (num_tokens is None):
            problems.append(f"num_samples={num_samples!r}, num_tokens={num_tokens!r}: give exactly one")
        for name, value in (("num_samples", num_samples), ("num_tokens", num_tokens)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                problems.append(f"{name}={value!r}: expected an integer >= 1")
        if problems:
            raise ValueError("calibration sample: " + "; ".join(problems))
        train = self.split_dataset("train")
        generator = torch.Generator().manual_seed(seed)
        note = None
        if num_tokens is not None:
            lengths = [len(ids) for ids in train["input_ids"]]
            order = torch.randperm(len(train), generator=generator).tolist()
            indices, tokens = [], 0
            for index in order:
                if tokens >= num_tokens:
                    break
                indices.append(index)
                tokens += lengths[index]
            if tokens < num_tokens:
                note = (f"num_tokens={num_tokens} exceeds the {tokens} tokens of the {len(train)} training examples "
                        f"of {self.task}; using all of them")
        elif num_samples > len(train):
            note = (f"num_samples={num_samples} exceeds the {len(train)} training examples of {self.task}; "
                    f"using all {len(train)}")
            indices = list(range(len(train)))
        elif replacement:
            indices = torch.randint(len(train), (num_samples,), generator=generator).tolist()
        else:
            indices = torch.randperm(len(train), generator=generator)[:num_samples].tolist()
        if note is not None:
            warnings.warn(f"calibration: {note}")
        subset = Subset(train, indices)
        used_tokens = sum(len(ids) for ids in subset.dataset[indices]["input_ids"]) if indices else 0
        return CalibrationSample(dataset=subset, num_samples=len(indices), num_tokens=used_tokens,
                                 requested={"num_samples": num_samples, "num_tokens": num_tokens,
                                            "replacement": replacement, "seed": seed},
                                 note=note)

    def calibration_dataloader(self, num_samples: int | None = None, seed: int = 0, batch_size: int | None = None,
                               replacement: bool = False, num_tokens: int | None = None) -> DataLoader:
        """The :meth:`calibration_sample` as a dataloader (in sample order, default batch size: the training one)."""
        sample = self.calibration_sample(num_samples=num_samples, num_tokens=num_tokens, seed=seed,
                                         replacement=replacement)
        return self._loader(sample.dataset, batch_size or self.batch_size, shuffle=False)

    def average_sequence_length(self, split: str | None = None) -> float:
        """Average tokenised length (no padding) of a split: the ``s`` of the FLOPs accounting.

        Defaults to the first evaluation split, as Kwon et al. compute it on the dev set.
        """
        dataset = self.split_dataset(split or self.val_split_names[0])
        lengths = [len(ids) for ids in dataset["input_ids"]]
        if not lengths:
            raise ValueError(f"{self.task}: split {split!r} is empty")
        return float(sum(lengths) / len(lengths))
