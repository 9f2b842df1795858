"""G-Pruner ("Global-Pruner", CoNLL 2024): PPO mask search (PPOM) and conjugate gradient squared mask tuning (CG²MT).

No reference code exists and only the paper's abstract could be read, so this package is *our reading* of it, built
on Kwon et al.'s pipeline (Fisher statistics → budgeted search → rearrangement → mask tuning, in the shared layer:
:func:`~lit_prune.prune.post_training.kwon_prune`), with two parts swapped in, each behind a switch so that the
four combinations {greedy search, PPOM} × {least squares as in Kwon, CGS} run from a config:

* **PPOM** (:mod:`~lit_prune.methods.gpruner.ppo`, ``search="ppo"``): a policy over binary masks, initialised from
  the Fisher ranking and projected onto the FLOPs budget, trained by PPO to minimise the calibration loss of the
  masked model (:mod:`~lit_prune.methods.gpruner.reward`); it replaces the binary masks between the search (and
  rearrangement) and the tuning, and never returns a mask worse on that loss than Kwon's.
* **CG²MT** (:mod:`~lit_prune.methods.gpruner.cgs`, ``solver="cgs"``): Kwon's sublayer-by-sublayer mask tuning,
  with its normal equations solved by the conjugate gradient squared method from the binary mask.

:class:`~lit_prune.methods.gpruner.callback.GPrunerCallback` runs it from a Lightning ``fit``. Each module opens
with its part of the reading and its choices. Shared by all of them (none can be checked against the paper's code,
which is not public): PPOM searches over whole heads and FFN neurons (Kwon's units), with the Fisher pass, the
rearrangement and the intermediate tuning reference of Kwon unchanged.
"""

from lit_prune.methods.gpruner.callback import GPrunerCallback
from lit_prune.methods.gpruner.cgs import CGSTuningSolver
from lit_prune.methods.gpruner.ppo import (
    BudgetProjection,
    PPOResult,
    PPOSettings,
    bernoulli_entropy,
    bernoulli_log_prob,
    clipped_surrogate,
    ppo_search,
    ranking_logits,
)
from lit_prune.methods.gpruner.reward import CalibrationLoss

__all__ = ["BudgetProjection", "CGSTuningSolver", "CalibrationLoss", "GPrunerCallback", "PPOResult", "PPOSettings",
           "bernoulli_entropy", "bernoulli_log_prob", "clipped_surrogate", "ppo_search", "ranking_logits"]
