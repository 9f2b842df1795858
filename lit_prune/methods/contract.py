"""The callback contract: what a pruning callback needs of a user's Lightning project, declared once and checked
before any training or pruning starts.

Every lit_prune callback (:class:`~lit_prune.methods.KwonCallback`, ``KPruneCallback``, ``GPrunerCallback``,
``GrainCallback``, ``SMPCallback``) asks only for:

* **one Hugging Face model** held by the LightningModule: found automatically when the module holds exactly one
  ``transformers.PreTrainedModel`` as a direct attribute, or named by ``model_attribute`` (a dotted path). It must
  have a task head: its outputs carry ``logits`` (sequence classification, regression, token classification),
  ``start_logits`` / ``end_logits`` (extractive question answering) or ``embeddings`` (a sentence-embedding model
  with its pooling, :class:`~lit_prune.tasks.SentenceEmbeddingModule`: pruned without labels);
* **batches** that are dicts of model inputs (``input_ids``, ``attention_mask``, ... plus ``labels`` or
  ``start_positions`` / ``end_positions`` where the method's loss needs them), as they come from the dataloaders
  given to ``fit`` (a data module or plain dataloaders), or any other batch shape with a ``batch_to_inputs``
  callable that turns one batch into such a dict;
* for the evaluation before and after pruning (``evaluate=True``), either an ``evaluate(dataloaders, progress)``
  method (lit_prune's task modules) or the user's own validation loop: a ``validation_step`` and validation data.
  The metrics it logs are the report's ``metrics``.

Everything else is derived: the ``s`` of the FLOPs accounting from the calibration batches' attention masks (or
the data module's ``average_sequence_length()`` where it has one), the tokenizer saved into the pruned folder from
the module or data module (any attribute holding a Hugging Face tokenizer) or the model's own folder, calibration
batches from the training dataloader, the batch timed for the latency comparison from the validation data (or,
documented, the first calibration batch when there is none).

:class:`PruningTarget` resolves all of this for one ``fit`` and :meth:`PruningTarget.problems` reports every
missing piece at once, with the fix, in the callback's ``setup``: before the user's training, so a mistake never
costs a training run, and never leaves a model half-pruned in memory with nothing written.

A pruned model comes back as a Hugging Face folder; :func:`rebuild_pruned` puts it into a freshly constructed
LightningModule (for inference, further training, or loading a checkpoint saved after pruning).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from lit_prune.core.arch import get_adapter
from lit_prune.prune.batches import LABEL_KEYS, model_batch
from lit_prune.prune.distill import predicts_embeddings

BatchToInputs = Callable[[Any], Mapping[str, torch.Tensor]]

#: the metrics prefix a validation loop's names may carry (``val/accuracy``, ``val_accuracy``)
_VAL_PREFIXES = ("val/", "val_", "validation/", "validation_")


class ContractError(ValueError):
    """A user's project does not offer what a pruning callback needs (raised before any work)."""


def find_encoder_model(pl_module: nn.Module, attribute: str | None = None) -> nn.Module:
    """The Hugging Face encoder task model held by ``pl_module``.

    Args:
        pl_module: the LightningModule.
        attribute: the attribute that holds it (a dotted path); ``None`` looks for the one child module that is a
            ``transformers.PreTrainedModel``.

    Raises:
        ValueError: no such attribute, no or several candidate models, or an unsupported architecture.
    """
    from transformers import PreTrainedModel

    if attribute is not None:
        try:
            model = pl_module.get_submodule(attribute)
        except AttributeError:
            raise ValueError(f"model_attribute={attribute!r}: {type(pl_module).__name__} has no submodule "
                             f"{attribute!r}") from None
    else:
        candidates = [(name, child) for name, child in pl_module.named_children()
                      if isinstance(child, PreTrainedModel)]
        if len(candidates) != 1:
            found = ", ".join(name for name, _ in candidates) or "none"
            raise ValueError(f"model_attribute=None: {type(pl_module).__name__} must hold exactly one Hugging Face "
                             f"model as a direct attribute (found: {found}); name the one to prune with "
                             "model_attribute")
        model = candidates[0][1]
    get_adapter(model)  # raises UnsupportedArchitectureError naming the supported types
    return model


def _is_tokenizer(value: Any) -> bool:
    from transformers import PreTrainedTokenizerBase

    return isinstance(value, PreTrainedTokenizerBase)


def _folder_tokenizer(name_or_path: str | None) -> Any:
    """The tokenizer saved in a local model folder, or ``None`` (never reaches a hub)."""
    if not name_or_path or not Path(name_or_path).is_dir():
        return None
    folder = Path(name_or_path)
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                                                      "vocab.json", "spm.model", "sentencepiece.bpe.model")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def find_tokenizer(given: Any, *holders: Any, model: nn.Module | None = None) -> tuple[Any, str | None]:
    """The tokenizer to save beside a pruned model, and where it was found.

    Looked for, in order: ``given`` (a tokenizer, or a name or folder to load one from); any attribute of the
    ``holders`` (the LightningModule, the data module) that holds a Hugging Face tokenizer, whatever its name; a
    tokenizer saved in the model's own local folder (``config._name_or_path``). ``(None, None)`` when none is found.
    """
    if given is not None:
        if _is_tokenizer(given):
            return given, "tokenizer="
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(given)), f"tokenizer={given!r}"
    for holder in holders:
        if holder is None:
            continue
        for name, value in vars(holder).items():
            if _is_tokenizer(value):
                return value, f"{type(holder).__name__}.{name}"
    if model is not None:
        name_or_path = getattr(model.config, "_name_or_path", None)
        tokenizer = _folder_tokenizer(name_or_path)
        if tokenizer is not None:
            return tokenizer, f"the model's folder {name_or_path}"
    return None, None


def _loader_source(trainer: L.Trainer, stage: str) -> Any:
    """Lightning's record of the ``fit``'s train or validation dataloaders (a data module's or plain ones)."""
    loop = trainer.fit_loop if stage == "train" else trainer.fit_loop.epoch_loop.val_loop
    return loop._data_source


def _as_list(loaders: Any) -> list[Any]:
    if loaders is None:
        return []
    if isinstance(loaders, Mapping):
        return list(loaders.values())
    return list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]


class PruningTarget:
    """The user's project as a pruning callback sees it during one ``fit``: the model, its batches, its data.

    Args:
        trainer, pl_module: the ``fit``'s.
        model_attribute: see :func:`find_encoder_model`.
        batch_to_inputs: turns one batch into a dict of model inputs (and labels); ``None``: batches are dicts.
        tokenizer: see :func:`find_tokenizer`.
    """

    def __init__(self, trainer: L.Trainer, pl_module: L.LightningModule, model_attribute: str | None = None,
                 batch_to_inputs: BatchToInputs | None = None, tokenizer: Any = None) -> None:
        self.trainer = trainer
        self.pl_module = pl_module
        self.model_attribute = model_attribute
        self.batch_to_inputs = batch_to_inputs
        self._tokenizer = tokenizer
        self.datamodule = trainer.datamodule

    # ------------------------------------------------------------------------------------------------ model
    @property
    def model(self) -> nn.Module:
        return find_encoder_model(self.pl_module, self.model_attribute)

    @property
    def name(self) -> str:
        """The model's name or folder, for reports."""
        name = getattr(self.pl_module, "name_or_path", None)
        return str(name if name is not None else getattr(self.model.config, "_name_or_path", ""))

    def tokenizer(self) -> tuple[Any, str | None]:
        """See :func:`find_tokenizer` (the module, then the data module, then the model's folder)."""
        return find_tokenizer(self._tokenizer, self.pl_module, self.datamodule, model=self.model)

    # ------------------------------------------------------------------------------------------------ batches
    def inputs(self, batch: Any) -> dict[str, torch.Tensor]:
        """One batch as the model's keyword inputs (labels included, keys the model does not take dropped)."""
        converted = self.batch_to_inputs(batch) if self.batch_to_inputs is not None else batch
        if not isinstance(converted, Mapping):
            what = "batch_to_inputs returned" if self.batch_to_inputs is not None else "the dataloader gives"
            raise ContractError(f"batch_to_inputs={self.batch_to_inputs!r}: {what} a {type(converted).__name__}, "
                                "not a dict of model inputs; pass batch_to_inputs=<a function that turns one batch "
                                "into a dict such as {'input_ids': ..., 'attention_mask': ..., 'labels': ...}>")
        return model_batch(self.model, converted)

    def train_batches(self) -> Iterator[Any]:
        """The batches of the ``fit``'s training dataloader(s), as they come."""
        source = _loader_source(self.trainer, "train")
        for loader in _as_list(source.dataloader() if source.is_defined() else None):
            yield from loader

    def validation_loaders(self) -> list[Any]:
        """The ``fit``'s validation dataloaders (a data module's or plain ones; empty when there are none)."""
        source = _loader_source(self.trainer, "val")
        return _as_list(source.dataloader()) if source.is_defined() else []

    def has_validation_loop(self) -> bool:
        from lightning.pytorch.utilities.model_helpers import is_overridden

        source = _loader_source(self.trainer, "val")
        return source.is_defined() and is_overridden("validation_step", self.pl_module, parent=L.LightningModule)

    # ------------------------------------------------------------------------------------------------ checks
    def problems(self, *, needs_labels: bool = False, evaluate: bool = True, dense_hint: str = "",
                 trains: str | None = None) -> list[str]:
        """Everything this project lacks for a callback, each with its fix (empty when all is there).

        Looks at one training batch (the first, through ``batch_to_inputs``) and runs the model on two of its
        examples, so a wrong batch shape, missing labels or a headless model are said before any training.

        Args:
            trains: the method's name when it trains the model with the module's loss during the fit (SMP; GRAIN
                unless the module has a training objective): a sentence-embedding model, which has no task loss, is
                refused.
        """
        problems = []
        try:
            model = self.model
        except ValueError as error:
            return [str(error)]
        if trains is not None and predicts_embeddings(model):
            return [f"{trains} trains the model with its task loss during the fit, and a sentence-embedding model "
                    f"({type(model).__name__}) has none: prune it without labels with KPruneCallback, KwonCallback "
                    "or GPrunerCallback" + (", or train it by distillation from itself with GRAIN "
                                            "(lit_prune.tasks.DistilledSentenceEmbeddingModule)" if trains == "GRAIN"
                                            else "")]
        if get_adapter(model).is_compacted:
            problems.append(f"the model {self.name!r} is already pruned (its config has a lit_prune_structure); "
                            f"{dense_hint or 'prune the dense model'}")
        source = _loader_source(self.trainer, "train")
        if not source.is_defined():
            problems.append("no training data: pass train_dataloaders= (or a datamodule with train_dataloader()) "
                            "to trainer.fit; the calibration batches come from it")
        else:
            problems += self._batch_problems(model, needs_labels)
        if evaluate and not callable(getattr(self.pl_module, "evaluate", None)) and not self.has_validation_loop():
            problems.append(f"evaluate=True, but {type(self.pl_module).__name__} has no validation loop to measure "
                            "the dense and the pruned model with: give fit validation data (val_dataloaders=, or a "
                            "datamodule with val_dataloader()) and a validation_step that logs metrics, or set "
                            "evaluate=False")
        return problems

    def _batch_problems(self, model: nn.Module, needs_labels: bool) -> list[str]:
        try:
            batch = next(self.train_batches(), None)
        except Exception as error:  # the user's own loader failed: say where
            return [f"the training dataloader failed on its first batch: {type(error).__name__}: {error}"]
        if batch is None:
            return ["the training dataloader is empty: calibration needs at least one batch"]
        try:
            inputs = self.inputs(batch)
        except ContractError as error:
            return [str(error)]
        except Exception as error:
            return [f"batch_to_inputs failed on the first batch: {type(error).__name__}: {error}"]
        problems = []
        if "input_ids" not in inputs and "inputs_embeds" not in inputs:
            problems.append(f"the batches hold {sorted(inputs)} for {type(model).__name__}, but no 'input_ids': "
                            "give dict batches of tokenised inputs, or a batch_to_inputs that returns them")
            return problems
        if needs_labels and not predicts_embeddings(model) and not any(key in inputs for key in LABEL_KEYS):
            problems.append(f"the method needs the task loss, but the batches hold no labels ({sorted(inputs)}): "
                            "add 'labels' (classification, regression) or 'start_positions' and 'end_positions' "
                            "(question answering) to the batches, or use a label-free method (KPruneCallback)")
        problems += output_problems(model, {k: v[:2] for k, v in inputs.items() if k not in LABEL_KEYS})
        return problems

    # ------------------------------------------------------------------------------------------------ precision
    @contextmanager
    def precision(self) -> Iterator[None]:
        """The Trainer's precision context, the one Lightning puts around ``training_step`` and
        ``validation_step`` (``trainer.precision_plugin.forward_context()``): bf16 autocast under
        ``precision="bf16-mixed"``, nothing under ``"32-true"``. Calibration passes and evaluations run inside it,
        so they compute as the fit's training and validation do; the statistics they accumulate are upcast
        explicitly. Autocast's cache of cast weights stays off inside (Lightning's own plugins keep it off too):
        pruning edits weights in place (KPrune's tuning) and compacts copies (G-Pruner's rollouts), which a cached
        cast would miss or hold on to."""
        with self.trainer.precision_plugin.forward_context():
            cache = torch.is_autocast_cache_enabled()
            torch.set_autocast_cache_enabled(False)
            try:
                yield
            finally:
                torch.set_autocast_cache_enabled(cache)

    # ------------------------------------------------------------------------------------------------ evaluation
    def evaluate(self, which: str, progress: Any = None) -> dict[str, float]:
        """The current model's metrics: the module's ``evaluate`` when it has one, else its validation loop; under
        the fit's precision either way (Lightning's validation loop enters :meth:`precision` itself)."""
        if callable(getattr(self.pl_module, "evaluate", None)):
            with self.precision():
                return _module_evaluate(self, which, progress)
        return run_validation_loop(self.trainer)

    def latency_batch(self, batch_size: int, fallback: Mapping[str, torch.Tensor] | None = None
                      ) -> tuple[dict[str, torch.Tensor], str]:
        """The model inputs timed for the latency comparison (no labels), and where they come from.

        The first ``batch_size`` examples of the validation data (collated afresh from a map-style dataset, else
        the first batch cut to ``batch_size``); without validation data, ``fallback`` (a calibration batch).

        Raises:
            ContractError: neither is available.
        """
        for loader in self.validation_loaders():
            dataset, collate = getattr(loader, "dataset", None), getattr(loader, "collate_fn", None)
            if collate is not None and hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__"):
                count = min(batch_size, len(dataset))
                batch = collate([dataset[i] for i in range(count)])
            else:
                batch = next(iter(loader))
            inputs = {k: v[:batch_size] for k, v in self.inputs(batch).items() if k not in LABEL_KEYS}
            return inputs, "evaluation split"
        if fallback is not None:
            return {k: v[:batch_size] for k, v in fallback.items() if k not in LABEL_KEYS}, "first calibration batch"
        raise ContractError(f"latency_batch_size={batch_size}: there is no validation data nor a calibration batch "
                            "to time the models on; set latency_batch_size=0")


def output_problems(model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> list[str]:
    """Whether ``model`` has a task head: its outputs on ``inputs`` carry ``logits`` or start/end logits."""
    modes = [(module, module.training) for module in model.modules()]
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.no_grad():
            outputs = model(**{k: v.to(device) for k, v in inputs.items()})
    except Exception as error:
        return [f"{type(model).__name__} failed on the first batch's inputs ({sorted(inputs)}): "
                f"{type(error).__name__}: {error}"]
    finally:
        for module, training in modes:
            module.training = training
    if all(getattr(outputs, name, None) is None for name in ("logits", "start_logits", "embeddings")):
        return [(f"{type(model).__name__} has no task head (its outputs hold {sorted(outputs.keys())}, no 'logits' "
                 "nor 'start_logits'/'end_logits' nor 'embeddings'): pruning scores units by the model's predictions; "
                 "hold the model with its head (AutoModelForSequenceClassification, ...ForTokenClassification, "
                 "...ForQuestionAnswering) in the LightningModule, or a sentence-embedding model with its pooling "
                 "(lit_prune.tasks.SentenceEmbeddingModule), and name it with model_attribute if several")]
    return []


def _module_evaluate(target: PruningTarget, which: str, progress: Any) -> dict[str, float]:
    """lit_prune's task modules: ``evaluate`` over this process's shard of the validation data."""
    from torch.utils.data import DataLoader, Subset

    trainer = target.trainer
    loaders = target.validation_loaders()
    if trainer.world_size > 1:  # every world_size-th example from this rank on, same batch size and collate
        loaders = [DataLoader(Subset(loader.dataset, range(trainer.global_rank, len(loader.dataset),
                                                           trainer.world_size)),
                              batch_size=loader.batch_size, collate_fn=loader.collate_fn,
                              num_workers=loader.num_workers, shuffle=False) for loader in loaders]
    total = sum(len(loader) for loader in loaders)
    done = [0]

    def step() -> None:
        done[0] += 1
        if progress is not None:
            progress(f"evaluate {which}", done[0], total)

    return target.pl_module.evaluate(loaders if len(loaders) > 1 else loaders[0], progress=step)


def run_validation_loop(trainer: L.Trainer) -> dict[str, float]:
    """Run the ``fit``'s own validation loop once, now, and return the metrics the module logged in it.

    The same loop Lightning runs after a training epoch (the user's ``validation_step``, their metrics, DDP
    sharding and ``sync_dist`` included); names lose a ``val/`` or ``val_`` prefix. Callable from a callback hook
    of the ``fit`` before or after training.
    """
    loop = trainer.fit_loop.epoch_loop.val_loop
    was_training = trainer.training
    trainer.validating = True
    try:
        loop.setup_data()
        with torch.no_grad():
            logged = loop.run()
    finally:
        if was_training:
            trainer.training = True
    metrics: dict[str, float] = {}
    for outputs in logged or []:
        for name, value in outputs.items():
            for prefix in _VAL_PREFIXES:
                if name.startswith(prefix):
                    name = name[len(prefix):]
                    break
            metrics[name] = float(value)
    return metrics


def rebuild_pruned(pl_module: L.LightningModule, folder: str | Path, model_attribute: str | None = None
                   ) -> L.LightningModule:
    """Put the pruned model saved in ``folder`` into ``pl_module``, in place of its dense model, and return it.

    Build the module as the project always does (its dense model inside), then call this: its Hugging Face model is
    replaced by :func:`~lit_prune.core.io.load_pruned`'s, of the pruned shapes, so a checkpoint saved after pruning
    (e.g. by ``ModelCheckpoint`` at the end of the fit) loads into it with ``load_state_dict``, and inference or
    further training go on with the pruned model.

    Args:
        pl_module: a freshly constructed LightningModule of the project that was pruned.
        folder: the pruned folder (``<output_dir>/pruned_model``).
        model_attribute: see :func:`find_encoder_model` (a dotted path; ``None``: the only Hugging Face model).
    """
    from lit_prune.core.io import load_pruned, saved_kind

    dense = find_encoder_model(pl_module, model_attribute)
    pruned = load_pruned(folder)
    kind = saved_kind(pruned.config)
    if type(dense).__name__ not in type(pruned).__name__ and kind is not None:
        warnings.warn(f"rebuild_pruned: {folder} holds a {kind} model, the module's is a {type(dense).__name__}")
    name = model_attribute or next(n for n, child in pl_module.named_children() if child is dense)
    parent_name, _, attribute = name.rpartition(".")
    parent = pl_module.get_submodule(parent_name) if parent_name else pl_module
    setattr(parent, attribute, pruned.to(next(dense.parameters()).device))
    return pl_module


__all__ = ["BatchToInputs", "ContractError", "PruningTarget", "find_encoder_model", "find_tokenizer",
           "output_problems", "rebuild_pruned", "run_validation_loop"]
