"""Pins: for fixed seeds, every method's stages give the masks (and tuned weights) they gave before the library was
redesigned into the shared layer and per-method packages.

``tests/data/mask_pins.json`` was written by :func:`compute_pins` at commit 68e3055 (the last commit before the
redesign, run from a checkout of it with ``python tests/test_mask_pins.py --write``). Each method runs its pure
stages on a tiny random BERT with a fixed calibration sample; a change that moves any mask or weight fails here.

One deliberate change since: GRAIN's budget counts the encoder's Linear weights only (biases excluded), the one
meaning of ``params_kept`` across methods, so its ``grain`` entry was recomputed (the same query and value units;
two more FFN neurons kept; ``kept`` counts weights, 4288, where it counted weights and biases, 4367). The other
entries are still those of 68e3055.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import tiny_inputs, tiny_model  # noqa: E402

PINS = Path(__file__).resolve().parent / "data" / "mask_pins.json"
SEQ_LEN = 8.5


def _batches(labels: bool = True, count: int = 4) -> list[dict[str, torch.Tensor]]:
    batches = []
    for i in range(count):
        batch = tiny_inputs(batch=4, seq=10, seed=i)
        if labels:
            batch["labels"] = torch.tensor([0, 1, 1, 0])
        batches.append(batch)
    return batches


def _rounded(tensor: torch.Tensor, digits: int = 5) -> list:
    return torch.round(tensor.detach().double().cpu(), decimals=digits).tolist()


def kwon_pins() -> dict:
    from lit_prune.core.flops import FlopsBudget
    from lit_prune.methods.kwon import kwon_prune

    model = tiny_model("bert")
    result = kwon_prune(model, _batches(), FlopsBudget.for_model(model, SEQ_LEN, 0.5), cls_only_last_ffn=True)
    return {"head": _rounded(result.masks.head), "ffn": _rounded(result.masks.ffn),
            "searched_heads": _rounded(result.searched.head)}


def gpruner_pins() -> dict:
    from lit_prune.core.flops import FlopsBudget
    from lit_prune.methods.gpruner import CalibrationLoss, CGSTuningSolver, PPOSettings, ppo_search
    from lit_prune.methods.kwon import kwon_prune

    model = tiny_model("bert")
    dense = tiny_model("bert")
    budget = FlopsBudget.for_model(model, SEQ_LEN, 0.5)
    batches = _batches()
    loss = CalibrationLoss(model, dense, batches[:2])
    settings = PPOSettings(iterations=2, rollouts=3, seed=0)

    def refine(masks, stats):
        found = ppo_search(loss, stats.head_importance(), stats.ffn_importance(), masks, budget, settings)
        return found.masks.to(masks.head.device), {}

    result = kwon_prune(model, batches, budget, cls_only_last_ffn=True, refine=refine, solver=CGSTuningSolver())
    return {"head": _rounded(result.masks.head), "ffn": _rounded(result.masks.ffn)}


def kprune_pins() -> dict:
    from lit_prune.core.arch import get_adapter
    from lit_prune.core.flops import FlopsBudget
    from lit_prune.methods.kprune import kprune

    model = tiny_model("bert")
    # whole batches: KPrune's length groups (on by default on a CPU) give the same masks, and weights equal to
    # float rounding only (the refits are ill-conditioned), so the pins take the old code's path
    result = kprune(model, _batches(labels=False), FlopsBudget.for_model(model, SEQ_LEN, 0.5), length_groups=1)
    adapter = get_adapter(model)
    weights = [adapter.layer(i).attn_out.weight.double().sum().item() for i in range(adapter.num_layers)]
    weights += [adapter.layer(i).ffn_down.weight.double().sum().item() for i in range(adapter.num_layers)]
    return {"head": _rounded(result.masks.head), "ffn": _rounded(result.masks.ffn),
            "projection_sums": [round(w, 4) for w in weights]}


def grain_pins() -> dict:
    from lit_prune.methods.grain import GrainImportance, GrainLayout, select_units
    from lit_prune.prune.schedules import cubic_schedule

    model = tiny_model("bert")
    layout = GrainLayout.from_model(model)
    masks = layout.masks()
    importance = GrainImportance(layout, "intra", beta=0.9, alpha=0.3)
    g = torch.Generator().manual_seed(0)
    for step in range(10):
        grads = {name: torch.randn(getattr(masks, name).shape, generator=g) for name in ("qk", "vo", "ffn")}
        scores = importance.update(grads, masks.binary())
        density = cubic_schedule(step, 10, 0.3, start=0.2, end=0.6)
        masks = select_units(scores, masks, layout, density, "intra")
    return {"qk": _rounded(masks.qk.sum(-1)), "vo": _rounded(masks.vo.sum(-1)), "ffn": _rounded(masks.ffn),
            "kept": layout.kept_parameters(masks)}


def smp_pins() -> dict:
    from lit_prune.methods.smp import install_scores, set_counts

    out = {}
    for masking in ("global", "local"):
        model = tiny_model("bert")
        score_masks = install_scores(model)
        g = torch.Generator().manual_seed(1)
        for masks in score_masks.values():
            for mask in masks:
                mask.scores.data = torch.randn(mask.scores.shape, generator=g)
        counts = set_counts(score_masks, 0.3, masking)
        digest = [float(m.mask().double().mul(torch.arange(m.scores.numel()).view_as(m.scores)).sum())
                  for masks in score_masks.values() for m in masks]
        out[masking] = {"counts": counts, "digest": digest}
    return out


PIN_FUNCTIONS = {"kwon": kwon_pins, "gpruner": gpruner_pins, "kprune": kprune_pins, "grain": grain_pins,
                 "smp": smp_pins}


def compute_pins() -> dict:
    torch.set_num_threads(1)
    return {name: fn() for name, fn in PIN_FUNCTIONS.items()}


@pytest.mark.parametrize("method", sorted(PIN_FUNCTIONS))
def test_masks_are_the_pinned_ones(method):
    pinned = json.loads(PINS.read_text())[method]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the pins were computed single-threaded: the same float summation order
    try:
        got = json.loads(json.dumps(PIN_FUNCTIONS[method]()))
    finally:
        torch.set_num_threads(threads)
    assert got.keys() == pinned.keys()
    for key in pinned:
        torch.testing.assert_close(torch.tensor(got[key]) if not isinstance(got[key], dict) else got[key],
                                   torch.tensor(pinned[key]) if not isinstance(pinned[key], dict) else pinned[key],
                                   rtol=1e-5, atol=1e-4, msg=f"{method}: {key} moved")


if __name__ == "__main__" and "--write" in sys.argv:
    PINS.write_text(json.dumps(compute_pins(), indent=1) + "\n")
    print(f"wrote {PINS}")
