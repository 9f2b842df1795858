"""Dense vs compacted latency of all-MiniLM-L6-v2 at a FLOPs budget (default: half the FLOPs).

Run from the repository root (the model comes from ``--model`` or ``$LIT_PRUNE_ASSETS/models/all-MiniLM-L6-v2``)::

    LIT_PRUNE_ASSETS=../shared/assets python -m benchmarks.latency --flops-kept 0.5 --threads 2

The mask: in every layer the same number of heads, floor(flops_kept · H), and the same number of FFN neurons,
the most that fit the remaining FLOPs budget (computed exactly at the benchmark's sequence length, so the mask meets
the budget exactly or from below). Within a layer the heads with the largest weight norm
(‖W_Q,h‖² + ‖W_K,h‖² + ‖W_V,h‖² + ‖W_O,h‖²) and the neurons with the largest ‖W_up row‖·‖W_down column‖
are kept. The weights are not tuned: this measures speed, not accuracy.

The inputs are random token ids, batch 32 × sequence length 128, no padding. Dense and compacted models are timed
interleaved in one run (``lit_prune.core.latency.compare``); results go to ``benchmarks/results/`` as JSON and a
markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
from pathlib import Path

import torch
import transformers
from transformers import AutoModel

from lit_prune.assets import resolve_model
from lit_prune.core.arch import get_adapter
from lit_prune.core.atomic import atomic_write_text
from lit_prune.core.compact import compact
from lit_prune.core.flops import FlopsBudget, check_flops_kept, count_parameters, masks_flops, model_dense_flops
from lit_prune.core.latency import compare
from lit_prune.core.masks import PruningMasks

RESULTS = Path(__file__).resolve().parent / "results"


def magnitude_masks(model: torch.nn.Module, seq_len: float, flops_kept: float) -> PruningMasks:
    """Per layer, the floor(flops_kept·H) largest-norm heads and as many largest-norm neurons as the budget allows."""
    adapter = get_adapter(model)
    budget = FlopsBudget.for_model(model, seq_len, flops_kept)
    heads_per_layer = int(flops_kept * adapter.num_heads)
    total_neurons = budget.max_neurons(heads_per_layer * adapter.num_layers)
    assert total_neurons is not None, "floor(flops_kept·H) heads per layer always fit the budget"
    neurons_per_layer = min(adapter.ffn_dim, total_neurons // adapter.num_layers)
    masks = PruningMasks.from_model(model)
    masks.head.zero_()
    masks.ffn.zero_()
    with torch.no_grad():
        for index in range(adapter.num_layers):
            m = adapter.layer(index)
            per_head = lambda w: w.reshape(adapter.num_heads, -1).pow(2).sum(-1)  # noqa: E731 (rows of one head)
            head_norm = (per_head(m.query.weight) + per_head(m.key.weight) + per_head(m.value.weight)
                         + per_head(m.attn_out.weight.T))
            masks.head[index, head_norm.topk(heads_per_layer).indices] = 1
            up = m.ffn_up.weight  # (F, d); a gated FFN's (2F, d): neuron j's row and its gate row F + j
            if adapter.ffn_gated:
                up = torch.cat([up[:adapter.ffn_dim], up[adapter.ffn_dim:]], dim=1)  # (F, 2d)
            neuron_norm = up.norm(dim=1) * m.ffn_down.weight.norm(dim=0)
            masks.ffn[index, neuron_norm.topk(neurons_per_layer).indices] = 1
    return masks


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2",
                        help="a model folder, or a name under $LIT_PRUNE_ASSETS/models/ (default: %(default)s)")
    parser.add_argument("--flops-kept", type=float, default=0.5, help="fraction of dense FLOPs kept (0, 1]")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default: benchmarks/results)")
    args = parser.parse_args(argv)
    flops_kept = check_flops_kept(args.flops_kept, "--flops-kept")

    location = resolve_model(args.model, "--model").location
    dense = AutoModel.from_pretrained(location, dtype=torch.float32).eval()
    masks = magnitude_masks(dense, args.seq_len, flops_kept)
    pruned = compact(copy.deepcopy(dense), masks).eval()

    generator = torch.Generator().manual_seed(0)
    inputs = {
        "input_ids": torch.randint(0, dense.config.vocab_size, (args.batch_size, args.seq_len), generator=generator),
        "attention_mask": torch.ones(args.batch_size, args.seq_len, dtype=torch.long),
    }
    load_before = os.getloadavg()[0]  # other processes on the machine slow both models alike, but say so
    result = compare(dense, pruned, inputs, warmup=args.warmup, repeats=args.repeats, threads=args.threads)
    kept = masks_flops(masks, args.seq_len, get_adapter(dense).hidden_size) / model_dense_flops(dense, args.seq_len)
    report = {
        "model": args.model, "batch_size": args.batch_size, "seq_len": args.seq_len, "threads": result["threads"],
        "flops_kept_target": flops_kept, "flops_kept": kept, "ideal_speedup": 1 / kept,
        "speedup": result["speedup"], "speedup_paired": result["speedup_paired"], "dense_ms": result["dense"]["median_ms"],
        "pruned_ms": result["pruned"]["median_ms"], "dense": result["dense"], "pruned": result["pruned"],
        "mask": "per layer floor(flops_kept*H) heads and the most FFN neurons that fit, by weight magnitude",
        "kept": masks.num_kept(), "parameters": {"dense": count_parameters(dense), "pruned": count_parameters(pruned)},
        "structure": pruned.config.lit_prune_structure["layers"],
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "load_average_1m_before": load_before, "load_average_1m_after": os.getloadavg()[0],
        "command": " ".join(["python -m benchmarks.latency", *(sys.argv[1:] if argv is None else argv)]),
    }
    stem = f"latency_{Path(args.model).name}_flops{flops_kept:g}_b{args.batch_size}_s{args.seq_len}_t{args.threads}"
    atomic_write_text(args.out / f"{stem}.json", json.dumps(report, indent=2) + "\n")
    table = (
        f"# Latency: {Path(args.model).name}, batch {args.batch_size} × seq {args.seq_len}, "
        f"{result['threads']} threads\n\n"
        "| model | FLOPs kept | median ms | speedup | ideal (1/flops_kept) |\n|---|---:|---:|---:|---:|\n"
        f"| dense | 1.000 | {report['dense_ms']:.1f} | 1.00× | 1.00× |\n"
        f"| compacted | {kept:.3f} | {report['pruned_ms']:.1f} | {report['speedup']:.2f}× | {1 / kept:.2f}× |\n\n"
        f"Speedup of back-to-back pass pairs (median of dense/compacted per round): "
        f"{report['speedup_paired']:.2f}×.\n\n"
        f"Mask: {report['mask']}. Median of {args.repeats} interleaved passes after {args.warmup} warm-up passes; "
        f"torch {torch.__version__}; {os.cpu_count()} CPUs, 1-minute load average {load_before:.1f} before the run. "
        f"Command: `{report['command']}`.\n"
    )
    atomic_write_text(args.out / f"{stem}.md", table)
    print(f"dense {report['dense_ms']:.1f} ms, compacted {report['pruned_ms']:.1f} ms: speedup "
          f"{report['speedup']:.2f}x, paired {report['speedup_paired']:.2f}x (ideal 1/flops_kept = {1 / kept:.2f}x at flops_kept {kept:.3f})")
    print(f"wrote {args.out / (stem + '.json')} and .md")
    return report


if __name__ == "__main__":
    main()
