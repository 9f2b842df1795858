"""Save and load a pruned model as a Hugging Face folder that loads anywhere transformers does.

A pruned folder holds:

* ``config.json``: the original config type (``model_type`` unchanged) plus ``lit_prune_structure`` (the kept
  structure and the dense shape, see :mod:`lit_prune.core.hf_modeling.modeling_lit_pruned`) and ``auto_map``
  entries for ``AutoModel``, ``AutoModelForSequenceClassification``, ``AutoModelForQuestionAnswering`` and
  ``AutoModelForTokenClassification``;
* ``model.safetensors``: the compacted weights, in the dtype asked (``save_pruned(..., dtype=)``, the callbacks'
  ``save_dtype``: float32 by default, or bfloat16 / float16), which the config records as transformers 5's ``dtype``;
* ``modeling_lit_pruned.py``: a copy of lit_prune's modelling file (torch + transformers only), which rebuilds
  the pruned architecture before the weights load;
* the tokenizer files, when a tokenizer is given;
* for a sentence-embedding model, the sentence-transformers files (``modules.json``, the pooling config,
  ``sentence_bert_config.json``; see :mod:`lit_prune.core.pooling`).

So ``AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)`` works without lit_prune,
and :func:`load_pruned` loads it inside lit_prune from the package's own copy of the classes (no remote code). Both
load the weights in the dtype they were saved in: transformers 5's ``from_pretrained`` defaults to ``dtype="auto"``,
which reads the config's ``dtype``; pass ``dtype=torch.float32`` to either to get float32 from a bfloat16 folder.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from torch import nn
from transformers import AutoConfig

from lit_prune.core.arch import STRUCTURE_KEY, get_adapter
from lit_prune.core.atomic import atomic_directory, atomic_write_text
from lit_prune.core.hf_modeling import modeling_lit_pruned as hf
from lit_prune.core.pooling import write_sentence_transformers_files

Kind = Literal["base", "sequence_classification", "question_answering", "token_classification", "label_words",
               "sentence_embedding"]

MODELING_FILE = "modeling_lit_pruned.py"
WEIGHTS_FILE = "model.safetensors"

#: the dtypes a pruned folder's weights may be written in (the callbacks' ``save_dtype``), by name
SaveDtype = Literal["float32", "bfloat16", "float16"]
SAVE_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                                       "float16": torch.float16}


class NotAPrunedModelError(ValueError):
    """A folder that does not hold a valid lit_prune pruned model."""


def _kind_of(model: nn.Module) -> tuple[str, str]:
    """(model_type, kind) of a model whose class the modelling file can rebuild."""
    for key, pruned_class in hf.PRUNED_CLASSES.items():
        if type(model) in (pruned_class, pruned_class.__bases__[-1]):
            return key
    supported = sorted({cls.__bases__[-1].__name__ for cls in hf.PRUNED_CLASSES.values()})
    raise ValueError(f"cannot save a pruned {type(model).__name__}: the pruned-folder format supports "
                     f"{', '.join(supported)}")


def save_dtype_problem(value: Any, setting: str = "save_dtype") -> str | None:
    """Why ``value`` is not a dtype a pruned folder can be written in, naming ``setting``; ``None`` when it is one of
    :data:`SAVE_DTYPES`' names."""
    if isinstance(value, str) and value in SAVE_DTYPES:
        return None
    return (f"{setting}={value!r}: expected one of {', '.join(map(repr, SAVE_DTYPES))} (the dtype the pruned "
            "folder's weights are written in)")


def _save_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``save_pruned``'s ``dtype`` as a ``torch.dtype`` (``None``: the model's own)."""
    if dtype is None or (isinstance(dtype, torch.dtype) and dtype in SAVE_DTYPES.values()):
        return dtype
    problem = save_dtype_problem(dtype, "dtype")
    if problem is not None:
        raise ValueError(f"save_pruned: {problem}")
    return SAVE_DTYPES[dtype]


def cast_state_dict(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """``model``'s state dict with its floating-point tensors cast to ``dtype`` (copies: the model is unchanged).
    Tensors that share memory (tied weights) stay shared, so ``save_pretrained`` drops the ties as it always does."""
    cast: dict[tuple, torch.Tensor] = {}
    state = {}
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point() or tensor.dtype == dtype:
            state[name] = tensor
            continue
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride())
        if key not in cast:
            cast[key] = tensor.detach().to(dtype)
        state[name] = cast[key]
    return state


def saved_kind(config: Any) -> str | None:
    """The kind ("base", "sequence_classification", ...) a pruned config was saved as, from ``architectures``."""
    architectures = getattr(config, "architectures", None)
    for (_, kind), pruned_class in hf.PRUNED_CLASSES.items():
        if architectures and architectures[0] in (pruned_class.__name__, pruned_class.__bases__[-1].__name__):
            return kind
    return None


def save_pruned(model: nn.Module, folder: str | Path, tokenizer: Any = None,
                finish: Callable[[Path], Any] | None = None, dtype: SaveDtype | torch.dtype | None = None) -> Path:
    """Write a compacted model (and its tokenizer) as a self-contained Hugging Face folder, atomically.

    Args:
        model: a model returned by :func:`lit_prune.core.compact.compact` (or loaded by :func:`load_pruned`).
        folder: the destination; an existing folder is replaced only once the new one is complete.
        tokenizer: saved beside the model when given.
        finish: called with the complete temporary folder before it takes ``folder``'s place, to add files of its
            own (the model card), so they are written atomically with the rest.
        dtype: the dtype the weights are written in: ``"float32"``, ``"bfloat16"`` or ``"float16"`` (or the
            ``torch.dtype``); the config records it (``dtype``), so ``from_pretrained`` loads them back at it.
            ``None``: the model's own dtype. The model itself is not changed (cast copies are written).

    Returns:
        ``folder``.

    Raises:
        ValueError: the model is not compacted, its class is not one the modelling file rebuilds, or ``dtype`` is
            not one of the three.
    """
    target_dtype = _save_dtype(dtype)
    adapter = get_adapter(model)
    if not adapter.is_compacted:
        raise ValueError(f"this {type(model).__name__} is not compacted; call "
                         "lit_prune.core.compact.compact(model, masks) before save_pruned")
    model_type, kind = _kind_of(model)
    folder = Path(folder)
    with atomic_directory(folder) as tmp:
        model.save_pretrained(tmp, state_dict=None if target_dtype is None else cast_state_dict(model, target_dtype))
        config = json.loads((tmp / "config.json").read_text())
        if target_dtype is not None:  # save_pretrained records the in-memory dtype; the file holds this one
            config["dtype"] = str(target_dtype).removeprefix("torch.")
        config["architectures"] = [hf.PRUNED_CLASSES[(model_type, kind)].__bases__[-1].__name__]
        module = Path(MODELING_FILE).stem
        # every Auto class loads the folder (a classifier's encoder as a base model, say); the saved kind is what
        # its own Auto class gives
        kinds = {**hf.DEFAULT_KINDS, hf.AUTO_CLASSES[kind]: kind}
        config["auto_map"] = {auto: f"{module}.{hf.PRUNED_CLASSES[(model_type, k)].__name__}"
                              for auto, k in kinds.items()}
        atomic_write_text(tmp / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
        shutil.copyfile(hf.__file__, tmp / MODELING_FILE)
        if kind == "sentence_embedding":
            write_sentence_transformers_files(tmp, model.config)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if finish is not None:
            finish(tmp)
    return folder


def read_pruned_config(folder: str | Path) -> Any:
    """The validated config of a pruned folder (a ``transformers`` config with ``lit_prune_structure``).

    Checks the files, the structure (format version, consistency with the config) and that every pruned weight
    in ``model.safetensors`` has the shape the structure implies.

    Raises:
        NotAPrunedModelError: listing every problem found.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotAPrunedModelError(f"{folder} is not a folder, so not a pruned model folder")
    missing = [name for name in ("config.json", WEIGHTS_FILE, MODELING_FILE) if not (folder / name).is_file()]
    if "config.json" in missing:
        raise NotAPrunedModelError(f"{folder} is not a pruned model folder: it has no config.json")
    raw = json.loads((folder / "config.json").read_text())
    if STRUCTURE_KEY not in raw:
        raise NotAPrunedModelError(
            f"{folder} is not a pruned model folder: its config.json has no {STRUCTURE_KEY} (a dense model loads "
            "with transformers' from_pretrained directly)"
            + (f"; it also lacks {', '.join(missing)}" if missing else ""))
    problems = [f"missing {name}" for name in missing]
    try:
        config = AutoConfig.from_pretrained(folder)
    except (ValueError, KeyError, OSError) as error:
        raise NotAPrunedModelError(f"{folder}: config.json does not load: {error}") from error
    problems += hf.structure_problems(getattr(config, STRUCTURE_KEY), config)
    if not problems:
        problems += _weight_problems(folder / WEIGHTS_FILE, config)
    if problems:
        raise NotAPrunedModelError(f"{folder} is not a valid pruned model folder: " + "; ".join(problems))
    return config


def _weight_problems(weights: Path, config: Any) -> list[str]:
    """Every pruned Linear weight whose stored shape differs from the structure's."""
    layout = hf.LAYOUTS[config.model_type]
    structure = getattr(config, STRUCTURE_KEY)
    d = structure["hidden_size"]
    problems = []
    with safe_open(str(weights), framework="pt") as handle:
        shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    for index, layer in enumerate(structure["layers"]):
        q = sum(h[0] for h in layer["heads"])
        v = sum(h[1] for h in layer["heads"])
        n = layer["ffn"]
        up = 2 * n if layout.get("ffn_gated") else n  # a gated FFN's up projection holds the gate rows too
        expected = {"query": (q, d), "key": (q, d), "value": (v, d), "attn_out": (d, v), "ffn_up": (up, d),
                    "ffn_down": (d, n)}
        fused = hf.fused_path(layout["query"])[0]
        if fused != layout["query"]:  # one fused projection of the queries, keys and values
            expected = {**{role: shape for role, shape in expected.items() if role not in ("key", "value")},
                        "query": (2 * q + v, d)}
        for role, shape in expected.items():
            path = hf.fused_path(layout[role])[0]
            suffix = f"{layout['layers']}.{index}.{path}.weight"
            found = [stored for key, stored in shapes.items() if key == suffix or key.endswith("." + suffix)]
            if not found:
                problems.append(f"{WEIGHTS_FILE} has no {suffix}")
            elif found[0] != shape:
                problems.append(f"{WEIGHTS_FILE}: {suffix} has shape {found[0]}, the structure implies {shape}")
    return problems


def is_pruned_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a valid pruned model (see :func:`read_pruned_config`)."""
    try:
        read_pruned_config(folder)
    except NotAPrunedModelError:
        return False
    return True


def load_pruned(folder: str | Path, kind: Kind | None = None, **from_pretrained_kwargs: Any) -> nn.Module:
    """Load a pruned folder with lit_prune's own copy of the modelling classes (no ``trust_remote_code``).

    Args:
        folder: a folder written by :func:`save_pruned`.
        kind: "base", "sequence_classification", "question_answering", "token_classification", "label_words" (a
            classifier through masked-LM label words; "sequence_classification" also loads a folder saved as one) or
            "sentence_embedding" (the encoder with its pooling; "base" also loads a folder saved as one);
            ``None`` loads the kind that was saved.
        **from_pretrained_kwargs: passed to ``from_pretrained`` (e.g. ``attn_implementation``, or ``dtype``: by
            default the dtype the folder was saved in, as transformers 5's ``dtype="auto"`` reads it from the config).

    Raises:
        NotAPrunedModelError: the folder does not hold a valid pruned model.
        ValueError: ``kind`` is not one of the kinds above.
    """
    config = read_pruned_config(folder)
    if kind is None:
        kind = saved_kind(config)
        if kind is None:
            raise ValueError(f"{folder}: config.json does not say which model kind was saved "
                             f"(architectures={getattr(config, 'architectures', None)!r}); pass kind= one of "
                             f"{list(hf.KINDS)}")
    if kind not in hf.KINDS:
        raise ValueError(f"kind={kind!r} is not one of {list(hf.KINDS)}")
    saved = saved_kind(config)
    generic = hf.DEFAULT_KINDS[hf.AUTO_CLASSES[kind]]
    if saved is not None and kind == generic and hf.AUTO_CLASSES[saved] == hf.AUTO_CLASSES[kind]:
        # asked for the Auto class the saved model fills (a label-word classifier is a classifier, a
        # sentence-embedding model an encoder)
        kind = saved
    from_pretrained_kwargs.setdefault("dtype", "auto")  # the saved dtype (transformers 5's default, said outright)
    return hf.PRUNED_CLASSES[(config.model_type, kind)].from_pretrained(folder, **from_pretrained_kwargs)
