"""Batches as models take them: which keys are labels, which inputs a model's ``forward`` accepts.

Plain PyTorch; used by every method to turn a calibration or training batch into model inputs.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

LABEL_KEYS = ("labels", "start_positions", "end_positions")


def forward_keys(model: nn.Module) -> set[str] | None:
    """The keyword arguments ``model.forward`` names (``None``: it names none and takes any, ``**kwargs`` only).

    A forward that names its inputs and also takes ``**kwargs`` (every transformers model) gets only the named ones:
    batch entries such as ``word_ids`` or ``feature_index`` are not model inputs.
    """
    parameters = inspect.signature(model.forward).parameters
    named = {name for name, p in parameters.items()
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    if not named and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    return named


def model_batch(model: nn.Module, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of ``batch`` the model takes, labels included (drops e.g. ``feature_index``)."""
    keys = forward_keys(model)
    return {name: value for name, value in batch.items()
            if isinstance(value, torch.Tensor) and (keys is None or name in keys)}


def model_inputs(model: nn.Module, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of ``batch`` that ``model.forward`` takes, on the model's device, without labels."""
    device = next(model.parameters()).device
    return {name: value.to(device) for name, value in model_batch(model, batch).items() if name not in LABEL_KEYS}



def count_tokens(batch: Mapping[str, torch.Tensor]) -> int:
    """Non-padding tokens of a batch of model inputs (every position when it has no attention mask)."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())


__all__ = ["LABEL_KEYS", "count_tokens", "forward_keys", "model_batch", "model_inputs"]
