"""bf16 against float32: Kwon et al. and KPrune on the MRPC teacher at flops_kept 0.5, under each precision.

The same recipe (``configs/<method>/mrpc.yaml``, its default calibration) run twice per method, once with
``--trainer.precision 32-true`` and once with ``bf16-mixed``: the calibration passes and the evaluation run under
the precision asked, while the statistics, the Fisher information and the least-squares systems are accumulated and
solved in float32 / float64 (never in bf16). The table gives each run's dev score, the difference bf16 − float32 and
whether the two runs kept the same units; the acceptance bound is 1 point.

    LIT_PRUNE_ASSETS=../shared/assets python -m benchmarks.studies.precision

Writes ``benchmarks/results/precision.json`` and ``.md`` and its section of ``BENCHMARKS.md`` (the runs go under
``runs/precision/``; a run whose report exists is read, not run again). On a CPU without native bf16 matrix units
bf16 runs slower than float32: the times are listed, not compared.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from benchmarks.runner import REPO
from benchmarks.studies.latency_budget import prune, teacher_of
from benchmarks.tables import publish_study
from lit_prune.core.atomic import atomic_write_text
from lit_prune.core.hardware import hardware_label, hardware_summary
from lit_prune.core.masks import PruningMasks

RESULTS = REPO / "benchmarks" / "results"
BENCHMARKS = REPO / "BENCHMARKS.md"
RUNS = REPO / "runs" / "precision"
COMMAND = "LIT_PRUNE_ASSETS=../shared/assets python -m benchmarks.studies.precision"
PRECISIONS = ("32-true", "bf16-mixed")
BOUND = 0.01  # one point of the main metric


def run(methods: list[str], task: str, flops_kept: float) -> list[dict[str, Any]]:
    teacher, dense_metrics = teacher_of(task)
    rows = []
    for method in methods:
        reports = {}
        for precision in PRECISIONS:
            folder = RUNS / method / task / f"flops_kept{flops_kept:g}-{precision}"
            reports[precision] = prune(method, task, folder, {"flops_kept": flops_kept}, teacher, dense_metrics,
                                       extra=("--trainer.precision", precision))
            reports[precision]["folder"] = folder
        full, half = (reports[p] for p in PRECISIONS)
        main = full["metrics"]["main"]
        masks = [PruningMasks.load(r["folder"] / "pruning_masks.safetensors").binary() for r in (full, half)]
        same = all(bool((getattr(masks[0], f) == getattr(masks[1], f)).all()) for f in ("head", "qk", "vo", "ffn"))
        rows.append({"method": method, "task": task, "flops_kept": flops_kept, "metric": main,
                     "dense": (full["metrics"]["dense"] or {}).get(main),
                     "float32": full["metrics"]["pruned"][main], "bf16": half["metrics"]["pruned"][main],
                     "difference": half["metrics"]["pruned"][main] - full["metrics"]["pruned"][main],
                     "same_units": same, "seconds": {p: r["seconds"].get("prune") for p, r in reports.items()},
                     "folders": {p: str(r["folder"].relative_to(REPO)) for p, r in reports.items()}})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    machine = hardware_label(hardware_summary("cpu")).split(", ")[0]
    lines = ["# bf16-mixed against float32 (retraining-free methods)", "", f"Command: `{COMMAND}`", "",
             f"Machine: {machine}. Each method's recipe with its default calibration, run once per precision; the "
             "statistics and solvers stay in float32 / float64 under bf16-mixed. Bound: within 1 point.", "",
             "| method | task | flops_kept | metric | dense | float32 | bf16-mixed | bf16 − float32 | within 1 pt | same "
             "units kept | prune s (fp32 / bf16) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        dense = "–" if r["dense"] is None else f"{r['dense']:.4f}"
        seconds = " / ".join("–" if r["seconds"][p] is None else f"{r['seconds'][p]:.0f}" for p in PRECISIONS)
        lines.append(f"| {r['method']} | {r['task']} | {r['flops_kept']:g} | {r['metric']} | {dense} | "
                     f"{r['float32']:.4f} | {r['bf16']:.4f} | {100 * r['difference']:+.2f} pt | "
                     f"{'yes' if abs(r['difference']) <= BOUND else 'no'} | {'yes' if r['same_units'] else 'no'} | "
                     f"{seconds} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="kwon,kprune")
    parser.add_argument("--task", default="mrpc")
    parser.add_argument("--flops-kept", type=float, default=0.5)
    args = parser.parse_args(argv)
    rows = run(args.methods.split(","), args.task, args.flops_kept)
    atomic_write_text(RESULTS / "precision.json", json.dumps(rows, indent=1) + "\n")
    text = markdown(rows)
    atomic_write_text(RESULTS / "precision.md", text)
    publish_study("precision", text, BENCHMARKS)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
