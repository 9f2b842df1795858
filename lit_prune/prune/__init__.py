"""The shared pruning layer: plain PyTorch, no Lightning, no lit_prune data or task modules.

Every method imports its machinery from here (and from :mod:`lit_prune.core`), never from another method, so each
piece exists once and works from any training loop:

* :mod:`~lit_prune.prune.batches`: which batch keys are labels, which inputs a model's ``forward`` takes.
* :mod:`~lit_prune.prune.importance`: mask gradients of any loss (weights frozen).
* :mod:`~lit_prune.prune.capture`: run a model to one sublayer, or from one layer on; record projection inputs.
* :mod:`~lit_prune.prune.lstsq`: streaming normal equations and their solvers (damped QR, damped Cholesky, CGS).
* :mod:`~lit_prune.prune.distill`: distillation losses, with one meaning of ``temperature``.
* :mod:`~lit_prune.prune.schedules`: the cubic pruning schedule.
* :mod:`~lit_prune.prune.teacher`: the frozen distillation teacher, held outside the module tree.
* :mod:`~lit_prune.prune.lengths`: running a padded batch as a few sub-batches of similar length.
* :mod:`~lit_prune.prune.cache`: a per-batch tensor cache that spills to disk beyond a memory budget.
* :mod:`~lit_prune.prune.types`: the ``reduce`` and ``progress`` callables a calibration loop hands to a stage.

Kwon et al.'s post-training framework, one module per stage (used by Kwon and, with two stages swapped, G-Pruner):

* :mod:`~lit_prune.prune.fisher`: per-batch mask gradients and the Fisher importances of heads and neurons.
* :mod:`~lit_prune.prune.search`: the budgeted global search over whole heads and neurons (and the tuning
  teacher's intermediate budget).
* :mod:`~lit_prune.prune.rearrange`: the per-layer greedy mask rearrangement on the per-batch gradients.
* :mod:`~lit_prune.prune.mask_tuning`: least-squares scales of the kept units, sublayer by sublayer.
* :mod:`~lit_prune.prune.post_training`: the four composed (``kwon_prune``), with ``refine`` and ``solver`` hooks,
  and the tuning settings' checks that the callbacks share.
"""
