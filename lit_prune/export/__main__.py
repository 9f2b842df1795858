"""Export a pruned (or plain) model folder to ONNX, checked against PyTorch; optionally quantized to int8.

Usage::

    python -m lit_prune.export <folder> --onnx <out> [--quantize int8] [--overwrite] [--check-samples 256]
                               [--task T] [--data-dir D] [--max-seq-length N] [--eval-samples N] [--threads N]

Writes ``<out>/model.onnx`` (dynamic batch and sequence axes), with ``--quantize int8`` also
``<out>/model.int8.onnx``, and beside them the tokenizer, ``config.json`` and ``export.json``. ONNX Runtime is checked
against PyTorch on the first ``--check-samples`` dev examples of the task (``--task``, else the task the folder was
fine-tuned for; random token ids when neither is known); with ``--quantize int8`` the dev metric of the float32 and
the int8 ONNX models is measured with the task's own metric. Exit status: 0 done, 1 the check failed (nothing
written), 2 bad input (nothing done).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from lit_prune.assets import AssetNotFoundError
from lit_prune.core.io import NotAPrunedModelError
from lit_prune.export.evaluate import (
    MAIN_METRICS,
    TASK_KINDS,
    count_examples,
    dev_batches,
    dev_data,
    evaluate,
    task_kind,
)
from lit_prune.export.extra import DeployExtraMissingError, require
from lit_prune.export.folders import ModelFolder, NotAModelFolderError, read_model_folder
from lit_prune.export.onnx import ExportCheckError, OutputExistsError, check_output, export_onnx
from lit_prune.export.predictors import OnnxPredictor
from lit_prune.tasks.token_classification import head_label_names

DEFAULT_CHECK_SAMPLES = 256


def _say(started: float):
    def say(line: str) -> None:
        print(f"[export {time.perf_counter() - started:6.1f}s] {line}", file=sys.stderr, flush=True)

    return say


def resolve_task(task: str | None, folder: ModelFolder) -> str | None:
    """The task to check and evaluate on: ``--task``, else the folder's own when the runner knows it.

    Raises:
        ValueError: an unknown ``--task``, one whose head is not the folder's, or a task with no tokenizer to read
            its data with.
    """
    head = "sequence_classification" if folder.kind == "label_words" else folder.kind
    if task is None:
        task = folder.task if TASK_KINDS.get(folder.task or "") == head else None
    elif task_kind(task, setting="--task") != head:
        raise ValueError(f"--task={task!r} needs a {TASK_KINDS[task]} model; {folder.path} holds a "
                         f"{folder.describe()} model")
    if task is not None and not folder.has_tokenizer:
        raise ValueError(f"{folder.path} holds no tokenizer files, so its {task} dev data cannot be read; save the "
                         "tokenizer into the folder (tokenizer.save_pretrained), or leave --task out to check on "
                         "random token ids")
    return task


def _positive(name: str, value: int | None) -> str | None:
    if value is not None and value < 1:
        return f"{name}={value}: expected a positive integer"
    return None


def summary(record: dict[str, Any], output: Path) -> str:
    """What was written and measured, for the console."""
    signature = "; ".join(f"{v['name']} {v['shape']}" for v in record["inputs"])
    outputs = "; ".join(f"{v['name']} {v['shape']}" for v in record["outputs"])
    check = record["check"]
    lines = [(f"exported {record['source']} ({'pruned' if record['pruned'] else 'dense'} {record['model_type']}, "
              f"{record['kind']}) to {output}"),
             f"  opset {record['opset']}; inputs {signature}; outputs {outputs}"]
    for precision, file in record["files"].items():
        lines.append(f"  {file:<16} {record['sizes_bytes'][precision] / 1e6:8.1f} MB  {precision}")
    lines.append(f"  check, ONNX Runtime against PyTorch on {check['inputs']} ({check['batches']} batches): largest "
                 f"difference {check['max_abs_difference']:.2g} (tolerance {check['tolerance']:g})")
    if "int8_max_abs_difference_to_fp32" in check:
        quantization = record["quantization"]
        lines.append(f"  int8: {quantization['quantized_matmuls']} MatMuls quantized "
                     f"({'per channel' if quantization['per_channel'] else 'per matrix'}); largest difference to "
                     f"PyTorch float32 on the same inputs {check['int8_max_abs_difference_to_fp32']:.3g}")
    evaluation = record.get("evaluation")
    if evaluation:
        main = evaluation["main_metric"]
        scores = ", ".join(f"{precision} {metrics[main]:.4f}" for precision, metrics in evaluation["metrics"].items())
        lines.append(f"  {evaluation['task']} dev ({evaluation['examples']} examples), {main} with ONNX Runtime: "
                     f"{scores}")
    lines.append(f"  beside them: {', '.join(record['beside'])}, export.json")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the export; exit status 0 done, 1 check failed, 2 bad input."""
    parser = argparse.ArgumentParser(prog="python -m lit_prune.export", description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="a pruned model folder, or a Hugging Face folder with a task head")
    parser.add_argument("--onnx", type=Path, required=True, metavar="OUT", help="the folder to write")
    parser.add_argument("--quantize", choices=["int8"], default=None,
                        help="also write model.int8.onnx (dynamic int8 Linear layers) and measure its dev metric")
    parser.add_argument("--per-channel", action="store_true",
                        help="int8 weights with one scale per output feature (default: one per matrix)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--check-samples", type=int, default=DEFAULT_CHECK_SAMPLES,
                        help="dev examples ONNX Runtime is checked against PyTorch on (default: %(default)s)")
    parser.add_argument("--task", default=None,
                        help="the task of the check and the evaluation: a GLUE task, squad_v1, squad_v2 or conll2003 "
                             "(default: the folder's finetuning_task)")
    parser.add_argument("--data-dir", default=None,
                        help="the task's data folder (default: $LIT_PRUNE_ASSETS, then the hub)")
    parser.add_argument("--max-seq-length", type=int, default=None,
                        help="longest tokenised input (default: the data module's: 128, SQuAD 384)")
    parser.add_argument("--eval-samples", type=int, default=None,
                        help="with --quantize: evaluate on this many dev examples (default: all; SQuAD: questions, "
                             "drawn by the data module, which the check then uses too)")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: torch's)")
    args = parser.parse_args(argv)
    problems = [p for p in (_positive("--check-samples", args.check_samples),
                            _positive("--max-seq-length", args.max_seq_length),
                            _positive("--eval-samples", args.eval_samples), _positive("--threads", args.threads)) if p]
    if problems:
        parser.error("; ".join(problems))
    from transformers.utils import logging as transformers_logging

    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # a bar per weight file loaded would bury the progress lines
    try:
        return run(args)
    finally:
        if bars:
            transformers_logging.enable_progress_bar()


def run(args: argparse.Namespace) -> int:
    """:func:`main` once the arguments are parsed and checked."""
    say = _say(time.perf_counter())
    try:
        require()
    except DeployExtraMissingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    problems = []  # every problem of the folder, the output and the task, reported together
    folder = task = None
    try:
        folder = read_model_folder(args.folder)
    except (NotAModelFolderError, NotAPrunedModelError) as error:
        problems.append(str(error))
    try:
        check_output(args.onnx, args.folder, args.overwrite, setting="--onnx", fix="--overwrite")
    except (OutputExistsError, ValueError) as error:
        problems.append(str(error))
    try:
        if folder is not None:
            task = resolve_task(args.task, folder)
        elif args.task is not None:
            task_kind(args.task, setting="--task")  # the name alone: there is no folder to match it with
    except ValueError as error:
        problems.append(str(error))
    if problems:
        print("error: " + "\nerror: ".join(problems), file=sys.stderr)
        return 2
    datamodule = None
    if task is not None:
        say(f"reading the {task} dev data")
        squad = TASK_KINDS[task] == "question_answering"
        try:
            datamodule = dev_data(task, str(folder.path), args.data_dir, args.max_seq_length,
                                  max_examples=args.eval_samples if squad else None)
        except (AssetNotFoundError, FileNotFoundError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    check_inputs, description = None, None
    if datamodule is not None:
        check_inputs = dev_batches(datamodule, args.check_samples)
        examples = sum(int(batch["input_ids"].shape[0]) for batch in check_inputs)
        unit = "windows" if TASK_KINDS[task] == "question_answering" else "examples"
        description = f"the first {examples} {task} dev {unit}"
    else:
        say("no task known (pass --task to check on dev data): the check runs on random token ids")

    def measure(tmp: Path, record: dict[str, Any]) -> dict[str, Any]:
        labels = head_label_names(folder.config) if TASK_KINDS[task] == "token_classification" else None
        metrics = {}
        for precision, file in record["files"].items():
            say(f"evaluating the {precision} ONNX model on the {task} dev data")
            metrics[precision] = evaluate(task, datamodule, OnnxPredictor(tmp / file, args.threads),
                                          max_examples=args.eval_samples, label_names=labels)
        return {"evaluation": {"task": task, "examples": count_examples(datamodule, args.eval_samples),
                               "runtime": "onnxruntime", "main_metric": MAIN_METRICS[task], "metrics": metrics}}

    evaluating = args.quantize is not None and datamodule is not None
    try:
        record = export_onnx(folder.path, args.onnx, check_inputs=check_inputs, check_description=description,
                             overwrite=args.overwrite, quantize=args.quantize, per_channel=args.per_channel,
                             threads=args.threads, finish=measure if evaluating else None, log=say)
    except ExportCheckError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(summary(record, args.onnx))
    return 0


if __name__ == "__main__":
    sys.exit(main())
