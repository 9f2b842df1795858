"""GrainCallback's settings, checked together at construction: every invalid one is named in one error, with its
value and the allowed range (the paper's values are the defaults)."""

from __future__ import annotations

import math
from typing import Any, Literal

from lit_prune.core.io import save_dtype_problem
from lit_prune.methods.grain.layout import UNITS, check_density

ImportanceFrom = Literal["auto", "prediction_loss", "teacher", "loss"]
IMPORTANCE_FROM = ("auto", "prediction_loss", "teacher", "loss")


def settings_problems(*, params_kept: Any, units: Any, start: Any, end: Any, ema_beta: Any, alpha: Any,
                      prune_every: Any, latency_batch_size: Any, latency_repeats: Any, seq_len: Any,
                      embedding_rank: Any, importance_from: Any, teacher: Any, temperature: Any,
                      batch_to_inputs: Any, save_dtype: Any = "float32") -> list[str]:
    """Every invalid setting of :class:`~lit_prune.methods.grain.callback.GrainCallback`, each with its fix (empty
    when all are valid)."""
    problems = []
    if embedding_rank is not None and (isinstance(embedding_rank, bool) or not isinstance(embedding_rank, int)
                                       or embedding_rank < 1):
        problems.append(f"embedding_rank={embedding_rank!r}: expected a positive integer (below the hidden size) "
                        "or None")
    try:
        check_density(params_kept)
    except ValueError as error:
        problems.append(str(error))
    if units not in UNITS:
        problems.append(f"units={units!r}: expected one of {list(UNITS)}")
    if not (isinstance(start, (int, float)) and isinstance(end, (int, float)) and 0 <= start < end <= 1):
        problems.append(f"start={start!r}, end={end!r}: expected fractions of training with 0 <= start < end <= 1")
    if not (isinstance(ema_beta, (int, float)) and 0 <= ema_beta < 1):
        problems.append(f"ema_beta={ema_beta!r}: expected a number in [0, 1)")
    if alpha is not None and not (isinstance(alpha, (int, float)) and alpha > 0):
        problems.append(f"alpha={alpha!r}: expected a number > 0, or None to switch the regulariser off")
    for name, value, low in (("prune_every", prune_every, 1), ("latency_batch_size", latency_batch_size, 0),
                             ("latency_repeats", latency_repeats, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            problems.append(f"{name}={value!r}: expected an integer >= {low}")
    if seq_len is not None and (isinstance(seq_len, bool) or not isinstance(seq_len, (int, float))
                                or not seq_len > 0):
        problems.append(f"seq_len={seq_len!r}: expected a number > 0 (an average tokenised length) or None")
    if importance_from not in IMPORTANCE_FROM:
        problems.append(f"importance_from={importance_from!r}: expected one of {list(IMPORTANCE_FROM)}")
    elif teacher is not None and importance_from in ("prediction_loss", "loss"):
        problems.append(f"teacher={teacher!r} with importance_from={importance_from!r}: the teacher is used only "
                        "by importance_from='teacher' (or 'auto'); drop one of them")
    if teacher is not None and not (isinstance(teacher, str) and teacher):
        problems.append(f"teacher={teacher!r}: expected a model folder or name, or None (a frozen copy of the "
                        "model as the fit starts)")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            math.isfinite(temperature) and temperature > 0):
        problems.append(f"temperature={temperature!r}: expected a number > 0 (GRAIN: 8)")
    if batch_to_inputs is not None and not callable(batch_to_inputs):
        problems.append(f"batch_to_inputs={batch_to_inputs!r}: expected a callable (batch -> dict of model "
                        "inputs) or None")
    problem = save_dtype_problem(save_dtype)
    if problem is not None:
        problems.append(problem)
    return problems


__all__ = ["IMPORTANCE_FROM", "ImportanceFrom", "settings_problems"]
