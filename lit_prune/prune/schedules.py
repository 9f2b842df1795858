"""Pruning schedules: how much of the model is kept at each training step, for methods that prune while training.

One cubic schedule serves both: SMP's keep ratio ``v_t = v_f + (1 − v_f)(1 − t/N)³`` over the whole run (Zhu & Gupta's
schedule, SMP's code) and GRAIN's density, held at 1 until ``start``·N and at the target from ``end``·N on (GRAIN's
reference code: 20% and 40% of training).
"""

from __future__ import annotations


def cubic_schedule(step: int, total_steps: int, final: float, start: float = 0.0, end: float = 1.0) -> float:
    """The cubic schedule: 1 until ``start``·N, ``final`` from ``end``·N on, and in between
    ``final + (1 − final)·(1 − (t − t₀)/(t₁ − t₀))³`` with t₀ = ⌊start·N⌋, t₁ = ⌊end·N⌋ (steps counted from 0).

    Args:
        step: the current step t.
        total_steps: N, the run's optimiser steps.
        final: the kept fraction at the end, in (0, 1].
        start, end: where the descent starts and ends, as fractions of N (0 ≤ start < end ≤ 1).

    Raises:
        ValueError: ``total_steps`` < 1, ``final`` outside (0, 1], or not 0 ≤ start < end ≤ 1.
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps={total_steps!r}: expected at least 1 training step")
    if not 0 < final <= 1:
        raise ValueError(f"final={final!r}: expected a kept fraction in (0, 1]")
    if not 0 <= start < end <= 1:
        raise ValueError(f"start={start!r}, end={end!r}: expected 0 <= start < end <= 1")
    first, last = int(start * total_steps), int(end * total_steps)
    if step <= first:
        return 1.0
    if step >= last:
        return final
    remaining = 1 - (step - first) / (last - first)
    return final + (1 - final) * remaining ** 3


__all__ = ["cubic_schedule"]
