"""Streaming least squares and their solvers, shared by every method that refits weights or mask scales.

Two systems, both accumulated batch by batch in float64 and summable across batches and processes (all-reduce the
tensors of ``to_dict()``), so that memory never grows with the calibration sample. Whatever the activations' dtype
(bf16 under a ``bf16-mixed`` fit's autocast), the inputs are upcast before any product and every solve is float64:

* :class:`LeastSquaresAccumulator`: ``min ||A x − b||²`` over per-unit scales x (Kwon et al.'s mask tuning, G-Pruner's
  CG²MT), with ``AᵀA``, ``Aᵀb`` built from the units' inputs and weights without materialising A
  (:meth:`~LeastSquaresAccumulator.add_factored`). :meth:`~LeastSquaresAccumulator.solve` is the damped QR solve of
  the reference code's LSMR problem; :func:`cgs_solve` the conjugate gradient squared iteration.
* :class:`ProjectionSystem`: the normal equations ``XᵀX W = XᵀY`` of a whole output projection's refit (KPrune's
  knowledge-preserving weight tuning), solved by a damped Cholesky factorisation (:meth:`~ProjectionSystem.solve`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

MAX_ABS_SCALE = 10.0


def token_mask_or_all(token_mask: torch.Tensor | None, shape: torch.Size, device: torch.device) -> torch.Tensor:
    if token_mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    return token_mask.to(device).bool()


def unit_contributions(unit_inputs: torch.Tensor, unit_weights: torch.Tensor,
                       token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The per-unit contribution matrix A of one batch, over its non-padding tokens.

    Args:
        unit_inputs: (B, s, U, k) each unit's input to the output projection (a head's context vector, k = d_h;
            a neuron's activation, k = 1).
        unit_weights: (U, k, d) each unit's slice of the output projection (``weight.t()`` split by unit).
        token_mask: (B, s), nonzero for the tokens to keep (the attention mask); ``None`` keeps all.

    Returns:
        (T·d, U): column u is unit u's output on the T kept tokens, flattened token-major (row ``t·d + j``), to
        match ``target[token_mask].reshape(-1)``.
    """
    keep = token_mask_or_all(token_mask, unit_inputs.shape[:2], unit_inputs.device)
    x = unit_inputs[keep]  # (T, U, k)
    contributions = torch.einsum("tuk,ukd->tdu", x, unit_weights.to(x.dtype))  # (T, d, U)
    return contributions.reshape(-1, contributions.shape[-1])  # (T·d, U)


@dataclass(eq=False)
class LeastSquaresAccumulator:
    """Running sums of a least-squares system ``min ||A x − b||²``: ``AᵀA``, ``Aᵀb``, ``bᵀb`` and the row count.

    Plain float64 tensors, summable across batches (:meth:`add`, :meth:`add_factored`) and processes
    (:meth:`merge`, or an all-reduce of :meth:`to_dict`'s tensors).

    Attributes:
        gram: (U, U) AᵀA.
        rhs: (U,) Aᵀb.
        target_sq: () bᵀb.
        count: () int64, the number of rows (equations) added.
    """

    gram: torch.Tensor
    rhs: torch.Tensor
    target_sq: torch.Tensor
    count: torch.Tensor

    def __post_init__(self) -> None:
        units = self.rhs.shape[0] if self.rhs.dim() == 1 else None
        if units is None or tuple(self.gram.shape) != (units, units) or self.target_sq.dim() or self.count.dim():
            raise ValueError(f"invalid LeastSquaresAccumulator: gram {tuple(self.gram.shape)}, rhs "
                             f"{tuple(self.rhs.shape)}, target_sq {tuple(self.target_sq.shape)}, count "
                             f"{tuple(self.count.shape)}; expected (U, U), (U,), () and ()")

    @classmethod
    def zeros(cls, num_units: int, device: torch.device | str | None = None) -> LeastSquaresAccumulator:
        """An empty system of ``num_units`` unknowns."""
        return cls(gram=torch.zeros(num_units, num_units, dtype=torch.float64, device=device),
                   rhs=torch.zeros(num_units, dtype=torch.float64, device=device),
                   target_sq=torch.zeros((), dtype=torch.float64, device=device),
                   count=torch.zeros((), dtype=torch.long, device=device))

    @property
    def num_units(self) -> int:
        """U."""
        return self.rhs.shape[0]

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Add rows: ``a`` (R, U), ``b`` (R,)."""
        if a.dim() != 2 or a.shape[1] != self.num_units or tuple(b.shape) != (a.shape[0],):
            raise ValueError(f"LeastSquaresAccumulator.add: got a {tuple(a.shape)} and b {tuple(b.shape)}, expected "
                             f"(R, {self.num_units}) and (R,)")
        a, b = a.to(self.gram.device, torch.float64), b.to(self.gram.device, torch.float64)
        self.gram += a.t() @ a
        self.rhs += a.t() @ b
        self.target_sq += b @ b
        self.count += a.shape[0]

    def add_factored(self, unit_inputs: torch.Tensor, unit_weights: torch.Tensor, target: torch.Tensor,
                     token_mask: torch.Tensor | None = None) -> None:
        """Add one batch of a sublayer, as ``add(unit_contributions(...), target[mask].flatten())`` without A.

        With X the unit inputs (T, U·k) and W the unit weights (U·k, d):
        ``AᵀA = blocksum(XᵀX ∘ WWᵀ)`` and ``Aᵀb = blocksum(colsum(X ∘ (b Wᵀ)))``, summing k×k blocks per unit pair.

        Args:
            unit_inputs: (B, s, U, k), see :func:`unit_contributions`.
            unit_weights: (U, k, d).
            target: (B, s, d), b before flattening.
            token_mask: (B, s), the tokens to keep; ``None`` keeps all.
        """
        batch, seq, units, k = unit_inputs.shape
        d = unit_weights.shape[-1]
        if (units != self.num_units or tuple(unit_weights.shape) != (units, k, d)
                or tuple(target.shape) != (batch, seq, d)):
            raise ValueError(f"LeastSquaresAccumulator.add_factored: unit_inputs {tuple(unit_inputs.shape)}, "
                             f"unit_weights {tuple(unit_weights.shape)}, target {tuple(target.shape)}; expected "
                             f"(B, s, {self.num_units}, k), ({self.num_units}, k, d) and (B, s, d)")
        device = self.gram.device
        keep = token_mask_or_all(token_mask, unit_inputs.shape[:2], unit_inputs.device)
        x = unit_inputs[keep].to(device, torch.float64).reshape(-1, units * k)  # (T, U·k)
        b = target[keep.to(target.device)].to(device, torch.float64)  # (T, d)
        w = unit_weights.to(device, torch.float64).reshape(units * k, d)  # (U·k, d)
        self.gram += ((x.t() @ x) * (w @ w.t())).view(units, k, units, k).sum((1, 3))  # (U, U)
        self.rhs += (x * (b @ w.t())).sum(0).view(units, k).sum(1)  # (U,)
        self.target_sq += b.pow(2).sum()
        self.count += b.numel()

    @classmethod
    def merge(cls, accumulators: Sequence[LeastSquaresAccumulator]) -> LeastSquaresAccumulator:
        """The sum of ``accumulators`` (same U), on the first one's device."""
        if not accumulators:
            raise ValueError("LeastSquaresAccumulator.merge: nothing to merge")
        sizes = sorted({acc.num_units for acc in accumulators})
        if len(sizes) > 1:
            raise ValueError(f"LeastSquaresAccumulator.merge: systems of different sizes {sizes}")
        device = accumulators[0].gram.device
        return cls(**{name: sum((getattr(acc, name).to(device) for acc in accumulators[1:]),
                                getattr(accumulators[0], name).clone())
                      for name in ("gram", "rhs", "target_sq", "count")})

    def to_dict(self) -> dict[str, torch.Tensor]:
        """``{"gram", "rhs", "target_sq", "count"}``: the tensors to all-reduce (sum) or store."""
        return {"gram": self.gram, "rhs": self.rhs, "target_sq": self.target_sq, "count": self.count}

    @classmethod
    def from_dict(cls, tensors: Mapping[str, torch.Tensor]) -> LeastSquaresAccumulator:
        """An accumulator from :meth:`to_dict`'s output."""
        expected = {"gram", "rhs", "target_sq", "count"}
        if set(tensors) != expected:
            raise ValueError(f"LeastSquaresAccumulator.from_dict: expected keys {sorted(expected)}, got "
                             f"{sorted(tensors)}")
        return cls(**{name: tensors[name] for name in expected})

    def objective(self, scales: torch.Tensor) -> float:
        """``||A x − b||² = xᵀAᵀAx − 2xᵀAᵀb + bᵀb`` at ``x = scales`` (U,)."""
        x = scales.to(self.gram.device, torch.float64)
        return float(x @ self.gram @ x - 2 * x @ self.rhs + self.target_sq)

    def solve(self, damping: float = 1.0) -> tuple[torch.Tensor | None, str | None]:
        """The damped scales of the reference code's solver, guarded.

        Computes ``x = 1 + argmin_y ||G y − (h − G·1)||² + damping²·||y||²`` with ``G = AᵀA`` and ``h = Aᵀb``: the
        minimiser that the code's ``lsmr(G, h − G·1, damp=damping)`` converges to (see the module docstring), as
        the stacked least-squares problem ``[G; damping·I] y = [h − G·1; 0]`` in float64.

        Args:
            damping: LSMR's ``damp`` (> 0; the code uses 1). It pulls the scales towards 1, the binary mask.

        Returns:
            ``(scales, None)`` with scales (U,) float64, or ``(None, reason)`` when the system is empty or holds
            non-finite values, the solver raises, or the result is non-finite or leaves [-10, 10] (the caller then
            keeps the unscaled mask; the code stops tuning).

        Raises:
            ValueError: ``damping`` is not a positive finite number.
        """
        if (isinstance(damping, bool) or not isinstance(damping, (int, float)) or not math.isfinite(damping)
                or damping <= 0):
            raise ValueError(f"damping={damping!r}: expected a positive finite number (LSMR's damp; the reference "
                             "code uses 1)")
        if int(self.count) == 0:
            return None, "the system is empty (no tokens were added)"
        if not (torch.isfinite(self.gram).all() and torch.isfinite(self.rhs).all()):
            return None, "the accumulated system holds non-finite values"
        units = self.num_units
        eye = torch.eye(units, dtype=torch.float64, device=self.gram.device)
        residual = self.rhs - self.gram.sum(1)  # h − G·1: the normal-equation residual of the binary mask
        system = torch.cat([self.gram, damping * eye])  # (2U, U), full rank
        right = torch.cat([residual, torch.zeros_like(residual)])[:, None]  # (2U, 1)
        try:
            correction = torch.linalg.lstsq(system, right).solution[:, 0]
        except RuntimeError as error:  # torch.linalg.LinAlgError included
            return None, f"the least-squares solver failed: {error}"
        scales = 1 + correction
        if not torch.isfinite(scales).all():
            return None, "the solution is not finite"
        low, high = float(scales.min()), float(scales.max())
        if low < -MAX_ABS_SCALE or high > MAX_ABS_SCALE:
            return None, (f"scales outside [-{MAX_ABS_SCALE:g}, {MAX_ABS_SCALE:g}] (min {low:.4g}, max {high:.4g}): "
                          "an ill-conditioned fit")
        return scales, None


@dataclass
class CGSResult:
    """What :func:`cgs_solve` found.

    Attributes:
        x: the best iterate (smallest residual norm seen), float64.
        status: ``"converged"`` (relative residual ≤ tol), ``"max_iter"`` or ``"breakdown"``.
        iterations: iterations run.
        residual: the relative residual ``||b − A x|| / ||b||`` of ``x``.
    """

    x: torch.Tensor
    status: Literal["converged", "max_iter", "breakdown"]
    iterations: int
    residual: float


def cgs_solve(matrix: torch.Tensor, rhs: torch.Tensor, x0: torch.Tensor | None = None, tol: float = 1e-8,
              max_iter: int | None = None, breakdown_tol: float = 1e-30) -> CGSResult:
    """Solve ``matrix @ x = rhs`` by the conjugate gradient squared method (Sonneveld 1989), guarded.

    CGS needs only products with ``matrix`` (any square matrix, not necessarily symmetric). Each iteration:
    ``ρ = r̂·r``; ``u = r + β q``; ``p = u + β (q + β p)``; ``v = A p``; ``α = ρ / (r̂·v)``; ``q = u − α v``;
    ``x += α (u + q)``; ``r −= α A (u + q)``, with the shadow residual ``r̂ = r₀``.

    Args:
        matrix: (n, n).
        rhs: (n,).
        x0: the start (default zeros).
        tol: stop when ``||r|| ≤ tol·||rhs||``.
        max_iter: the iteration cap (default ``2n``, at least 10).
        breakdown_tol: ``|ρ|`` or ``|r̂·v|`` at or below ``breakdown_tol·||r̂||·||·||`` is a breakdown.

    Returns:
        :class:`CGSResult`; never a non-finite ``x`` (a non-finite iterate counts as a breakdown and the best finite
        one is returned).

    Raises:
        ValueError: shapes that do not match, or non-finite inputs.
    """
    n = rhs.shape[0] if rhs.dim() == 1 else -1
    if matrix.dim() != 2 or tuple(matrix.shape) != (n, n) or (x0 is not None and tuple(x0.shape) != (n,)):
        raise ValueError(f"cgs_solve: matrix {tuple(matrix.shape)}, rhs {tuple(rhs.shape)}"
                         f"{'' if x0 is None else f', x0 {tuple(x0.shape)}'}; expected (n, n), (n,) and (n,)")
    if not (torch.isfinite(matrix).all() and torch.isfinite(rhs).all()):
        raise ValueError("cgs_solve: the system holds non-finite values")
    a = matrix.double()
    b = rhs.double()
    x = torch.zeros_like(b) if x0 is None else x0.double().clone()
    max_iter = max(10, 2 * n) if max_iter is None else max_iter
    b_norm = float(b.norm())
    if b_norm == 0:
        b_norm = 1.0  # then the tolerance is absolute
    r = b - a @ x
    shadow = r.clone()
    shadow_norm = float(shadow.norm())
    best_x, best_res = x.clone(), float(r.norm()) / b_norm
    if best_res <= tol:
        return CGSResult(best_x, "converged", 0, best_res)
    p = torch.zeros_like(b)
    q = torch.zeros_like(b)
    rho_prev = 1.0
    status: Literal["converged", "max_iter", "breakdown"] = "max_iter"
    iterations = 0
    for iterations in range(1, max_iter + 1):
        rho = float(shadow @ r)
        if abs(rho) <= breakdown_tol * shadow_norm * float(r.norm()) or not math.isfinite(rho):
            status = "breakdown"
            break
        if iterations == 1:
            u = r.clone()
            p = u.clone()
        else:
            beta = rho / rho_prev
            u = r + beta * q
            p = u + beta * (q + beta * p)
        v = a @ p
        sigma = float(shadow @ v)
        if abs(sigma) <= breakdown_tol * shadow_norm * float(v.norm()) or not math.isfinite(sigma):
            status = "breakdown"
            break
        alpha = rho / sigma
        q = u - alpha * v
        uq = u + q
        x = x + alpha * uq
        r = r - alpha * (a @ uq)
        if not (torch.isfinite(x).all() and torch.isfinite(r).all()):
            status = "breakdown"
            break
        residual = float(r.norm()) / b_norm
        if residual < best_res:
            best_x, best_res = x.clone(), residual
        if residual <= tol:
            status = "converged"
            break
        rho_prev = rho
    # the recursive residual drifts from the true one in floating point: report the true residual of best_x
    true_residual = float((b - a @ best_x).norm()) / b_norm
    return CGSResult(best_x, status, iterations, true_residual)


@dataclass(frozen=True)
class TuningResult:
    """The outcome of one :meth:`ProjectionSystem.solve`.

    Attributes:
        weight: (K, d) the weight to use.
        status: "tuned" (the least-squares weight) or "kept" (the current weight).
        warning: why the fit was not used, or a conditioning warning; ``None`` when all went well.
        error_before, error_after: the reconstruction error with the current and the returned weight.
        condition: the condition number of XᵀX over the kept columns (``None`` without data).
        ridge: the absolute ridge λ used.
    """

    weight: torch.Tensor
    status: Literal["tuned", "kept"]
    warning: str | None
    error_before: float
    error_after: float
    condition: float | None
    ridge: float | None


@dataclass(eq=False)
class ProjectionSystem:
    """The normal equations of one output projection's refit, in streaming form (float64).

    For non-padding tokens with inputs ``x`` (C,) to the projection and targets ``y`` (d,):
    ``xtx = Σ xxᵀ`` (C, C), ``xty = Σ xyᵀ`` (C, d), ``yty = Σ yᵀy``. Summable over batches and ranks.
    """

    xtx: torch.Tensor
    xty: torch.Tensor
    yty: torch.Tensor

    @classmethod
    def zeros(cls, num_inputs: int, num_outputs: int, device: torch.device | str | None = None) -> ProjectionSystem:
        return cls(torch.zeros(num_inputs, num_inputs, dtype=torch.float64, device=device),
                   torch.zeros(num_inputs, num_outputs, dtype=torch.float64, device=device),
                   torch.zeros((), dtype=torch.float64, device=device))

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add tokens: ``x`` (N, C) inputs, ``y`` (N, d) targets."""
        if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
            raise ValueError(f"ProjectionSystem.add: got x {tuple(x.shape)} and y {tuple(y.shape)}, expected (N, C) "
                             "and (N, d)")
        x, y = x.float(), y.float()
        # float32 products (fast), float64 sums (order-independent up to float64 rounding); autocast off, so a
        # pass under bf16 autocast (a bf16-mixed fit) does not lower the products to bf16
        with torch.autocast(x.device.type, enabled=False):
            self.xtx += (x.t() @ x).double()
            self.xty += (x.t() @ y).double()
        self.yty += y.double().pow(2).sum()

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {"xtx": self.xtx, "xty": self.xty, "yty": self.yty}

    @classmethod
    def from_dict(cls, tensors: Mapping[str, torch.Tensor]) -> ProjectionSystem:
        return cls(tensors["xtx"], tensors["xty"], tensors["yty"])

    def error(self, columns: torch.Tensor, weight: torch.Tensor) -> float:
        """Σ ||x_cols W − y||² over the tokens, for ``weight`` (len(columns), d)."""
        g = self.xtx[columns][:, columns]
        h = self.xty[columns]
        w = weight.double().to(g.device)
        return float((w * (g @ w)).sum() - 2 * (w * h).sum() + self.yty)

    def solve(self, columns: torch.Tensor, current: torch.Tensor, ridge: float = 1e-6,
              max_condition: float = 1e12) -> TuningResult:
        """The least-squares weight over ``columns``, or ``current`` kept with the reason why.

        Args:
            columns: (K,) long, the kept input columns.
            current: (K, d) the projection's current weight on those columns (its transpose slice).
            ridge: relative Tikhonov ridge: λ = ridge × mean(diag(XᵀX)), raised ×100 until the Cholesky
                factorisation succeeds.
            max_condition: above this condition number of XᵀX the system counts as ill-conditioned: the damped
                solution is still used if it lowers the error, and a warning is recorded.

        Returns:
            A :class:`TuningResult` (``weight`` is ``current`` when the fit was not used).
        """
        g = self.xtx[columns][:, columns]
        h = self.xty[columns]
        before = self.error(columns, current)
        scale = float(g.diagonal().mean()) if g.numel() else 0.0
        if not math.isfinite(scale) or scale <= 0:
            return TuningResult(current, "kept", "the kept units' inputs are all zero on the calibration tokens",
                                before, before, None, None)
        eigenvalues = torch.linalg.eigvalsh(g)
        low, high = float(eigenvalues[0]), float(eigenvalues[-1])
        condition = math.inf if low <= 0 else high / low
        lam = ridge * scale
        weight = None
        for _ in range(8):
            factor, info = torch.linalg.cholesky_ex(g + lam * torch.eye(g.shape[0], dtype=g.dtype, device=g.device))
            if int(info) == 0:
                candidate = torch.cholesky_solve(h, factor)
                if torch.isfinite(candidate).all():
                    weight = candidate
                    break
            lam *= 100
        warning = None
        if condition > max_condition:
            warning = f"ill-conditioned system (condition number {condition:.3g}); solved with ridge λ={lam:.3g}"
        if weight is None:
            return TuningResult(current, "kept", "the damped system could not be solved; weights left untuned",
                                before, before, condition, lam)
        after = self.error(columns, weight)
        # errors are differences of large sums: changes below this are rounding, not a better or worse fit
        tolerance = 1e-9 * float(self.yty) + 1e-30
        if after > before + tolerance:
            reason = f"the fit raised the reconstruction error ({before:.6g} → {after:.6g}); weights left untuned"
            return TuningResult(current, "kept", reason if warning is None else f"{warning}; {reason}",
                                before, before, condition, lam)
        if after >= before - tolerance:  # nothing to gain (e.g. the sublayer keeps every unit of the dense model)
            return TuningResult(current, "kept", warning, before, before, condition, lam)
        return TuningResult(weight.to(current.dtype), "tuned", warning, before, after, condition, lam)


__all__ = ["MAX_ABS_SCALE", "CGSResult", "LeastSquaresAccumulator", "ProjectionSystem", "TuningResult", "cgs_solve", "token_mask_or_all",
           "unit_contributions"]
