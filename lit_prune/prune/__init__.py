"""The shared pruning layer: plain PyTorch, no Lightning, no lit_prune data or task modules.

Every method imports its machinery from here (and from :mod:`lit_prune.core`), never from another method, so each
piece exists once and works from any training loop:

* :mod:`~lit_prune.prune.batches`: which batch keys are labels, which inputs a model's ``forward`` takes.
* :mod:`~lit_prune.prune.importance`: mask gradients of any loss (weights frozen).
* :mod:`~lit_prune.prune.capture`: run a model to one sublayer, or from one layer on; record projection inputs.
* :mod:`~lit_prune.prune.lstsq`: streaming normal equations and their solvers (damped QR, damped Cholesky, CGS).
* :mod:`~lit_prune.prune.distill`: distillation losses, with one meaning of ``temperature``.
* :mod:`~lit_prune.prune.schedules`: the cubic pruning schedule.
* :mod:`~lit_prune.prune.cache`: a per-batch tensor cache that spills to disk beyond a memory budget.
* :mod:`~lit_prune.prune.types`: the ``reduce`` and ``progress`` callables a calibration loop hands to a stage.
"""
