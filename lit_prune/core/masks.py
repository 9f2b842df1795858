"""PruningMasks: which attention heads, intra-head dimensions and FFN neurons a pruned encoder keeps.

A small typed value (four float tensors, no reference to a model):

============  ==========  ==============================================================================
field         shape       multiplies
============  ==========  ==============================================================================
``head``      (L, H)      the head's context vector, the input of the attention output projection W_O
``qk``        (L, H, d_h) the head's query dims (a pruned dim removes a row of W_Q and of W_K)
``vo``        (L, H, d_h) the head's value dims (a pruned dim removes a row of W_V and a column of W_O)
``ffn``       (L, F)      the FFN neuron, the input of the FFN down projection
============  ==========  ==============================================================================

1 keeps a unit, 0 prunes it; other values are scales (Kwon et al.'s tuned masks) that compaction folds into the
weights. **How they combine**: a head is *effectively pruned* when ``head == 0``, or all its ``qk`` dims are 0, or
all its ``vo`` dims are 0 — a head without query/key dims would still attend uniformly, so it is removed as a
whole, in masking and compaction alike. A dim or neuron is kept when it is nonzero and (for dims) its head is kept.

Put them in a ``state_dict`` with :meth:`PruningMasks.to_dict` / :meth:`PruningMasks.from_dict`; store them with
:meth:`PruningMasks.save` / :meth:`PruningMasks.load` (safetensors).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_save
from torch import nn

from lit_prune.core.arch import get_adapter
from lit_prune.core.atomic import atomic_write_bytes

FIELDS = ("head", "qk", "vo", "ffn")
_FILE_FORMAT = "lit_prune.PruningMasks"
_FILE_VERSION = 1


@dataclass(eq=False)
class PruningMasks:
    """Head, intra-head (query/key and value/output) and FFN-neuron masks of an L-layer encoder.

    Attributes:
        head: (L, H) head masks or scales.
        qk: (L, H, d_h) query/key dim masks (or query scales) of each head.
        vo: (L, H, d_h) value/output dim masks (or scales) of each head.
        ffn: (L, F) FFN neuron masks or scales.

    Raises:
        ValueError: on construction, for tensors of the wrong kind, rank or mutually inconsistent shapes
            (all problems in one message).
    """

    head: torch.Tensor
    qk: torch.Tensor
    vo: torch.Tensor
    ffn: torch.Tensor

    __hash__ = None  # mutable tensors: equality is by value, so no hash

    def __post_init__(self) -> None:
        problems = []
        for name in FIELDS:
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor):
                problems.append(f"{name} is a {type(value).__name__}, expected a torch.Tensor")
            elif not value.is_floating_point():
                problems.append(f"{name} has dtype {value.dtype}, expected a floating-point dtype")
        if problems:
            raise ValueError("invalid PruningMasks: " + "; ".join(problems))
        expected_rank = {"head": 2, "qk": 3, "vo": 3, "ffn": 2}
        problems = [f"{name} has shape {tuple(getattr(self, name).shape)}, expected {rank} dims"
                    for name, rank in expected_rank.items() if getattr(self, name).dim() != rank]
        if not problems:
            layers, heads = self.head.shape
            if tuple(self.qk.shape[:2]) != (layers, heads):
                problems.append(f"qk has shape {tuple(self.qk.shape)}, expected ({layers}, {heads}, d_h) to match "
                                f"head {tuple(self.head.shape)}")
            if self.vo.shape != self.qk.shape:
                problems.append(f"vo has shape {tuple(self.vo.shape)}, expected {tuple(self.qk.shape)} like qk")
            if self.ffn.shape[0] != layers:
                problems.append(f"ffn has shape {tuple(self.ffn.shape)}, expected ({layers}, F) to match head's "
                                f"{layers} layers")
        devices = {str(getattr(self, name).device) for name in FIELDS}
        if len(devices) > 1:
            problems.append(f"tensors are on different devices ({', '.join(sorted(devices))})")
        if problems:
            raise ValueError("invalid PruningMasks: " + "; ".join(problems))

    # ------------------------------------------------------------------------------------------ constructors
    @classmethod
    def ones(cls, num_layers: int, num_heads: int, head_dim: int, ffn_dim: int,
             device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> PruningMasks:
        """All-ones masks (the dense model) of the given shape."""
        dims = {"num_layers": num_layers, "num_heads": num_heads, "head_dim": head_dim, "ffn_dim": ffn_dim}
        bad = [f"{name}={value!r}" for name, value in dims.items() if type(value) is not int or value < 1]
        if bad:
            raise ValueError(f"PruningMasks.ones: {', '.join(bad)}: expected positive integers")
        return cls(
            head=torch.ones(num_layers, num_heads, device=device, dtype=dtype),
            qk=torch.ones(num_layers, num_heads, head_dim, device=device, dtype=dtype),
            vo=torch.ones(num_layers, num_heads, head_dim, device=device, dtype=dtype),
            ffn=torch.ones(num_layers, ffn_dim, device=device, dtype=dtype),
        )

    @classmethod
    def from_model(cls, model: nn.Module) -> PruningMasks:
        """All-ones masks shaped for a dense ``model``, on its device."""
        adapter = get_adapter(model)
        adapter.require_dense("build masks for it")
        device = next(model.parameters()).device
        return cls.ones(adapter.num_layers, adapter.num_heads, adapter.head_dim, adapter.ffn_dim, device=device)

    @classmethod
    def from_dict(cls, tensors: dict[str, torch.Tensor]) -> PruningMasks:
        """Masks from :meth:`to_dict`'s output (e.g. read back from a ``state_dict``)."""
        keys = set(tensors)
        if keys != set(FIELDS):
            raise ValueError(f"PruningMasks.from_dict: expected keys {list(FIELDS)}, got {sorted(keys)} "
                             f"(missing {sorted(set(FIELDS) - keys)}, unexpected {sorted(keys - set(FIELDS))})")
        return cls(**{name: tensors[name] for name in FIELDS})

    @classmethod
    def load(cls, path: str | Path) -> PruningMasks:
        """Read masks written by :meth:`save`.

        Raises:
            ValueError: the file is not a lit_prune masks file, or of a format version this code does not read.
        """
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            info = json.loads(metadata.get("lit_prune", "{}"))
            if info.get("format") != _FILE_FORMAT or info.get("format_version") != _FILE_VERSION:
                raise ValueError(f"{path} is not a PruningMasks file of format version {_FILE_VERSION} "
                                 f"(its metadata says {info or 'nothing'})")
            return cls.from_dict({name: handle.get_tensor(name) for name in handle.keys()})

    # ------------------------------------------------------------------------------------------ shape
    @property
    def num_layers(self) -> int:
        """L."""
        return self.head.shape[0]

    @property
    def num_heads(self) -> int:
        """H."""
        return self.head.shape[1]

    @property
    def head_dim(self) -> int:
        """d_h."""
        return self.qk.shape[2]

    @property
    def ffn_dim(self) -> int:
        """F."""
        return self.ffn.shape[1]

    def check_shape(self, num_layers: int, num_heads: int, head_dim: int, ffn_dim: int,
                    what: str = "the model") -> None:
        """Raise unless the masks have exactly this shape.

        Args:
            what: the thing the masks must fit, for the message.

        Raises:
            ValueError: naming every field of the wrong shape and the shape expected.
        """
        expected = {"head": (num_layers, num_heads), "qk": (num_layers, num_heads, head_dim),
                    "vo": (num_layers, num_heads, head_dim), "ffn": (num_layers, ffn_dim)}
        problems = [f"{name} has shape {tuple(getattr(self, name).shape)}, expected {shape}"
                    for name, shape in expected.items() if tuple(getattr(self, name).shape) != shape]
        if problems:
            raise ValueError(f"masks do not fit {what} (L={num_layers}, H={num_heads}, d_h={head_dim}, "
                             f"F={ffn_dim}): " + "; ".join(problems))

    # ------------------------------------------------------------------------------------------ semantics
    def heads_alive(self) -> torch.Tensor:
        """(L, H) bool: the heads that are effectively kept (head ≠ 0, some qk dim ≠ 0, some vo dim ≠ 0)."""
        return (self.head != 0) & (self.qk != 0).any(-1) & (self.vo != 0).any(-1)

    def effective(self) -> PruningMasks:
        """Equivalent masks with the combination rule applied: every entry of an effectively pruned head is 0.

        Real values of the kept units are unchanged, so the result masks the model exactly as ``self`` does.
        """
        alive = self.heads_alive().to(self.head.dtype)
        return PruningMasks(head=self.head * alive, qk=self.qk * alive[..., None], vo=self.vo * alive[..., None],
                            ffn=self.ffn.clone())

    def binary(self) -> PruningMasks:
        """0/1 masks of the effectively kept units (scales dropped)."""
        effective = self.effective()
        return PruningMasks(**{name: (getattr(effective, name) != 0).to(self.head.dtype) for name in FIELDS})

    def num_kept(self) -> dict[str, Any]:
        """Counts of the effectively kept units.

        Returns:
            ``{"heads", "qk_dims", "vo_dims", "neurons"}`` totals (ints) and ``"per_layer"``: one dict with the same
            four counts per layer. A dim counts only when its head is kept.
        """
        binary = self.binary()
        per_layer_tensors = {
            "heads": binary.head.sum(1), "qk_dims": binary.qk.sum((1, 2)), "vo_dims": binary.vo.sum((1, 2)),
            "neurons": binary.ffn.sum(1),
        }
        per_layer = [{name: int(values[i]) for name, values in per_layer_tensors.items()}
                     for i in range(self.num_layers)]
        totals = {name: sum(layer[name] for layer in per_layer) for name in per_layer_tensors}
        return {**totals, "per_layer": per_layer}

    def structure(self) -> list[dict[str, Any]]:
        """Per layer, the kept units: ``{"heads": [[q, v], ...], "head_ids": [h, ...], "ffn": n}``.

        ``heads`` holds the numbers of query/key and value/output dims kept in each kept head, in head order;
        ``head_ids`` the heads' indices; ``ffn`` the number of FFN neurons kept. This is the per-layer format of
        the structure that compaction writes into the model config.
        """
        binary = self.binary()
        q_counts, v_counts = binary.qk.sum(-1).long().tolist(), binary.vo.sum(-1).long().tolist()
        alive = binary.head.bool().tolist()
        ffn = binary.ffn.sum(-1).long().tolist()
        return [
            {"heads": [[q_counts[i][h], v_counts[i][h]] for h in range(self.num_heads) if alive[i][h]],
             "head_ids": [h for h in range(self.num_heads) if alive[i][h]],
             "ffn": ffn[i]}
            for i in range(self.num_layers)
        ]

    # ------------------------------------------------------------------------------------------ conversions
    def to_dict(self) -> dict[str, torch.Tensor]:
        """``{"head", "qk", "vo", "ffn"}`` → the tensors themselves (for a ``state_dict``)."""
        return {name: getattr(self, name) for name in FIELDS}

    def save(self, path: str | Path) -> Path:
        """Write the masks to a safetensors file (atomically), with JSON format metadata."""
        tensors = {name: getattr(self, name).detach().cpu().contiguous() for name in FIELDS}
        metadata = {"lit_prune": json.dumps({"format": _FILE_FORMAT, "format_version": _FILE_VERSION})}
        return atomic_write_bytes(path, safetensors_save(tensors, metadata=metadata))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> PruningMasks:
        """The masks moved to ``device`` and/or cast to ``dtype`` (differentiable, like ``Tensor.to``)."""
        return PruningMasks(**{name: getattr(self, name).to(device=device, dtype=dtype) for name in FIELDS})

    def clone(self) -> PruningMasks:
        """A deep copy (detached from any graph)."""
        return PruningMasks(**{name: getattr(self, name).detach().clone() for name in FIELDS})

    def requires_grad_(self, requires_grad: bool = True, fields: tuple[str, ...] = FIELDS) -> PruningMasks:
        """Set ``requires_grad`` on the named fields in place (Kwon: ``("head", "ffn")``); returns ``self``."""
        unknown = sorted(set(fields) - set(FIELDS))
        if unknown:
            raise ValueError(f"fields={list(fields)}: {unknown} not among {list(FIELDS)}")
        for name in fields:
            getattr(self, name).requires_grad_(requires_grad)
        return self

    # ------------------------------------------------------------------------------------------ comparison
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PruningMasks):
            return NotImplemented
        return all(getattr(self, n).shape == getattr(other, n).shape
                   and torch.equal(getattr(self, n).detach().cpu(), getattr(other, n).detach().cpu()) for n in FIELDS)

    def allclose(self, other: PruningMasks, rtol: float = 1e-5, atol: float = 1e-8) -> bool:
        """Whether every field has the same shape and ``torch.allclose`` values."""
        return all(getattr(self, n).shape == getattr(other, n).shape
                   and torch.allclose(getattr(self, n).detach().cpu(), getattr(other, n).detach().cpu(), rtol, atol)
                   for n in FIELDS)

    def __repr__(self) -> str:
        kept = self.num_kept()
        size = self.num_layers * self.num_heads
        return (f"PruningMasks(L={self.num_layers}, H={self.num_heads}, d_h={self.head_dim}, F={self.ffn_dim}; kept: "
                f"heads {kept['heads']}/{size}, qk dims {kept['qk_dims']}/{size * self.head_dim}, vo dims "
                f"{kept['vo_dims']}/{size * self.head_dim}, neurons {kept['neurons']}/"
                f"{self.num_layers * self.ffn_dim})")
