"""Resolve model and dataset names to something that can be loaded.

A model or dataset is named in one of three ways, tried in this order:

1. an explicit path (absolute, relative, or starting with ``~``) that exists;
2. a name looked up in the local assets folder given by the environment variable
   ``LIT_PRUNE_ASSETS``, laid out as::

       $LIT_PRUNE_ASSETS/models/<name>/            a Hugging Face model folder
       $LIT_PRUNE_ASSETS/data/glue/<TASK>/         GLUE TSVs (SST-2, MRPC, STS-B, ...)
       $LIT_PRUNE_ASSETS/data/squad/v1.1/          train-v1.1.json / dev-v1.1.json
       $LIT_PRUNE_ASSETS/data/squad/v2.0/          train-v2.0.json / dev-v2.0.json

3. a hub id (``bert-base-uncased``, ``nyu-mll/glue``), left to ``transformers`` / ``datasets``.

When nothing resolves, the error lists every place that was tried.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ASSETS_ENV = "LIT_PRUNE_ASSETS"
HUB_OFFLINE_ENVS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


class AssetNotFoundError(FileNotFoundError):
    """A model or dataset name that resolves to nothing; the message lists what was tried."""


def assets_root() -> Path | None:
    """The local assets folder from ``LIT_PRUNE_ASSETS``, or ``None`` when the variable is unset."""
    value = os.environ.get(ASSETS_ENV, "").strip()
    if not value:
        return None
    root = Path(value).expanduser()
    if not root.is_dir():
        raise AssetNotFoundError(f"{ASSETS_ENV}={value!r} is not a folder; point it at a folder laid out as "
                                 "models/<name>/, data/glue/<TASK>/, data/squad/<version>/, or unset it.")
    return root.resolve()


def hub_offline() -> bool:
    """Whether the user has told Hugging Face libraries not to reach the hub."""
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on") for name in HUB_OFFLINE_ENVS)


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model comes from: ``location`` is passed to ``from_pretrained``."""

    location: str
    source: str  # "path", "assets" or "hub"


def resolve_model(name_or_path: str, setting: str = "name_or_path") -> ResolvedModel:
    """Resolve a model name to a local folder or a hub id.

    Args:
        name_or_path: a folder, a name under ``$LIT_PRUNE_ASSETS/models/``, or a hub id.
        setting: the name of the setting the value came from, used in error messages.

    Raises:
        AssetNotFoundError: the name is a path that does not exist, or resolves to nothing and the hub is
            switched off; the message lists what was tried.
    """
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise AssetNotFoundError(f"{setting}={name_or_path!r}: expected a model folder, an assets name or a hub id.")
    tried: list[str] = []
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise AssetNotFoundError(f"{setting}={name_or_path!r} is a path, but holds no config.json: "
                                     "expected a Hugging Face model folder (config.json + weights + tokenizer).")
        return ResolvedModel(str(path.resolve()), "path")
    tried.append(f"path {path}")
    if name_or_path.startswith((".", "/", "~")) or name_or_path.strip("/").count("/") > 1:
        # a hub id is "name" or "owner/name": a longer relative path can only be a folder
        raise AssetNotFoundError(f"{setting}={name_or_path!r}: no such folder (tried {path.resolve()}).")
    root = assets_root()
    if root is not None:
        for candidate in (root / "models" / name_or_path, root / "models" / name_or_path.split("/")[-1]):
            if (candidate / "config.json").is_file():
                return ResolvedModel(str(candidate), "assets")
            tried.append(f"assets {candidate}")
    else:
        tried.append(f"assets (unset: set {ASSETS_ENV} to a local assets folder)")
    if hub_offline():
        raise AssetNotFoundError(f"{setting}={name_or_path!r} resolves to nothing and the hub is switched off. "
                                 f"Tried: {'; '.join(tried)}.")
    return ResolvedModel(name_or_path, "hub")


def resolve_data_dir(*parts: str, required_files: tuple[str, ...] = ()) -> Path | None:
    """The local folder ``$LIT_PRUNE_ASSETS/data/<parts...>`` if it exists, else ``None``.

    Args:
        parts: path parts below ``data/`` (``"glue", "SST-2"``).
        required_files: files that must be present when the folder exists; a folder that lacks any of them is
            an error (a broken local copy must not fall through to the hub silently).
    """
    root = assets_root()
    if root is None:
        return None
    folder = root.joinpath("data", *parts)
    if not folder.is_dir():
        return None
    missing = [name for name in required_files if not (folder / name).is_file()]
    if missing:
        raise AssetNotFoundError(f"local data folder {folder} lacks {', '.join(missing)}; "
                                 f"expected files: {', '.join(required_files)}.")
    return folder


def describe_data_lookup(*parts: str) -> str:
    """A one-line account of where local data for ``parts`` was looked for (for error messages)."""
    root = assets_root()
    if root is None:
        return f"no local copy ({ASSETS_ENV} is unset)"
    return f"no local copy at {root.joinpath('data', *parts)}"
