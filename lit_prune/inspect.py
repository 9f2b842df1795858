"""Describe a pruned model folder: kept structure per layer, FLOPs and parameters against the dense model.

Usage::

    python -m lit_prune.inspect <folder> [--seq-len S]

``S`` is the sequence length the FLOPs are counted at (default 128); pass the task's average tokenised dev-set
length to match a pruning report. The dense shape comes from the original dimensions kept in the folder's config.
Nothing heavy is loaded: both models are built on the meta device to count their parameters.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from lit_prune.core.arch import STRUCTURE_KEY, get_adapter
from lit_prune.core.flops import count_parameters, dense_flops, structure_flops, structure_parameters
from lit_prune.core.hf_modeling import modeling_lit_pruned as hf
from lit_prune.core.io import NotAPrunedModelError, read_pruned_config, saved_kind

DEFAULT_SEQ_LEN = 128


def describe(folder: str | Path, seq_len: float = DEFAULT_SEQ_LEN) -> dict[str, Any]:
    """The numbers :func:`main` prints, as a dict.

    Returns:
        ``model_type``, ``kind``, ``dense_shape`` (num_layers, num_heads, head_dim, hidden_size, ffn_dim),
        ``layers`` (the stored per-layer structure), ``seq_len``, ``flops`` and ``parameters`` (each with
        ``dense``, ``pruned`` and ``kept`` ratio; parameters as ``total`` and ``encoder_linear``).

    Raises:
        NotAPrunedModelError: the folder does not hold a valid pruned model.
    """
    config = read_pruned_config(folder)
    structure = getattr(config, STRUCTURE_KEY)
    shape = {name: structure[name] for name in ("num_layers", "num_heads", "head_dim", "hidden_size", "ffn_dim")}
    d, d_h = shape["hidden_size"], shape["head_dim"]
    dense_layers = [{"heads": [[d_h, d_h]] * shape["num_heads"], "ffn": shape["ffn_dim"]}] * shape["num_layers"]
    kind = saved_kind(config) or "base"
    pruned_class = hf.PRUNED_CLASSES[(config.model_type, kind)]
    dense_config = config.__class__.from_dict({k: v for k, v in config.to_dict().items() if k != STRUCTURE_KEY})
    with torch.device("meta"):
        pruned = pruned_class(config)
        totals = {"dense": count_parameters(pruned_class.__bases__[-1](dense_config))["total"],
                  "pruned": count_parameters(pruned)["total"]}
    accounting = get_adapter(pruned).accounting  # gated FFNs, Linear layers without biases
    ffn_matrices = accounting["ffn_matrices"]
    flops = {"dense": dense_flops(shape["num_layers"], shape["num_heads"], d_h, shape["ffn_dim"], seq_len, d,
                                  ffn_matrices),
             "pruned": structure_flops(structure["layers"], seq_len, d, ffn_matrices)}
    linear = {"dense": structure_parameters(dense_layers, d, **accounting)["encoder_linear"],
              "pruned": structure_parameters(structure["layers"], d, **accounting)["encoder_linear"]}
    return {
        "model_type": config.model_type, "kind": kind, "dense_shape": shape, "layers": structure["layers"],
        "seq_len": seq_len,
        "flops": {**flops, "kept": flops["pruned"] / flops["dense"]},
        "parameters": {name: {**counts, "kept": counts["pruned"] / counts["dense"]}
                       for name, counts in (("total", totals), ("encoder_linear", linear))},
    }


def format_description(info: dict[str, Any]) -> str:
    """A human-readable report of :func:`describe`'s result."""
    shape = info["dense_shape"]
    lines = [f"{info['model_type']} ({info['kind']}), dense shape: {shape['num_layers']} layers × "
             f"{shape['num_heads']} heads of {shape['head_dim']}, hidden {shape['hidden_size']}, "
             f"FFN {shape['ffn_dim']}", ""]
    for index, layer in enumerate(info["layers"]):
        sizes: dict[tuple[int, int], int] = {}
        for q, v in layer["heads"]:
            sizes[(q, v)] = sizes.get((q, v), 0) + 1
        heads = ", ".join(f"{n}×(q{q},v{v})" for (q, v), n in sizes.items()) or "none"
        lines.append(f"layer {index:2d}: heads {len(layer['heads']):3d}/{shape['num_heads']} [{heads}]; "
                     f"FFN neurons {layer['ffn']}/{shape['ffn_dim']}")
    flops, params = info["flops"], info["parameters"]
    lines += [
        "",
        f"FLOPs at s={info['seq_len']:g}: {flops['pruned']:.4g} of {flops['dense']:.4g} dense "
        f"(flops_kept {flops['kept']:.4f})",
        f"parameters: {params['total']['pruned']:,} of {params['total']['dense']:,} dense "
        f"({params['total']['kept']:.4f}); encoder attention+FFN Linear: {params['encoder_linear']['pruned']:,} of "
        f"{params['encoder_linear']['dense']:,} ({params['encoder_linear']['kept']:.4f})",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the description of a pruned folder; exit status 2 when it is not one."""
    parser = argparse.ArgumentParser(prog="python -m lit_prune.inspect", description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="a pruned model folder written by lit_prune")
    parser.add_argument("--seq-len", type=float, default=DEFAULT_SEQ_LEN,
                        help="sequence length s for the FLOPs (default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.seq_len > 0:
        parser.error(f"--seq-len={args.seq_len}: expected a positive number")
    try:
        info = describe(args.folder, args.seq_len)
    except NotAPrunedModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_description(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
