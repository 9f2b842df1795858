"""The checks of the settings every pruning callback shares: how a run ends (``latency_batch_size``,
``latency_repeats``, ``save_dtype``, ``save_model``, ``evaluate``) and what it reads of the project (``seq_len``,
``seed``, ``batch_to_inputs``). Each has one meaning across the five methods (docs/callbacks.md); each callback adds
these problems to its own, so that one error at construction names every invalid setting."""

from __future__ import annotations

from typing import Any

from lit_prune.core.io import save_dtype_problem


def shared_settings_problems(*, latency_batch_size: Any, latency_repeats: Any, seq_len: Any, seed: Any,
                             batch_to_inputs: Any, save_dtype: Any, **switches: Any) -> list[str]:
    """Every invalid shared setting, each with what is allowed (empty when all are valid).

    Args:
        switches: on/off settings (``save_model``, ``evaluate``, ...), each True or False.
    """
    problems = [f"{name}={value!r}: expected True or False" for name, value in switches.items()
                if not isinstance(value, bool)]
    for name, value, low in (("latency_batch_size", latency_batch_size, 0), ("latency_repeats", latency_repeats, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            problems.append(f"{name}={value!r}: expected an integer >= {low}")
    if seq_len is not None and (isinstance(seq_len, bool) or not isinstance(seq_len, (int, float))
                                or not seq_len > 0):
        problems.append(f"seq_len={seq_len!r}: expected a number > 0 (an average tokenised length) or None")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        problems.append(f"seed={seed!r}: expected an integer or None")
    if batch_to_inputs is not None and not callable(batch_to_inputs):
        problems.append(f"batch_to_inputs={batch_to_inputs!r}: expected a callable (batch -> dict of model inputs) "
                        "or None")
    problem = save_dtype_problem(save_dtype)
    if problem is not None:
        problems.append(problem)
    return problems


__all__ = ["shared_settings_problems"]
