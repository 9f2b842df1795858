"""ONNX export of a model folder, checked against PyTorch before it is kept.

:func:`export_onnx` loads a pruned or plain folder, exports its model to ``model.onnx`` with dynamic batch and
sequence axes, runs ONNX Runtime against PyTorch on the check inputs (the task's dev examples, or random token ids),
optionally writes ``model.int8.onnx`` (:mod:`lit_prune.export.quantize`), and puts the tokenizer, ``config.json``
and ``export.json`` (inputs, outputs, opset, the check's largest difference) beside them. Everything is written
into a temporary sibling folder that takes the output's name only at the end: a failed check leaves no output.

The exporter is ``torch.onnx.export(..., dynamo=True)``: torch.export traces the model and onnxscript writes the
graph. The TorchScript exporter (``dynamo=False``) still runs in torch 2.13, but has been deprecated since torch 2.9
(it warns on every call); the dynamo exporter is torch's default and supported path. Its optimiser folds constants,
so the zero-padded query/key/value weights of uneven heads become plain initializers, which int8 quantization
reaches. Opset 18 is the exporter's native opset (torch's ``TORCHLIB_OPSET``): asking for another would add a
version-conversion pass; the ONNX Runtime versions the extra allows (1.18 and later) run it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from lit_prune.core.atomic import atomic_directory, atomic_write_text
from lit_prune.export.extra import require
from lit_prune.export.folders import ModelFolder, input_names, load_model, load_tokenizer, read_model_folder
from lit_prune.export.predictors import OnnxPredictor, TorchPredictor, max_difference
from lit_prune.export.quantize import INT8_FILE, quantize_onnx

OPSET = 18
ONNX_FILE = "model.onnx"
INFO_FILE = "export.json"
#: the largest absolute difference allowed between ONNX Runtime's and PyTorch's float32 outputs
TOLERANCE = 1e-4
#: the attention implementation the model is exported with. transformers' "eager" hands attention an additive float
#: mask, which the exporter writes as scores + mask -> Softmax. Under "sdpa" the mask is boolean, and the exporter's
#: translation of a boolean-masked ``scaled_dot_product_attention`` guards every softmax output with IsNaN + Where:
#: two passes over every (batch, heads, s, s) score tensor, about a tenth of a pruned int8 model's time in ONNX
#: Runtime at batch 32 x 128 (its boolean mask is filled with the dtype's minimum, not -inf, so the guard never fires).
EXPORT_ATTENTION = "eager"
#: the dynamic axes of every input (outputs take them from the graph: (batch, labels), (batch, sequence), ...)
AXES = ("batch", "sequence")

Log = Callable[[str], None]


class ExportCheckError(RuntimeError):
    """ONNX Runtime's outputs differ from PyTorch's by more than the tolerance (nothing was written)."""


class OutputExistsError(FileExistsError):
    """The output folder exists and overwriting was not asked for."""


def check_output(output: str | Path, source: str | Path, overwrite: bool, setting: str = "output",
                 fix: str = "overwrite=True") -> Path:
    """Refuse an output folder that exists (unless ``overwrite``), or that is, or holds, the model folder.

    Args:
        setting, fix: how the caller names the output and the overwrite switch in messages (``--onnx``,
            ``--overwrite`` on the command line).

    Raises:
        OutputExistsError: the output exists and ``overwrite`` is false.
        ValueError: the output is the model folder or a folder above it (replacing it would delete the model).
    """
    output, source = Path(output), Path(source)
    resolved, model = output.resolve(), source.resolve()
    if resolved == model or resolved in model.parents:
        raise ValueError(f"{setting}={str(output)!r} is the model folder {str(source)!r} or holds it: writing there "
                         f"would replace the model; choose another folder")
    if output.exists() and not overwrite:
        raise OutputExistsError(f"{setting}={str(output)!r} already exists; pass {fix} to replace it (it is replaced "
                                "only once the new export has passed its check), or choose another folder")
    return output


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's warnings and log lines (missing torchvision operators, deprecations inside transformers)
    are about its internals, not the model: keep them off a user's console."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


class _NamedOutputs(nn.Module):
    """The model with tensor inputs and a tuple of its named outputs: the graph's signature."""

    def __init__(self, model: nn.Module, output_names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.output_names = tuple(output_names)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        outputs = self.model(**inputs)
        return tuple(outputs[name] for name in self.output_names)


def random_batch(model: nn.Module, names: Sequence[str], batch_size: int, seq_len: int, seed: int = 0,
                 padded: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids past the special tokens, with the last ``padded`` positions of the last row masked out, and
    (when ``names`` has them) token types 0 then 1, as a sentence pair has them."""
    vocab = int(model.config.vocab_size)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(1000, vocab // 2), vocab, (batch_size, seq_len), generator=generator)
    mask = torch.ones_like(ids)
    if padded:
        mask[-1, -padded:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in names:
        batch["token_type_ids"] = torch.zeros_like(ids)
        batch["token_type_ids"][:, seq_len // 2:] = 1
    return batch


def random_check_batches(model: nn.Module, names: Sequence[str]) -> list[dict[str, torch.Tensor]]:
    """Check inputs when no dev data is given: three shapes, padded, other than the traced one."""
    longest = min(48, int(getattr(model.config, "max_position_embeddings", 64)) - 2)
    return [random_batch(model, names, batch, seq, seed=seed, padded=seq // 3)
            for seed, (batch, seq) in enumerate(((4, longest), (1, 7), (3, 19)), start=1)]


def export_graph(model: nn.Module, path: Path, names: Sequence[str], output_names: Sequence[str],
                 opset: int = OPSET) -> None:
    """Write ``model`` to ``path`` as ONNX, batch and sequence axes dynamic for every input.

    The trace runs on a padded batch of 2 × 11 tokens: neither size 0 nor 1 (which torch.export would fix), and
    with padding, so the graph keeps the attention mask's path.
    """
    require("onnx", "onnxscript")  # the exporter needs both: name them here when missing
    example = random_batch(model, names, 2, 11, padded=3)
    dims = {axis: torch.export.Dim(axis) for axis in AXES}
    dynamic = {name: {0: dims["batch"], 1: dims["sequence"]} for name in names}
    wrapper = _NamedOutputs(model, output_names).eval()
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(wrapper, (), kwargs=example, dynamo=True, input_names=list(names),
                                    output_names=list(output_names), dynamic_shapes=dynamic, opset_version=opset,
                                    optimize=True, verbose=False)
        program.save(str(path))


def _graph_signature(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The inputs and outputs of an ONNX file: name, element type, shape (axis names or sizes)."""
    onnx = require("onnx")["onnx"]
    graph = onnx.load(str(path), load_external_data=False).graph

    def describe(values: Any) -> list[dict[str, Any]]:
        return [{"name": value.name,
                 "dtype": onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name,
                 "shape": [dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim]}
                for value in values]

    return {"inputs": describe(graph.input), "outputs": describe(graph.output)}


def _copy_beside(folder: ModelFolder, tokenizer: Any, destination: Path) -> list[str]:
    """The tokenizer files and config.json, beside the graph; the names written."""
    before = {p.name for p in destination.iterdir()}
    if tokenizer is not None:
        tokenizer.save_pretrained(destination)
    (destination / "config.json").write_bytes((folder.path / "config.json").read_bytes())
    return sorted({p.name for p in destination.iterdir()} - before)


def export_onnx(folder: str | Path, output: str | Path, *, check_inputs: Sequence[Mapping[str, Any]] | None = None,
                check_description: str | None = None, overwrite: bool = False,
                quantize: Literal["int8"] | None = None, per_channel: bool = False, tolerance: float = TOLERANCE,
                opset: int = OPSET, threads: int | None = None,
                finish: Callable[[Path, dict[str, Any]], dict[str, Any] | None] | None = None,
                log: Log | None = None) -> dict[str, Any]:
    """Export a model folder to ONNX, check it against PyTorch, and write it with its tokenizer and config.

    Args:
        folder: a pruned lit_prune folder or a plain Hugging Face folder with a task head.
        output: the folder to write (``model.onnx``, ``model.int8.onnx`` with ``quantize``, ``config.json``, the
            tokenizer files, ``export.json``).
        check_inputs: batches ONNX Runtime and PyTorch are compared on (the task's dev examples, say); ``None``:
            random token ids in three padded shapes.
        check_description: what the check inputs are, for ``export.json`` and the summary.
        overwrite: replace an existing ``output`` (only once the new export has passed its check).
        quantize: ``"int8"``: also write ``model.int8.onnx``, dynamic int8 (see :func:`quantize_onnx`).
        per_channel: int8 weights with one scale per output feature instead of one per matrix.
        tolerance: the largest absolute difference allowed between ONNX Runtime's and PyTorch's outputs.
        opset: the ONNX opset (18, the exporter's own, unless you need another).
        threads: ONNX Runtime's threads for the check (``None``: torch's setting).
        finish: called with the temporary folder and the export's description before it takes ``output``'s name;
            what it returns is added to ``export.json`` (the CLI records dev metrics there this way).
        log: called with a line per step.

    Returns:
        The contents of ``export.json``.

    Raises:
        NotAModelFolderError, NotAPrunedModelError: ``folder`` is not a model folder the exporter reads.
        OutputExistsError: ``output`` exists and ``overwrite`` is false.
        ExportCheckError: ONNX Runtime differs from PyTorch by more than ``tolerance``; nothing is written.
        DeployExtraMissingError: the ``deploy`` extra is not installed.
    """
    say = log or (lambda line: None)
    require()
    info = read_model_folder(folder)
    output = check_output(output, info.path, overwrite)
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize={quantize!r}: expected None or 'int8'")
    if not tolerance > 0:
        raise ValueError(f"tolerance={tolerance!r}: expected a positive number")
    started = time.perf_counter()
    model = load_model(info, attn_implementation=EXPORT_ATTENTION)
    tokenizer = load_tokenizer(info)
    names = input_names(model)
    if check_inputs is None:
        check_inputs = random_check_batches(model, names)
        check_description = check_description or "random token ids (no dev data given)"
    check_inputs = list(check_inputs)
    if not check_inputs:
        raise ValueError("check_inputs is empty: give at least one batch, or None for random token ids")
    with atomic_directory(output) as tmp:
        say(f"exporting {info.path} ({info.describe()}) to ONNX, opset {opset}")
        export_graph(model, tmp / ONNX_FILE, names, info.output_names, opset)
        say(f"checking ONNX Runtime against PyTorch on {check_description or 'the check inputs'}")
        reference = TorchPredictor(model, info.output_names)
        difference = max_difference(reference, OnnxPredictor(tmp / ONNX_FILE, threads), check_inputs)
        if not difference <= tolerance:
            raise ExportCheckError(
                f"{info.path}: ONNX Runtime's outputs differ from PyTorch's by up to {difference:.3g} on "
                f"{check_description or 'the check inputs'}, more than the tolerance {tolerance:g}; nothing was "
                f"written to {output}")
        say(f"check passed: largest difference {difference:.2g} (tolerance {tolerance:g})")
        files = {"fp32": ONNX_FILE}
        record: dict[str, Any] = {
            "format": "lit_prune.onnx", "version": 1, "source": str(info.path), "pruned": info.pruned,
            "kind": info.kind, "model_type": info.model_type, "task": info.task, "opset": opset,
            "exporter": "torch.onnx.export(dynamo=True)", "dynamic_axes": list(AXES),
            **_graph_signature(tmp / ONNX_FILE),
            "check": {"inputs": check_description or "given batches", "batches": len(check_inputs),
                      "examples": sum(int(b["input_ids"].shape[0]) for b in check_inputs),
                      "max_abs_difference": difference, "tolerance": tolerance},
        }
        if quantize == "int8":
            say("quantizing to dynamic int8")
            record["quantization"] = quantize_onnx(tmp / ONNX_FILE, tmp / INT8_FILE, per_channel=per_channel)
            files["int8"] = INT8_FILE
            record["check"]["int8_max_abs_difference_to_fp32"] = max_difference(
                reference, OnnxPredictor(tmp / INT8_FILE, threads), check_inputs)
        record["files"] = files
        record["beside"] = _copy_beside(info, tokenizer, tmp)
        record["sizes_bytes"] = {name: (tmp / file).stat().st_size for name, file in files.items()}
        record["versions"] = _versions()
        if finish is not None:
            record.update(finish(tmp, record) or {})
        record["seconds"] = round(time.perf_counter() - started, 1)
        atomic_write_text(tmp / INFO_FILE, json.dumps(record, indent=2) + "\n")
    say(f"wrote {output}")
    return record


def _versions() -> dict[str, str]:
    modules = require()
    return {"torch": torch.__version__, **{name: getattr(module, "__version__", "?") for name, module in
                                           modules.items()}}


def read_export(folder: str | Path) -> dict[str, Any]:
    """The ``export.json`` of an exported folder."""
    return json.loads((Path(folder) / INFO_FILE).read_text())


__all__ = ["AXES", "ExportCheckError", "INFO_FILE", "ONNX_FILE", "OPSET", "OutputExistsError", "TOLERANCE",
           "check_output", "export_graph", "export_onnx", "random_batch", "random_check_batches", "read_export"]
