"""Dynamic int8 quantization of the Linear layers, for ONNX Runtime and for PyTorch.

Dynamic: the weights are stored as int8 once; each activation is quantized to uint8 when it arrives, with a scale
from its own range, so no calibration data is needed. The embeddings, LayerNorms, softmax and the attention products
of two activations stay in float32.

* ONNX Runtime (:func:`quantize_onnx`): ``onnxruntime.quantization.quantize_dynamic`` on the ``MatMul`` nodes whose
  weight is a constant, i.e. the encoder's Linear layers (the pooler and the classifier act on 2-D inputs, export as
  ``Gemm``, which dynamic quantization leaves in float32: a few kB of weights). Weights are symmetric int8 with one
  scale per matrix. Per-channel scales (``per_channel=True``) are offered, but ONNX Runtime then stores 7-bit weights
  (it forces ``reduce_range`` for per-channel ``MatMulInteger``), and on the one model we compared them on, the
  MRPC teacher pruned by KPrune at flops_kept 0.5, they did no better: dev F1 84.3 per channel, 85.4 per matrix,
  84.7 in float32 (PyTorch's per-channel qconfig: 85.8 against 85.9). So one scale per matrix is the default.
* PyTorch (:func:`quantize_torch`): ``torch.ao.quantization.quantize_dynamic`` on the ``nn.Linear`` layers, qint8
  weights, one scale per matrix, as above. ``torch.ao.quantization`` is deprecated in favour of the separate
  ``torchao`` package, but still ships with torch 2.13 and needs nothing more; its warning is silenced here.

Left in float32 in both, and why: Linear layers with no weights (an emptied attention or FFN sublayer: there is no
range to take a scale from, and nothing to save). PyTorch also keeps in float32 the layers that are read rather than
called, which its quantized modules do not allow: the query, key and value layers of attention whose heads have
uneven sizes (:class:`~lit_prune.core.hf_modeling.modeling_lit_pruned.PrunedAttentionCore` gathers their weights
into a zero-padded layout) and the output embeddings (a label-word classifier reads rows of them). In ONNX the
padded weights are constants folded at export, so ONNX Runtime quantizes them.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_prune.core.hf_modeling.modeling_lit_pruned import LAYOUTS, fused_path
from lit_prune.export.extra import require

INT8_FILE = "model.int8.onnx"
#: the ONNX Runtime operators of a dynamically quantized MatMul
_QUANTIZED_OPS = ("MatMulInteger", "DynamicQuantizeMatMul")
#: the attributes of pruned attention that hold its query, key and value layers (and DeBERTa's projections of the
#: relative embeddings), whatever the family
_PROJECTIONS = tuple(sorted({fused_path(layout[role])[0].rpartition(".")[2] for layout in LAYOUTS.values()
                             for role in ("query", "key", "value", "pos_query", "pos_key") if layout.get(role)}))


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """``quantize_dynamic`` logs to the root logger that it would like a "pre-processing" pass (symbolic shape
    inference and graph optimisation); the dynamo exporter has already inferred the shapes and optimised the graph."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _empty_weight_matmuls(model: Any) -> list[str]:
    """The MatMul nodes whose constant weight has no elements (emptied sublayers)."""
    shapes = {tensor.name: tuple(tensor.dims) for tensor in model.graph.initializer}
    return [node.name for node in model.graph.node
            if node.op_type == "MatMul" and len(node.input) > 1 and 0 in shapes.get(node.input[1], (1,))]


def quantize_onnx(source: str | Path, destination: str | Path, per_channel: bool = False) -> dict[str, Any]:
    """Write ``destination``: ``source`` with its Linear layers' MatMuls quantized to dynamic int8.

    Args:
        source: a float32 ``.onnx`` file (from :func:`lit_prune.export.onnx.export_onnx`).
        destination: the int8 ``.onnx`` file to write.
        per_channel: one scale per output feature (7-bit weights in ONNX Runtime) instead of one per matrix.

    Returns:
        What was done: the method and settings, the number of MatMuls quantized and those left in float32.

    Raises:
        DeployExtraMissingError: onnx or onnxruntime is not installed.
    """
    onnx = require("onnx", "onnxruntime")["onnx"]
    from onnxruntime.quantization import QuantType, quantize_dynamic

    empty = _empty_weight_matmuls(onnx.load(str(source)))
    with _quiet_root_logger():
        quantize_dynamic(str(source), str(destination), op_types_to_quantize=["MatMul"], per_channel=per_channel,
                         reduce_range=False, weight_type=QuantType.QInt8, nodes_to_exclude=empty,
                         extra_options={"MatMulConstBOnly": True})
    quantized = sum(node.op_type in _QUANTIZED_OPS for node in onnx.load(str(destination)).graph.node)
    return {"method": "onnxruntime.quantization.quantize_dynamic", "operators": ["MatMul"], "weights": "int8",
            "activations": "uint8, quantized per batch", "per_channel": per_channel, "quantized_matmuls": quantized,
            "float_matmuls_empty_weight": empty}


def float_linears(model: nn.Module) -> dict[str, str]:
    """The ``nn.Linear`` layers :func:`quantize_torch` keeps in float32, by name, with the reason."""
    kept: dict[str, str] = {}
    for name, module in model.named_modules():
        if type(module) is nn.Linear and module.weight.numel() == 0:
            kept[name] = "no weights (an emptied sublayer)"
        # pruned attention with heads of uneven sizes reads its projections' weights into a padded layout
        # (duck-typed: a folder loaded with trust_remote_code has its own copy of the class)
        if getattr(getattr(module, "layout", None), "padded", False) and hasattr(module, "head_sizes"):
            for attribute in _PROJECTIONS:
                if isinstance(getattr(module, attribute, None), nn.Linear):
                    kept.setdefault(f"{name}.{attribute}", "weights read by attention with uneven heads")
    output_embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for name, module in model.named_modules():
        if module is output_embeddings and isinstance(module, nn.Linear):
            kept.setdefault(name, "output embeddings (their rows are read)")
    return kept


def quantize_torch(model: nn.Module, per_channel: bool = False) -> nn.Module:
    """A copy of ``model`` with its ``nn.Linear`` layers dynamically quantized to int8 (``torch.ao``), except
    those :func:`float_linears` names. The model is left as it is.

    Args:
        model: a float32 model (dense or pruned) on the CPU.
        per_channel: one weight scale per output feature instead of one per matrix.

    Returns:
        The quantized copy, in eval mode (it runs on the CPU only).
    """
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    kept = float_linears(model)
    spec = {name: qconfig for name, module in model.named_modules() if type(module) is nn.Linear and name not in kept}
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao, and its quantized tensors their deprecation, on every
        # call; see the module docstring
        warnings.filterwarnings("ignore", message=r"(?s).*(torch\.ao\.quantization|deprecated)")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        quantized = quantize_dynamic(copy.deepcopy(model).eval().cpu(), spec, dtype=torch.qint8, inplace=True)
    return quantized.eval()


__all__ = ["INT8_FILE", "float_linears", "quantize_onnx", "quantize_torch"]
