"""Sentence-embedding pooling: read from a sentence-transformers folder, written back beside a pruned model.

A sentence-transformers model folder describes its pipeline in ``modules.json`` (a ``Transformer``, then a
``Pooling``, optionally a ``Normalize``), its pooling in ``<pooling path>/config.json`` and its truncation length in
``sentence_bert_config.json``. lit_prune keeps the same three facts in the model's config
(``config.lit_prune_sentence_embedding``, see
:class:`~lit_prune.core.hf_modeling.modeling_lit_pruned.BertForSentenceEmbedding`), so a pruned folder carries them
and :func:`write_sentence_transformers_files` writes the sentence-transformers files back from the config alone:
``SentenceTransformer(folder, trust_remote_code=True)`` then gives the pruned model's embeddings, pooling and
normalisation included.

Supported: one pooling mode among mean, CLS and max, with or without normalisation. Other pipelines (several
modes concatenated, weighted-mean or last-token pooling, ``Dense`` layers after the pooling) are refused with the
module they would need.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lit_prune.core.atomic import atomic_write_text
from lit_prune.core.hf_modeling.modeling_lit_pruned import POOLING_MODES, SENTENCE_EMBEDDING_KEY

MODULES_FILE = "modules.json"
SETTINGS_FILE = "sentence_bert_config.json"
POOLING_DIR = "1_Pooling"
_MODULE = "sentence_transformers.models."
#: sentence-transformers' pooling flag of each mode lit_prune supports, and the flags it refuses
_MODE_FLAGS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens"}
_OTHER_FLAGS = ("pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable JSON file ({error})") from error


def read_pooling(folder: str | Path) -> dict[str, Any] | None:
    """The pooling a sentence-transformers folder declares: ``{"pooling", "normalize", "max_seq_length"}``, or
    ``None`` when the folder has no ``modules.json`` (not a sentence-transformers model).

    Raises:
        ValueError: the folder's pipeline is one lit_prune does not reproduce (naming the module or flag).
    """
    folder = Path(folder)
    if not (folder / MODULES_FILE).is_file():
        return None
    modules = _read_json(folder / MODULES_FILE)
    types = [str(module.get("type", "")) for module in modules]
    unsupported = [t for t in types if t.removeprefix(_MODULE) not in ("Transformer", "Pooling", "Normalize")]
    if unsupported:
        raise ValueError(f"{folder / MODULES_FILE}: the module(s) {unsupported} are not supported; lit_prune prunes "
                         "sentence-transformers models made of a Transformer, a Pooling and optionally a Normalize")
    pooling_modules = [m for m in modules if str(m.get("type", "")).endswith("Pooling")]
    if len(pooling_modules) != 1:
        raise ValueError(f"{folder / MODULES_FILE}: expected one Pooling module, found {len(pooling_modules)}")
    config = _read_json(folder / pooling_modules[0].get("path", POOLING_DIR) / "config.json")
    modes = [mode for mode, flag in _MODE_FLAGS.items() if config.get(flag)]
    others = [flag for flag in _OTHER_FLAGS if config.get(flag)]
    if others or len(modes) != 1:
        found = [_MODE_FLAGS[m] for m in modes] + others
        raise ValueError(f"{folder}: the pooling {found or 'none'} is not supported; lit_prune supports exactly one "
                         f"of {sorted(_MODE_FLAGS.values())} (set the task module's pooling= to override)")
    settings = _read_json(folder / SETTINGS_FILE) if (folder / SETTINGS_FILE).is_file() else {}
    return {"pooling": modes[0], "normalize": any(t.endswith("Normalize") for t in types),
            "max_seq_length": settings.get("max_seq_length")}


def embedding_settings(folder: str | Path, pooling: str | None, normalize: bool | None, *,
                       setting: str = "pooling") -> dict[str, Any]:
    """The pooling to use for the model in ``folder``: its sentence-transformers files, overridden by the given
    ``pooling`` / ``normalize`` where not ``None``.

    Raises:
        ValueError: ``pooling`` is not a supported mode, or neither the folder nor ``pooling`` gives one.
    """
    if pooling is not None and pooling not in POOLING_MODES:
        raise ValueError(f"{setting}={pooling!r}: expected one of {list(POOLING_MODES)}")
    found = read_pooling(folder) if Path(folder).is_dir() else None
    if found is None and pooling is None:
        raise ValueError(f"{setting}=None, and {folder} has no sentence-transformers pooling ({MODULES_FILE}): say how "
                         f"to pool the token states into a sentence embedding, {setting}= one of "
                         f"{list(POOLING_MODES)} (and normalize=true if the model's embeddings are compared by cosine "
                         "after normalising)")
    settings = dict(found or {"pooling": None, "normalize": False, "max_seq_length": None})
    if pooling is not None:
        settings["pooling"] = pooling
    if normalize is not None:
        settings["normalize"] = bool(normalize)
    return settings


def write_sentence_transformers_files(folder: str | Path, config: Any) -> None:
    """Write ``modules.json``, the pooling config and ``sentence_bert_config.json`` into ``folder`` from
    ``config.lit_prune_sentence_embedding`` (a folder being written: call inside its temporary directory)."""
    folder = Path(folder)
    settings = getattr(config, SENTENCE_EMBEDDING_KEY)
    modules = [{"idx": 0, "name": "0", "path": "", "type": _MODULE + "Transformer"},
               {"idx": 1, "name": "1", "path": POOLING_DIR, "type": _MODULE + "Pooling"}]
    if settings.get("normalize"):
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": _MODULE + "Normalize"})
        (folder / "2_Normalize").mkdir(exist_ok=True)
    atomic_write_text(folder / MODULES_FILE, json.dumps(modules, indent=2) + "\n")
    pooling = {"word_embedding_dimension": int(config.hidden_size if hasattr(config, "hidden_size") else config.dim),
               **{flag: mode == settings["pooling"] for mode, flag in _MODE_FLAGS.items()},
               **{flag: False for flag in _OTHER_FLAGS}, "include_prompt": True}
    (folder / POOLING_DIR).mkdir(exist_ok=True)
    atomic_write_text(folder / POOLING_DIR / "config.json", json.dumps(pooling, indent=2) + "\n")
    length = settings.get("max_seq_length") or getattr(config, "max_position_embeddings", 512)
    atomic_write_text(folder / SETTINGS_FILE, json.dumps({"max_seq_length": int(length), "do_lower_case": False},
                                                         indent=2) + "\n")


__all__ = ["embedding_settings", "read_pooling", "write_sentence_transformers_files"]
