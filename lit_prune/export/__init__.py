"""Deployment: pruned (and plain) model folders exported to ONNX and checked against PyTorch, dynamic int8
quantization for ONNX Runtime and for PyTorch, and the task's dev metric of any of them.

    python -m lit_prune.export <folder> --onnx <out> [--quantize int8]

* :mod:`~lit_prune.export.folders`: which folders export (a task head; pruned or plain) and how they load;
* :mod:`~lit_prune.export.onnx`: the export, its check against PyTorch, the atomic write;
* :mod:`~lit_prune.export.quantize`: dynamic int8 for ONNX Runtime (``model.int8.onnx``) and PyTorch (``torch.ao``);
* :mod:`~lit_prune.export.predictors`: an ONNX Runtime session or a torch model as one "predict" callable;
* :mod:`~lit_prune.export.evaluate`: the task's dev metric of a predictor, from the data and task modules' code.

onnx, onnxruntime and onnxscript come with the optional extra, ``pip install 'lit_prune[deploy]'``; they are imported
only when used, and their absence is an error that gives that command. Nothing in ``lit_prune.core`` imports this
package.
"""

from lit_prune.export.evaluate import dev_batches, dev_data, evaluate, main_score, task_kind
from lit_prune.export.extra import INSTALL_COMMAND, DeployExtraMissingError
from lit_prune.export.folders import ModelFolder, NotAModelFolderError, load_model, read_model_folder
from lit_prune.export.onnx import (
                                   INFO_FILE,
                                   ONNX_FILE,
                                   OPSET,
                                   ExportCheckError,
                                   OutputExistsError,
                                   export_onnx,
                                   read_export,
)
from lit_prune.export.predictors import OnnxPredictor, TorchPredictor, max_difference
from lit_prune.export.quantize import INT8_FILE, float_linears, quantize_onnx, quantize_torch

__all__ = ["DeployExtraMissingError", "ExportCheckError", "INFO_FILE", "INSTALL_COMMAND", "INT8_FILE", "ModelFolder",
           "NotAModelFolderError", "ONNX_FILE", "OPSET", "OnnxPredictor", "OutputExistsError", "TorchPredictor",
           "dev_batches", "dev_data", "evaluate", "export_onnx", "float_linears", "load_model", "main_score",
           "max_difference", "quantize_onnx", "quantize_torch", "read_export", "read_model_folder", "task_kind"]
