"""Kwon et al. 2022 as a Lightning callback, driving :func:`~lit_prune.prune.post_training.kwon_prune`.

The stages are plain PyTorch in :mod:`lit_prune.prune` (see :mod:`lit_prune.methods.kwon` for the overview); this
module adds only the Lightning class: its settings (checked at construction), the pipeline call on this process's
calibration batches, and the report entries (see :mod:`lit_prune.methods.base` for when the callback runs and how
every run ends).
"""

from __future__ import annotations

from typing import Any

from lit_prune.methods.base import MaskTuningPruning


class KwonCallback(MaskTuningPruning):
    """Kwon et al. 2022 as a Lightning callback: Fisher → budgeted search → rearrangement → mask tuning.

    Runs once per ``fit`` (see :mod:`lit_prune.methods.base`): at the start of a fit that trains nothing, else at
    the end of training. Passes: one forward and backward pass over the calibration sample for the Fisher
    statistics, then 2L − 1 truncated passes for the mask tuning. Under DDP each process takes every
    world-size-th batch; the per-batch gradients and the least-squares systems are summed over the processes.

    Args:
        flops_kept, num_samples, replacement, rearrange, tune, tuning_reference, damping, tuning_cache_mb: the
            pipeline's settings (:class:`~lit_prune.methods.base.MaskTuningPruning`).
        **kwargs: the settings all retraining-free callbacks share:
            :class:`~lit_prune.methods.base.RetrainingFreePruning`.

    Example::

        trainer = L.Trainer(max_epochs=3, callbacks=[KwonCallback(flops_kept=0.6)])
        trainer.fit(my_module, train_loader, val_loader)  # fine-tunes, then prunes at the end of training
    """

    method = "kwon"

    def __init__(self, flops_kept: float | None = None, **kwargs: Any) -> None:
        super().__init__(flops_kept=flops_kept, **kwargs)
        self.raise_problems(self.problems)

    def run_method(self, model, dense, batches, batch_ids, num_batches, budget, reduce, progress):
        result = self.pipeline(model, batches, batch_ids, num_batches, budget, reduce, progress)
        return result.masks, result.report_details()


__all__ = ["KwonCallback"]
