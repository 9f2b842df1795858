"""Models as "predict" callables: a batch in, named outputs out, whatever runs them.

A predictor takes a batch as the data modules make it (``input_ids``, ``attention_mask``, maybe ``token_type_ids``,
plus entries that are not model inputs: ``labels``, ``feature_index``, ``word_ids``), picks the inputs it needs,
and returns ``{"logits": ...}`` (``{"start_logits": ..., "end_logits": ...}`` for question answering) as float32
CPU tensors. The check after export and the evaluation runner take any predictor, so an ONNX Runtime session, a
torch model and a ``torch.ao``-quantized torch model are compared and scored by the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lit_prune.export.extra import require
from lit_prune.prune.batches import model_inputs

Predict = Callable[[Mapping[str, Any]], dict[str, torch.Tensor]]


class TorchPredictor:
    """A torch model (dense, pruned or quantized) as a predictor, run under ``torch.inference_mode``.

    Args:
        model: a transformers model with a task head; it is put in eval mode (dropout off).
        output_names: the outputs to return (``logits``, or ``start_logits`` and ``end_logits``).
    """

    def __init__(self, model: nn.Module, output_names: Iterable[str]) -> None:
        self.model = model.eval()
        self.output_names = tuple(output_names)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            outputs = self.model(**model_inputs(self.model, batch))
        return {name: outputs[name].float().cpu() for name in self.output_names}


#: ONNX Runtime graph fusions the predictor turns off. SkipLayerNormFusion: ONNX Runtime 1.32's CPU kernel of the
#: fused op took 8.0 ms on a (32, 128, 384) float32 input against 1.4 ms for the Add and LayerNormalization it
#: replaces (2 threads; the fused kernel did not use the second one), so on MiniLM-L6 at batch 32 x 128 the fused
#: graph spent about a fifth of a pruned int8 model's time in it (``python -m benchmarks.studies.ort_fusions``).
UNFUSED = ("SkipLayerNormFusion",)


class OnnxPredictor:
    """An ONNX model run by ONNX Runtime on the CPU, as a predictor.

    A graph input the batch lacks is filled as the torch model fills it: ``token_type_ids`` with zeros.

    Args:
        path: the ``.onnx`` file.
        threads: ONNX Runtime's intra-op threads; ``None`` uses torch's current setting, so both runtimes use the
            same number.
        spinning: let idle ONNX Runtime threads spin waiting for work (its default). Off for interleaved timing,
            where a spinning pool would take cores from the torch pass that runs next.
        fuse_skip_layer_norm: let ONNX Runtime fuse each residual Add and the LayerNormalization after it into
            one SkipLayerNormalization (its default; off here, see :data:`UNFUSED`).

    Raises:
        DeployExtraMissingError: onnxruntime is not installed.
    """

    def __init__(self, path: str | Path, threads: int | None = None, spinning: bool = True,
                 fuse_skip_layer_norm: bool = False) -> None:
        ort = require("onnxruntime")["onnxruntime"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: shape-inference notes are not for users
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = Path(path)
        self.threads = options.intra_op_num_threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                            disabled_optimizers=[] if fuse_skip_layer_norm else list(UNFUSED))
        self.input_names = [node.name for node in self.session.get_inputs()]
        self.output_names = tuple(node.name for node in self.session.get_outputs())

    def feed(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The session's inputs from a batch, as int64 arrays."""
        feed = {}
        for name in self.input_names:
            value = batch.get(name)
            if value is None and name == "token_type_ids":
                value = torch.zeros_like(torch.as_tensor(batch["input_ids"]))
            if value is None:
                raise ValueError(f"{self.path}: the batch has no {name!r}, an input of the graph "
                                 f"(it takes {', '.join(self.input_names)}; the batch has {', '.join(batch)})")
            feed[name] = np.ascontiguousarray(torch.as_tensor(value).cpu().numpy(), dtype=np.int64)
        return feed

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """One pass on a prepared :meth:`feed` (what timing calls)."""
        return self.session.run(list(self.output_names), dict(feed))

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return {name: torch.from_numpy(value).float()
                for name, value in zip(self.output_names, self.run(self.feed(batch)))}


def max_difference(reference: Predict, candidate: Predict, batches: Iterable[Mapping[str, Any]]) -> float:
    """The largest absolute difference between two predictors' outputs, over every output, position and batch
    (padding positions included).

    Raises:
        ValueError: the outputs differ in names or shapes, or one is not finite.
    """
    largest = 0.0
    for batch in batches:
        expected, found = reference(batch), candidate(batch)
        if set(expected) != set(found):
            raise ValueError(f"the outputs differ: {sorted(expected)} against {sorted(found)}")
        for name, value in expected.items():
            if found[name].shape != value.shape:
                raise ValueError(f"output {name!r} has shape {tuple(found[name].shape)}, expected {tuple(value.shape)}")
            if not torch.isfinite(found[name]).all():
                raise ValueError(f"output {name!r} holds NaN or infinite values")
            if value.numel():
                largest = max(largest, float((found[name] - value).abs().max()))
    return largest


__all__ = ["OnnxPredictor", "Predict", "TorchPredictor", "max_difference"]
