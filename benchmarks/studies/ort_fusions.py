"""ONNX Runtime's fused SkipLayerNormalization against the Add and LayerNormalization it replaces, on the CPU.

``lit_prune.export.OnnxPredictor`` turns ONNX Runtime's SkipLayerNormFusion off; this is the measurement behind it:
two one-operator graphs (no graph optimisation), a residual sum and its LayerNorm over a (batch, sequence, hidden)
float32 input, timed interleaved (medians) at 1 and 2 intra-op threads.

    python -m benchmarks.studies.ort_fusions [--shape 32,128,384] [--repeats 30]

Writes ``benchmarks/results/ort_fusions.json`` and ``.md`` and its section of ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from typing import Any

import numpy as np

from benchmarks.runner import REPO
from benchmarks.tables import publish_study
from lit_prune.core.atomic import atomic_write_text
from lit_prune.core.hardware import hardware_label, hardware_summary
from lit_prune.export.extra import require

RESULTS = REPO / "benchmarks" / "results"
COMMAND = "python -m benchmarks.studies.ort_fusions"


def graph(fused: bool, shape: tuple[int, int, int]) -> bytes:
    """``LayerNorm(x + residual)``: one SkipLayerNormalization, or an Add and a LayerNormalization."""
    onnx = require("onnx")["onnx"]
    helper, floats = onnx.helper, onnx.TensorProto.FLOAT
    hidden = shape[-1]
    inputs = [helper.make_tensor_value_info(name, floats, list(shape)) for name in ("x", "residual")]
    output = helper.make_tensor_value_info("y", floats, list(shape))
    weights = [helper.make_tensor("gamma", floats, [hidden], np.ones(hidden, np.float32)),
               helper.make_tensor("beta", floats, [hidden], np.zeros(hidden, np.float32))]
    if fused:
        nodes = [helper.make_node("SkipLayerNormalization", ["x", "residual", "gamma", "beta"], ["y"],
                                  domain="com.microsoft", epsilon=1e-12)]
    else:
        nodes = [helper.make_node("Add", ["x", "residual"], ["sum"]),
                 helper.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12)]
    model = helper.make_model(helper.make_graph(nodes, "skip_layer_norm", inputs, [output], weights),
                              opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    return model.SerializeToString()


def measure(shape: tuple[int, int, int], threads: int, repeats: int) -> dict[str, float]:
    """Median ms of each graph, interleaved in a fresh order each round."""
    ort = require("onnxruntime")["onnxruntime"]
    sessions = {}
    for name, fused in (("fused", True), ("unfused", False)):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sessions[name] = ort.InferenceSession(graph(fused, shape), options, providers=["CPUExecutionProvider"])
    generator = np.random.default_rng(0)
    feed = {name: generator.standard_normal(shape, dtype=np.float32) for name in ("x", "residual")}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    order = list(sessions)
    for round_ in range(3 + repeats):
        random.Random(round_).shuffle(order)
        for name in order:
            start = time.perf_counter()
            sessions[name].run(None, feed)
            if round_ >= 3:
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def markdown(rows: list[dict[str, Any]], hardware: str) -> str:
    lines = ["# ONNX Runtime: fused SkipLayerNormalization against Add + LayerNormalization", "",
             (f"Command: `{COMMAND}`. Machine: {hardware}. One-operator graphs, no graph optimisation, float32, "
              "medians of interleaved runs. Why `OnnxPredictor` turns SkipLayerNormFusion off: docs/deploy.md."), "",
             "| shape | threads | fused ms | Add + LayerNormalization ms | fused / unfused |", "|---|---|---|---|---|"]
    lines += [f"| {' × '.join(map(str, r['shape']))} | {r['threads']} | {r['fused_ms']:.2f} | {r['unfused_ms']:.2f} | "
              f"{r['fused_ms'] / r['unfused_ms']:.2f}x |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="32,128,384", help="batch,sequence,hidden (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds (default: %(default)s)")
    args = parser.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split(","))
    if len(shape) != 3 or min(shape) < 1 or args.repeats < 1:
        parser.error(f"--shape {args.shape!r} / --repeats {args.repeats}: expected three positive sizes and "
                     "at least one round")
    require("onnx", "onnxruntime")
    import onnxruntime

    rows = []
    for threads in (1, 2):
        ms = measure(shape, threads, args.repeats)
        rows.append({"shape": list(shape), "threads": threads, "fused_ms": ms["fused"], "unfused_ms": ms["unfused"],
                     "onnxruntime": onnxruntime.__version__})
    text = markdown(rows, f"{hardware_label(hardware_summary('cpu'))}, ONNX Runtime {onnxruntime.__version__}")
    atomic_write_text(RESULTS / "ort_fusions.json", json.dumps(rows, indent=1) + "\n")
    atomic_write_text(RESULTS / "ort_fusions.md", text)
    publish_study("ort_fusions", text, REPO / "BENCHMARKS.md")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
