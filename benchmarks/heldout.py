"""Held-out distillation loss of a benchmark's pruned models: does a lower calibration loss carry over to unseen data?

    LIT_PRUNE_ASSETS=../shared/assets python -m benchmarks.heldout --config benchmarks/configs/gpruner.yaml \\
        --tasks squad_v1 --budgets 0.6 --samples 256

For each finished run of the benchmark (its ``pruned_model/`` folder) this scores the pruned model against its
dense teacher on ``--samples`` training examples (SQuAD: windows) that no run's calibration sample drew: the KL
divergence of the pruned model's predictions from the teacher's (T = 1; the mean of start and end for QA, the MSE
for regression), the loss G-Pruner's PPO search minimises on its calibration examples. Writes
``results/<name>_heldout.json`` and ``<name>_heldout.md``.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader, Subset
from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

from benchmarks.outputs import write_outputs
from benchmarks.runner import REPO, BenchConfig, load_config, plan
from benchmarks.tables import scale
from lit_prune.core.io import load_pruned
from lit_prune.data.base import TaskDataModule
from lit_prune.prune.batches import model_batch, model_inputs
from lit_prune.prune.distill import dense_predictions, distillation_loss


def datamodule_for(run: Path, teacher: Path) -> TaskDataModule:
    """The data module a run was pruned with (its saved ``config.yaml``), tokenising with the teacher's tokenizer."""
    data = yaml.safe_load((run / "config.yaml").read_text())["data"]
    module, _, name = data["class_path"].rpartition(".")
    init_args = {**data.get("init_args", {}), "tokenizer": str(teacher)}
    datamodule = getattr(importlib.import_module(module), name)(**init_args)
    datamodule.setup("fit")
    return datamodule


def held_out_indices(datamodule: TaskDataModule, reports: list[dict[str, Any]], samples: int,
                     seed: int) -> list[int]:
    """``samples`` training indices, drawn at random, that none of the reports' calibration samples holds."""
    used: set[int] = set()
    for requested in {json.dumps(r["calibration"]["requested"], sort_keys=True) for r in reports}:
        draw = json.loads(requested)
        used.update(datamodule.calibration_sample(**draw).dataset.indices)
    size = len(datamodule.split_dataset("train"))
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    indices = [index for index in order if index not in used][:samples]
    if len(indices) < samples:
        raise ValueError(f"--samples={samples}: only {len(indices)} training examples are outside every "
                         "calibration sample")
    return indices


@torch.no_grad()
def mean_loss(model: torch.nn.Module, batches: list[dict], targets: list[dict]) -> float:
    model.eval()
    total, count = 0.0, 0
    for batch, target in zip(batches, targets):
        size = int(batch["input_ids"].shape[0])
        total += float(distillation_loss(model(**batch), target, 1.0)) * size
        count += size
    return total / count


def measure(config: BenchConfig, tasks: list[str], budgets: list[float], samples: int, seed: int,
            batch_size: int = 32) -> dict[str, Any]:
    jobs = [job for job in plan(config) if not job.timing and job.task in tasks and job.budget in budgets
            and (job.folder / "pruned_model").is_dir() and (job.folder / "pruning_report.json").is_file()]
    if not jobs:
        raise SystemExit(f"no finished runs of {config.name} for tasks {tasks} and budgets {budgets}")
    results: dict[str, Any] = {"benchmark": config.name, "samples": samples, "seed": seed, "loss": "KL(teacher || "
                               "pruned) at T=1 (QA: mean of start and end; regression: MSE)", "tasks": {}}
    for task in tasks:
        task_jobs = [job for job in jobs if job.task == task]
        if not task_jobs:
            continue
        reports = [json.loads((job.folder / "pruning_report.json").read_text()) for job in task_jobs]
        teachers = sorted({report["model"] for report in reports})  # the model each run pruned
        if len(teachers) != 1:
            raise ValueError(f"{task}: the runs pruned different models {teachers}; their losses are not comparable")
        teacher = REPO / teachers[0]
        datamodule = datamodule_for(task_jobs[0].folder, teacher)
        indices = held_out_indices(datamodule, reports, samples, seed)
        auto = AutoModelForQuestionAnswering if task.startswith("squad") else AutoModelForSequenceClassification
        dense = auto.from_pretrained(teacher).eval()
        loader = DataLoader(Subset(datamodule.split_dataset("train"), indices), batch_size=batch_size,
                            collate_fn=datamodule.collate)
        batches = [model_inputs(dense, model_batch(dense, batch)) for batch in loader]
        targets = [dense_predictions(dense, batch, 1.0) for batch in batches]
        rows = []
        for job, report in zip(task_jobs, reports):
            loss = mean_loss(load_pruned(job.folder / "pruned_model"), batches, targets)
            main = report["metrics"].get("main")
            pruned = (report["metrics"].get("pruned") or {}).get(main)
            rows.append({"method": job.method.name, "label": job.method.label, "budget": job.budget,
                         "heldout_loss": loss, "main_metric": main, "dev_score": scale(task, pruned),
                         "ppo": {k: report["ppo"][k] for k in ("incumbent_loss", "best_loss")} if "ppo" in report
                         else None})
            print(f"{task} {job.budget:g} {job.method.name}: held-out loss {loss:.4f}", flush=True)
        results["tasks"][task] = rows
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = [f"Held-out loss of the {results['benchmark']} benchmark's pruned models: {results['loss']}, on "
             f"{results['samples']} training examples outside every calibration sample (seed {results['seed']}); "
             "lower is closer to the teacher.", "",
             "| task (dev metric) | `flops_kept` | method | held-out loss | dev score x 100 |",
             "|---|---:|---|---:|---:|"]
    for task, rows in results["tasks"].items():
        for row in sorted(rows, key=lambda r: (-r["budget"], r["heldout_loss"])):
            score = "" if row["dev_score"] is None else f"{row['dev_score']:.2f}"
            lines.append(f"| {task} ({row['main_metric']}) | {row['budget']:g} | {row['label']} | "
                         f"{row['heldout_loss']:.4f} | {score} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="benchmark config (YAML)")
    parser.add_argument("--tasks", nargs="+", help="default: the config's tasks")
    parser.add_argument("--budgets", nargs="+", type=float, help="default: the config's budgets")
    parser.add_argument("--samples", type=int, default=256, help="held-out examples per task (default 256)")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the held-out draw")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    tasks = args.tasks or list(config.tasks)
    unknown = sorted(set(tasks) - set(config.tasks))
    if unknown:
        parser.error(f"--tasks: {unknown} are not tasks of {args.config} ({list(config.tasks)})")
    budgets = args.budgets or list(config.budgets)
    if args.samples < 1:
        parser.error(f"--samples={args.samples}: expected an integer >= 1")
    results = measure(config, tasks, budgets, args.samples, args.seed)
    write_outputs(config.results, f"{config.name}_heldout", results, markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
