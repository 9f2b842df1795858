"""The pruning core: plain PyTorch + transformers, no Lightning, usable without a Trainer.

* :mod:`~lit_prune.core.arch`: architecture adapters (where each supported encoder keeps Q/K/V/O and FFN).
* :mod:`~lit_prune.core.masks`: :class:`~lit_prune.core.masks.PruningMasks` (heads, query/key and value dims, neurons).
* :mod:`~lit_prune.core.masking`: :func:`~lit_prune.core.masking.apply_masks`, masks as forward hooks.
* :mod:`~lit_prune.core.flops`: FLOPs and parameter counts, exact FLOPs budgets.
* :mod:`~lit_prune.core.compact`: :func:`~lit_prune.core.compact.compact`, physical removal of masked units.
* :mod:`~lit_prune.core.io`: pruned Hugging Face folders that load without lit_prune.
* :mod:`~lit_prune.core.latency`: measured dense-vs-pruned latency.
* :mod:`~lit_prune.core.atomic`: atomic writes.
"""
