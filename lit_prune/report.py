"""The pruning report: one JSON file that every pruning run writes, whatever the method.

Benchmarks and plots read only these reports. The top-level keys every method shares (:data:`REPORT_KEYS`):

* ``method``, ``model`` (what was pruned), ``task``, ``seed``, ``world_size``;
* ``flops``: ``dense``, ``pruned``, ``kept`` (pruned / dense), ``seq_len`` (the ``s`` of the accounting: the
  task's average tokenised evaluation length) and ``target`` (the ``flops_kept`` asked for);
* ``params``: ``dense``, ``pruned`` (each ``total`` and ``encoder_linear``);
* ``metrics``: ``dense``, ``pruned`` (the evaluation split's metrics by name) and ``main`` (the task's main metric);
* ``seconds``: wall seconds per phase and ``total``;
* ``latency``: ``dense_ms``, ``pruned_ms``, ``speedup`` (dense / pruned, medians), ``speedup_paired`` and the
  batch shape, measured interleaved in the same run;
* ``structure``: the kept units per layer (``heads``: [[q, v], ...], ``head_ids``, ``ffn``);
* ``hardware``: where it ran.

Methods add their own keys (``calibration``, ``settings``, ``warnings``, per-sublayer ``steps``, ...).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lit_prune.core.atomic import atomic_write_text

REPORT_FILE = "pruning_report.json"
PRUNED_MODEL_DIR = "pruned_model"
REPORT_KEYS = ("method", "model", "task", "seed", "world_size", "flops", "params", "metrics", "seconds", "latency",
               "structure", "hardware")


def _jsonable(value: Any) -> Any:
    """Plain JSON values: floats that are not finite become ``None`` (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # 0-d tensors, numpy scalars
        return _jsonable(value.item())
    return value


def write_report(path: str | Path, report: dict[str, Any]) -> Path:
    """Write ``report`` as indented JSON, atomically.

    Raises:
        ValueError: a shared key is missing.
    """
    missing = [key for key in REPORT_KEYS if key not in report]
    if missing:
        raise ValueError(f"pruning report: missing keys {missing}; every report has {list(REPORT_KEYS)}")
    return atomic_write_text(path, json.dumps(_jsonable(report), indent=2) + "\n")


def read_report(path: str | Path) -> dict[str, Any]:
    """Read a report written by :func:`write_report` (a file or the run folder that holds it).

    Raises:
        FileNotFoundError: no report there.
        ValueError: the file is not a pruning report.
    """
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no pruning report at {path}")
    report = json.loads(path.read_text())
    missing = [key for key in REPORT_KEYS if key not in report]
    if missing:
        raise ValueError(f"{path} is not a lit_prune pruning report: it lacks {missing}")
    return report


__all__ = ["PRUNED_MODEL_DIR", "REPORT_FILE", "REPORT_KEYS", "read_report", "write_report"]
