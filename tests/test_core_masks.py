"""PruningMasks: shapes, the head-combination rule, exact counts, structure, conversions and storage."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from conftest import tiny_model
from core_cases import make_masks
from lit_prune.core.masks import PruningMasks


def hand_made() -> PruningMasks:
    """L=2, H=3, d_h=4, F=5 with one head of each kind of emptiness."""
    masks = PruningMasks.ones(2, 3, 4, 5)
    masks.head[0, 0] = 0          # pruned by its head mask
    masks.qk[0, 1] = 0            # pruned: no query/key dims left
    masks.qk[0, 2, :3] = 0        # kept with q=1, v=4
    masks.vo[1, 0] = 0            # pruned: no value dims left
    masks.vo[1, 1, 1:] = 0.0      # kept with q=4, v=1
    masks.head[1, 2] = 0.5        # kept, scaled
    masks.ffn[0, [1, 3]] = 0
    masks.ffn[1] = torch.tensor([0.0, 0.0, 0.0, 0.0, 2.5])
    return masks


def test_ones_and_from_model_shapes():
    masks = PruningMasks.ones(2, 3, 4, 5)
    assert (masks.num_layers, masks.num_heads, masks.head_dim, masks.ffn_dim) == (2, 3, 4, 5)
    assert masks.head.dtype == torch.float32 and bool((masks.qk == 1).all())
    from_model = PruningMasks.from_model(tiny_model("distilbert"))
    assert tuple(from_model.qk.shape) == (2, 4, 8) and tuple(from_model.ffn.shape) == (2, 48)


def test_inconsistent_shapes_reported_all_at_once():
    with pytest.raises(ValueError, match=r"qk has shape \(2, 3, 4\), expected \(2, 4, d_h\).*vo has shape \(2, 4, 5\)"
                                         r".*ffn has shape \(3, 5\), expected \(2, F\)"):
        PruningMasks(head=torch.ones(2, 4), qk=torch.ones(2, 3, 4), vo=torch.ones(2, 4, 5), ffn=torch.ones(3, 5))
    with pytest.raises(ValueError, match=r"head has shape \(2,\), expected 2 dims"):
        PruningMasks(head=torch.ones(2), qk=torch.ones(2, 3, 4), vo=torch.ones(2, 3, 4), ffn=torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"head has dtype torch.int64, expected a floating-point dtype.*ffn is a list"):
        PruningMasks(head=torch.ones(2, 3, dtype=torch.long), qk=torch.ones(2, 3, 4), vo=torch.ones(2, 3, 4),
                     ffn=[1.0])
    with pytest.raises(ValueError, match=r"num_heads=0.*expected positive integers"):
        PruningMasks.ones(2, 0, 4, 5)


def test_check_shape_names_every_wrong_field():
    masks = PruningMasks.ones(2, 3, 4, 5)
    masks.check_shape(2, 3, 4, 5)
    with pytest.raises(ValueError, match=r"masks do not fit the model \(L=2, H=3, d_h=8, F=6\): qk has shape "
                                         r"\(2, 3, 4\), expected \(2, 3, 8\); vo .*; ffn has shape \(2, 5\), "
                                         r"expected \(2, 6\)"):
        masks.check_shape(2, 3, 8, 6)


def test_combination_rule_and_exact_counts():
    masks = hand_made()
    assert masks.heads_alive().tolist() == [[False, False, True], [False, True, True]]
    kept = masks.num_kept()
    assert kept["per_layer"] == [{"heads": 1, "qk_dims": 1, "vo_dims": 4, "neurons": 3},
                                 {"heads": 2, "qk_dims": 8, "vo_dims": 5, "neurons": 1}]
    assert (kept["heads"], kept["qk_dims"], kept["vo_dims"], kept["neurons"]) == (3, 9, 9, 4)
    assert masks.structure() == [{"heads": [[1, 4]], "head_ids": [2], "ffn": 3},
                                 {"heads": [[4, 1], [4, 4]], "head_ids": [1, 2], "ffn": 1}]


def test_effective_zeroes_dead_heads_and_keeps_scales():
    masks = hand_made()
    effective = masks.effective()
    assert effective.head.tolist() == [[0, 0, 1], [0, 1, 0.5]]
    assert bool((effective.qk[0, :2] == 0).all()) and bool((effective.vo[1, 0] == 0).all())
    assert bool((effective.vo[0, 1] == 0).all())  # its qk emptied it, so its vo dims go too
    assert torch.equal(effective.ffn, masks.ffn)
    binary = masks.binary()
    assert binary.head.tolist() == [[0, 0, 1], [0, 1, 1]] and binary.ffn[1].tolist() == [0, 0, 0, 0, 1]
    assert binary.num_kept() == masks.num_kept() == effective.num_kept()


def test_dict_and_file_round_trip(tmp_path):
    masks = make_masks("scales")
    assert PruningMasks.from_dict(masks.to_dict()) == masks
    path = masks.save(tmp_path / "masks.safetensors")
    loaded = PruningMasks.load(path)
    assert loaded == masks and loaded is not masks
    assert loaded != PruningMasks.ones(2, 4, 8, 48)
    with pytest.raises(ValueError, match=r"expected keys \['head', 'qk', 'vo', 'ffn'\].*missing \['ffn'\], "
                                         r"unexpected \['neurons'\]"):
        PruningMasks.from_dict({**{k: v for k, v in masks.to_dict().items() if k != "ffn"}, "neurons": masks.ffn})
    save_file({"head": torch.ones(2, 2)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="is not a PruningMasks file of format version 1"):
        PruningMasks.load(tmp_path / "other.safetensors")


def test_to_clone_allclose_and_requires_grad():
    masks = make_masks("scales")
    double = masks.to(dtype=torch.float64)
    assert double.head.dtype == torch.float64 and double.allclose(masks.to(dtype=torch.float64))
    nudged = masks.clone()
    nudged.ffn += 1e-7
    assert nudged.allclose(masks, atol=1e-6) and nudged != masks
    assert not nudged.allclose(PruningMasks.ones(2, 4, 8, 48))
    masks.requires_grad_(True, fields=("head", "ffn"))
    assert masks.head.requires_grad and masks.ffn.requires_grad and not masks.qk.requires_grad
    with pytest.raises(ValueError, match=r"\['heads'\] not among"):
        masks.requires_grad_(True, fields=("heads",))


def test_repr_summarises_counts():
    assert repr(hand_made()) == ("PruningMasks(L=2, H=3, d_h=4, F=5; kept: heads 3/6, qk dims 9/24, vo dims 9/24, "
                                 "neurons 4/10)")
