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

Before a name goes to the hub, one request without retries (:func:`hub_status`, with huggingface_hub's metadata
timeout ``HF_HUB_ETAG_TIMEOUT``, 10 s by default) asks whether the hub is there and has the model; transformers' own
attempts would retry five times, about 30 s, and end in a connection error that names none of the places above. A
model the hub cannot give is still found in the Hugging Face cache.

When nothing resolves, the error names ``LIT_PRUNE_ASSETS`` (its value, or that it is unset), every place tried,
and the hub's state: switched off (``HF_HUB_OFFLINE``), unreachable, or without that model.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ASSETS_ENV = "LIT_PRUNE_ASSETS"
HUB_OFFLINE_ENVS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
ASSETS_LAYOUT = "models/<name>/, data/glue/<TASK>/, data/squad/<version>/"

#: What the hub answered, per URL, in this process (``None``: usable; else why not): asked once, never retried.
_HUB_ANSWERS: dict[str, str | None] = {}


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
                                 f"{ASSETS_LAYOUT}, or unset it.")
    return root.resolve()


def _offline_setting() -> str | None:
    """The variable that switches the hub off, as ``HF_HUB_OFFLINE=1``, or ``None``."""
    for name in HUB_OFFLINE_ENVS:
        value = os.environ.get(name, "").strip()
        if value.lower() in ("1", "true", "yes", "on"):
            return f"{name}={value}"
    return None


def hub_offline() -> bool:
    """Whether the user has told Hugging Face libraries not to reach the hub."""
    return _offline_setting() is not None


def _head(url: str) -> Any:
    """One HEAD request through huggingface_hub's HTTP client (its proxies, certificates and token), no retries."""
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers, get_session

    return get_session().head(url, headers=build_hf_headers(), timeout=constants.HF_HUB_ETAG_TIMEOUT)


def hub_status(model: str | None = None) -> str | None:
    """Why the hub cannot be used, or ``None`` when it can: ``"switched off (HF_HUB_OFFLINE=1)"``, ``"unreachable
    at https://huggingface.co (ConnectError: ...)"``, or, for a ``model`` id, ``"reachable ... but has no model
    'x'"``. Asked with one request per model (or, without one, per endpoint) per process, never retried.

    Args:
        model: a model id whose ``config.json`` the hub must have; ``None`` asks only whether the hub answers.
    """
    if (setting := _offline_setting()) is not None:
        return f"switched off ({setting})"
    from huggingface_hub import constants, hf_hub_url

    endpoint = constants.ENDPOINT
    try:
        url = hf_hub_url(model, "config.json") if model else endpoint
    except ValueError as error:  # huggingface_hub's HFValidationError: not a repository id at all
        return f"not asked: {model!r} is not a hub id ({error})"
    if url not in _HUB_ANSWERS:
        _HUB_ANSWERS[url] = _judge(url, endpoint, model)
    return _HUB_ANSWERS[url]


def _judge(url: str, endpoint: str, model: str | None) -> str | None:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    from huggingface_hub.utils import hf_raise_for_status

    try:
        response = _head(url)
    except Exception as error:  # noqa: BLE001 - no name or route, refused, timed out, a proxy or TLS failure
        return f"unreachable at {endpoint} ({type(error).__name__}: {error})"
    if model is None or response.status_code < 400:
        return None
    try:
        hf_raise_for_status(response)
    except GatedRepoError:
        return None  # transformers says how to ask for access
    except RepositoryNotFoundError:
        return f"reachable at {endpoint} but has no model {model!r} (a private one needs `hf auth login`)"
    except Exception:  # noqa: BLE001 - a missing config.json, a server error: transformers' own message says it
        return None
    return None


def _hub_cache(model: str) -> Path | None:
    """The Hugging Face cache's snapshot folder of ``model`` when it holds its ``config.json``, else ``None``."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(model, "config.json")
    except ValueError:  # not a repository id
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def _assets_models(root: Path, name: str) -> str:
    """What ``$LIT_PRUNE_ASSETS/models/`` holds, with the closest name to ``name``, for an error message."""
    folder = root / "models"
    held = sorted(p.name for p in folder.iterdir() if (p / "config.json").is_file()) if folder.is_dir() else []
    if not held:
        return f"{folder} holds no model folders"
    close = difflib.get_close_matches(name.split("/")[-1], held, n=1, cutoff=0.6)
    return f"it holds {', '.join(held)}" + (f"; did you mean {close[0]!r}?" if close else "")


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model comes from: ``location`` is passed to ``from_pretrained``."""

    location: str
    source: str  # "path", "assets", "hub" or "hub cache" (the cache's snapshot folder, when the hub cannot serve it)


def resolve_model(name_or_path: str, setting: str = "name_or_path") -> ResolvedModel:
    """Resolve a model name to a local folder or a hub id.

    Args:
        name_or_path: a folder, a name under ``$LIT_PRUNE_ASSETS/models/``, or a hub id.
        setting: the name of the setting the value came from, used in error messages.

    Raises:
        AssetNotFoundError: the name is a path that does not exist, or resolves to nothing: not under
            ``LIT_PRUNE_ASSETS``, and the hub is switched off, unreachable or without it (and the Hugging Face cache
            lacks it); the message lists what was tried.
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
    tried.append(f"path {path} (no such folder)")
    if name_or_path.startswith((".", "/", "~")) or name_or_path.strip("/").count("/") > 1:
        # a hub id is "name" or "owner/name": a longer relative path can only be a folder
        raise AssetNotFoundError(f"{setting}={name_or_path!r}: no such folder (tried {path.resolve()}).")
    root = assets_root()
    if root is not None:
        models = root / "models"
        candidates = list(dict.fromkeys((models / name_or_path, models / name_or_path.split("/")[-1])))
        for candidate in candidates:
            if (candidate / "config.json").is_file():
                return ResolvedModel(str(candidate), "assets")
        tried.append(f"assets {ASSETS_ENV}={root}: no {' or '.join(str(c.relative_to(root)) for c in candidates)} "
                     f"({_assets_models(root, name_or_path)})")
    else:
        tried.append(f"assets: {ASSETS_ENV} is unset (a local folder laid out as {ASSETS_LAYOUT})")
    status = hub_status(name_or_path)
    if status is None:
        return ResolvedModel(name_or_path, "hub")
    cached = _hub_cache(name_or_path)
    if cached is not None:
        return ResolvedModel(str(cached), "hub cache")
    tried.append(f"the Hugging Face cache (no {name_or_path})")
    tried.append(f"the hub: {status}")
    raise AssetNotFoundError(f"{setting}={name_or_path!r} resolves to nothing. Tried: {'; '.join(tried)}.")


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
    return f"no local copy at {root.joinpath('data', *parts)} ({ASSETS_ENV}={root})"
