"""G-Pruner's CG²MT (Conjugate Gradient Squared Mask Tuning): Kwon's mask tuning with a CGS solver (our reading).

See :mod:`lit_prune.methods.gpruner` for what could be read of the paper. Kwon's mask tuning
(:func:`~lit_prune.prune.mask_tuning.tune_masks`), sublayer by sublayer, with the same streaming systems
(:class:`~lit_prune.prune.lstsq.LeastSquaresAccumulator`: ``G = AᵀA``, ``h = Aᵀb``), but the scales come from the
normal equations ``(G + δ·I)·y = h − G·1``, ``x = 1 + y``, solved by the conjugate gradient squared method
(Sonneveld 1989; our own torch implementation, :func:`~lit_prune.prune.lstsq.cgs_solve`, float64) from ``y = 0``
(the binary mask), with a relative-residual tolerance ``cgs_tol`` and an iteration cap ``cgs_max_iter``. ``δ`` is
``cgs_ridge`` × the mean of G's diagonal (scale-free; the default 1e-6 only guards singular systems). The solver
is guarded: a breakdown (``ρ`` or ``σ`` vanishing, or a non-finite iterate) stops the iteration and the best
iterate so far (smallest residual) is used; non-finite scales or scales outside [-10, 10] fail the sublayer as in
Kwon (tuning stops, scales found so far are kept). The callback's ``solver="cgs"``.

Choice (the paper's code is not public): CGS solves the normal equations of the sublayer's least squares (the
systems Kwon hands to LSMR) directly, with its own stopping rule; Kwon's damping prior (pull towards the binary
mask) is replaced by the start at the binary mask plus the tiny relative ridge ``δ``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lit_prune.prune.lstsq import MAX_ABS_SCALE, LeastSquaresAccumulator, cgs_solve


@dataclass
class CGSLog:
    """One sublayer's CGS solve (for the report)."""

    status: str
    iterations: int
    residual: float
    units: int


class CGSTuningSolver:
    """CG²MT's solver for Kwon's mask tuning: ``(G + δI) y = h − G·1`` by CGS, ``x = 1 + y`` (see the module doc).

    Callable as ``solver(acc) -> (scales or None, reason)`` (:func:`~lit_prune.prune.mask_tuning.tune_masks`'s
    ``solver``); every solve is logged in :attr:`log`, in order.
    """

    def __init__(self, tol: float = 1e-6, max_iter: int = 100, ridge: float = 1e-6) -> None:
        for name, value, low in (("cgs_tol", tol, 0.0), ("cgs_ridge", ridge, 0.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < low or (name == "cgs_tol" and value == 0):
                raise ValueError(f"{name}={value!r}: expected a finite number {'> 0' if name == 'cgs_tol' else '>= 0'}")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"cgs_max_iter={max_iter!r}: expected an integer >= 1")
        self.tol, self.max_iter, self.ridge = float(tol), max_iter, float(ridge)
        self.log: list[CGSLog] = []

    def __call__(self, acc: LeastSquaresAccumulator) -> tuple[torch.Tensor | None, str | None]:
        if int(acc.count) == 0:
            return None, "the system is empty (no tokens were added)"
        if not (torch.isfinite(acc.gram).all() and torch.isfinite(acc.rhs).all()):
            return None, "the accumulated system holds non-finite values"
        gram = acc.gram.double()
        units = gram.shape[0]
        delta = self.ridge * float(gram.diagonal().mean()) if units else 0.0
        system = gram + delta * torch.eye(units, dtype=torch.float64, device=gram.device)
        result = cgs_solve(system, acc.rhs.double() - gram.sum(1), tol=self.tol, max_iter=self.max_iter)
        self.log.append(CGSLog(result.status, result.iterations, result.residual, units))
        scales = 1 + result.x
        if not torch.isfinite(scales).all():
            return None, f"CGS ({result.status}) gave non-finite scales"
        low, high = float(scales.min()), float(scales.max())
        if low < -MAX_ABS_SCALE or high > MAX_ABS_SCALE:
            return None, (f"CGS ({result.status}, {result.iterations} iterations): scales outside "
                          f"[-{MAX_ABS_SCALE:g}, {MAX_ABS_SCALE:g}] (min {low:.4g}, max {high:.4g}): an ill-conditioned fit")
        return scales, None


__all__ = ["CGSLog", "CGSTuningSolver"]
