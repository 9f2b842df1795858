"""Sentence embeddings pruned without labels: all-MiniLM-L6-v2 as downloaded, by KPrune and Kwon.

Runs the recipes ``configs/kprune/embedding.yaml`` and ``configs/kwon/embedding.yaml`` (calibration: STS-B training
sentences, their scores unused) at flops_kept 0.7 / 0.5 / 0.3, then checks every pruned folder **the way a user
loads it**: ``SentenceTransformer(folder, trust_remote_code=True)`` encodes the STS-B dev sentences, giving the dev
Spearman correlation of cosine similarities (the standard STS metric) and each sentence's cosine similarity to its
dense embedding (their mean); and the dense and pruned encoders, loaded with plain transformers, are timed interleaved
at batch 32 × 128 tokens and batch 32 × the dev sentences' average length, 2 threads.

    LIT_PRUNE_ASSETS=../shared/assets python -m benchmarks.studies.embeddings [--prune-only] [--remeasure]

Timings need a quiet machine; pruning does not. Beside other work, prune with ``--prune-only``, then run again
without it (a run whose report exists is not run again, only checked and timed); ``--remeasure`` times every
recorded folder again.

Writes ``benchmarks/results/embeddings.json``, ``.md`` and ``.png``, and its section of ``BENCHMARKS.md`` (the runs go
under ``runs/embeddings/``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.runner import REPO, run_command
from benchmarks.tables import publish_study
from lit_prune.assets import resolve_model
from lit_prune.core.atomic import atomic_write_text
from lit_prune.core.hardware import hardware_label, hardware_summary
from lit_prune.core.latency import compare
from lit_prune.core.latency_tables import random_inputs
from lit_prune.report import read_report

RESULTS = REPO / "benchmarks" / "results"
BENCHMARKS = REPO / "BENCHMARKS.md"
RUNS = REPO / "runs" / "embeddings"
MODEL = "all-MiniLM-L6-v2"
METHODS = ("kprune", "kwon")
BUDGETS = (0.7, 0.5, 0.3)
THREADS = 2
BATCH = 32


def prune(method: str, flops_kept: float) -> tuple[Path, dict[str, Any]]:
    """Run ``configs/<method>/embedding.yaml`` at ``flops_kept`` into its folder (kept when its report exists)."""
    folder = RUNS / method / f"flops{flops_kept}"
    if not (folder / "pruning_report.json").is_file():
        prefix = "--trainer.callbacks.init_args."
        run_command([sys.executable, str(REPO / "train.py"), "fit", "--config", f"configs/{method}/embedding.yaml",
                     "--trainer.default_root_dir", str(folder), "--trainer.logger", "false",
                     "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu",
                     prefix + "output_dir", str(folder), prefix + "flops_kept", str(flops_kept)],
                    folder / "prune.log")
    return folder, read_report(folder)


def dev_pairs() -> dict[str, list]:
    from lit_prune.data.sentences import SentenceDataModule

    return SentenceDataModule(tokenizer=MODEL).evaluation_pairs()


def check_with_sentence_transformers(dense: Path, pruned: Path, pairs: dict[str, list]) -> dict[str, float]:
    """STS-B dev Spearman of the pruned folder as sentence-transformers encodes it, and the mean cosine similarity
    between each dev sentence's dense and pruned embedding."""
    import torch.nn.functional as F
    from scipy.stats import spearmanr
    from sentence_transformers import SentenceTransformer

    sentences = list(pairs["text_a"]) + list(pairs["text_b"])
    encoded = {}
    for name, folder in (("dense", dense), ("pruned", pruned)):
        model = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
        encoded[name] = model.encode(sentences, batch_size=128, convert_to_tensor=True)
    half = len(pairs["text_a"])
    scores = {name: float(spearmanr(F.cosine_similarity(e[:half], e[half:]).numpy(), pairs["label"]).statistic)
              for name, e in encoded.items()}
    return {"dense_spearman": scores["dense"], "spearman": scores["pruned"],
            "cosine_to_dense": float(F.cosine_similarity(encoded["dense"], encoded["pruned"]).mean())}


def measure(dense: Path, pruned: Path, seq_len: int) -> dict[str, Any]:
    """Dense and pruned encoders, loaded with plain transformers, timed interleaved on random token ids."""
    from transformers import AutoModel

    dense_model = AutoModel.from_pretrained(dense).eval()
    pruned_model = AutoModel.from_pretrained(pruned, trust_remote_code=True).eval()
    result = compare(dense_model, pruned_model, random_inputs(dense_model, BATCH, seq_len, seed=7), warmup=3,
                     repeats=15, threads=THREADS)
    return {"speedup": result["speedup"], "speedup_paired": result["speedup_paired"],
            "dense_ms": result["dense"]["median_ms"], "pruned_ms": result["pruned"]["median_ms"],
            "batch_size": BATCH, "seq_len": seq_len, "threads": THREADS}


def row(method: str, flops_kept: float, folder: Path, report: dict[str, Any], dense: Path,
        pairs: dict[str, list], average_length: int, timing: bool) -> dict[str, Any]:
    checked = check_with_sentence_transformers(dense, folder / "pruned_model", pairs)
    measured = ({f"s{length}": measure(dense, folder / "pruned_model", length) for length in (128, average_length)}
                if timing else None)
    return {"method": method, "flops_kept": flops_kept, "achieved_flops_kept": report["flops"]["kept"],
            "dense_spearman": report["metrics"]["dense"]["spearman"],
            "spearman": report["metrics"]["pruned"]["spearman"],
            "cosine_to_dense": report["metrics"]["pruned"].get("cosine_to_dense"),
            "sentence_transformers": checked, "measured": measured, "average_length": average_length,
            "prune_seconds": report["seconds"].get("prune"), "folder": str(folder.relative_to(REPO))}


def markdown(rows: list[dict[str, Any]], hardware: str) -> str:
    dense = next((r["sentence_transformers"]["dense_spearman"] for r in rows), math.nan)
    lines = ["# Sentence embeddings: all-MiniLM-L6-v2 pruned without labels", "",
             "The model as downloaded (no fine-tuning), calibrated on the STS-B training sentences (their scores "
             "unused: the dense model's embeddings are the teacher), evaluated on STS-B dev: Spearman correlation of "
             "cosine similarities with the gold scores, as the pruned folder loaded by sentence-transformers "
             "(`SentenceTransformer(folder, trust_remote_code=True)`) encodes it. *Kept* is the share of the dense "
             "model's Spearman kept; *cosine* the mean cosine similarity between each dev sentence's dense and pruned "
             f"embedding. Speedups: the dense and pruned encoders timed interleaved at batch {BATCH}, {THREADS} "
             f"threads, on {hardware}.", "",
             "    LIT_PRUNE_ASSETS=../shared/assets python -m benchmarks.studies.embeddings", "",
             f"Dense STS-B dev Spearman: **{dense:.4f}**.", "",
             "| method | flops_kept | Spearman | kept | cosine to dense | speedup (128 tokens) | speedup (avg length) "
             "| pruning s |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["method"], -r["flops_kept"])):
        checked, measured = r["sentence_transformers"], r["measured"] or {}
        speed = [f"{measured[k]['speedup']:.2f}x" if k in measured else "not timed"
                 for k in ("s128", f"s{r['average_length']}")]
        lines.append(f"| {r['method']} | {r['flops_kept']:g} | {checked['spearman']:.4f} | "
                     f"{checked['spearman'] / checked['dense_spearman']:.1%} | {checked['cosine_to_dense']:.4f} | "
                     f"{speed[0]} | {speed[1]} | {r['prune_seconds'] or math.nan:.0f} |")
    average = next((r["average_length"] for r in rows), None)
    gaps = [max(abs(r["sentence_transformers"][name] - r[name]) for r in rows if r[name] is not None)
            for name in ("spearman", "cosine_to_dense")] if rows else [math.nan, math.nan]
    lines += ["", f"The average dev sentence is {average} tokens long. Each run's own report (lit_prune's evaluation "
              f"during the run) gives the same numbers: the largest difference is {gaps[0]:.1e} in Spearman and "
              f"{gaps[1]:.1e} in cosine."]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for method, marker in zip(METHODS, "os"):
        chosen = sorted((r for r in rows if r["method"] == method), key=lambda r: r["flops_kept"])
        if not chosen:
            continue
        left.plot([r["flops_kept"] for r in chosen], [r["sentence_transformers"]["spearman"] for r in chosen],
                  marker=marker, label=method)
        right.plot([r["flops_kept"] for r in chosen], [r["sentence_transformers"]["cosine_to_dense"] for r in chosen],
                   marker=marker, label=method)
    if rows:
        left.axhline(rows[0]["sentence_transformers"]["dense_spearman"], color="grey", lw=1, ls="--", label="dense")
    left.set(xlabel="flops_kept", ylabel="STS-B dev Spearman", title="all-MiniLM-L6-v2, no labels")
    right.set(xlabel="flops_kept", ylabel="mean cosine(dense, pruned)", title="Embedding fidelity")
    for ax in (left, right):
        ax.invert_xaxis()
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def machine() -> str:
    """The machine the timings ran on, with the thread count they used."""
    return hardware_label({**hardware_summary("cpu"), "threads": THREADS})


def save(rows: list[dict[str, Any]]) -> None:
    hardware = machine()
    atomic_write_text(RESULTS / "embeddings.json", json.dumps(rows, indent=1) + "\n")
    plot(rows, RESULTS / "embeddings.png")
    text = markdown(rows, hardware) + "\n![Spearman and fidelity against the FLOPs kept](embeddings.png)\n"
    atomic_write_text(RESULTS / "embeddings.md", text)
    publish_study("embeddings", text, BENCHMARKS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prune-only", action="store_true", help="prune and check, do not time")
    parser.add_argument("--remeasure", action="store_true", help="time every recorded folder again")
    args = parser.parse_args(argv)
    out = RESULTS / "embeddings.json"
    rows = {(r["method"], r["flops_kept"]): r for r in (json.loads(out.read_text()) if out.is_file() else [])}
    dense = Path(resolve_model(MODEL, setting="model").location)
    pairs = dev_pairs()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(dense)
    lengths = [len(ids) for ids in tokenizer(list(pairs["text_a"]) + list(pairs["text_b"]))["input_ids"]]
    average_length = round(sum(lengths) / len(lengths))
    for method in METHODS:
        for flops_kept in BUDGETS:
            known = rows.get((method, flops_kept))
            if known is not None and not args.remeasure and (known["measured"] or args.prune_only):
                continue
            folder, report = prune(method, flops_kept)
            rows[(method, flops_kept)] = row(method, flops_kept, folder, report, dense, pairs, average_length,
                                             timing=not args.prune_only)
            r = rows[(method, flops_kept)]
            print(f"[{time.strftime('%H:%M:%S')}] {method} flops_kept {flops_kept}: Spearman "
                  f"{r['sentence_transformers']['spearman']:.4f}, cosine {r['sentence_transformers']['cosine_to_dense']:.4f}"
                  + (f", {r['measured']['s128']['speedup']:.2f}x" if r["measured"] else ""), flush=True)
            save(list(rows.values()))
    print(markdown(list(rows.values()), machine()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
