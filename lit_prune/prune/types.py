"""The callables a calibration loop hands to a method's stages (plain functions, so stages run without a Trainer)."""

from __future__ import annotations

from collections.abc import Callable

import torch

#: Sums a dict of tensors over processes (a DDP all-reduce); the identity in a single process.
Reduce = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
#: ``progress(description, done, total)``, called after each calibration batch.
Progress = Callable[[str, int, int], None]


def identity(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The :data:`Reduce` of a single process."""
    return tensors


__all__ = ["Progress", "Reduce", "identity"]
