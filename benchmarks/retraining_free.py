"""Kwon et al. vs KPrune on the all-MiniLM-L6-v2 teachers: task metric by FLOPs budget, speedups, pruning cost.

Run from the repository root, after the teachers' recipes (``configs/finetune/<task>.yaml``)::

    LIT_PRUNE_ASSETS=../shared/assets python -m benchmarks.retraining_free

Every point is one ``python train.py fit --config configs/<method>/<task>.yaml`` run with the budget and the
calibration size overridden on the command line; its ``pruning_report.json`` (under ``runs/bench/``) is the only
thing read back. Runs whose report exists are not repeated, so an interrupted benchmark resumes.

Calibration on this 2-core CPU: both methods draw ``--glue-samples`` training examples (SQuAD:
``--squad-samples`` windows) instead of the papers' 2,048 examples (Kwon) and ~100,000 tokens (KPrune), so the
sweep fits about an hour and a half of this machine; both use the same number of examples. The cost of pruning is measured separately, with
the paper-sized 2,048 samples (``--timing-samples``) on ``--timing-task``, as a multiple of one forward and backward
pass over the same samples timed in the same run.

Outputs (``benchmarks/results/``): ``retraining_free.json`` (all numbers), ``retraining_free.md`` (the tables the
README quotes) and ``retraining_free.png`` (metric vs FLOPs kept, per task).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from lit_prune.core.atomic import atomic_write_bytes, atomic_write_text
from lit_prune.report import REPORT_FILE, read_report

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("kwon", "kprune")
LABELS = {"kwon": "Kwon et al.", "kprune": "KPrune"}
MAIN = {"mrpc": "f1", "stsb": "pearson", "sst2": "accuracy", "cola": "mcc", "squad_v1": "f1", "squad_v2": "f1"}


def run(method: str, task: str, flops_kept: float, out: Path, extra: list[str]) -> dict:
    """One pruning run (skipped when its report exists); returns its report."""
    if (out / REPORT_FILE).is_file():
        return read_report(out)
    command = [sys.executable, str(REPO / "train.py"), "fit", "--config", f"configs/{method}/{task}.yaml",
               "--trainer.callbacks.init_args.flops_kept", str(flops_kept), "--trainer.default_root_dir", str(out),
               "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
               "--trainer.callbacks.init_args.latency_repeats", "6", *extra]
    started = time.perf_counter()
    print(f"[{time.strftime('%H:%M:%S')}] {method} {task} flops_kept={flops_kept}", flush=True)
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-5000:])
        raise SystemExit(f"{method} {task} {flops_kept}: train.py failed (exit {result.returncode})")
    print(f"    done in {time.perf_counter() - started:.0f} s", flush=True)
    return read_report(out)


def sample_args(method: str, samples: int) -> list[str]:
    args = ["--trainer.callbacks.init_args.num_samples", str(samples)]
    if method == "kprune":
        args += ["--trainer.callbacks.init_args.num_tokens", "null"]
    return args


def percent(task: str, value: float) -> float:
    """Scores x 100 (SQuAD's exact match and F1 already are)."""
    return value if task.startswith("squad") else value * 100


def markdown(results: dict) -> str:
    lines = []
    tasks, budgets = results["tasks"], results["budgets"]
    lines.append(f"Task metric (dev; SQuAD: held-out articles) by fraction of FLOPs kept, x 100. Teacher = dense "
                 f"all-MiniLM-L6-v2 fine-tuned by configs/finetune/. Calibration: {results['glue_samples']} "
                 f"examples (SQuAD: {results['squad_samples']} windows) for both methods.\n")
    header = "| task (metric) | teacher | " + " | ".join(f"{m} {b}" for b in budgets for m in ("Kwon", "KPrune")) + " |"
    lines += [header, "|" + "---|" * (2 + 2 * len(budgets))]
    for task in tasks:
        row = results["points"][task]
        teacher = row["teacher"]
        cells = [f"{percent(task, row[m][str(b)]['metric']):.1f}" for b in budgets for m in METHODS]
        lines.append(f"| {task} ({MAIN[task]}) | {percent(task, teacher):.1f} | " + " | ".join(cells) + " |")
    means = results["means"]
    cells = [f"{means[m][str(b)]:.1f}" for b in budgets for m in METHODS]
    lines.append(f"| mean | {results['teacher_mean']:.1f} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("KPrune − Kwon, mean over the tasks (points): " + ", ".join(
        f"{b}: {means['kprune'][str(b)] - means['kwon'][str(b)]:+.1f}" for b in budgets) + "\n")
    lines.append("Measured CPU speedup of the pruned model (dense / pruned median latency, batch of 32 dev examples, "
                 "same run) next to the FLOPs ideal 1/flops_kept:\n")
    lines.append("| task | method | " + " | ".join(f"{b} (ideal {1 / b:.2f}x)" for b in budgets) + " |")
    lines.append("|" + "---|" * (2 + len(budgets)))
    for task in tasks:
        for m in METHODS:
            cells = [f"{results['points'][task][m][str(b)]['speedup']:.2f}x" for b in budgets]
            lines.append(f"| {task} | {LABELS[m]} | " + " | ".join(cells) + " |")
    timing = results.get("timing")
    if timing:
        lines.append("")
        lines.append(f"Pruning cost, {timing['samples']} calibration samples of {timing['task']} at flops_kept "
                     f"{timing['flops_kept']}, as a multiple of one forward+backward pass over the same samples "
                     "timed in the same run:\n")
        lines.append("| method | pruning (s) | forward+backward pass (s) | ratio | bound |")
        lines.append("|---|---|---|---|---|")
        for m in METHODS:
            t = timing[m]
            lines.append(f"| {LABELS[m]} | {t['prune']:.1f} | {t['reference_pass']:.1f} | {t['ratio']:.2f} | "
                         f"{t['bound']} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, budgets = results["tasks"], results["budgets"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        row = results["points"][task]
        for m, style in zip(METHODS, ("o--", "s-")):
            ax.plot(budgets, [percent(task, row[m][str(b)]["metric"]) for b in budgets], style, label=LABELS[m])
        ax.axhline(percent(task, row["teacher"]), color="grey", linestyle=":", label="teacher")
        ax.set_title(f"{task} ({MAIN[task]})")
        ax.set_xlabel("fraction of FLOPs kept")
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("dev score x 100")
    axes[0][0].legend()
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["sst2", "stsb", "mrpc", "squad_v1"], choices=sorted(MAIN))
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.7, 0.5, 0.4, 0.3])
    parser.add_argument("--glue-samples", type=int, default=128)
    parser.add_argument("--squad-samples", type=int, default=32)
    parser.add_argument("--timing-task", default="sst2", choices=sorted(MAIN))
    parser.add_argument("--timing-samples", type=int, default=2048)
    parser.add_argument("--no-timing", action="store_true", help="skip the pruning-cost runs")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "bench")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not os.environ.get("LIT_PRUNE_ASSETS"):
        print("note: LIT_PRUNE_ASSETS is not set; models and data resolve to the hub", file=sys.stderr)

    points: dict = {}
    for task in args.tasks:
        samples = args.squad_samples if task.startswith("squad") else args.glue_samples
        row: dict = {}
        for method in METHODS:
            row[method] = {}
            for budget in args.budgets:
                report = run(method, task, budget, args.runs / method / task / str(budget),
                             sample_args(method, samples))
                main_metric = report["metrics"]["main"]
                row["teacher"] = report["metrics"]["dense"][main_metric]
                row[method][str(budget)] = {
                    "metric": report["metrics"]["pruned"][main_metric], "flops_kept": report["flops"]["kept"],
                    "speedup": report["latency"]["speedup"], "speedup_paired": report["latency"]["speedup_paired"],
                    "prune_seconds": report["seconds"]["prune"], "warnings": report.get("warnings", []),
                    "report": str(args.runs / method / task / str(budget) / REPORT_FILE)}
        points[task] = row
    means = {m: {str(b): sum(percent(t, points[t][m][str(b)]["metric"]) for t in args.tasks) / len(args.tasks)
                 for b in args.budgets} for m in METHODS}
    results = {"tasks": args.tasks, "budgets": args.budgets, "glue_samples": args.glue_samples,
               "squad_samples": args.squad_samples, "points": points, "means": means,
               "teacher_mean": sum(percent(t, points[t]["teacher"]) for t in args.tasks) / len(args.tasks)}
    if not args.no_timing:
        timing: dict = {"task": args.timing_task, "samples": args.timing_samples, "flops_kept": 0.5}
        for method in METHODS:
            extra = sample_args(method, args.timing_samples) + [
                "--trainer.callbacks.init_args.time_reference_pass", "true",
                "--trainer.callbacks.init_args.evaluate", "false",
                "--trainer.callbacks.init_args.latency_batch_size", "0"]
            report = run(method, args.timing_task, 0.5, args.runs / "timing" / method, extra)
            sublayers = 2 * len(report["structure"])
            timing[method] = {"prune": report["seconds"]["prune"], "reference_pass": report["seconds"]["reference_pass"],
                              "ratio": report["seconds"]["prune_over_pass"],
                              "bound": "<= 4" if method == "kwon" else f"<= 2 x {sublayers} + 2 = {2 * sublayers + 2}"}
        results["timing"] = timing
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "retraining_free.json", json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    atomic_write_text(args.out / "retraining_free.md", table)
    plot(results, args.out / "retraining_free.png")
    print(table)
    return results


if __name__ == "__main__":
    main()
