"""KPrune's pruning cost as a multiple of one forward-and-backward pass over the same calibration data.

    LIT_PRUNE_ASSETS=../shared/assets python -m benchmarks.studies.kprune_cost --threads 1

What the KPrune callback's ``time_reference_pass=True`` reports as ``seconds.prune_over_pass``, measured without
Lightning on the real assets: all-MiniLM-L6-v2 with a fresh classification head (the cost does not depend on the
fine-tuning), 2,048 SST-2 training examples drawn as the callback draws them (``calibration_sample``, seed 0,
without replacement), batches of 32, FLOPs budget 0.5. The reference pass is the callback's own
(``RetrainingFreePruning._reference_pass``: the task loss, weight gradients). The runs are interleaved,
``reference, KPrune, reference, KPrune, ...``, and each KPrune run is divided by the mean of the two reference passes
around it, so a change in the machine's load between runs shows in the references. Three KPrune versions: the
current one, the same with whole batches (``length_groups=1``: the cached schedule alone, no length groups), and
the old one (whole-model passes, before the hidden-state cache), read from git (``--old-ref``); the masks and
weights of the first two are compared with the old one's.

Writes ``benchmarks/results/kprune_cost.json`` and ``kprune_cost.md`` (one table row per KPrune version).
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch.utils.data import DataLoader

from lit_prune.core.atomic import atomic_write_text
from lit_prune.core.flops import FlopsBudget
from lit_prune.data import GlueDataModule
from lit_prune.core.hardware import hardware_summary
from lit_prune.methods.base import RetrainingFreePruning
from lit_prune.methods.kprune import kprune
from lit_prune.prune.batches import model_batch

REPO = Path(__file__).resolve().parents[2]
OLD_REF = "2adf7dc"  # the last commit with the whole-model KPrune (lit_prune/methods/kprune.py)
OLD_PATH = "lit_prune/methods/kprune.py"


def load_old_kprune(ref: str) -> Callable[..., Any]:
    """The ``kprune`` function of ``OLD_PATH`` at git revision ``ref`` (its Lightning callback left out, so that
    the module imports only the shared layer)."""
    source = subprocess.run(["git", "show", f"{ref}:{OLD_PATH}"], cwd=REPO, check=True, capture_output=True,
                            text=True).stdout
    source = source[:source.index("class KPruneCallback")]
    source = "\n".join(line for line in source.splitlines() if "lit_prune.methods.base" not in line)
    path = Path(tempfile.mkdtemp(prefix="kprune_old_")) / "kprune_old.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("kprune_old", path)
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules["kprune_old"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.kprune


def calibration(model_dir: Path, samples: int, batch_size: int, seed: int) -> tuple[list[dict], float]:
    """The callback's calibration batches (model inputs and labels) and the ``s`` of the FLOPs accounting."""
    data = GlueDataModule(task="sst2", tokenizer=str(model_dir), max_seq_length=128)
    data.setup("fit")
    sample = data.calibration_sample(num_samples=samples, seed=seed, replacement=False)
    loader = DataLoader(sample.dataset, batch_size=batch_size, shuffle=False, collate_fn=data.collate)
    return list(loader), data.average_sequence_length()


def timed(run: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = run()
    return time.perf_counter() - started, out


def measure(model_dir: Path, samples: int, batch_size: int, flops: float, old_ref: str | None,
            out: Path) -> dict[str, Any]:
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)  # the fresh head
    dense = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=2).eval()
    raw, seq_len = calibration(model_dir, samples, batch_size, seed=0)
    batches = [model_batch(dense, batch) for batch in raw]
    budget = FlopsBudget.for_model(dense, seq_len, flops)
    # name → (function, its keyword arguments): the current KPrune, the same without length groups (the cached
    # schedule alone), and the old one
    versions: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
        "new": (kprune, {"length_groups": 4}), "new, whole batches": (kprune, {"length_groups": 1})}
    if old_ref is not None:
        versions["old"] = (load_old_kprune(old_ref), {})

    def reference() -> float:
        seconds, _ = timed(lambda: RetrainingFreePruning._reference_pass(dense, batches))
        print(f"reference pass: {seconds:.1f} s", flush=True)
        return seconds

    references = [reference()]
    rows, models = [], {}
    for name, (function, settings) in versions.items():
        model = copy.deepcopy(dense)
        seconds, result = timed(functools.partial(function, model, batches, budget, dense=copy.deepcopy(dense),
                                                  **settings))
        references.append(reference())
        pass_seconds = (references[-2] + references[-1]) / 2
        row = {"version": name, "prune_seconds": round(seconds, 2), "reference_pass_seconds": round(pass_seconds, 2),
               "prune_over_pass": round(seconds / pass_seconds, 3)}
        for key in ("cache", "length_groups"):  # the new KPrune's hidden-state cache and padding saved
            if getattr(result, key, None):
                row[key] = getattr(result, key)
        print(f"{name}: {seconds:.1f} s = {row['prune_over_pass']:.2f} x the reference pass", flush=True)
        rows.append(row)
        models[name] = (model, result.masks)
    results: dict[str, Any] = {
        "command": (f"LIT_PRUNE_ASSETS=../shared/assets python -m benchmarks.studies.kprune_cost --threads "
                    f"{torch.get_num_threads()}" + ("" if old_ref is None else f" --old-ref {old_ref}")),
        "model": model_dir.name, "task": "sst2", "samples": sum(b["input_ids"].shape[0] for b in raw),
        "batch_size": batch_size, "flops_kept": flops, "seq_len": seq_len, "threads": torch.get_num_threads(),
        "references": [round(r, 2) for r in references], "rows": rows, "hardware": hardware_summary("cpu")}
    if "old" in models:
        old_model, old_masks = models["old"]
        results["against_old"] = {}
        for name, (model, masks) in models.items():
            if name != "old":
                results["against_old"][name] = {
                    "same_masks": masks == old_masks,
                    "max_weight_difference": max(float((a - b).abs().max()) for a, b in
                                                 zip(model.state_dict().values(), old_model.state_dict().values())
                                                 if a.is_floating_point())}
        print(f"against the old KPrune: {results['against_old']}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "kprune_cost.json", json.dumps(results, indent=2) + "\n")
    lines = [(f"KPrune's pruning cost on {results['samples']} SST-2 examples (batches of {batch_size}, "
              f"{model_dir.name}, flops_kept {flops}, {results['threads']} thread(s)), as a multiple of one forward "
              "and backward pass over them (the callback's `seconds.prune_over_pass`)."),
             f"Reproduce: `{results['command']}`", "",
             "| KPrune | prune (s) | reference pass (s) | prune / pass |", "|---|---:|---:|---:|"]
    lines += [f"| {row['version']} | {row['prune_seconds']:.1f} | {row['reference_pass_seconds']:.1f} | "
              f"**{row['prune_over_pass']:.2f}x** |" for row in rows]
    if "against_old" in results:
        lines += ["", "Against the old KPrune: " + "; ".join(
            f"{name}: {'the same' if check['same_masks'] else 'different'} masks, weights within "
            f"{check['max_weight_difference']:.3g}" for name, check in results["against_old"].items()) + "."]
    atomic_write_text(out / "kprune_cost.md", "\n".join(lines) + "\n")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.studies.kprune_cost",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--flops-kept", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--old-ref", default=OLD_REF, help=f"git revision of the old {OLD_PATH} to time too")
    parser.add_argument("--no-old", action="store_true", help="leave the old KPrune out")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    assets = os.environ.get("LIT_PRUNE_ASSETS")
    model_dir = Path(assets or REPO.parent / "shared" / "assets") / "models" / "all-MiniLM-L6-v2"
    if not (model_dir / "config.json").is_file():
        parser.error(f"{model_dir}: no model there; set LIT_PRUNE_ASSETS to the assets folder")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    measure(model_dir, args.samples, args.batch_size, args.flops_kept, None if args.no_old else args.old_ref,
            args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
