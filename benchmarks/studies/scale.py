"""BERT-base and BERT-large sizes: how much faster a compacted model runs, and what a KPrune run costs in memory.

Speed does not need trained weights, so the models are randomly initialised BERT-base (12 layers, hidden 768, 12
heads, FFN 3,072), BERT-large (24, 1,024, 16, 4,096) and ModernBERT-base (22, 768, 12, GeGLU FFN 1,152; global
attention every third layer, the others a 128-token window) configurations. Parts (``--parts``):

* ``speed``: each size compacted at flops_kept 0.5 and 0.3 (the mask of ``benchmarks.latency``: per layer
  floor(flops_kept·H) heads and the most FFN neurons that fit, by weight magnitude) and timed against its dense
  model, interleaved in one run (warm-up, then rounds in a fresh order; medians), batch 32 × 128 tokens, 2 threads;
* ``memory``: the peak resident memory of one KPrune process (``configs/kprune/sst2.yaml``) over 2,048 SST-2
  calibration examples on the random BERT-base with a sequence-classification head (evaluation, latency and saving
  off; ``benchmarks.memory`` measures it), beside the same run on the all-MiniLM-L6-v2 SST-2 teacher.

    LIT_PRUNE_ASSETS=../shared/assets python -m benchmarks.studies.scale [--parts speed,memory] [--sizes ...]

Timings need a quiet machine. Writes ``benchmarks/results/scale.json`` and ``.md``, its section of
``BENCHMARKS.md`` and the table in docs/core.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.latency import magnitude_masks
from benchmarks.memory import command, peak_rss
from benchmarks.runner import REPO
from benchmarks.studies.latency_budget import teacher_of
from benchmarks.tables import publish_study, replace_section
from lit_prune.core.atomic import atomic_write_text
from lit_prune.core.compact import compact
from lit_prune.core.flops import count_parameters, model_dense_flops, model_flops
from lit_prune.core.hardware import hardware_label, hardware_summary
from lit_prune.core.latency import compare

RESULTS = REPO / "benchmarks" / "results"
BENCHMARKS = REPO / "BENCHMARKS.md"
DOCS = REPO / "docs" / "core.md"
COMMAND = "LIT_PRUNE_ASSETS=../shared/assets python -m benchmarks.studies.scale"
#: name -> (model type, layers, hidden size, heads, FFN size, vocabulary)
SIZES = {"BERT-base": ("bert", 12, 768, 12, 3072, 30522), "BERT-large": ("bert", 24, 1024, 16, 4096, 30522),
         "ModernBERT-base": ("modernbert", 22, 768, 12, 1152, 50368)}
BUDGETS = (0.5, 0.3)
BATCH, SEQ, THREADS = 32, 128, 2


def random_model(size: str, kind: str = "base", seed: int = 0) -> torch.nn.Module:
    """A randomly initialised model of ``size`` (BERT's vocabulary of 30,522, as bert-base-uncased and MiniLM have;
    ModernBERT's of 50,368)."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    model_type, layers, hidden, heads, ffn, vocab = SIZES[size]
    config = AutoConfig.for_model(model_type, num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                                  intermediate_size=ffn, vocab_size=vocab, num_labels=2)
    torch.manual_seed(seed)
    cls = AutoModel if kind == "base" else AutoModelForSequenceClassification
    return cls.from_config(config).eval()


def speed(size: str, flops_kept: float, repeats: int) -> dict[str, Any]:
    dense = random_model(size)
    masks = magnitude_masks(dense, SEQ, flops_kept)
    pruned = compact(copy.deepcopy(dense), masks).eval()
    generator = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(1000, dense.config.vocab_size, (BATCH, SEQ), generator=generator),
              "attention_mask": torch.ones(BATCH, SEQ, dtype=torch.long)}
    result = compare(dense, pruned, inputs, warmup=2, repeats=repeats, threads=THREADS)
    kept = model_flops(pruned, SEQ) / model_dense_flops(dense, SEQ)
    return {"part": "speed", "size": size, "flops_kept_target": flops_kept, "flops_kept": kept,
            "parameters": {"dense": count_parameters(dense)["total"], "pruned": count_parameters(pruned)["total"]},
            "dense_ms": result["dense"]["median_ms"], "pruned_ms": result["pruned"]["median_ms"],
            "speedup": result["speedup"], "speedup_paired": result["speedup_paired"], "repeats": repeats,
            "batch_size": BATCH, "seq_len": SEQ, "threads": result["threads"]}


def memory(samples: int) -> list[dict[str, Any]]:
    """Peak RSS of a KPrune process at BERT-base size and at the MiniLM-L6 teacher's, over ``samples`` examples."""
    from transformers import AutoTokenizer

    rows = []
    with tempfile.TemporaryDirectory(prefix="lit_prune_scale_") as tmp:
        teacher, _ = teacher_of("sst2")  # the all-MiniLM-L6-v2 SST-2 teacher (fine-tuned when missing)
        base = Path(tmp) / "bert-base-random"
        random_model("BERT-base", kind="sequence_classification").save_pretrained(base)
        AutoTokenizer.from_pretrained(teacher).save_pretrained(base)  # BERT's uncased vocabulary, as bert-base's
        for name, folder in (("BERT-base (random)", base), ("all-MiniLM-L6-v2 SST-2 teacher", teacher)):
            run = Path(tmp) / f"run-{len(rows)}"
            run.mkdir()
            mib, seconds = peak_rss(command("kprune", "sst2", str(folder), samples, run), run / "train.log")
            print(f"memory {name}: peak RSS {mib:.0f} MiB, {seconds:.0f} s", flush=True)
            rows.append({"part": "memory", "model": name, "method": "kprune", "task": "sst2", "samples": samples,
                         "peak_rss_mib": round(mib, 1), "seconds": round(seconds, 1)})
    return rows


def markdown(rows: list[dict[str, Any]], hardware: str) -> str:
    lines = ["# BERT-base, BERT-large and ModernBERT-base sizes", "", f"Command: `{COMMAND}`. Machine: {hardware}.",
             ""]
    timed = [r for r in rows if r["part"] == "speed"]
    if timed:
        lines += [f"## Compacted speed (random weights, batch {BATCH} × {SEQ} tokens, {THREADS} threads)", "",
                  "| size | FLOPs kept | parameters (dense → pruned) | dense ms | pruned ms | speedup | "
                  "ideal (1/FLOPs kept) |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['size']} | {r['flops_kept']:.3f} | {r['parameters']['dense'] / 1e6:.1f}M → "
                  f"{r['parameters']['pruned'] / 1e6:.1f}M | {r['dense_ms']:.0f} | {r['pruned_ms']:.0f} | "
                  f"{r['speedup']:.2f}x | {1 / r['flops_kept']:.2f}x |" for r in timed]
        lines += ["", "Medians of interleaved passes (dense and pruned alternate in a fresh order each round). Mask: "
                  "per layer floor(flops_kept·H) heads and the most FFN neurons that fit, by weight magnitude.", ""]
    used = [r for r in rows if r["part"] == "memory"]
    if used:
        lines += [f"## Peak memory of a KPrune run ({used[0]['samples']:,} SST-2 calibration examples)", "",
                  "| model | peak RSS (MiB) | seconds |", "|---|---|---|"]
        lines += [f"| {r['model']} | {r['peak_rss_mib']:.0f} | {r['seconds']:.0f} |" for r in used]
        lines += ["", "One `python train.py fit --config configs/kprune/sst2.yaml` process each, evaluation, latency "
                  "and saving off; peak resident set size as the process exits (`benchmarks.memory`).", ""]
    return "\n".join(lines)


def save(rows: list[dict[str, Any]]) -> None:
    hardware = hardware_label(hardware_summary("cpu"))
    atomic_write_text(RESULTS / "scale.json", json.dumps(rows, indent=1) + "\n")
    text = markdown(rows, hardware)
    atomic_write_text(RESULTS / "scale.md", text)
    publish_study("scale", text, BENCHMARKS)
    section = text.split("\n", 4)[4].replace("## ", "#### ")  # without the title and command line
    atomic_write_text(DOCS, replace_section(DOCS.read_text(), "scale", section + f"\nMeasured by `{COMMAND}`."))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.studies.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="speed,memory", help="comma-separated: speed, memory")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds per model (speed)")
    parser.add_argument("--samples", type=int, default=2048, help="calibration examples (memory)")
    parser.add_argument("--sizes", default=",".join(SIZES), help="for speed: comma-separated, of %(default)s")
    args = parser.parse_args(argv)
    sizes = [size for size in args.sizes.split(",") if size]
    if sorted(set(sizes) - set(SIZES)):
        parser.error(f"--sizes: unknown {sorted(set(sizes) - set(SIZES))}; known: {', '.join(SIZES)}")
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - {"speed", "memory"})
    if unknown:
        parser.error(f"--parts: unknown {unknown}; known: speed, memory")
    out = RESULTS / "scale.json"
    rows = json.loads(out.read_text()) if out.is_file() else []
    if "speed" in parts:
        rows = [r for r in rows if r["part"] != "speed" or r["size"] not in sizes]  # the other sizes' rows stay
        for size in sizes:
            for flops_kept in BUDGETS:
                row = speed(size, flops_kept, args.repeats)
                print(f"{size} flops_kept {row['flops_kept']:.3f}: {row['speedup']:.2f}x", flush=True)
                rows.append(row)
                save(rows)
    if "memory" in parts:
        rows = [r for r in rows if r["part"] != "memory"] + memory(args.samples)
        save(rows)
    print(markdown(rows, hardware_label(hardware_summary("cpu"))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
