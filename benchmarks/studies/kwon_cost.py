"""Kwon et al.'s pruning cost at 2,048 SST-2 examples, as a multiple of one forward+backward pass over them.

The same setting as :mod:`benchmarks.studies.kprune_cost` (all-MiniLM-L6-v2 with a fresh head: the cost does not
depend on fine-tuning; batches of 32; flops_kept 0.5), the reference pass timed before and after in the same run.

    LIT_PRUNE_ASSETS=../shared/assets python -m benchmarks.studies.kwon_cost [--threads 1]

Prints the ratio and writes ``benchmarks/results/kwon_cost.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from benchmarks.runner import REPO
from benchmarks.studies.kprune_cost import calibration
from lit_prune.assets import resolve_model
from lit_prune.core.atomic import atomic_write_text
from lit_prune.core.flops import FlopsBudget
from lit_prune.methods.base import RetrainingFreePruning
from lit_prune.methods.kwon import kwon_prune
from lit_prune.prune.batches import model_batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.studies.kwon_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    args = parser.parse_args(argv)
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(args.threads)
    folder = Path(resolve_model("all-MiniLM-L6-v2").location)
    torch.manual_seed(0)  # the fresh head
    dense = AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=2).eval()
    raw, seq_len = calibration(folder, args.samples, 32, seed=0)
    batches = [model_batch(dense, batch) for batch in raw]
    budget = FlopsBudget.for_model(dense, seq_len, 0.5)

    def timed(run) -> float:
        started = time.perf_counter()
        run()
        return time.perf_counter() - started

    before = timed(lambda: RetrainingFreePruning._reference_pass(dense, batches))
    prune = timed(lambda: kwon_prune(copy.deepcopy(dense), batches, budget, cls_only_last_ffn=True,
                                     tuning_cache_bytes=256 * 2**20))
    after = timed(lambda: RetrainingFreePruning._reference_pass(dense, batches))
    result = {"command": f"LIT_PRUNE_ASSETS=../shared/assets python -m benchmarks.studies.kwon_cost --threads "
                         f"{args.threads}", "samples": args.samples, "threads": args.threads,
              "prune_seconds": round(prune, 2), "reference_pass_seconds": [round(before, 2), round(after, 2)],
              "prune_over_pass": round(prune / ((before + after) / 2), 3)}
    atomic_write_text(REPO / "benchmarks" / "results" / "kwon_cost.json", json.dumps(result, indent=2) + "\n")
    print(f"Kwon et al.: {prune:.1f} s = {result['prune_over_pass']:.2f} x one forward+backward pass "
          f"({before:.1f} / {after:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
