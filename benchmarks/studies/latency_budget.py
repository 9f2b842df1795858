"""Latency budgets against their requests, and against FLOPs budgets at the same measured speedup.

Prunes the all-MiniLM-L6-v2 teachers with the recipes' default calibration (``configs/<method>/<task>.yaml``) under
``speedup`` budgets, then measures every pruned folder **independently of its report**: the folder and its dense
teacher are loaded with plain transformers (``trust_remote_code=True``) and timed interleaved on random inputs of
the shape asked, with the threads asked.

Parts (``--parts``):

* ``speedups``: Kwon and KPrune on MRPC and STS-B asked 1.5x, 2x and 3x at batch 32 × 128 tokens, 2 threads;
* ``batch1``: the same asked 2x at batch 1 × the data's average length, 1 thread;
* ``flops``: KPrune on MRPC, STS-B and SST-2 asked 2x (batch 32 × 128, 2 threads) against KPrune at flops_kept
  0.5 / 0.4 / 0.3 / 0.2 (``--flops-budgets``), timed alike: the FLOPs budget's dev score at the latency run's
  measured speedup is interpolated between the two FLOPs runs around it.

    LIT_PRUNE_ASSETS=../shared/assets python -m benchmarks.studies.latency_budget [--parts speedups,batch1,flops]

Timings need a quiet machine; pruning does not (once the latency tables are cached). Beside other work, prune with
``--prune-only``, then run again without it on a quiet machine (it times the folders, pruning nothing new);
``--remeasure`` times every recorded folder again.

Writes ``benchmarks/results/latency_budget.json``, ``.md`` and ``.png``, and its section of ``BENCHMARKS.md`` (the runs
go under ``runs/latency_budget/``); a run whose report exists is not run again, only timed again. Teachers come
from the benchmark runner's cache (fine-tuned when missing).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.runner import REPO, TEACHER_FILE, ensure_teacher, load_config, run_command, teacher_dir
from benchmarks.tables import publish_study
from lit_prune.core.atomic import atomic_write_text
from lit_prune.core.hardware import hardware_label, hardware_summary
from lit_prune.core.latency import compare
from lit_prune.core.latency_tables import random_inputs
from lit_prune.report import read_report

RESULTS = REPO / "benchmarks" / "results"
BENCHMARKS = REPO / "BENCHMARKS.md"
RUNS = REPO / "runs" / "latency_budget"
#: the acceptance bounds of the measured speedup around the request
TOLERANCE = {"speedups": 0.07, "batch1": 0.10}
FLOPS_BUDGETS = (0.5, 0.4, 0.3, 0.2)


def teacher_of(task: str) -> tuple[Path, dict[str, float] | None]:
    """The teacher's folder and its known dev metrics (the dense evaluation is skipped when known)."""
    config = load_config(REPO / "benchmarks" / "configs" / "retraining_free.yaml")
    folder = ensure_teacher(config, task)
    record = teacher_dir(config, task) / TEACHER_FILE
    return folder, json.loads(record.read_text()).get("metrics")


def prune(method: str, task: str, folder: Path, budget: dict[str, Any], teacher: Path,
          dense_metrics: dict[str, float] | None, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run the recipe ``configs/<method>/<task>.yaml`` with ``budget`` (callback settings) and ``extra`` command-line
    arguments into ``folder``."""
    if (folder / "pruning_report.json").is_file():
        return read_report(folder)
    prefix = "--trainer.callbacks.init_args."
    command = [sys.executable, str(REPO / "train.py"), "fit", "--config", f"configs/{method}/{task}.yaml",
               "--model.init_args.name_or_path", str(teacher), "--trainer.default_root_dir", str(folder),
               "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
               "--trainer.accelerator", "cpu", prefix + "output_dir", str(folder)]
    for key, value in budget.items():
        command += [prefix + key, "null" if value is None else str(value)]
    command += list(extra)
    if dense_metrics:
        command += [prefix + "dense_metrics", json.dumps({k.removeprefix("val/"): v for k, v in dense_metrics.items()
                                                          if not k.removeprefix("val/").startswith("loss")})]
    run_command(command, folder / "prune.log")
    return read_report(folder)


def measure(teacher: Path, pruned: Path, batch_size: int, seq_len: int, threads: int, repeats: int) -> dict[str, Any]:
    """Dense and pruned, loaded with plain transformers, timed interleaved on random token ids."""
    from transformers import AutoModelForSequenceClassification

    dense = AutoModelForSequenceClassification.from_pretrained(teacher).eval()
    small = AutoModelForSequenceClassification.from_pretrained(pruned, trust_remote_code=True).eval()
    result = compare(dense, small, random_inputs(dense, batch_size, seq_len, seed=7), warmup=3, repeats=repeats,
                     threads=threads)
    return {"speedup": result["speedup"], "speedup_paired": result["speedup_paired"],
            "dense_ms": result["dense"]["median_ms"], "pruned_ms": result["pruned"]["median_ms"],
            "batch_size": batch_size, "seq_len": seq_len, "threads": threads, "repeats": repeats}


def row(part: str, method: str, task: str, budget: dict[str, Any], report: dict[str, Any], teacher: Path,
        folder: Path, batch_size: int, seq_len: int, threads: int) -> dict[str, Any]:
    repeats = 40 if batch_size == 1 else 15
    measured = measure(teacher, folder / "pruned_model", batch_size, seq_len, threads, repeats)
    main = report["metrics"]["main"]
    entry = (report.get("latency") or {}).get("budget") or {}
    table = entry.get("table") or {}
    requested = budget.get("speedup")
    return {"part": part, "method": method, "task": task, "budget": budget, "main_metric": main,
            "dense_score": (report["metrics"]["dense"] or {}).get(main), "score": report["metrics"]["pruned"][main],
            "flops_kept": report["flops"]["kept"], "requested": requested,
            "predicted": entry.get("predicted_speedup"), "report_measured": entry.get("measured_speedup"),
            "measured": measured,
            "error": None if requested is None else measured["speedup"] / requested - 1,
            "table": {"shape": table["shape"], "seconds": table["seconds"], "version": table_version(table)}
            if table else None,
            "prune_seconds": report["seconds"].get("prune"), "folder": str(folder.relative_to(REPO))}


def table_version(table: dict[str, Any]) -> int:
    """The latency table's format version, from a report's table summary (reports before version 3 lack it;
    version 2 added the whole-model calibration)."""
    return table.get("version") or (2 if "calibration" in table else 1)


def key(r: dict[str, Any]) -> str:
    return f"{r['part']}/{r['method']}/{r['task']}/{json.dumps(r['budget'], sort_keys=True)}"


def remeasure(rows: dict[str, dict[str, Any]]) -> None:
    """Time every row's folder again (the pruning is kept): for a quiet machine after runs made beside other work."""
    for name, old in list(rows.items()):
        teacher, _ = teacher_of(old["task"])
        shape = old["measured"]
        measured = measure(teacher, REPO / old["folder"] / "pruned_model", shape["batch_size"], shape["seq_len"],
                           shape["threads"], shape["repeats"])
        rows[name] = {**old, "measured": measured,
                      "error": None if old["requested"] is None else measured["speedup"] / old["requested"] - 1}
        print(f"[{time.strftime('%H:%M:%S')}] remeasured {name}: {old['measured']['speedup']:.2f}x -> "
              f"{measured['speedup']:.2f}x", flush=True)
        save(rows)


def run_part(part: str, methods: list[str], tasks: list[str], rows: dict[str, dict[str, Any]],
             timing: bool = True, flops_budgets: tuple[float, ...] = FLOPS_BUDGETS, pruning: bool = True) -> None:
    plans = []
    if part == "speedups":
        plans = [(m, t, {"flops_kept": None, "speedup": s, "latency_batch_size": 32, "latency_seq_len": 128,
                         "latency_threads": 2}, 32, 128, 2) for m in methods for t in tasks for s in (1.5, 2.0, 3.0)]
    elif part == "batch1":
        plans = [(m, t, {"flops_kept": None, "speedup": 2.0, "latency_batch_size": 1, "latency_threads": 1}, 1, None,
                  1) for m in methods for t in tasks]
    elif part == "flops":
        plans = [("kprune", t, {"flops_kept": None, "speedup": 2.0, "latency_batch_size": 32, "latency_seq_len": 128,
                                "latency_threads": 2}, 32, 128, 2) for t in tasks]
        plans += [("kprune", t, {"flops_kept": f}, 32, 128, 2) for t in tasks for f in flops_budgets]
    for method, task, budget, batch_size, seq_len, threads in plans:
        teacher, dense_metrics = teacher_of(task)
        name = "-".join(f"{k}{v}" for k, v in budget.items() if v is not None and k in ("speedup", "flops_kept",
                                                                                         "latency_batch_size"))
        folder = RUNS / method / task / name
        if not pruning and not (folder / "pruning_report.json").is_file():
            print(f"[{time.strftime('%H:%M:%S')}] {part} {method} {task} {budget}: not pruned yet, skipped "
                  "(--no-prune)", flush=True)
            continue
        started = time.perf_counter()
        report = prune(method, task, folder, budget, teacher, dense_metrics)
        if not timing:
            print(f"[{time.strftime('%H:%M:%S')}] {part} {method} {task} {budget}: pruned (not timed)", flush=True)
            continue
        length = seq_len or report["latency"]["budget"]["table"]["shape"]["seq_len"]
        result = row(part, method, task, budget, report, teacher, folder, batch_size, length, threads)
        result["seconds"] = round(time.perf_counter() - started, 1)
        rows[key(result)] = result
        print(f"[{time.strftime('%H:%M:%S')}] {part} {method} {task} {budget}: measured "
              f"{result['measured']['speedup']:.2f}x, {result['main_metric']} {result['score']:.4f}", flush=True)
        save(rows)


def flops_comparison(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task: the latency run's score against the FLOPs runs' score interpolated at its measured speedup."""
    out = []
    for task in sorted({r["task"] for r in rows if r["part"] == "flops"}):
        latency = next((r for r in rows if r["part"] == "flops" and r["task"] == task and r["requested"]), None)
        flops = sorted((r["measured"]["speedup"], r["score"], r["budget"]["flops_kept"]) for r in rows
                        if r["part"] == "flops" and r["task"] == task and not r["requested"])
        if latency is None or len(flops) < 2:
            continue
        speed = latency["measured"]["speedup"]
        below = [f for f in flops if f[0] <= speed]
        above = [f for f in flops if f[0] > speed]
        if not below or not above:
            score, note = math.nan, "outside the FLOPs runs' speedups"
        else:
            (s0, y0, f0), (s1, y1, f1) = below[-1], above[0]
            score = y0 + (y1 - y0) * (speed - s0) / (s1 - s0)
            note = f"between flops_kept {f0:g} ({s0:.2f}x) and {f1:g} ({s1:.2f}x)"
        out.append({"task": task, "metric": latency["main_metric"], "speedup": speed, "latency_score": latency["score"],
                    "flops_score": score, "difference": latency["score"] - score, "interpolated": note})
    return out


def tables_section(rows: list[dict[str, Any]]) -> list[str]:
    """How long each latency table took to build, and how many runs used it (the first built it, the rest reused it
    from the cache, as their logs say)."""
    tables: dict[tuple[str, int, float], int] = {}
    for r in rows:
        if not r["requested"]:
            continue
        table = r["table"]
        shape = table["shape"]
        name = (f"batch {shape['batch_size']} × {shape['seq_len']} tokens, {shape['threads']} thread(s), "
                f"{shape['dtype']}")
        build = (name, table["version"], round(table["seconds"], 1))
        tables[build] = tables.get(build, 0) + 1
    if not tables:
        return []
    lines = ["## Latency tables (all-MiniLM-L6-v2)", "", "| shape | table version | built in | runs that used it |",
             "|---|---|---|---|"]
    lines += [f"| {name} | {version} | {seconds:.0f} s | {runs} |"
              for (name, version, seconds), runs in sorted(tables.items())]
    return lines + ["", "Built once per shape and machine; every later run reuses the cached table and its log says "
                    "so (`latency table reused from ...`).", ""]


def markdown(rows: list[dict[str, Any]]) -> str:
    hardware = hardware_label(hardware_summary("cpu"))
    lines = ["# Latency budgets: requested, predicted and measured speedups", "",
             "Command: `LIT_PRUNE_ASSETS=../shared/assets python -m benchmarks.studies.latency_budget`", "",
             f"Machine: {hardware.split(', ')[0]}. Measured independently of the reports: each pruned folder and "
             "its dense teacher loaded with plain transformers and timed interleaved (median of 15 rounds; 40 at "
             "batch 1) on random token ids of the shape asked, with the threads asked. The report's own measurement "
             "(the same comparison, in the pruning process right after pruning) is shown beside it: the two differ by "
             "several percent, a measure of how far two timings of the same pair agree on this machine.", ""]
    for part, title in (("speedups", "Asked 1.5x / 2x / 3x at batch 32 × 128 tokens, 2 threads (bound ±7%)"),
                        ("batch1", "Asked 2x at batch 1 × the data's average length, 1 thread (bound ±10%)")):
        chosen = [r for r in rows if r["part"] == part]
        if not chosen:
            continue
        lines += [f"## {title}", "", "| method | task | asked | predicted | measured | error | within | measured by "
                  "the run's report | FLOPs kept | dev score (dense) |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in chosen:
            within = abs(r["error"]) <= TOLERANCE[part]
            in_run = "–" if r.get("report_measured") is None else f"{r['report_measured']:.2f}x"
            lines.append(f"| {r['method']} | {r['task']} | {r['requested']:g}x | {r['predicted']:.2f}x | "
                         f"{r['measured']['speedup']:.2f}x (s={r['measured']['seq_len']}) | {100 * r['error']:+.1f}% | "
                         f"{'yes' if within else 'no'} | {in_run} | {r['flops_kept']:.3f} | "
                         f"{r['main_metric']} {r['score']:.4f} "
                         f"({r['dense_score'] if r['dense_score'] is None else round(r['dense_score'], 4)}) |")
        errors = [abs(r["error"]) for r in chosen]
        lines += ["", f"Largest error {100 * max(errors):.1f}%; {sum(e <= TOLERANCE[part] for e in errors)} of "
                  f"{len(errors)} within ±{100 * TOLERANCE[part]:.0f}%.", ""]
    lines += tables_section(rows)
    comparison = flops_comparison(rows)
    if comparison:
        lines += ["## KPrune: latency budget (2x) against FLOPs budgets at the same measured speedup", "",
                  "| task | metric | measured speedup | latency budget | FLOPs budget (interpolated) | difference | "
                  "FLOPs runs used |", "|---|---|---|---|---|---|---|"]
        for c in comparison:
            lines.append(f"| {c['task']} | {c['metric']} | {c['speedup']:.2f}x | {c['latency_score']:.4f} | "
                         f"{c['flops_score']:.4f} | {c['difference']:+.4f} | {c['interpolated']} |")
        diffs = [c["difference"] for c in comparison if math.isfinite(c["difference"])]
        if diffs:
            lines += ["", f"Mean difference (latency − FLOPs): {sum(diffs) / len(diffs):+.4f}.", ""]
        flops_rows = [r for r in rows if r["part"] == "flops"]
        lines += ["Every run of this part:", "", "| task | budget | FLOPs kept | measured speedup | dev score |",
                  "|---|---|---|---|---|"]
        for r in sorted(flops_rows, key=lambda r: (r["task"], r["measured"]["speedup"])):
            budget = f"speedup {r['requested']:g}" if r["requested"] else f"flops_kept {r['budget']['flops_kept']:g}"
            lines.append(f"| {r['task']} | {budget} | {r['flops_kept']:.3f} | {r['measured']['speedup']:.2f}x | "
                         f"{r['main_metric']} {r['score']:.4f} |")
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Left: measured against requested speedups (the ±7% band); right: dev score against measured speedup, latency
    and FLOPs budgets (KPrune)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    asked = [r for r in rows if r["requested"] and r["part"] in ("speedups", "batch1")]
    if asked:
        top = max(max(r["requested"] for r in asked), max(r["measured"]["speedup"] for r in asked)) * 1.1
        line = [1, top]
        left.plot(line, line, color="grey", lw=1)
        left.fill_between(line, [x * 0.93 for x in line], [x * 1.07 for x in line], color="grey", alpha=0.15,
                          label="±7%")
        for (method, part), marker in zip(sorted({(r["method"], r["part"]) for r in asked}), "os^vD"):
            chosen = [r for r in asked if (r["method"], r["part"]) == (method, part)]
            left.scatter([r["requested"] for r in chosen], [r["measured"]["speedup"] for r in chosen], marker=marker,
                         label=f"{method} ({'batch 1' if part == 'batch1' else 'batch 32 × 128'})")
        left.set(xlabel="requested speedup", ylabel="measured speedup (plain transformers)", xlim=(1, top),
                 ylim=(1, top), title="Latency budgets: requested vs measured")
        left.legend(fontsize=8)
    for task, color in zip(sorted({r["task"] for r in rows if r["part"] == "flops"}), ("C0", "C1", "C2", "C3")):
        flops = sorted((r for r in rows if r["part"] == "flops" and r["task"] == task and not r["requested"]),
                       key=lambda r: r["measured"]["speedup"])
        right.plot([r["measured"]["speedup"] for r in flops], [r["score"] for r in flops], "o-", color=color,
                   label=f"{task}: flops_kept")
        for r in rows:
            if r["part"] == "flops" and r["task"] == task and r["requested"]:
                right.scatter([r["measured"]["speedup"]], [r["score"]], marker="*", s=160, color=color,
                              label=f"{task}: speedup {r['requested']:g}")
    right.set(xlabel="measured speedup", ylabel="dev score (main metric)", title="KPrune: latency vs FLOPs budgets")
    if right.has_data():
        right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save(rows: dict[str, dict[str, Any]]) -> None:
    ordered = list(rows.values())
    atomic_write_text(RESULTS / "latency_budget.json", json.dumps(ordered, indent=1) + "\n")
    text = markdown(ordered)
    plot(ordered, RESULTS / "latency_budget.png")
    text += "\n![requested vs measured; latency vs FLOPs budgets](latency_budget.png)\n"
    atomic_write_text(RESULTS / "latency_budget.md", text)
    publish_study("latency_budget", text, BENCHMARKS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="speedups,batch1,flops", help="comma-separated: speedups, batch1, flops")
    parser.add_argument("--methods", default="kwon,kprune", help="for speedups and batch1")
    parser.add_argument("--tasks", default=None, help="default: mrpc,stsb (flops: mrpc,stsb,sst2)")
    parser.add_argument("--flops-budgets", default=",".join(f"{f:g}" for f in FLOPS_BUDGETS),
                        help="for flops: the flops_kept runs the latency budget is compared with")
    parser.add_argument("--prune-only", action="store_true",
                        help="prune, do not time (beside other work: time later with --remeasure on a quiet machine)")
    parser.add_argument("--remeasure", action="store_true", help="time every recorded run again, prune nothing")
    parser.add_argument("--no-prune", action="store_true",
                        help="time the runs already pruned, skip the others (a quiet window shorter than the pruning)")
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - {"speedups", "batch1", "flops"})
    if unknown:
        parser.error(f"--parts: unknown {unknown}; known: speedups, batch1, flops")
    out = RESULTS / "latency_budget.json"
    rows = {}
    if out.is_file():
        for r in json.loads(out.read_text()):
            rows[f"{r['part']}/{r['method']}/{r['task']}/{json.dumps(r['budget'], sort_keys=True)}"] = r
    if args.remeasure:
        remeasure(rows)
        parts = []
    for part in parts:
        default = "mrpc,stsb,sst2" if part == "flops" else "mrpc,stsb"
        tasks = (args.tasks or default).split(",")
        run_part(part, args.methods.split(","), tasks, rows, timing=not args.prune_only,
                 flops_budgets=tuple(float(f) for f in args.flops_budgets.split(",")), pruning=not args.no_prune)
    print(markdown(list(rows.values())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
