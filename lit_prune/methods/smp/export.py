"""SMP's export: the trained masks fixed into the weights, the rows and columns they empty removed, and the run ended
as every lit_prune method ends it.

SMP prunes single weights, so its masked model is as large as the dense one: the paper's speed-up needs sparse
kernels (its own limitation). lit_prune goes further where it is exact: :func:`structure_from_zeros` finds the
neurons, value dims and query/key dims whose weights the masks emptied entirely, folds the constant outputs some of
them leave into biases, and the shared run ending (:func:`lit_prune.methods.run.finish_run`) removes them, so the
pruned folder loads with plain transformers as a smaller dense model with the masked model's outputs. The latency
entry also times the compacted model with CSR weights (:func:`sparse_copy`), and the binary weight masks are
written beside it (``weight_masks.safetensors``: ``layer.<i>.<type>`` → uint8).
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_safetensors
from torch import nn

from lit_prune.core.arch import get_adapter
from lit_prune.core.hf_modeling.modeling_lit_pruned import fused_path
from lit_prune.core.atomic import atomic_write_bytes
from lit_prune.core.io import SaveDtype
from lit_prune.core.masks import PruningMasks
from lit_prune.methods.contract import PruningTarget
from lit_prune.methods.run import check_same_on_all_ranks, finish_run, latency_comparison, output_folder
from lit_prune.methods.smp.scores import MATRIX_TYPES, Masking, ScoreMasks, binary_masks, fix_masks, set_counts

WEIGHT_MASKS_FILE = "weight_masks.safetensors"


def _activation(model: nn.Module):
    from transformers.activations import ACT2FN

    config = model.config
    name = (getattr(config, "hidden_act", None) or getattr(config, "activation", None)
            or getattr(config, "hidden_activation", None))
    return ACT2FN[name]


def structure_from_zeros(model: nn.Module) -> tuple[PruningMasks, dict[str, int]]:
    """The units of a weight-masked dense ``model`` that can go without changing its function, with the bias folds
    that make it exact. Edits the biases of ``model`` in place (the folds); returns the masks and fold counts.

    Rules (per layer): an FFN neuron goes when its W_down column is zero, or when its W_up row is zero (its constant
    output act(b_up) · W_down column is added to b_down); a value dim goes when its W_O column is zero, or when its
    W_V row is zero (b_V · W_O column added to b_O); a query/key dim goes when its W_K row is zero (its score term
    is then the same for every key, which the softmax ignores). A head with no value dims left goes entirely; a head
    that keeps value dims but no query/key dim keeps one (zero) query/key dim, so its attention stays uniform.
    A gated FFN's neuron (GeGLU: act(up) · gate) is constant when its up and gate rows are zero, or one of them is
    zero while its bias makes the product 0. Without biases (ModernBERT) the constants are 0 and nothing is folded;
    under rotary embeddings a head keeps all its query/key dims or none (a zero key row still rotates into its pair).
    A constant that cannot be folded (no output bias to hold it) keeps its unit.
    """
    adapter = get_adapter(model)
    d_h, num_neurons = adapter.head_dim, adapter.ffn_dim
    masks = PruningMasks.ones(adapter.num_layers, adapter.num_heads, d_h, num_neurons)
    folds = {"ffn": 0, "vo": 0}
    act = _activation(model)
    with torch.no_grad():
        for index in range(adapter.num_layers):
            m = adapter.layer(index)
            rows_zero = (m.ffn_up.weight == 0).all(1)
            bias = m.ffn_up.bias if m.ffn_up.bias is not None else torch.zeros_like(rows_zero, dtype=m.ffn_up.weight.dtype)
            if adapter.ffn_gated:  # neuron j: row j and gate row F + j
                up_zero, gate_zero = rows_zero[:num_neurons], rows_zero[num_neurons:]
                up_constant, gate_bias = act(bias[:num_neurons]), bias[num_neurons:]
                constant = (up_zero & gate_zero) | (gate_zero & (gate_bias == 0)) | (up_zero & (up_constant == 0))
                value = up_constant * gate_bias
            else:
                constant, value = rows_zero, act(bias)
            down_zero = (m.ffn_down.weight == 0).all(0)
            fold = constant & ~down_zero
            if m.ffn_down.bias is None:  # nowhere to fold a nonzero constant into: those neurons stay
                constant, fold = constant & ~(fold & (value != 0)), fold & (value == 0)
            elif fold.any():
                m.ffn_down.bias += m.ffn_down.weight[:, fold] @ value[fold]  # (n,)
            folds["ffn"] += int(fold.sum())
            masks.ffn[index] = (~(constant | down_zero)).float()
            v_zero = (m.value.weight == 0).all(1)
            o_zero = (m.attn_out.weight == 0).all(0)
            v_bias = m.value.bias if m.value.bias is not None else torch.zeros_like(v_zero, dtype=m.value.weight.dtype)
            fold = v_zero & ~o_zero
            if m.attn_out.bias is None:
                v_zero, fold = v_zero & ~(fold & (v_bias != 0)), fold & (v_bias == 0)
            elif fold.any():
                m.attn_out.bias += m.attn_out.weight[:, fold] @ v_bias[fold]
            folds["vo"] += int(fold.sum())
            vo = (~(v_zero | o_zero)).float().view(adapter.num_heads, d_h)
            qk = (~(m.key.weight == 0).all(1)).float().view(adapter.num_heads, d_h)
            for head in range(adapter.num_heads):
                if vo[head].sum() == 0:
                    qk[head] = 0
                elif qk[head].sum() == 0:
                    qk[head, 0] = 1  # uniform attention: one query/key dim whose key row is zero
            masks.qk[index], masks.vo[index] = qk, vo
            masks.head[index] = (vo.sum(-1) > 0).float()
    return adapter.conform_masks(masks), folds


class CSRLinear(nn.Module):
    """A Linear whose weight is a sparse CSR matrix (for timing a sparse export; not saved)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state": known, and timed only
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            self.weight = linear.weight.detach().to_sparse_csr()
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])  # (B·s, in)
        out = torch.sparse.mm(self.weight, flat.t()).t()  # (B·s, out)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], out.shape[-1])


def sparse_copy(model: nn.Module) -> nn.Module:
    """A float32 copy of a (compacted) model whose encoder Linear layers multiply by CSR weights (float32 whatever the
    model's dtype: the CPU's sparse kernels have no bf16).

    Layers whose heads have unequal query and value sizes compute their query/key/value projections from padded
    dense weights (see the pruned modelling code), so those three stay dense there; every other encoder Linear
    becomes a :class:`CSRLinear`.
    """
    sparse = copy.deepcopy(model).float().eval()
    adapter = get_adapter(sparse)
    for index in range(adapter.num_layers):
        layer = adapter.layers[index]
        padded = any(getattr(getattr(module, "layout", None), "padded", False) for module in layer.modules())
        paths = {fused_path(getattr(adapter.spec, kind))[0]: kind for kind in reversed(MATRIX_TYPES)}  # fused once
        for path, kind in paths.items():
            if padded and kind in ("query", "key", "value"):
                continue
            parent_path, _, name = path.rpartition(".")
            parent = layer.get_submodule(parent_path) if parent_path else layer
            linear = getattr(parent, name)
            if linear.weight.numel():
                setattr(parent, name, CSRLinear(linear))
    return sparse


def write_weight_masks(folder: Path, weight_masks: dict[str, torch.Tensor]) -> None:
    """Write ``weight_masks`` (``layer.<i>.<type>`` → 0/1) as uint8 to ``folder/weight_masks.safetensors``."""
    atomic_write_bytes(folder / WEIGHT_MASKS_FILE,
                       save_safetensors({k: v.to(torch.uint8).contiguous() for k, v in weight_masks.items()},
                                        metadata={"format": "lit_prune.smp.weight_masks"}))


def kept_by_type(weight_masks: dict[str, torch.Tensor], score_masks: ScoreMasks) -> dict[str, float]:
    """The fraction of each matrix type's weights the masks keep."""
    return {kind: sum(float(weight_masks[f"layer.{i}.{kind}"].sum()) for i in range(len(masks)))
            / sum(weight_masks[f"layer.{i}.{kind}"].numel() for i in range(len(masks)))
            for kind, masks in score_masks.items()}


def export_scores(target: PruningTarget, score_masks: ScoreMasks, *, params_kept: float, masking: Masking,
                  seed: int | None, seq_len: float, seconds: dict[str, float], started: float,
                  dense_metrics: dict[str, float] | None, evaluate: bool, latency_batch_size: int,
                  latency_repeats: int, output_dir: str | Path | None, save_model: bool, method_report: dict[str, Any],
                  seq_len_from: str | None = None, save_dtype: SaveDtype = "float32") -> dict[str, Any]:
    """End an SMP run: set the final counts (``params_kept``), fix the masks into the weights of ``target.model``
    (the score masks leave it), remove what they empty with exact bias folds, evaluate, time (dense, compacted, and
    compacted with CSR weights) and write the pruned folder, the weight masks and the report. Returns the report.

    Args:
        target: the user's project; its model carries ``score_masks``.
        score_masks: the model's score masks (:func:`~lit_prune.methods.smp.scores.install_scores`).
        params_kept, masking: the final ratio and how it is shared between matrices.
        seed, seq_len, seconds, started, dense_metrics, evaluate, latency_batch_size, latency_repeats,
        output_dir, save_model: as :func:`~lit_prune.methods.run.finish_run` takes them.
        method_report: SMP's own report keys (settings, training, ...); ``structure_removed`` is added here.
        seq_len_from: where ``seq_len`` came from (the report's ``flops.seq_len_from``).
        save_dtype: the dtype of the folder's weights (:func:`~lit_prune.methods.run.finish_run`'s); the CSR timing
            stays float32, dense against CSR.
    """
    trainer, model = target.trainer, target.model
    set_counts(score_masks, params_kept, masking)
    weight_masks = binary_masks(score_masks)
    ranks = check_same_on_all_ranks(trainer, weight_masks, "weight masks")
    modes = [(module, module.training) for module in model.modules()]
    fix_masks(model)
    model.eval()
    dense = copy.deepcopy(model).eval()  # masked weights, dense shape
    masks, folds = structure_from_zeros(model)
    for module, training in modes:
        module.training = training

    def csr_latency(dense: nn.Module, pruned: nn.Module) -> dict[str, Any]:
        sparse = latency_comparison(target, dense, sparse_copy(pruned), latency_batch_size, latency_repeats,
                                    dtype="float32")  # dense against CSR, both float32
        return {"csr": {"pruned_ms": sparse["pruned_ms"], "speedup": sparse["speedup"],
                        "speedup_paired": sparse["speedup_paired"]}}

    total = sum(m.numel() for m in weight_masks.values())
    params = {"kept": sum(float(m.sum()) for m in weight_masks.values()) / total, "target": params_kept,
              "kept_by_type": kept_by_type(weight_masks, score_masks)}
    if trainer.is_global_zero:
        write_weight_masks(output_folder(output_dir, trainer), weight_masks)
    report = finish_run(target, model, dense, masks, method="smp", seed=seed, seq_len=seq_len, seconds=seconds,
                        started=started, dense_metrics=dense_metrics, evaluate=evaluate,
                        latency_batch_size=latency_batch_size, latency_repeats=latency_repeats,
                        output_dir=output_dir, save_model=save_model,
                        method_report={**method_report, "structure_removed": {"bias_folds": folds}},
                        extra_latency=csr_latency, params_report=params, ranks_report=ranks,
                        flops_report={"seq_len_from": seq_len_from} if seq_len_from is not None else None,
                        save_dtype=save_dtype)
    return report


def run_seed(seed: int | None) -> int | None:
    """The seed a report records: ``seed`` when given, else the run's ``seed_everything`` seed (``PL_GLOBAL_SEED``),
    else ``None``."""
    if seed is not None:
        return seed
    return int(os.environ["PL_GLOBAL_SEED"]) if os.environ.get("PL_GLOBAL_SEED") else None


__all__ = ["WEIGHT_MASKS_FILE", "CSRLinear", "export_scores", "kept_by_type", "run_seed", "sparse_copy",
           "structure_from_zeros", "write_weight_masks"]
