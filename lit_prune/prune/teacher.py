"""The frozen teacher of a distillation: one holder for every method that learns from one (GRAIN, SMP).

A teacher is a model in eval mode with no trainable parameters, kept out of the optimiser and out of checkpoints:
:class:`FrozenTeacher` holds it outside the module tree of whatever owns it (a LightningModule's ``parameters()``
and ``state_dict()`` never see it), follows the student's device on demand, and answers under ``torch.no_grad``.
By default it is a frozen copy of the student as it stands when distillation starts (the fine-tuned model a
pruning run begins from); a separate checkpoint can be given instead.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


class FrozenTeacher:
    """A frozen teacher model, held outside any module tree.

    Args:
        model: the teacher; frozen in place (eval mode, ``requires_grad=False``). Use :meth:`copy_of` to freeze a
            copy of a model that goes on training.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval().requires_grad_(False)

    @classmethod
    def copy_of(cls, model: nn.Module) -> FrozenTeacher:
        """A frozen deep copy of ``model`` as it is now."""
        return cls(copy.deepcopy(model))

    def to(self, device: torch.device | str) -> FrozenTeacher:
        """Move the teacher to ``device`` (and back to eval mode, which a ``.train()`` of a parent cannot reach)."""
        self.model.to(device).eval()
        return self

    @torch.no_grad()
    def __call__(self, inputs: Mapping[str, Any], **kwargs: Any) -> Any:
        """The teacher's outputs for model ``inputs`` (moved to the teacher's device), without gradients."""
        device = next(self.model.parameters()).device
        return self.model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()},
                          **kwargs)


__all__ = ["FrozenTeacher"]
