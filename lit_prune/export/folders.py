"""The model folders the exporter reads: a pruned lit_prune folder, or a plain Hugging Face folder with a task head
(a dense teacher), and what each one is (its head, its task, its tokenizer).

A pruned folder is read with :func:`lit_prune.core.io.read_pruned_config` (every structure and weight-shape
problem is reported) and loaded with lit_prune's own copy of the pruned classes; a plain folder by its
``architectures`` entry through the matching ``AutoModelFor...`` class. Both load in float32, in eval mode.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_prune.core.arch import STRUCTURE_KEY
from lit_prune.core.io import load_pruned, read_pruned_config, saved_kind
from lit_prune.prune.batches import forward_keys

#: the heads an exported graph can have, and the outputs it gives for each (a label-word classifier, SMP's, is a
#: sequence classifier)
OUTPUTS: dict[str, tuple[str, ...]] = {
    "sequence_classification": ("logits",),
    "label_words": ("logits",),
    "question_answering": ("start_logits", "end_logits"),
    "token_classification": ("logits",),
}
#: what a plain folder's ``architectures`` entry ends with, for each head
_ARCHITECTURE_SUFFIXES = {"ForSequenceClassification": "sequence_classification",
                          "ForQuestionAnswering": "question_answering",
                          "ForTokenClassification": "token_classification"}
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")
_EXPECTED = ("expected a pruned model folder written by lit_prune, or a Hugging Face model folder with a task head "
             "(config.json, weights, tokenizer)")


class NotAModelFolderError(ValueError):
    """A path that is not a model folder the exporter can read."""


@dataclass(frozen=True)
class ModelFolder:
    """What a model folder holds.

    Attributes:
        path: the folder.
        pruned: a lit_prune pruned folder (else a plain Hugging Face one).
        kind: its head: one of :data:`OUTPUTS`' keys.
        model_type: the config's ``model_type`` ("bert", "roberta", "distilbert", ...).
        task: the task it was fine-tuned for (the config's ``finetuning_task``), or ``None``.
        has_tokenizer: whether tokenizer files are in the folder.
        config: the loaded ``transformers`` config.
    """

    path: Path
    pruned: bool
    kind: str
    model_type: str
    task: str | None
    has_tokenizer: bool
    config: Any

    @property
    def output_names(self) -> tuple[str, ...]:
        return OUTPUTS[self.kind]

    def describe(self) -> str:
        """One line: "pruned bert (sequence_classification)"."""
        return f"{'pruned' if self.pruned else 'dense'} {self.model_type} ({self.kind})"


def read_model_folder(folder: str | Path) -> ModelFolder:
    """Read and check a model folder without loading its weights.

    Raises:
        NotAModelFolderError: no such folder, no config.json, a config that does not load, no weights, or no
            task head (a base encoder or a sentence-embedding model; the message says which).
        NotAPrunedModelError: a folder that claims to be pruned (its config has ``lit_prune_structure``) but whose
            structure or weights are inconsistent.
    """
    from transformers import AutoConfig

    folder = Path(folder)
    if not folder.is_dir():
        raise NotAModelFolderError(f"{folder}: no such folder; {_EXPECTED}")
    if not (folder / "config.json").is_file():
        raise NotAModelFolderError(f"{folder} holds no config.json, so it is not a model folder; {_EXPECTED}")
    try:
        raw = json.loads((folder / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise NotAModelFolderError(f"{folder}/config.json is not valid JSON ({error}); {_EXPECTED}") from error
    pruned = isinstance(raw, dict) and STRUCTURE_KEY in raw
    if pruned:
        config = read_pruned_config(folder)
        kind = saved_kind(config)
    else:
        try:
            config = AutoConfig.from_pretrained(folder)
        except (ValueError, KeyError, OSError) as error:
            raise NotAModelFolderError(f"{folder}: config.json does not load ({error}); {_EXPECTED}") from error
        if not any((folder / name).is_file() for name in _WEIGHT_FILES):
            raise NotAModelFolderError(f"{folder} holds a config.json but no weights ({', '.join(_WEIGHT_FILES)}); "
                                       f"{_EXPECTED}")
        kind = _plain_kind(getattr(config, "architectures", None) or [])
    if kind not in OUTPUTS:
        architectures = getattr(config, "architectures", None)
        what = {"base": "a base encoder without a task head", "sentence_embedding": "a sentence-embedding model"}.get(
            kind or "", f"a model with architectures={architectures!r}")
        raise NotAModelFolderError(
            f"{folder} holds {what}; the exporter takes models with a task head: sequence classification "
            "(GLUE), question answering (SQuAD) or token classification (CoNLL-2003)")
    task = getattr(config, "finetuning_task", None)
    return ModelFolder(path=folder, pruned=pruned, kind=kind, model_type=config.model_type,
                       task=task if isinstance(task, str) and task else None,
                       has_tokenizer=any((folder / name).is_file() for name in _TOKENIZER_FILES), config=config)


def _plain_kind(architectures: list[str]) -> str | None:
    for suffix, kind in _ARCHITECTURE_SUFFIXES.items():
        if architectures and architectures[0].endswith(suffix):
            return kind
    return None


def load_model(folder: ModelFolder, attn_implementation: str | None = None) -> nn.Module:
    """The folder's model in float32 and eval mode (a pruned one from lit_prune's own classes, no remote code),
    with transformers' default attention implementation or the one named."""
    options = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if folder.pruned:
        model = load_pruned(folder.path, kind=folder.kind, dtype=torch.float32, **options)
    else:
        from transformers import (
            AutoModelForQuestionAnswering,
            AutoModelForSequenceClassification,
            AutoModelForTokenClassification,
        )

        auto = {"sequence_classification": AutoModelForSequenceClassification,
                "question_answering": AutoModelForQuestionAnswering,
                "token_classification": AutoModelForTokenClassification}[folder.kind]
        model = auto.from_pretrained(folder.path, dtype=torch.float32, **options)
    return model.eval()


def load_tokenizer(folder: ModelFolder) -> Any:
    """The folder's tokenizer, or ``None`` when it holds none."""
    if not folder.has_tokenizer:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder.path)


def input_names(model: nn.Module) -> list[str]:
    """The graph's inputs: ``input_ids`` and ``attention_mask``, and ``token_type_ids`` where the model has more
    than one token type (BERT; RoBERTa has one, DistilBERT none), as its tokenizer gives them for sentence pairs."""
    names = ["input_ids", "attention_mask"]
    accepted = forward_keys(model)
    if (accepted is None or "token_type_ids" in accepted) and getattr(model.config, "type_vocab_size", 1) > 1:
        names.append("token_type_ids")
    return names


__all__ = ["ModelFolder", "NotAModelFolderError", "OUTPUTS", "input_names", "load_model", "load_tokenizer",
           "read_model_folder"]
