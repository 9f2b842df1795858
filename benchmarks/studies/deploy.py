"""Deployment: pruning × int8 × runtime, each combination timed interleaved with the others and scored on dev.

For the MRPC, STS-B and SST-2 teachers (all-MiniLM-L6-v2, from the benchmark runner's cache) and their KPrune prunings
at flops_kept 0.5 and 0.3 (the latency-budget study's ``flops`` part), every combination of model (dense / KPrune
0.5 / KPrune 0.3), precision (float32 / dynamic int8 Linear layers) and runtime (PyTorch / ONNX Runtime) is:

* built with lit_prune.export: the ONNX models by ``export_onnx`` (checked against PyTorch on 256 dev examples,
  int8 written beside), the int8 PyTorch models by ``quantize_torch`` (``torch.ao`` dynamic quantization);
* scored on the whole dev set with the task's own metric by the evaluation runner;
* timed with every other variant of its task, interleaved (each round runs all of them in a fresh random order;
  medians), on random token ids at batch 32 × 128 tokens with 2 threads, then at batch 1 × the dev set's average
  length with 1 thread. Idle ONNX Runtime threads do not spin, so a session does not take the cores of the pass
  that follows it; sessions run with SkipLayerNormFusion off, as ``OnnxPredictor`` opens them.

    LIT_PRUNE_ASSETS=../shared/assets python -m benchmarks.studies.deploy [--tasks mrpc,stsb,sst2] [--repeats 20]

Needs the pruned folders ``runs/latency_budget/kprune/<task>/flops_kept{0.5,0.3}/pruned_model``, which
``python -m benchmarks.studies.latency_budget --parts flops --flops-budgets 0.5,0.4,0.3 --prune-only`` makes, and a
quiet machine (the timings are the point). Exports go under ``runs/deploy/`` (kept, and reused while their source
is unchanged). Writes ``benchmarks/results/deploy.json``, ``.md`` and ``.png``, its section of ``BENCHMARKS.md``, and
the summary in ``docs/deploy.md``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.runner import REPO
from benchmarks.tables import publish_study, replace_section
from lit_prune.core.atomic import atomic_write_text
from lit_prune.core.hardware import hardware_label, hardware_summary
from lit_prune.core.latency_tables import random_inputs

RESULTS = REPO / "benchmarks" / "results"
BENCHMARKS = REPO / "BENCHMARKS.md"
DOCS = REPO / "docs" / "deploy.md"
RUNS = REPO / "runs" / "latency_budget"
EXPORTS = REPO / "runs" / "deploy"
TASKS = ("mrpc", "stsb", "sst2")
BUDGETS = (0.5, 0.3)
PRUNE_COMMAND = "python -m benchmarks.studies.latency_budget --parts flops --flops-budgets 0.5,0.4,0.3 --prune-only"
COMMAND = "LIT_PRUNE_ASSETS=../shared/assets python -m benchmarks.studies.deploy"
#: the two shapes: (batch size, sequence length or None for the dev set's average, threads)
SHAPES = {"batch32": (32, 128, 2), "batch1": (1, None, 1)}
CHECK_SAMPLES = 256
#: the issue's acceptance: KPrune 0.5 + int8 in ONNX Runtime against dense float32 PyTorch at batch 32
ACCEPTANCE = {"model": "kprune 0.5", "runtime": "onnxruntime", "precision": "int8", "speedup": 3.0, "points": 1.5}


def pruned_folder(task: str, flops_kept: float) -> Path:
    return RUNS / "kprune" / task / f"flops_kept{flops_kept:g}" / "pruned_model"


def check_pruned_folders(tasks: list[str], budgets: tuple[float, ...]) -> None:
    """Stop before any work when a pruned folder is missing, naming each one and the command that makes them."""
    missing = [pruned_folder(task, f) for task in tasks for f in budgets if not (pruned_folder(task, f) /
                                                                                  "config.json").is_file()]
    if missing:
        shown = [p.relative_to(REPO) if p.is_relative_to(REPO) else p for p in missing]
        raise SystemExit("missing pruned folders:\n" + "\n".join(f"  {p}" for p in shown)
                         + f"\nmake them with: {PRUNE_COMMAND}")


def exported(folder: Path, name: str, datamodule: Any, task: str) -> tuple[Path, dict[str, Any]]:
    """``folder`` exported (float32 and int8) under ``runs/deploy/``, or the export already there."""
    from lit_prune.export import dev_batches, export_onnx, read_export

    out = EXPORTS / task / name
    if (out / "export.json").is_file():
        record = read_export(out)
        if record["source"] == str(folder) and "int8" in record["files"]:
            return out, record
    record = export_onnx(folder, out, check_inputs=dev_batches(datamodule, CHECK_SAMPLES),
                         check_description=f"the first {CHECK_SAMPLES} {task} dev examples", quantize="int8",
                         overwrite=True, log=lambda line: print(f"  {line}", flush=True))
    return out, record


def variants(task: str, budgets: tuple[float, ...], datamodule: Any) -> list[dict[str, Any]]:
    """Every model × precision × runtime of a task: its description, a predictor for scoring, and the torch model
    or ONNX files to time."""
    from benchmarks.studies.latency_budget import teacher_of
    from lit_prune.export import (
        INT8_FILE,
        ONNX_FILE,
        OnnxPredictor,
        TorchPredictor,
        load_model,
        quantize_torch,
        read_model_folder,
    )

    teacher, _ = teacher_of(task)
    out = []
    for name, flops_kept, folder in [("dense", None, teacher)] + [(f"kprune {f:g}", f, pruned_folder(task, f))
                                                                  for f in budgets]:
        info = read_model_folder(folder)
        model = load_model(info)
        onnx_dir, record = exported(folder.resolve(), name.replace(" ", "_"), datamodule, task)
        common = {"task": task, "model": name, "flops_kept": flops_kept, "folder": str(folder)}
        for precision, torch_model, file in (("fp32", model, ONNX_FILE), ("int8", quantize_torch(model), INT8_FILE)):
            out.append({**common, "runtime": "pytorch", "precision": precision, "torch": torch_model,
                        "predict": TorchPredictor(torch_model, info.output_names), "check_max_abs_difference": None})
            out.append({**common, "runtime": "onnxruntime", "precision": precision, "onnx": onnx_dir / file,
                        "predict": OnnxPredictor(onnx_dir / file, threads=1),
                        "check_max_abs_difference": record["check"]["max_abs_difference"] if precision == "fp32"
                        else record["check"]["int8_max_abs_difference_to_fp32"]})
    return out


def time_interleaved(passes: dict[str, Callable[[], Any]], threads: int, warmup: int, repeats: int,
                     seed: int = 0) -> dict[str, list[float]]:
    """Wall times (ms) of each pass: ``warmup`` untimed rounds, then ``repeats`` rounds, each running every pass
    once in a fresh random order, with ``threads`` torch threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    rng = random.Random(seed)
    order = list(passes)
    times: dict[str, list[float]] = {name: [] for name in order}
    try:
        with torch.inference_mode():
            for round_ in range(warmup + repeats):
                rng.shuffle(order)
                for name in order:
                    start = time.perf_counter()
                    passes[name]()
                    if round_ >= warmup:
                        times[name].append((time.perf_counter() - start) * 1e3)
    finally:
        torch.set_num_threads(previous)
    return times


def _call(model: Any, inputs: dict[str, torch.Tensor]) -> Any:
    return model(**inputs)


def measure(task: str, items: list[dict[str, Any]], average_length: int, repeats: int) -> None:
    """Time every variant at both shapes (into ``item["timings"]``)."""
    from lit_prune.export import OnnxPredictor

    dense = next(item["torch"] for item in items if item["runtime"] == "pytorch" and item["model"] == "dense")
    for shape, (batch_size, seq_len, threads) in SHAPES.items():
        seq_len = seq_len or average_length
        inputs = random_inputs(dense, batch_size, seq_len, seed=7)
        passes = {}
        for i, item in enumerate(items):
            if item["runtime"] == "pytorch":
                passes[i] = functools.partial(_call, item["torch"], inputs)
            else:
                session = OnnxPredictor(item["onnx"], threads=threads, spinning=False)
                passes[i] = functools.partial(session.run, session.feed(inputs))
        times = time_interleaved(passes, threads, warmup=3, repeats=repeats if batch_size > 1 else 3 * repeats)
        for i, item in enumerate(items):
            item.setdefault("timings", {})[shape] = {"median_ms": statistics.median(times[i]),
                                                     "min_ms": min(times[i]), "batch_size": batch_size,
                                                     "seq_len": seq_len, "threads": threads, "repeats": len(times[i])}
        print(f"[{time.strftime('%H:%M:%S')}] {task}: timed {len(items)} variants at batch {batch_size} × {seq_len}, "
              f"{threads} thread(s)", flush=True)


def run_task(task: str, budgets: tuple[float, ...], repeats: int) -> list[dict[str, Any]]:
    from benchmarks.studies.latency_budget import teacher_of
    from lit_prune.export import dev_data, evaluate, main_score
    from lit_prune.export.evaluate import MAIN_METRICS

    teacher, _ = teacher_of(task)
    datamodule = dev_data(task, str(teacher))
    average_length = round(datamodule.average_sequence_length())
    items = variants(task, budgets, datamodule)
    for item in items:
        metrics = evaluate(task, datamodule, item["predict"])
        item.update(metric=MAIN_METRICS[task], metrics=metrics, score=main_score(task, metrics))
        print(f"[{time.strftime('%H:%M:%S')}] {task} {item['model']} {item['runtime']} {item['precision']}: "
              f"{item['metric']} {item['score']:.2f}", flush=True)
    measure(task, items, average_length, repeats)
    return [{key: value for key, value in item.items() if key not in ("torch", "predict", "onnx")} for item in items]


# ------------------------------------------------------------------------------------------------ tables
def _key(row: dict[str, Any]) -> tuple[str, str, str]:
    return row["model"], row["runtime"], row["precision"]


def speedups(rows: list[dict[str, Any]], shape: str) -> dict[tuple[str, str, str, str], float]:
    """(task, model, runtime, precision) → dense float32 PyTorch's median time / the variant's, at ``shape``."""
    base = {r["task"]: r["timings"][shape]["median_ms"] for r in rows
            if _key(r) == ("dense", "pytorch", "fp32")}
    return {(r["task"], *_key(r)): base[r["task"]] / r["timings"][shape]["median_ms"] for r in rows}


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant, over the tasks: the geometric mean speedup at each shape, and the mean dev score change against
    the same model in float32 PyTorch and against the dense float32 PyTorch model (points)."""
    score = {(r["task"], *_key(r)): r["score"] for r in rows}
    ratios = {shape: speedups(rows, shape) for shape in SHAPES}
    tasks = sorted({r["task"] for r in rows})
    out = []
    for key in dict.fromkeys(_key(r) for r in rows):
        model = key[0]
        entry = {"model": model, "runtime": key[1], "precision": key[2]}
        for shape in SHAPES:
            entry[shape] = math.exp(statistics.fmean(math.log(ratios[shape][(t, *key)]) for t in tasks))
        entry["vs_fp32"] = statistics.fmean(score[(t, *key)] - score[(t, model, "pytorch", "fp32")] for t in tasks)
        entry["vs_dense"] = statistics.fmean(score[(t, *key)] - score[(t, "dense", "pytorch", "fp32")] for t in tasks)
        out.append(entry)
    return out


def shape_label(shape: str) -> str:
    """"batch 32 × 128, 2 threads", "batch 1 × the average length, 1 thread"."""
    batch, seq, threads = SHAPES[shape]
    return f"batch {batch} × {seq or 'the average length'}, {threads} thread{'s' if threads > 1 else ''}"


def verdict(rows: list[dict[str, Any]]) -> str:
    """The issue's acceptance, measured: KPrune 0.5 + int8 in ONNX Runtime at batch 32 × 128, 2 threads."""
    entry = next((e for e in summary(rows) if (e["model"], e["runtime"], e["precision"]) ==
                  (ACCEPTANCE["model"], ACCEPTANCE["runtime"], ACCEPTANCE["precision"])), None)
    if entry is None:
        return ""
    return (f"KPrune 0.5 + int8 in ONNX Runtime against the dense float32 PyTorch model at {shape_label('batch32')} "
            f"(geometric mean over the tasks): {entry['batch32']:.2f}x (at least {ACCEPTANCE['speedup']:g}x: "
            f"{'yes' if entry['batch32'] >= ACCEPTANCE['speedup'] else 'no'}); its dev score against the pruned "
            f"float32 PyTorch model's (mean over the tasks): {entry['vs_fp32']:+.2f} points (at most "
            f"{ACCEPTANCE['points']:g} lower: {'yes' if entry['vs_fp32'] >= -ACCEPTANCE['points'] else 'no'}).")


def fastest(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for shape in SHAPES:
        best = max(summary(rows), key=lambda e: e[shape])
        lines.append(f"Fastest at {shape_label(shape)}: **{best['model']}, {best['precision']}, {best['runtime']}** "
                     f"({best[shape]:.2f}x the dense float32 PyTorch model; dev score {best['vs_dense']:+.2f} points "
                     f"against it).")
    return lines


def mean_table(rows: list[dict[str, Any]]) -> list[str]:
    """The summary table: every variant's speedups and dev score changes, over the tasks."""
    lines = [(f"| model | runtime | precision | speedup, {shape_label('batch32')} | speedup, {shape_label('batch1')} | "
              "dev score vs the same model in float32 PyTorch | vs dense float32 PyTorch |"),
             "|---|---|---|---|---|---|---|"]
    for e in summary(rows):
        lines.append(f"| {e['model']} | {e['runtime']} | {e['precision']} | {e['batch32']:.2f}x | {e['batch1']:.2f}x | "
                     f"{e['vs_fp32']:+.2f} | {e['vs_dense']:+.2f} |")
    return lines


def markdown(rows: list[dict[str, Any]], hardware: str) -> str:
    lengths = {r["task"]: r["timings"]["batch1"]["seq_len"] for r in rows}
    ratios = {shape: speedups(rows, shape) for shape in SHAPES}
    lines = ["# Deployment: pruning × int8 × runtime", "",
             f"Command: `{COMMAND}`", "",
             (f"Machine: {hardware}. all-MiniLM-L6-v2 teachers and their KPrune prunings; every variant of a task "
              "timed interleaved with the others on random token ids (medians; speedups against the dense float32 "
              "PyTorch model of the same task and shape, geometric means over the tasks), and scored on the whole dev "
              "set with the task's metric (points: x 100). int8: dynamic quantization of the Linear layers (ONNX "
              "Runtime `quantize_dynamic`, PyTorch `torch.ao`). ONNX models exported with eager attention and run "
              "with ONNX Runtime's SkipLayerNormFusion off, as `lit_prune.export` exports and `OnnxPredictor` runs "
              "them (docs/deploy.md says why). ONNX vs PyTorch: the export check's largest output "
              f"difference on {CHECK_SAMPLES} dev examples (int8: to the float32 PyTorch model)."), "",
             *fastest(rows), "", verdict(rows), "", "## Mean over the tasks", "", *mean_table(rows), "",
             "## Every task", "",
             (f"| task | model | runtime | precision | speedup, {shape_label('batch32')} | ms | speedup, "
              f"{shape_label('batch1')} | ms | dev score | ONNX vs PyTorch |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        key = (r["task"], *_key(r))
        check = "–" if r["check_max_abs_difference"] is None else f"{r['check_max_abs_difference']:.1e}"
        lines.append(f"| {r['task']} | {r['model']} | {r['runtime']} | {r['precision']} | "
                     f"{ratios['batch32'][key]:.2f}x | {r['timings']['batch32']['median_ms']:.1f} | "
                     f"{ratios['batch1'][key]:.2f}x | {r['timings']['batch1']['median_ms']:.2f} | "
                     f"{r['metric']} {r['score']:.2f} | {check} |")
    lines += ["", "Batch 1 lengths (the dev sets' average tokenised length): "
              + ", ".join(f"{task} {length}" for task, length in sorted(lengths.items())) + "."]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Left: speedup of each variant at batch 32 (mean over tasks); right: dev score change against speedup."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = summary(rows)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [f"{e['model']}\n{e['precision']} {'ORT' if e['runtime'] == 'onnxruntime' else 'torch'}" for e in entries]
    left.bar(range(len(entries)), [e["batch32"] for e in entries], color=["C1" if e["runtime"] == "onnxruntime"
                                                                          else "C0" for e in entries])
    left.axhline(ACCEPTANCE["speedup"], color="grey", ls="--", lw=1)
    left.set_xticks(range(len(entries)), labels, fontsize=7)
    left.set(ylabel="speedup vs dense fp32 PyTorch", title=f"{shape_label('batch32')} (geometric mean over tasks)")
    for e in entries:
        right.scatter(e["batch32"], e["vs_dense"], marker="o" if e["runtime"] == "onnxruntime" else "s",
                      color="C1" if e["precision"] == "int8" else "C0")
        right.annotate(f"{e['model']} {e['precision']} {e['runtime']}", (e["batch32"], e["vs_dense"]), fontsize=6)
    right.set(xlabel=f"speedup ({shape_label('batch32')})", ylabel="dev score vs dense fp32 (points, mean)",
              title="Speed against dev score")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save(rows: list[dict[str, Any]]) -> None:
    hardware = hardware_label(hardware_summary("cpu"))
    atomic_write_text(RESULTS / "deploy.json", json.dumps(rows, indent=1) + "\n")
    plot(rows, RESULTS / "deploy.png")
    text = markdown(rows, hardware) + "\n![speedups and dev scores of every variant](deploy.png)\n"
    atomic_write_text(RESULTS / "deploy.md", text)
    publish_study("deploy", text, BENCHMARKS)
    docs = [*fastest(rows), "", verdict(rows), "", *mean_table(rows), "",
            (f"Every task and shape, with the milliseconds: [benchmarks/results/deploy.md]"
             f"(../benchmarks/results/deploy.md), measured on {hardware} by `{COMMAND}`.")]
    atomic_write_text(DOCS, replace_section(DOCS.read_text(), "deploy", "\n".join(docs)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated GLUE tasks (default: %(default)s)")
    parser.add_argument("--budgets", default=",".join(f"{f:g}" for f in BUDGETS),
                        help="KPrune flops_kept folders to include (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=20,
                        help="timed rounds at batch 32 (batch 1: three times as many; default: %(default)s)")
    args = parser.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    budgets = tuple(float(f) for f in args.budgets.split(",") if f)
    unknown = sorted(set(tasks) - {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"})
    if unknown or args.repeats < 1:
        parser.error(f"--tasks: {unknown} are not GLUE tasks" if unknown else "--repeats: expected at least 1")
    check_pruned_folders(tasks, budgets)
    from lit_prune.export.extra import DeployExtraMissingError, require

    try:
        require()
    except DeployExtraMissingError as error:
        raise SystemExit(str(error)) from None
    rows: list[dict[str, Any]] = []
    for task in tasks:
        rows += run_task(task, budgets, args.repeats)
        save(rows)
    print(markdown(rows, hardware_label(hardware_summary("cpu"))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
