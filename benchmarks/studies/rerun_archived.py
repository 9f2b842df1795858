"""Rerun one archived benchmark cell per method with today's code and compare it with its archived report.

The library was redesigned (shared pruning layer, one run ending, methods as packages); the benchmark tables were
measured before. This study checks they still stand: for each method it reruns one cell of its benchmark config
exactly as the runner ran it (same teacher, recipe, settings, seed and intra-op thread count, into a scratch folder)
and compares the new report with the archived one: the kept structure (heads and neurons per layer), the FLOPs and
parameters kept, and every dev metric.

    LIT_PRUNE_ASSETS=../shared/assets python -m benchmarks.studies.rerun_archived [--cells kwon,kprune,...]

Writes ``benchmarks/results/rerun_archived.json`` and ``.md``. Teachers come from the runner's cache (fine-tuned
when missing, as the benchmark itself would).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import time
from pathlib import Path
from typing import Any

from benchmarks.runner import REPO, archived_report, ensure_teacher, load_config, plan, run_command, run_job
from lit_prune.core.atomic import atomic_write_text
from lit_prune.report import read_report

#: method -> (benchmark config, task, budget): the cell rerun for it
CELLS: dict[str, tuple[str, str, float]] = {
    "kwon": ("retraining_free", "mrpc", 0.5),
    "kprune": ("retraining_free", "mrpc", 0.5),
    "gpruner": ("gpruner", "mrpc", 0.4),
    "grain": ("grain", "mrpc", 0.2),
    "smp": ("smp", "mrpc", 0.5),
}
RESULTS = REPO / "benchmarks" / "results"


def compare(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """What differs between two reports of the same cell (structure, budget achieved, metrics)."""
    metrics = {name: {"archived": value, "rerun": new["metrics"]["pruned"].get(name)}
               for name, value in (old["metrics"]["pruned"] or {}).items()}
    largest = max((abs(m["archived"] - m["rerun"]) for m in metrics.values() if m["rerun"] is not None),
                  default=math.nan)
    return {
        "same_structure": old["structure"] == new["structure"],
        "flops_kept": {"archived": old["flops"]["kept"], "rerun": new["flops"]["kept"]},
        "params_kept": {"archived": old["params"].get("kept"), "rerun": new["params"].get("kept")},
        "metrics": metrics,
        "largest_metric_difference": largest,
    }


def rerun(method: str, scratch: Path) -> dict[str, Any]:
    config_name, task, budget = CELLS[method]
    config = load_config(REPO / "benchmarks" / "configs" / f"{config_name}.yaml")
    job = next(j for j in plan(config) if j.method.name == method and j.task == task and j.budget == budget
               and not j.timing)
    archived = read_report(archived_report(config, job))
    teacher = ensure_teacher(config, task)
    # a scratch folder of its own, and no archive to restore from or write into: a real rerun
    scratch_config = dataclasses.replace(config, runs=scratch / "runs", archive=scratch / "archive")
    job = dataclasses.replace(job, folder=scratch_config.runs / job.folder.relative_to(config.runs))
    # with the intra-op threads the archived run had (the runner gives each of `jobs` parallel runs its share of
    # the cores): a training run's floating-point sums, and so its result, depend on them
    threads = (archived.get("hardware") or {}).get("threads")
    started = time.perf_counter()
    report = run_job(scratch_config, job, teacher, runner=functools.partial(run_command, threads=threads))
    return {"method": method, "benchmark": config_name, "task": task, "budget": budget, "seed": job.seed,
            "seconds": round(time.perf_counter() - started, 1), **compare(archived, report)}


#: what is known of why a cell differs from its archived report, printed under the table when it does
NOTES: dict[str, str] = {
    "grain": "GRAIN's `params_kept` now counts the encoder Linear layers' weights only, the one meaning every method "
             "gives it (`docs/callbacks.md`); the archived run counted weights and biases. The same budget then keeps "
             "a slightly different set of units, and a training run with another structure along its schedule ends "
             "elsewhere.",
    "smp": "Rerun with the archived run's seed, data and one intra-op thread; the cause of the difference was not "
           "found.",
}


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["# Archived benchmark cells rerun with the redesigned library", "",
             "Command: `LIT_PRUNE_ASSETS=../shared/assets python -m benchmarks.studies.rerun_archived`", "",
             "| method | cell | same structure | FLOPs kept (archived → rerun) | params kept (archived → rerun) | "
             "largest dev-metric difference |", "|---|---|---|---|---|---|"]
    for row in rows:
        def pair(entry: dict[str, Any]) -> str:
            a, b = entry["archived"], entry["rerun"]
            return "–" if a is None or b is None else f"{a:.4f} → {b:.4f}"

        lines.append(f"| {row['method']} | {row['benchmark']}: {row['task']} at {row['budget']:g} | "
                     f"{'yes' if row['same_structure'] else 'no'} | {pair(row['flops_kept'])} | "
                     f"{pair(row['params_kept'])} | {row['largest_metric_difference']:.2e} |")
    def changes(row: dict[str, Any]) -> str:
        return ", ".join(f"{name} {100 * m['archived']:.1f} → {100 * m['rerun']:.1f}"
                         for name, m in row["metrics"].items() if m["rerun"] is not None)

    notes = [f"- **{row['method']}** ({'another' if not row['same_structure'] else 'the same'} kept structure; "
             f"{changes(row)}): {NOTES.get(row['method'], 'not explained.')}" for row in rows
             if not row["same_structure"] or row["largest_metric_difference"] > 0]
    if notes:
        lines += ["", "Where a cell differs:", "", *notes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", default=",".join(CELLS), help="methods to rerun, comma-separated")
    parser.add_argument("--scratch", default=str(REPO / "runs" / "rerun_archived"), help="where the reruns go")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.cells.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(CELLS))
    if unknown:
        parser.error(f"--cells: unknown {unknown}; known: {sorted(CELLS)}")
    out = RESULTS / "rerun_archived.json"
    for method in methods:
        row = rerun(method, Path(args.scratch))
        # read again before writing: another rerun (other cells) may have written since this one started
        rows = {r["method"]: r for r in json.loads(out.read_text())} if out.is_file() else {}
        rows[method] = row
        ordered = [rows[m] for m in CELLS if m in rows]
        atomic_write_text(out, json.dumps(ordered, indent=1) + "\n")
        atomic_write_text(out.with_suffix(".md"), markdown(ordered))
        print(markdown(ordered))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
