"""How accurate a latency table is: its predicted speedups against speedups measured in the same loop.

Builds ``--builds`` latency tables of the all-MiniLM-L6-v2 MRPC teacher back to back, at batch 32 × 128 tokens with
2 threads (the shape of ``benchmarks.studies.latency_budget``'s ``speedups`` part). Each build's interleaved loop
also times every pruned folder that study timed at that shape (loaded with plain transformers) and the teachers
they were pruned from, so each folder's speedup is measured in the same rounds as the table. Each build is fitted
twice from the same timings:

* the current fit (:func:`lit_prune.core.latency_tables.fit_table`): per-round ratios to the dense model,
  least-squares piecewise-linear curves, a least-squares calibration over whole models at eighths;
* table version 2's: plain medians, every count as measured (made non-decreasing), the calibration interpolated
  through the whole models at quarters.

For every folder, the error of each fit's predicted speedup (the table's dense time over its prediction for the
folder's structure) against the measured one (its teacher's time over its own, per-round ratios).

    LIT_PRUNE_ASSETS=../shared/assets python -m benchmarks.studies.latency_tables [--builds 3] [--repeats 7]

Needs a quiet machine and the folders of ``benchmarks.studies.latency_budget``. Writes
``benchmarks/results/latency_tables.json`` and ``.md``, its section of ``BENCHMARKS.md`` and of docs/latency.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.runner import REPO
from benchmarks.studies.latency_budget import teacher_of
from benchmarks.tables import publish_study, replace_section
from lit_prune.core.arch import STRUCTURE_KEY
from lit_prune.core.atomic import atomic_write_text
from lit_prune.core.hardware import hardware_label, hardware_summary
from lit_prune.core.latency_model import LatencyShape, LatencyTable, fit_curve, non_decreasing
from lit_prune.core.latency_tables import (
    ffn_counts,
    fit_table,
    random_inputs,
    relative_medians,
    table_variants,
    time_rounds,
)

RESULTS = REPO / "benchmarks" / "results"
BENCHMARKS = REPO / "BENCHMARKS.md"
DOCS = REPO / "docs" / "latency.md"
COMMAND = "LIT_PRUNE_ASSETS=../shared/assets python -m benchmarks.studies.latency_tables"
BATCH, SEQ, THREADS = 32, 128, 2


def folders() -> list[dict[str, Any]]:
    """The pruned folders ``benchmarks.studies.latency_budget`` timed at this study's shape (each once)."""
    rows = json.loads((RESULTS / "latency_budget.json").read_text())
    seen, out = set(), []
    for r in rows:
        m = r["measured"]
        if (m["batch_size"], m["seq_len"], m["threads"]) != (BATCH, SEQ, THREADS) or r["folder"] in seen:
            continue
        seen.add(r["folder"])
        budget = f"speedup {r['requested']:g}" if r["requested"] else f"flops_kept {r['budget']['flops_kept']:g}"
        out.append({"method": r["method"], "task": r["task"], "budget": budget, "folder": r["folder"]})
    return out


def version2_fit(table: LatencyTable, medians: dict[str, float], whole: dict[str, Any]) -> LatencyTable:
    """The same timings fitted as table version 2 did (see the module docstring)."""
    H, F = table.model["num_heads"], table.model["ffn_dim"]
    counts = ffn_counts(F)
    base = medians["heads=0"]
    old = LatencyTable.from_dict({**table.to_dict(),
                                  "attention_ms": fit_curve(list(range(H + 1)),
                                                            [medians[f"heads={h}"] - base for h in range(H + 1)]),
                                  "ffn_ms": fit_curve(counts, [0.0] + [medians[f"neurons={n}"] - base
                                                                       for n in counts[1:]]),
                                  "dense_ms": medians["dense"], "fixed_ms": medians["empty"]})
    L = old.model["num_layers"]
    points = sorted((old.layers_sum(whole[f"eighths={k}"].head.sum(1).long(), whole[f"eighths={k}"].ffn.sum(1).long()),
                     medians[f"eighths={k}"] - old.fixed_ms) for k in (2, 4, 6))
    points = [(0.0, 0.0)] + points + [(L * (old.attention_ms[-1] + old.ffn_ms[-1]), old.dense_ms - old.fixed_ms)]
    fitted = non_decreasing([max(0.0, y) for _, y in points])
    kept = [0]
    for index in range(1, len(points)):
        if points[index][0] > points[kept[-1]][0]:
            kept.append(index)
        elif index == len(points) - 1:
            kept[-1] = index
    old.calibration_sum = [points[i][0] for i in kept]
    old.calibration_ms = [fitted[i] for i in kept]
    return old


def build(index: int, teachers: dict[str, Path], chosen: list[dict[str, Any]], repeats: int) -> dict[str, Any]:
    """One table build with every folder in its loop; both fits' predictions against the measured speedups."""
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(THREADS)
    dense = {task: AutoModelForSequenceClassification.from_pretrained(folder).eval()
             for task, folder in teachers.items()}
    model = dense["mrpc"]
    shape = LatencyShape.of(model, BATCH, SEQ, THREADS)
    variants, whole = table_variants(model)
    reference = {task: "dense" if task == "mrpc" else f"teacher:{task}" for task in dense}  # the table's is MRPC's
    variants |= {reference[task]: teacher for task, teacher in dense.items() if task != "mrpc"}
    for f in chosen:
        variants[f["folder"]] = AutoModelForSequenceClassification.from_pretrained(
            REPO / f["folder"] / "pruned_model", trust_remote_code=True).eval()
    structures = {f["folder"]: getattr(variants[f["folder"]].config, STRUCTURE_KEY)["layers"] for f in chosen}
    started = time.perf_counter()
    times = time_rounds(variants, random_inputs(model, BATCH, SEQ, seed=index), warmup=2, repeats=repeats,
                        seed=index)
    seconds = time.perf_counter() - started
    medians = {name: statistics.median(v) for name, v in times.items()}
    current = fit_table(model, shape, relative_medians(times, "dense"), whole, seconds)
    previous = version2_fit(current, medians, whole)
    rows = []
    for f in chosen:
        measured = relative_medians(times, reference[f["task"]])
        speedup = measured[reference[f["task"]]] / measured[f["folder"]]
        row = {**f, "measured": speedup}
        for name, table in (("current", current), ("version2", previous)):
            predicted = table.dense_ms / table.predict(structures[f["folder"]])
            row[name] = {"predicted": predicted, "error": predicted / speedup - 1}
        rows.append(row)
    held_out = {"current": current.validation["relative_error"],  # against its own (per-round ratio) median
                "version2": previous.predict(whole["held_out"].structure()) / medians["held_out"] - 1}
    return {"build": index, "dense_ms": current.dense_ms, "seconds": seconds, "held_out_error": held_out,
            "folders": rows, "tables": {"current": current.to_dict(), "version2": previous.to_dict()},
            "medians": medians, "structures": structures}


def summary(builds: list[dict[str, Any]], fit: str) -> dict[str, float]:
    errors = [abs(r[fit]["error"]) for b in builds for r in b["folders"]]
    return {"mean_abs": statistics.mean(errors), "max_abs": max(errors),
            "within_7": sum(e <= 0.07 for e in errors) / len(errors)}


def markdown(builds: list[dict[str, Any]], hardware: str, repeats: int) -> str:
    lines = ["# How accurate a latency table is", "", f"Command: `{COMMAND} --builds {len(builds)} --repeats "
             f"{repeats}`. Machine: {hardware}.", "",
             f"{len(builds)} tables of the all-MiniLM-L6-v2 MRPC teacher built back to back at batch {BATCH} × {SEQ} "
             f"tokens, {THREADS} threads, each timing in its own loop ({repeats} rounds) the "
             f"{len(builds[0]['folders'])} pruned folders of the latency-budget study at that shape and their "
             "teachers. Error: the table's predicted speedup for a folder's structure over the speedup measured in "
             "the same rounds, minus 1. Each build is fitted by the current fit and by table version 2's (plain "
             "medians, each count as measured, calibration through the quarters) from the same timings.", "",
             "| build | dense ms | held-out error (current / v2) | mean abs error (current / v2) | "
             "max abs error (current / v2) |", "|---|---|---|---|---|"]
    for b in builds:
        cur, old = summary([b], "current"), summary([b], "version2")
        lines.append(f"| {b['build']} | {b['dense_ms']:.0f} | {100 * b['held_out_error']['current']:+.1f}% / "
                     f"{100 * b['held_out_error']['version2']:+.1f}% | {100 * cur['mean_abs']:.1f}% / "
                     f"{100 * old['mean_abs']:.1f}% | {100 * cur['max_abs']:.1f}% / {100 * old['max_abs']:.1f}% |")
    cur, old = summary(builds, "current"), summary(builds, "version2")
    lines += ["", f"Over all builds and folders: mean absolute error {100 * cur['mean_abs']:.1f}% (version 2's fit: "
              f"{100 * old['mean_abs']:.1f}%), largest {100 * cur['max_abs']:.1f}% ({100 * old['max_abs']:.1f}%); "
              f"within ±7%: {100 * cur['within_7']:.0f}% of predictions ({100 * old['within_7']:.0f}%).", "",
              "Per folder (mean over builds):", "",
              "| method | task | budget | measured speedup | current: predicted (error) | version 2: predicted "
              "(error) |", "|---|---|---|---|---|---|"]
    for i, f in enumerate(builds[0]["folders"]):
        rows = [b["folders"][i] for b in builds]
        mean = {key: statistics.mean(r[key]["predicted"] for r in rows) for key in ("current", "version2")}
        err = {key: statistics.mean(r[key]["error"] for r in rows) for key in ("current", "version2")}
        measured = statistics.mean(r["measured"] for r in rows)
        lines.append(f"| {f['method']} | {f['task']} | {f['budget']} | {measured:.2f}x | {mean['current']:.2f}x "
                     f"({100 * err['current']:+.1f}%) | {mean['version2']:.2f}x ({100 * err['version2']:+.1f}%) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--builds", type=int, default=3, help="tables built back to back")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per build (the library's default: 7)")
    args = parser.parse_args(argv)
    if args.builds < 1 or args.repeats < 1:
        parser.error(f"--builds={args.builds}, --repeats={args.repeats}: expected integers >= 1")
    chosen = folders()
    missing = [f["folder"] for f in chosen if not (REPO / f["folder"] / "pruned_model").is_dir()]
    if not chosen or missing:
        parser.error(f"the latency-budget study's folders are missing ({missing or 'none recorded'}): run "
                     "python -m benchmarks.studies.latency_budget first")
    teachers = {task: teacher_of(task)[0] for task in sorted({f["task"] for f in chosen} | {"mrpc"})}
    builds = []
    for index in range(args.builds):
        builds.append(build(index, teachers, chosen, args.repeats))
        cur = summary(builds[-1:], "current")
        print(f"[{time.strftime('%H:%M:%S')}] build {index}: dense {builds[-1]['dense_ms']:.0f} ms, mean abs error "
              f"{100 * cur['mean_abs']:.1f}% (version 2: {100 * summary(builds[-1:], 'version2')['mean_abs']:.1f}%)",
              flush=True)
    hardware = hardware_label(hardware_summary("cpu"))
    atomic_write_text(RESULTS / "latency_tables.json", json.dumps(builds, indent=1) + "\n")
    text = markdown(builds, hardware, args.repeats)
    atomic_write_text(RESULTS / "latency_tables.md", text)
    publish_study("latency_tables", text, BENCHMARKS)
    section = text.split("\n", 4)[4].split("\nPer folder")[0]  # the per-folder table: BENCHMARKS.md
    atomic_write_text(DOCS, replace_section(DOCS.read_text(), "latency_tables", section + f"\nMeasured by `{COMMAND}`; "
                                            "the error of each folder: [BENCHMARKS.md](../BENCHMARKS.md)."))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
