"""KPrune: "Accurate Retraining-free Pruning for Pretrained Encoder-based Language Models" (Park et al., ICLR 2024).

Reference code: snudm-starlab/K-prune (``src/prune.py``: ``kprune``, ``compute_scores``, ``find_mask``,
``knowledge_reconstruction``). Everything but the Lightning callback is plain PyTorch, usable from any loop.

KPrune visits the 2L sublayers in order (MHA₀, FFN₀, MHA₁, ..., FFN_{L-1}). For each *target* sublayer, with every
sublayer below it already pruned and tuned:

1. **Knowledge measurement** (:mod:`~lit_prune.methods.kprune.knowledge`: :func:`knowledge_step`,
   :class:`KnowledgeAccumulator`): the predictive knowledge (distillation loss against the dense model's
   predictions, back-propagated to masks on the output projections' inputs) and the representational knowledge
   (the units' input energy times their output weights' energy) of the target's units and of every unit above it,
   over the calibration sample; no labels are used.
2. **Knowledge-preserving mask search** (:mod:`~lit_prune.methods.kprune.search`: :func:`search_sublayer`): the
   remaining units are ranked together by knowledge per FLOP, the best are kept while they fit the FLOPs left, and
   the resulting mask is applied to the target only.
3. **Knowledge-preserving weight tuning** (:mod:`~lit_prune.methods.kprune.tuning`): the target's output projection
   is refitted by least squares, over its kept inputs, so that its output plus the residual matches the dense
   model's sublayer output on the calibration tokens. The kept units' FLOPs leave the budget.

The process (:mod:`~lit_prune.methods.kprune.process`: :func:`kprune`) caches each batch's hidden states at the
current layer, so each sublayer's pass runs from its own layer up, the dense model runs once in all, and batches run
in groups of similar length; the masks and weights are those of the paper's schedule, up to float rounding.
:mod:`~lit_prune.methods.kprune.callback` (:class:`KPruneCallback`) runs it inside a Lightning ``fit``. Each module
opens with its part of the paper and where it departs from the paper or the code.
"""

from lit_prune.methods.kprune.callback import KPruneCallback
from lit_prune.methods.kprune.knowledge import BatchGradients, KnowledgeAccumulator, knowledge_step
from lit_prune.methods.kprune.process import KPruneResult, SublayerStep, kprune
from lit_prune.methods.kprune.search import decided_counts, search_sublayer
from lit_prune.methods.kprune.tuning import add_tuning_batch, tune_sublayer

__all__ = ["BatchGradients", "KPruneCallback", "KPruneResult", "KnowledgeAccumulator", "SublayerStep",
           "add_tuning_batch", "knowledge_step", "kprune", "decided_counts", "search_sublayer", "tune_sublayer"]
