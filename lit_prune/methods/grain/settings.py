"""GrainCallback's settings, checked together at construction: every invalid one is named in one error, with its
value and the allowed range (the paper's values are the defaults)."""

from __future__ import annotations

import math
from typing import Any, Literal

from lit_prune.methods.grain.layout import UNITS, check_density
from lit_prune.methods.settings import shared_settings_problems

ImportanceFrom = Literal["auto", "prediction_loss", "teacher", "loss"]
IMPORTANCE_FROM = ("auto", "prediction_loss", "teacher", "loss")


def settings_problems(*, params_kept: Any, units: Any, start: Any, end: Any, ema_beta: Any, alpha: Any,
                      prune_every: Any, latency_batch_size: Any, latency_repeats: Any, seq_len: Any,
                      embedding_rank: Any, importance_from: Any, teacher: Any, temperature: Any,
                      batch_to_inputs: Any, save_dtype: Any = "float32", seed: Any = 0, save_model: Any = True,
                      evaluate: Any = True) -> list[str]:
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
    if isinstance(prune_every, bool) or not isinstance(prune_every, int) or prune_every < 1:
        problems.append(f"prune_every={prune_every!r}: expected an integer >= 1")
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
    problems += shared_settings_problems(latency_batch_size=latency_batch_size, latency_repeats=latency_repeats,
                                         seq_len=seq_len, seed=seed, batch_to_inputs=batch_to_inputs,
                                         save_dtype=save_dtype, save_model=save_model, evaluate=evaluate)
    return problems


__all__ = ["IMPORTANCE_FROM", "ImportanceFrom", "settings_problems"]
