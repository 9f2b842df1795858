"""The scale of SMP's two gradients on the mask scores at the start of a run, task by task.

    LIT_PRUNE_ASSETS=../shared/assets python -m benchmarks.smp_gradients --tasks stsb mrpc sst2

Every score S of SMP gets two gradients: the task loss's, ∂L/∂S = (∂L/∂W') ⊙ W through the straight-through mask,
and the regulariser's, λ_R · w · ∂R̄(S)/∂S with w = v_t / v_f (10 at the start of a 10% run, 1 at its end). At S = 0
the second is the same for every score of a matrix, λ_R · w · σ'(0) / (numel · matrices). Adam divides each score's
step by the running size of its whole gradient, so where the regulariser's part is many times the task's, every
score moves down at about the learning rate and the task's part only shifts them apart by its share: the task ranks
the weights more slowly the smaller that share is. This measures both parts at step 0 of a run (all weights kept,
the new classifier as initialised, or after ``--head-steps`` steps that train it alone), for each task with its SMP
recipe's batch size: the mean and median over every score of |∂L/∂S| over the next ``--batches`` training batches,
and the regulariser's mean at the start and at the end of the schedule. Writes ``benchmarks/results/smp_gradients.json`` and ``smp_gradients.md`` (``--out``,
``--name``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks.outputs import reproduce_command, write_outputs
from lit_prune.data.glue import GLUE_TASKS, GlueDataModule
from lit_prune.core.hardware import hardware_summary

REPO = Path(__file__).resolve().parents[1]
INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def recipe_batch_size(task: str) -> int | None:
    """The training batch size of ``configs/smp/<task>.yaml``, or ``None`` when the task has no SMP recipe."""
    recipe = REPO / "configs" / "smp" / f"{task}.yaml"
    if not recipe.is_file():
        return None
    return int(yaml.safe_load(recipe.read_text())["data"]["init_args"]["batch_size"])


def measure(model: str, task: str, batch_size: int, batches: int, regularization: float, params_kept: float,
            seed: int, data_dir: str | None = None, head_steps: int = 0) -> dict[str, Any]:
    """Both gradients on the scores of an SMP-S module of ``task`` at step 0 (see the module docstring); with
    ``head_steps``, after that many steps that train the new classifier (and pooler) alone, as the recipe's
    learning rate does, with the scores held at 0."""
    import lightning as L

    from lit_prune.methods.smp import SMPSequenceClassificationModule, regularization_weight, score_regularizer

    L.seed_everything(seed, verbose=False)
    module = SMPSequenceClassificationModule(name_or_path=model, task=task, params_kept=params_kept,
                                             regularization=regularization, teacher=None, time_steps=0)
    data = GlueDataModule(task=task, data_dir=data_dir, tokenizer=module.resolved.location, max_seq_length=128,
                          batch_size=batch_size)
    data.prepare_data()
    data.setup("fit")
    scores = module._scores()
    stream = _batches(data)
    if head_steps:
        head = [p for n, p in module.named_parameters() if p.requires_grad and "parametrizations" not in n]
        optimizer = torch.optim.AdamW(head, lr=module.learning_rate, weight_decay=0.0)
        for _ in range(head_steps):
            batch = next(stream)
            optimizer.zero_grad(set_to_none=True)
            module.model(**{k: v for k, v in batch.items() if k in INPUT_KEYS}, labels=batch["labels"]).loss.backward()
            optimizer.step()
    means, medians, losses = [], [], []
    for index, batch in enumerate(stream):
        if index == batches:
            break
        module.zero_grad(set_to_none=True)
        loss = module.model(**{k: v for k, v in batch.items() if k in INPUT_KEYS}, labels=batch["labels"]).loss
        loss.backward()
        grads = torch.cat([s.grad.abs().flatten() for s in scores])
        means.append(float(grads.mean()))
        medians.append(float(grads.median()))
        losses.append(float(loss.detach()))
    regulariser = {}
    for moment, keep in (("start", 1.0), ("end", params_kept)):
        module.zero_grad(set_to_none=True)
        weight = regularization * regularization_weight(keep, params_kept, "falling")
        (weight * score_regularizer(scores)).backward()
        regulariser[moment] = float(torch.cat([s.grad.abs().flatten() for s in scores]).mean())
    task_mean = statistics.fmean(means)
    return {"task": task, "batch_size": batch_size, "batches": batches, "head_steps": head_steps,
            "loss": statistics.fmean(losses),
            "task_grad_mean": task_mean, "task_grad_median": statistics.fmean(medians),
            "regulariser_grad_start": regulariser["start"], "regulariser_grad_end": regulariser["end"],
            "ratio_start": regulariser["start"] / task_mean, "ratio_end": regulariser["end"] / task_mean}


def _batches(data: GlueDataModule) -> Iterator[dict[str, torch.Tensor]]:
    """The training batches in the recipe's order, epoch after epoch."""
    while True:
        yield from data.train_dataloader()


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# SMP: the task's and the regulariser's gradients on the scores at step 0 ({results['model']})", "",
             f"Mean |∂/∂S| over every score of the encoder's Linear weights, all weights kept and the new classifier "
             f"as initialised or after `head steps` that train it alone (and the pooler; Adam at the recipes' "
             f"learning rate, 1e-3); the task's over the next {results['batches']} training batches (seed "
             f"{results['seed']}), the regulariser's (λ_R = {results['regularization']:g}, SMP-S to "
             f"{results['params_kept']:g}) at the schedule's start (× v_t / v_f = {1 / results['params_kept']:g}) "
             "and end (× 1).", "",
             f"Reproduce: `{results['command']}`", "",
             "| task | batch | head steps | task loss | task gradient (mean) | (median) | regulariser, start | end | "
             "regulariser / task, start | end |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["tasks"]:
        lines.append(f"| {r['task']} | {r['batch_size']} | {r['head_steps']} | {r['loss']:.3f} | "
                     f"{r['task_grad_mean']:.2e} | "
                     f"{r['task_grad_median']:.2e} | {r['regulariser_grad_start']:.2e} | "
                     f"{r['regulariser_grad_end']:.2e} | **{r['ratio_start']:.0f}x** | {r['ratio_end']:.1f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["stsb", "mrpc", "sst2"], choices=sorted(GLUE_TASKS),
                        metavar="TASK", help="GLUE tasks (default stsb mrpc sst2)")
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="the pretrained encoder (folder, assets name or "
                                                                     "hub id; default all-MiniLM-L6-v2)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="training batch size (default: the task's SMP recipe's, configs/smp/<task>.yaml)")
    parser.add_argument("--batches", type=int, default=8, help="training batches averaged over (default 8)")
    parser.add_argument("--regularization", type=float, default=400.0, help="λ_R (default 400, the recipes')")
    parser.add_argument("--params-kept", type=float, default=0.1, help="v_f (default 0.1)")
    parser.add_argument("--head-steps", type=int, nargs="+", default=[0],
                        help="measure after this many steps that train the new classifier alone (one row each; "
                             "default 0: as initialised)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new classifier and the data order")
    parser.add_argument("--data-dir", default=None, help="the task's GLUE folder (one task only; default: the "
                                                         "assets' or the hub's)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="where the JSON and table go")
    parser.add_argument("--name", default="smp_gradients", help="their file name, without .json / .md")
    args = parser.parse_args(argv)
    if not args.name or Path(args.name).name != args.name:
        parser.error(f"--name {args.name!r}: a file name without folders, e.g. smp_gradients_bert")
    if any(steps < 0 for steps in args.head_steps):
        parser.error(f"--head-steps {' '.join(map(str, args.head_steps))}: each at least 0")
    if args.batches < 1:
        parser.error(f"--batches {args.batches}: at least 1")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size {args.batch_size}: at least 1")
    if not 0 < args.params_kept < 1:
        parser.error(f"--params-kept {args.params_kept}: a fraction in (0, 1)")
    if args.regularization <= 0:
        parser.error(f"--regularization {args.regularization}: above 0 (its gradient is what is measured)")
    if args.data_dir is not None and len(args.tasks) != 1:
        parser.error(f"--data-dir goes with one task (--tasks {' '.join(args.tasks)})")
    sizes = {task: args.batch_size or recipe_batch_size(task) for task in args.tasks}
    missing = [task for task, size in sizes.items() if size is None]
    if missing:
        parser.error(f"--tasks {' '.join(missing)}: no SMP recipe (configs/smp/<task>.yaml) to take the batch size "
                     "from; give --batch-size")
    started = time.perf_counter()
    results = {"model": args.model, "command": reproduce_command("benchmarks.smp_gradients", argv),
               "batches": args.batches, "seed": args.seed,
               "regularization": args.regularization, "params_kept": args.params_kept,
               "hardware": hardware_summary(torch.device("cpu")),
               "tasks": [measure(args.model, task, sizes[task], args.batches, args.regularization, args.params_kept,
                                 args.seed, args.data_dir, steps) for task in args.tasks for steps in args.head_steps]}
    results["seconds"] = round(time.perf_counter() - started, 1)
    write_outputs(args.out, args.name, results, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
